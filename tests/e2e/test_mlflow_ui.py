"""The MLflow UI, in a real browser: a real `mlflow server` on 127.0.0.1 over a small study's
store, opened in headless Chromium (Debian's chromium and chromium-driver), at the address the
study's summary prints: the experiment's model-training view, trials named by their values."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from study.core.names import EXPERIMENT_ID_KEY
from study.execution.driver import run_sweep
from tests.helpers import compose_config, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = [
    pytest.mark.slow,  # a sweep, an mlflow server and a browser: 40 s on 2 cores
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1600,1000",
]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("mlflow server did not become healthy")


def wait_for_text(driver, text: str, timeout: float = 60.0) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if text in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not shown; page shows: {body[:1500]}")


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_study_shows_in_the_mlflow_ui(sweep_setup, browser):
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By

    tmp_path, overrides = sweep_setup
    overrides += ["study.n_trials=2", "study.name=ui-study", "pruner=none"]
    summary = run_sweep(compose_config("sweep", overrides), overrides)
    store = f"sqlite:///{tmp_path / 'runs'}/mlflow.db"
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("study")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(run for run in runs if run.data.tags.get("study.role") == "parent")
    children = [run for run in runs if run is not parent]
    assert summary[EXPERIMENT_ID_KEY] == experiment.experiment_id
    for child in children:  # what the trial tried, not default-trial-0001
        assert re.fullmatch(r"(softmax|mlp)-(sgd|adam)-lr[0-9.e-]+(-d[0-9.e-]+)?", child.info.run_name)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_healthy(url, server)
        # MLflow 3.17 opens an experiment on its GenAI pages unless the address asks otherwise.
        browser.get(f"{url}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
        body = wait_for_text(browser, "ui-study")
        assert "Observability" not in body and "Evaluation runs" not in body, body[:1500]
        # Children are nested under the parent: expand it, then every trial's run is listed.
        name_cell = browser.find_element(By.LINK_TEXT, "ui-study").find_element(
            By.XPATH, "./ancestor::*[@role='gridcell'][1]"
        )
        name_cell.find_element(By.TAG_NAME, "button").click()
        for child in children:
            wait_for_text(browser, child.info.run_name)
        browser.save_screenshot(str(tmp_path / "experiment.png"))

        # A trial's page shows its metrics; the parent's shows the study's result.
        browser.get(f"{url}/#/experiments/{experiment.experiment_id}/runs/{children[0].info.run_id}")
        body = wait_for_text(browser, "best_val_accuracy")
        assert "val_accuracy" in body and "train_loss" in body
        assert "ui-study" in body  # the parent run is linked
        browser.save_screenshot(str(tmp_path / "trial.png"))
        browser.get(f"{url}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}")
        wait_for_text(browser, "best_trial_test_accuracy")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (tmp_path / "experiment.png").stat().st_size > 10_000
