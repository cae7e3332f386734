"""optuna-dashboard (`pip install -e ".[dashboard]"`) serves a study from its storage: over HTTP,
and in headless Chromium (Debian's chromium and chromium-driver) when they are installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.helpers import free_port

DASHBOARD = shutil.which("optuna-dashboard")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    DASHBOARD is None, reason='needs optuna-dashboard: pip install -e ".[dashboard]"'
)


def a_study(storage: str) -> optuna.Study:
    """A finished study as study.sweep leaves it in its storage (values, epochs, a pruned trial)."""
    study = optuna.create_study(study_name="dashboard-study", storage=storage, direction="maximize")
    distributions = {
        "model": CategoricalDistribution(["softmax", "mlp"]),
        "optimizer.learning_rate": FloatDistribution(1e-3, 1e-1, log=True),
    }
    for number, (model, rate, curve, state) in enumerate(
        [
            ("mlp", 0.01, [0.91, 0.95], TrialState.COMPLETE),
            ("softmax", 0.05, [0.88, 0.90], TrialState.COMPLETE),
            ("mlp", 0.002, [0.40], TrialState.PRUNED),
        ]
    ):
        study.add_trial(
            create_trial(
                state=state,
                value=max(curve) if state == TrialState.COMPLETE else None,
                params={"model": model, "optimizer.learning_rate": rate},
                distributions=distributions,
                intermediate_values=dict(enumerate(curve, start=1)),
                user_attrs={"mlflow_run_id": f"run-{number}"},
            )
        )
    return study


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def dashboard(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = a_study(storage)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [DASHBOARD, storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            assert server.poll() is None, "optuna-dashboard exited"
            try:
                get_json(f"{url}/api/meta")
                break
            except OSError:
                assert time.time() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.3)
        yield url, study
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_serves_the_study_over_http(dashboard):
    url, study = dashboard
    summaries = get_json(f"{url}/api/studies")["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == "dashboard-study"]
    detail = get_json(f"{url}/api/studies/{summary['study_id']}")
    assert [trial["state"] for trial in detail["trials"]] == ["Complete", "Complete", "Pruned"]
    assert detail["best_trials"][0]["values"] == [pytest.approx(study.best_value)]
    assert {param["name"] for param in detail["union_search_space"]} == {"model", "optimizer.learning_rate"}


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
def test_dashboard_shows_the_study_in_a_browser(dashboard, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    url, _ = dashboard
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{url}/dashboard")
        deadline = time.time() + 60
        while "dashboard-study" not in driver.find_element(By.TAG_NAME, "body").text:
            assert time.time() < deadline, driver.find_element(By.TAG_NAME, "body").text[:1000]
            time.sleep(0.5)
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
    finally:
        driver.quit()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
