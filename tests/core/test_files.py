"""Outputs published whole: a reader never sees a file another process is half way through."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.core.files import publish, publish_text

# Two versions of one file, of different sizes: a reader that mixed them, or read one cut short,
# sees bytes of both or fewer than the size it was told.
SMALL, LARGE = b"s" * 1_000, b"L" * 400_000

REWRITER = """
import sys, time
from pathlib import Path
from study.core.files import publish
path, until = Path(sys.argv[1]), float(sys.argv[2])
while time.time() < until:
    for body in (b"s" * 1_000, b"L" * 400_000):
        publish(path, lambda private: private.write_bytes(body))
"""


def test_a_published_file_is_whole_and_leaves_nothing_beside_it(tmp_path):
    path = publish_text(tmp_path / "leaderboard.csv", "trial,value\n0,0.9\n")
    assert path.read_text() == "trial,value\n0,0.9\n"
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.csv"]


def test_a_writer_that_fails_leaves_the_published_version(tmp_path):
    path = publish_text(tmp_path / "plot.png", "first")

    def fail(private: Path) -> None:
        private.write_text("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        publish(path, fail)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_a_file_rewritten_by_another_process_is_read_as_one_version(tmp_path):
    """What an upload does (the size from fstat, then the body to its end) while another driver
    publishes the same output over and over."""
    path = tmp_path / "parallel_coordinate.png"
    publish(path, lambda private: private.write_bytes(SMALL))
    until = time.time() + 4
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rewriter = subprocess.Popen([sys.executable, "-c", REWRITER, str(path), str(until)], env=env)
    reads = set()
    try:
        while time.time() < until:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                body = file.read()
            assert len(body) == size and body in (SMALL, LARGE)
            reads.add(len(body))
    finally:
        rewriter.wait(timeout=30)
    assert rewriter.returncode == 0
    assert reads == {len(SMALL), len(LARGE)}  # the reader did see the file change under it
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
