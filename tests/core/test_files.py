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
import sys
from pathlib import Path
from study.core.files import publish
path, stop = Path(sys.argv[1]), Path(sys.argv[2])
bodies = [letter.encode() * int(size) for letter, size in zip("sL", sys.argv[3:])]
while not stop.exists():
    for body in bodies:
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
    folder = tmp_path / "plots"
    folder.mkdir()
    path, stop = folder / "parallel_coordinate.png", tmp_path / "stop"
    publish(path, lambda private: private.write_bytes(SMALL))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-c", REWRITER, str(path), str(stop), str(len(SMALL)), str(len(LARGE))]
    rewriter = subprocess.Popen(command, env=env)
    seen: dict[int, int] = {}
    deadline = time.time() + 120  # however slowly the rewriter starts, a few thousand reads
    try:
        while time.time() < deadline and not (len(seen) == 2 and min(seen.values()) >= 200):
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                body = file.read()
            assert len(body) == size and body in (SMALL, LARGE)
            seen[size] = seen.get(size, 0) + 1
    finally:
        stop.touch()
        rewriter.wait(timeout=30)
    assert rewriter.returncode == 0
    assert sorted(seen) == [len(SMALL), len(LARGE)]  # the reader did see the file change under it
    assert [p.name for p in folder.iterdir()] == [path.name]
