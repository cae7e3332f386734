"""The config.yaml every run logs: its resolved config as the primary config of a replay
(`python -m study.train --config-path DIR --config-name config`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from study.config.run_dirs import MULTIRUN_DIR, TRAIN_RUN_DIR
from study.core.masking import write_masked
from study.core.names import REPLAY_OF_TAG

REPLAY_HEADER = """\
# The resolved config of one study.train run. Replay it with
#   python -m study.train --config-path <folder of this file> --config-name config
"""


# Keeps a replay's Hydra output folder under runs/, like the original command. Given as command
# line overrides (`replay_hydra_overrides`), never written into config.yaml: a logged config is
# data, and Hydra would act on a `hydra:` block in it (callbacks, logging factories).
REPLAY_HYDRA_BLOCK = {"hydra": {"run": {"dir": TRAIN_RUN_DIR}, "sweep": {"dir": MULTIRUN_DIR}}}


def write_replay_config(cfg: DictConfig, path: Path, run_id: str) -> Path:
    """The resolved config as the primary config of a replay (`--config-name config`); the
    replay's run is tagged with the run it replays (`replay_of`). No `hydra:` block."""
    plain = OmegaConf.to_container(cfg)
    plain["mlflow"]["tags"] = {**plain["mlflow"]["tags"], REPLAY_OF_TAG: run_id}
    plain.pop("hydra", None)
    return write_masked(path, REPLAY_HEADER + OmegaConf.to_yaml(plain))


def replay_hydra_overrides() -> list[str]:
    """REPLAY_HYDRA_BLOCK as overrides, which `study.train` adds to a `--config-path` command."""
    return [f"hydra.{kind}.dir={block['dir']}" for kind, block in REPLAY_HYDRA_BLOCK["hydra"].items()]
