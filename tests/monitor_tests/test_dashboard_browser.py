"""The dashboard and the report as a user sees them: rendered by headless Chromium.

The dashboard runs as its own process on a free port of 127.0.0.1 over the study group
that ``trained_group`` trained. Each check reads the rendered page, not HTTP status codes.
A failing check saves a screenshot under ``test-artifacts/monitor/`` (or
``$ARCHSWEEP_TEST_ARTIFACTS``) and names it in the failure message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from search import dashboard, figures, report
from storage import open_storage

from .conftest import TrainedGroup

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

# Seconds to wait for the dashboard process to listen, and for a page to render. Both
# are generous because the test machine's cores are shared with other work.
SERVER_START_TIMEOUT_S = 60.0
PAGE_TIMEOUT_S = 30.0

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--window-size=1400,1000",
    # Every host name but the local one fails to resolve: the pages under test must not
    # need the network, and the browser must not reach anything else.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def _artifacts_dir() -> Path:
    configured = os.environ.get("ARCHSWEEP_TEST_ARTIFACTS")
    directory = Path(configured) if configured else REPOSITORY_ROOT / "test-artifacts"
    directory = directory / "monitor"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.contextmanager
def _screenshot_on_failure(browser: WebDriver, name: str) -> Iterator[None]:
    """Save a screenshot of the page when a check in the block fails, and name it."""
    try:
        yield
    except (AssertionError, WebDriverException) as error:
        path = _artifacts_dir() / f"{name}.png"
        browser.save_screenshot(str(path))
        raise AssertionError(
            f"{error}\nURL: {browser.current_url}\nscreenshot of the page: {path}"
        ) from error


def _wait_for(browser: WebDriver, condition: object, message: str) -> object:
    return WebDriverWait(browser, PAGE_TIMEOUT_S).until(condition, message)


def _body_text(browser: WebDriver) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            pytest.fail(
                f"{binary} is missing; install the Debian packages chromium and chromium-driver",
                pytrace=False,
            )

    profile = tempfile.mkdtemp(prefix="archsweep-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def dashboard_url(
    trained_group: TrainedGroup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("dashboard") / "dashboard.log"
    command = [
        sys.executable,
        "-m",
        "search.dashboard",
        "--storage",
        str(trained_group.storage_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPOSITORY_ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        url = f"http://127.0.0.1:{port}/dashboard/"
        while url not in log_path.read_text() or not _accepts_connections(port):
            if process.poll() is not None:
                pytest.fail(
                    f"the dashboard exited with status {process.returncode}:\n"
                    f"{log_path.read_text()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the dashboard did not log its URL within {SERVER_START_TIMEOUT_S} s:\n"
                    f"{log_path.read_text()}",
                    pytrace=False,
                )
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _open_study_page(browser: WebDriver, dashboard_url: str, study_name: str) -> str:
    """Open the study list, follow the link of ``study_name`` and return its page URL."""
    browser.get(dashboard_url)
    _wait_for(
        browser,
        lambda driver: study_name in _body_text(driver),
        f"study {study_name} not listed",
    )
    link = browser.find_element(
        By.XPATH, f"//a[contains(@href, '/studies/') and contains(., '{study_name}')]"
    )
    study_url = str(link.get_attribute("href"))
    browser.get(study_url)
    return study_url


def _plot_title(browser: WebDriver, element_id: str) -> str:
    titles = browser.find_elements(By.CSS_SELECTOR, f"[id='{element_id}'] .gtitle")
    return titles[0].text if titles else ""


def test_dashboard_lists_every_study(
    browser: WebDriver, dashboard_url: str, trained_group: TrainedGroup
) -> None:
    browser.get(dashboard_url)

    with _screenshot_on_failure(browser, "study-list"):
        for architecture in trained_group.architectures:
            name = trained_group.study_name(architecture)
            _wait_for(
                browser,
                lambda driver, name=name: name in _body_text(driver),
                f"study {name} not in the study list",
            )


def test_dashboard_trials_page_shows_trial_count(
    browser: WebDriver, dashboard_url: str, trained_group: TrainedGroup
) -> None:
    architecture = trained_group.architectures[0]
    expected = f"{len(trained_group.trials(architecture))} Trials"

    with _screenshot_on_failure(browser, "trial-count"):
        study_url = _open_study_page(browser, dashboard_url, trained_group.study_name(architecture))
        browser.get(f"{study_url}/trials")
        _wait_for(
            browser,
            lambda driver: re.search(rf"\b{expected}\b", _body_text(driver)),
            f"{expected!r} not on the trials page",
        )


def test_dashboard_study_page_shows_f1_figures(
    browser: WebDriver, dashboard_url: str, trained_group: TrainedGroup
) -> None:
    expected_titles = {
        dashboard.GRAPH_ID_F1_CURVES: figures.TITLE_F1_CURVES,
        dashboard.GRAPH_ID_TRAIN_VS_VAL: figures.TITLE_TRAIN_VS_VAL,
        dashboard.GRAPH_ID_F1_VS_PARAMETERS: figures.TITLE_F1_VS_PARAMETERS,
    }

    with _screenshot_on_failure(browser, "study-figures"):
        _open_study_page(browser, dashboard_url, trained_group.study_name("transformer"))
        for graph_id, title in expected_titles.items():
            element_id = f"user-defined-plot:{graph_id}"
            _wait_for(
                browser,
                lambda driver, element_id=element_id: _plot_title(driver, element_id),
                f"figure {element_id} not rendered",
            )
            assert _plot_title(browser, element_id) == title

        curves = browser.find_element(By.ID, f"user-defined-plot:{dashboard.GRAPH_ID_F1_CURVES}")
        legend = curves.find_element(By.CSS_SELECTOR, ".legend").text
        assert "train F1" in legend
        assert "validation F1" in legend
        menu = curves.find_element(By.CSS_SELECTOR, ".updatemenu-container").text
        assert re.search(r"trial \d+ \(complete\)", menu)


def test_dashboard_trial_note_shows_outcome(
    browser: WebDriver, dashboard_url: str, trained_group: TrainedGroup
) -> None:
    with _screenshot_on_failure(browser, "trial-note"):
        study_url = _open_study_page(
            browser, dashboard_url, trained_group.study_name("transformer")
        )
        browser.get(f"{study_url}/trials?numbers=0")
        _wait_for(
            browser,
            lambda driver: "archsweep trial 0 (" in _body_text(driver),
            "the note of trial 0 is not on the trial page",
        )
        text = _body_text(browser)
        assert "best validation F1" in text
        assert re.search(r"epoch\s+train F1\s+validation F1\s+validation AUPRC", text)


def test_dashboard_trial_page_lists_weights(
    browser: WebDriver, dashboard_url: str, trained_group: TrainedGroup
) -> None:
    trials = trained_group.trials("transformer")
    kept = [trial for trial in trials if trial.user_attrs.get("weights_artifact_id")]
    assert len(kept) == 1
    weights_file = f"transformer-trial{kept[0].number}.safetensors"

    with _screenshot_on_failure(browser, "trial-weights"):
        study_url = _open_study_page(
            browser, dashboard_url, trained_group.study_name("transformer")
        )
        browser.get(f"{study_url}/trials?numbers={kept[0].number}")
        _wait_for(
            browser,
            lambda driver: weights_file in _body_text(driver),
            f"{weights_file} is not among the trial's artifacts",
        )


def test_report_figures_render_offline(
    browser: WebDriver, trained_group: TrainedGroup, tmp_path: Path
) -> None:
    path = tmp_path / "report.html"
    storage = open_storage(str(trained_group.storage_path), heartbeat_interval=0)
    report.write_report(storage, trained_group.group, path)

    browser.get(path.as_uri())

    with _screenshot_on_failure(browser, "report"):
        expected_titles = {
            "summary-f1-vs-parameters": f"{figures.TITLE_F1_VS_PARAMETERS}: all architectures"
        }
        for architecture in trained_group.architectures:
            expected_titles |= {
                f"arch-{architecture}-history": f"Optimisation history: {architecture}",
                f"arch-{architecture}-curves": f"{figures.TITLE_F1_CURVES}: {architecture}",
                f"arch-{architecture}-train-vs-val": f"{figures.TITLE_TRAIN_VS_VAL}: {architecture}",
                f"arch-{architecture}-f1-vs-parameters": (
                    f"{figures.TITLE_F1_VS_PARAMETERS}: {architecture}"
                ),
            }
        for element_id, title in expected_titles.items():
            _wait_for(
                browser,
                lambda driver, element_id=element_id: _plot_title(driver, element_id),
                f"figure {element_id} not rendered",
            )
            assert _plot_title(browser, element_id) == title

        resources = browser.execute_script(
            "return performance.getEntriesByType('resource').map(entry => entry.name)"
        )
        assert [name for name in resources if not name.startswith(("file:", "data:"))] == []
