"""The folders Hydra gives a command: one of its own for every process, under runs_dir.

Hydra names the run folder by `${now:...}`, a second's resolution: commands started in the same
second shared one folder, and with it each other's checkpoints, config.yaml and TensorBoard
events. `${process_token:}` adds a token drawn once per process, so every command (and every
`--multirun` sweep) gets a folder no other process writes to, however many start at once.
"""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf

# Drawn once: Hydra resolves the run folder more than once, and each time must give the same.
PROCESS_TOKEN = secrets.token_hex(4)
STAMP = "${now:%Y-%m-%d_%H-%M-%S}_${process_token:}"
# hydra.run.dir of study.train; a replay gets the same folders as command-line overrides.
TRAIN_RUN_DIR = "${runs_dir}/hydra/train/" + STAMP
# hydra.sweep.dir: `--multirun` jobs in numbered folders of one folder, under runs_dir too.
MULTIRUN_DIR = "${runs_dir}/hydra/multirun/" + STAMP


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("process_token", lambda: PROCESS_TOKEN, replace=True)


register_resolvers()  # before Hydra composes conf/: the commands import this package first
