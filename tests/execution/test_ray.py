"""launcher=ray's checks: each one line, before any store is written. The studies themselves
run on real Ray clusters in tests/e2e/test_ray.py."""

from __future__ import annotations

import pytest

from tests.helpers import run_command

pytest.importorskip("ray", reason='needs Ray (pip install -e ".[ray]")')


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9", "could not connect to a Ray cluster at 127.0.0.1:9: Connection refused"),
        ("ray://127.0.0.1:9", "could not connect to a Ray cluster at ray://127.0.0.1:9: Connection refused"),
        ("ray://:x", "expected auto, host:port or ray://host:port, got 'ray://:x'"),
    ],
)
def test_an_address_where_no_cluster_answers_is_one_line(sweep_setup, address, expected):
    tmp_path, base = sweep_setup
    shared = "launcher.shared_filesystem=true"  # the stores pass: the address is looked at next
    result = run_command(
        "sweep", *base, "launcher=ray", f"launcher.address={address}", shared, cwd=tmp_path, timeout=120
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"study.sweep: error: launcher.address: {expected}"]
    assert not (tmp_path / "runs" / "optuna.db").exists()


def test_a_store_on_this_machines_disk_is_refused_before_connecting(sweep_setup):
    tmp_path, base = sweep_setup
    result = run_command("sweep", *base, "launcher=ray", "launcher.address=127.0.0.1:9", cwd=tmp_path)
    assert (
        result.stderr.strip()
        .splitlines()[0]
        .startswith("study.sweep: error: study.storage: expected a store every node can reach")
    )
    assert not (tmp_path / "runs" / "optuna.db").exists()
