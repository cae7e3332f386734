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


# Keeps a replay's Hydra output folder under runs/, like the original command.
REPLAY_HYDRA_BLOCK = {"hydra": {"run": {"dir": TRAIN_RUN_DIR}, "sweep": {"dir": MULTIRUN_DIR}}}


def write_replay_config(cfg: DictConfig, path: Path, run_id: str) -> Path:
    """The resolved config as the primary config of a replay (`--config-name config`); the
    replay's run is tagged with the run it replays (`replay_of`)."""
    plain = OmegaConf.to_container(cfg)
    plain["mlflow"]["tags"] = {**plain["mlflow"]["tags"], REPLAY_OF_TAG: run_id}
    body = OmegaConf.to_yaml({**plain, **REPLAY_HYDRA_BLOCK})
    return write_masked(path, REPLAY_HEADER + body)
