"""End to end in headless Chromium: the demo's "Add work" fills the task queue, the page and the dashboard show
the waiting count rise and burn down to zero, and the dashboard's retry button works with its CSRF token.

Debian's ``chromium`` and ``chromium-driver`` are installed with apt when missing. Where that fails the test
is skipped, saying why, except under CI, where it fails. Selenium drives ``/usr/bin/chromedriver`` and is never
allowed to download a browser or a driver of its own.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.demo import WORK_BATCH, create_app
from tests.servers._live import waitress_in_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
#: How long the test waits for the page to show what it expects (it refreshes every second or less).
WAIT = 30.0
INSTALL_TIMEOUT = 900


def _install_chromium() -> str | None:
    """Install Debian's chromium and its driver if either is missing; the reason it failed, or ``None``."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    if shutil.which("apt-get") is None:
        return "no apt-get here to install Debian's chromium and chromium-driver"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    output = ""
    for commands in ([install], [["apt-get", "update"], install]):  # a stale package list: update, try again
        try:
            for command in commands:
                done = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
                )
                output = done.stdout[-2000:] + done.stderr[-2000:]
        except (OSError, subprocess.TimeoutExpired) as error:
            output = str(error)
        if CHROMIUM.exists() and CHROMEDRIVER.exists():
            return None
    return f"apt-get could not install chromium and chromium-driver:\n{output}"


@pytest.fixture(scope="session")
def chromium() -> None:
    reason = _install_chromium()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def browser(chromium: None, tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


def text_of(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    text: str = browser.find_element(By.ID, element_id).text
    return text


def shows_text(browser: Any, element_id: str, text: str) -> bool:
    return text_of(browser, element_id) == text


def wait_until(browser: Any, what: str, condition: Callable[[Any], bool]) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT, poll_frequency=0.05).until(condition, f"waited {WAIT} s for {what}")


def test_add_work_rises_then_burns_down_to_zero(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    started = threading.Semaphore(0)
    go_on = threading.Event()

    def hold(number: int) -> None:
        # Jobs wait here until the test has seen the queue grow: its rise does not depend on timing.
        started.release()
        if not go_on.wait(WAIT * 2):
            raise RuntimeError("the test never let the jobs run")

    app = create_app(task_backend=f"sqlite:///{tmp_path / 'jobs.sqlite3'}", task_workers=1, task_work=hold)
    tasks = app.extensions["flask-queue.tasks"].extension
    try:
        with waitress_in_thread(app, wait=WAIT) as url:
            browser.get(url + "/")
            wait_until(browser, "the page's first update", lambda b: text_of(b, "tasks-queued") == "0")
            seen = []
            for clicks in range(1, 4):
                browser.find_element(By.ID, "add-work").click()
                # One job runs (held), the rest of the batches wait.
                expected = str(clicks * WORK_BATCH - 1)
                if clicks == 1:
                    assert started.acquire(timeout=WAIT)
                shows = functools.partial(shows_text, element_id="tasks-queued", text=expected)
                wait_until(browser, f"{expected} waiting", shows)
                seen.append(int(text_of(browser, "tasks-queued")))
            assert seen == [4, 9, 14]
            assert text_of(browser, "tasks-running") == "1"

            browser.get(url + "/queue/")
            wait_until(browser, "the dashboard's figures", lambda b: text_of(b, "tile-queued") == "14")
            assert text_of(browser, "tile-running") == "1"
            go_on.set()
            wait_until(
                browser,
                "the queue to burn down",
                lambda b: (text_of(b, "tile-queued"), text_of(b, "tile-running")) == ("0", "0"),
            )
            assert "tasks waiting 0" in text_of(browser, "legend")
            assert browser.find_elements(By.CSS_SELECTOR, "#chart svg polyline.c-queued")
            browser.save_screenshot(str(tmp_path / "dashboard.png"))

            browser.get(url + "/")
            wait_until(browser, "the page to show zero", lambda b: text_of(b, "tasks-succeeded") == "15")
            assert text_of(browser, "tasks-queued") == "0"
            browser.save_screenshot(str(tmp_path / "demo.png"))
    finally:
        go_on.set()
        tasks.shutdown(app=app)
        tasks.backend(app).close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_retry_from_the_dashboard(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    app = create_app(task_backend=f"sqlite:///{tmp_path / 'jobs.sqlite3'}", task_workers=0)
    tasks = app.extensions["flask-queue.tasks"].extension
    try:
        with app.test_client().post("/api/work", json={"fail": True}) as response:
            (job_id,) = response.get_json()["jobs"]
        assert tasks.drain(app) == 1
        with waitress_in_thread(app, wait=WAIT) as url:
            browser.get(url + "/queue/")
            # After its first update the page redraws a table only when its jobs change.
            wait_until(
                browser, "the first update", functools.partial(shows_text, element_id="live", text="live")
            )
            button = browser.find_element(By.CSS_SELECTOR, "#failed button.act")
            # The markup in the job's argument and error is text on the page, not elements.
            assert not browser.find_elements(By.CSS_SELECTOR, "#failed b")
            assert "(<b>not bold</b>)" in text_of(browser, "failed")
            button.click()
            wait_until(
                browser,
                "the job's page",
                lambda b: b.current_url.endswith(f"/queue/jobs/{job_id}?done=retried"),
            )
            assert "Queued again" in browser.find_element(By.CSS_SELECTOR, ".notice").text
        assert str(tasks.status(job_id)) == "queued"
    finally:
        tasks.shutdown(app=app)
        tasks.backend(app).close()
