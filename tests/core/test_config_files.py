"""Config files read as data: bounded YAML, logged configs without Hydra settings or resolver
calls, and SIGTERM that ends a command even when a library swallows its SystemExit."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from study.config import CONFIG_DIR
from study.core.config_files import (
    MAX_YAML_DEPTH,
    OWN_RESOLVERS,
    PACKAGE_CONFIG_DIR,
    as_data,
    check_yaml_file,
    check_yaml_text,
)
from study.core.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "study"


def test_an_alias_bomb_is_refused_by_a_scan_in_milliseconds():
    levels = "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 30))
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^bomb\.yaml: line 2: YAML anchors and aliases"):
        check_yaml_text("a0: [x]\n" + levels, "bomb.yaml")
    assert time.monotonic() - start < 1


def test_deep_nesting_and_syntax_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"^deep\.yaml: line 1: nested deeper than {MAX_YAML_DEPTH}"):
        check_yaml_text("[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1), "deep.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: 'unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(broken))}: not valid YAML at line"):
        check_yaml_file(broken)
    check_yaml_text("model: {type: categorical, choices: [mlp, cnn]}\n", "fine.yaml")


def test_a_logged_config_is_data():
    cfg = OmegaConf.create(
        {
            "runs_dir": "runs",
            "mlflow": {"artifact_location": "${runs_dir}/mlartifacts", "run_name": "${process_token:}"},
            "hydra": {"run": {"dir": "${now:%Y}"}},
        }
    )
    data = as_data(cfg, "config.yaml")
    assert "hydra" not in data
    assert data.mlflow.artifact_location == "runs/mlartifacts"  # a reference to its own keys stays
    cfg.mlflow.tags = {"who": "x ${oc.env:HOME}"}
    with pytest.raises(ConfigError, match=r"^config\.yaml: mlflow\.tags\.who: calls the resolver oc\.env;"):
        as_data(cfg, "config.yaml")


def test_the_resolvers_a_logged_config_may_call_are_the_projects_own():
    registered = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"register_new_resolver\(\s*\"([\w.]+)\"", path.read_text())
    }
    assert registered == set(OWN_RESOLVERS)


def test_hydra_settings_are_trusted_from_the_package_conf_only():
    assert PACKAGE_CONFIG_DIR == CONFIG_DIR


SWALLOWING = """
import signal, sys, time
from study.core import cli
signal.signal(signal.SIGTERM, lambda signum, frame: cli._exit_on_sigterm(signum, frame, grace_seconds=1))
print("ready", flush=True)
while True:
    try:
        time.sleep(0.01)
    except BaseException:  # a library that swallows SystemExit
        pass
"""


def test_sigterm_ends_a_command_that_swallows_its_system_exit():
    process = subprocess.Popen([sys.executable, "-c", SWALLOWING], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # a second one does not cut the clean-up short
    assert process.wait(timeout=10) == 128 + signal.SIGTERM
