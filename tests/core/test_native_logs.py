"""TensorFlow's native start-up lines are silenced; Python warnings and real errors still show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.core.native_logs import NATIVE_LINE, PRE_INIT_NOTICE, filtered_stderr, keep_line

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INFO = (
    "I0000 00:00:1795362869.585458    4032 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
)
ERROR = (
    "E0000 00:00:1795362878.328101    4032 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
)


def test_native_lines_below_the_level_are_dropped_the_rest_kept(capfd):
    assert not keep_line(INFO, 1) and keep_line(INFO, 0)
    assert keep_line(ERROR, 2) and not keep_line(ERROR, 3)
    assert not keep_line(PRE_INIT_NOTICE + "\n", 1)
    with filtered_stderr(min_level=2):
        os.write(2, f"{PRE_INIT_NOTICE}\n{INFO}{ERROR}UserWarning: a genuine warning\n".encode())
    assert capfd.readouterr().err == f"{ERROR}UserWarning: a genuine warning\n"


QUIET_IMPORT = """
import warnings
import study
import keras, tensorflow as tf
tf.config.list_physical_devices("GPU")  # where a CPU machine logs cuInit's error
warnings.warn("a genuine warning")
"""


def test_importing_the_backend_prints_python_warnings_only(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", QUIET_IMPORT],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "UserWarning: a genuine warning" in done.stderr
    noise = [line for line in done.stderr.splitlines() if NATIVE_LINE.match(line) or "absl::" in line]
    assert noise == [], done.stderr


def test_no_tracked_file_is_ignored_by_git():
    """.gitignore once listed conf/sweep.yaml and conf/train.yaml, which the project needs."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    assert listed.stdout.split() == []
