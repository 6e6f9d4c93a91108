"""End to end in headless Chromium: the demo's "Add work" fills the task queue, the page and the dashboard show
the waiting count rise and burn down to zero, and the dashboard's retry button works with its CSRF token.

Debian's ``chromium`` and ``chromium-driver`` are installed with apt when missing. Where that fails the test
is skipped, saying why, except under CI, where it fails. Selenium drives ``/usr/bin/chromedriver`` and is never
allowed to download a browser or a driver of its own.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.demo import WORK_BATCH, create_app
from flask_queue.tasks import WorkerInfo
from tests.servers._live import waitress_in_thread

from .conftest import MakeSite, RedisServer, Site

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
#: Where the tests of the dashboard's own page leave their screenshots, to look at.
SCREENSHOTS = Path(os.environ.get("FLASK_QUEUE_SCREENSHOTS", "/tmp/flask-queue-screenshots"))


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


# -- the dashboard's own page: the chart, and a phone's width ---------------------------------------------------


@pytest.fixture
def served(make_site: MakeSite) -> Iterator[tuple[Site, str]]:
    """A site with jobs of every kind and a worker's heartbeat, served by waitress; its URL."""
    site = make_site()
    site.ok.enqueue_many([((n,), {}) for n in range(3)])
    site.boom.enqueue("disk full")
    site.tasks.drain()
    site.ok.enqueue(4, note="a longer argument to see how a call wraps on a narrow screen")
    site.ok.enqueue_in(3600, 5)
    now = time.time()
    site.tasks.backend().beat(
        WorkerInfo("web-1:4242:abcd", "web-1", 4242, None, 4, 1, 17, now - 60, now, 15.0)
    )
    with waitress_in_thread(site.app, wait=WAIT) as url:
        yield site, url


def first_update(browser: Any) -> None:
    wait_until(
        browser, "the page's first update", functools.partial(shows_text, element_id="live", text="live")
    )


def screenshot(browser: Any, name: str) -> Path:
    """Save the whole page, as tall as it is, at the window's width, as ``SCREENSHOTS / name``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    width, height = browser.execute_script(
        "return [window.innerWidth, document.documentElement.scrollHeight];"
    )
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 640},
    )
    browser.save_screenshot(str(path))
    return path


# The chart's data as the page's script computes it (a pure function of the samples it is given).
PLOT = "return window.FlaskQueueDashboard.plot(arguments[0], arguments[1], arguments[2], arguments[3], arguments[4]);"


def test_the_chart_plots_samples_at_their_own_times_and_keeps_the_peak(
    browser: Any, served: tuple[Site, str]
) -> None:
    _, url = served
    browser.get(url + "/queue/")
    first_update(browser)
    now = 10_000.0
    # What a page polled irregularly sees: a burst of 3,000 samples 10 ms apart (one of them the peak, 10),
    # then, in a background tab, one sample a minute, then again every 2 s; given out of order.
    burst = [{"t": now - 300 + i / 100, "queued": 10 if i == 1234 else 1} for i in range(3000)]
    sparse = [{"t": now - 200, "queued": 3}, {"t": now - 140, "queued": 0}]
    steady = [{"t": now - 10 + 2 * i, "queued": i} for i in range(6)]
    samples = steady + sparse + burst[::-1]
    result = browser.execute_script(PLOT, samples, ["queued"], now, 100, 11)
    assert result["top"] == 10
    assert result["span"] == 300
    runs = result["series"]["queued"]
    # A line only where samples are close; each run in time order, at the samples' own times.
    assert [(run[0][0], run[-1][0]) for run in runs] == [
        (now - 300, now - 300 + 2999 / 100),
        (now - 200, now - 200),
        (now - 140, now - 140),
        (now - 10, now),
    ]
    for run in runs:
        assert [t for t, _ in run] == sorted(t for t, _ in run)
    assert runs[3] == [[sample["t"], sample["queued"]] for sample in steady]
    # 3,000 samples over 10 pixels: a few points a pixel are drawn, and the peak is one of them.
    assert len(runs[0]) <= 4 * 100
    assert max(value for _, value in runs[0]) == 10
    assert [now - 300 + 1234 / 100, 10] in runs[0]


def test_the_page_draws_a_gap_where_no_sample_was_taken(browser: Any, served: tuple[Site, str]) -> None:
    _, url = served
    browser.get(url + "/queue/")
    first_update(browser)
    now = time.time()
    # The samples a background tab took (a burst, then one a minute), as the page keeps them.
    history = [{"t": now - 200 + i / 100, "queued": 10 if i == 500 else 1, "running": 0} for i in range(1000)]
    history += [{"t": now - 130, "queued": 1, "running": 0}, {"t": now - 70, "queued": 0, "running": 0}]
    browser.execute_script(
        "sessionStorage.setItem('flask-queue:history:/queue/', JSON.stringify(arguments[0]));", history
    )
    browser.refresh()
    first_update(browser)
    drawn = browser.execute_script(
        """
        const svg = document.querySelector("#chart svg");
        const lines = [...svg.querySelectorAll("polyline.c-queued")].map((line) =>
          line.getAttribute("points").split(" ").map((p) => p.split(",").map(Number)));
        const dots = [...svg.querySelectorAll("circle.c-queued")].map((c) => [Number(c.getAttribute("cx")),
          Number(c.getAttribute("cy"))]);
        const grid = [...svg.querySelectorAll("line.grid")].map((l) => Number(l.getAttribute("y1")));
        const labels = [...svg.querySelectorAll("text")].map((t) => t.textContent);
        return {lines, dots, grid, labels, width: Number(svg.getAttribute("width"))};
        """
    )
    assert "10" in drawn["labels"]
    assert [label for label in drawn["labels"] if re.fullmatch("\u221220[0-9] s", label)]  # from 200 s ago
    points = [point for line in drawn["lines"] for point in line] + drawn["dots"]
    # The peak is drawn at the top of the scale.
    assert min(y for _, y in points) == pytest.approx(min(drawn["grid"]), abs=0.2)
    # No line spans the minute between two background samples: 60 s of 200 s is over 50 pixels.
    pixels_per_second = (drawn["width"] - 40) / 200
    for line in drawn["lines"]:
        assert max(b[0] - a[0] for a, b in itertools.pairwise(line)) < 20 * pixels_per_second
    assert len(drawn["dots"]) >= 2  # the lone samples at -130 s and -70 s
    screenshot(browser, "dashboard-chart.png")


# Every piece of text on the page that is a label: a tile's, a column's, a badge, a chart key, a heading.
LABELS = ".tile .label, thead th:not(:has(.sr)), .badge, .legend .key, .card > header h2, .bar nav a, .live"

WRAPPED_LABELS = """
const wrapped = [];
for (const node of document.querySelectorAll(arguments[0])) {
  if (!node.getClientRects().length) continue;  // not shown at this width
  const style = getComputedStyle(node);
  const box = node.getBoundingClientRect();
  const inner = box.height - ["paddingTop", "paddingBottom", "borderTopWidth", "borderBottomWidth"]
    .reduce((sum, side) => sum + parseFloat(style[side]), 0);
  // Its text on one line: as tall as one line (the height of its content box) and in one row of boxes.
  const range = document.createRange();
  range.selectNodeContents(node);
  const rows = new Set([...range.getClientRects()].map((r) => Math.round(r.bottom)));
  if (inner > 1.5 * parseFloat(style.lineHeight) || rows.size > 1 || node.scrollWidth > node.clientWidth + 1) {
    wrapped.push(node.textContent.trim());
  }
}
return {wrapped, pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth};
"""


@pytest.mark.parametrize("width", [390, 360, 1280])
def test_no_label_wraps_at_a_phones_width(browser: Any, served: tuple[Site, str], width: int) -> None:
    _, url = served
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": width < 640},
    )
    browser.get(url + "/queue/")
    first_update(browser)
    screenshot(browser, f"dashboard-{width}.png")
    found = browser.execute_script(WRAPPED_LABELS, LABELS)
    assert found["viewport"] == width
    assert found["wrapped"] == []
    assert found["pageWidth"] <= width  # nothing sticks out sideways


def test_the_page_says_when_the_backend_stops_answering(
    browser: Any, make_site: MakeSite, private_redis: RedisServer
) -> None:
    from selenium.webdriver.common.by import By

    site = make_site(backend=private_redis.url, refresh=0.25)
    site.ok.enqueue(1)
    with waitress_in_thread(site.app, wait=WAIT) as url:
        browser.get(url + "/queue/")
        first_update(browser)
        banner = browser.find_element(By.ID, "tasks-down")
        assert not banner.is_displayed()
        assert text_of(browser, "tile-queued") == "1"
        private_redis.stop()
        # The next update says so, in place; the request lanes are still drawn.
        wait_until(browser, "the banner", lambda b: b.find_element(By.ID, "tasks-down").is_displayed())
        assert "The task backend is unavailable." in banner.text
        assert private_redis.url in banner.text
        assert text_of(browser, "tile-queued") == "\u2013"
        assert "Unavailable: the task backend does not answer." in text_of(browser, "recent")
        assert text_of(browser, "tile-requests") == "0"
        assert browser.find_elements(By.CSS_SELECTOR, "#lanes tbody th")
        assert text_of(browser, "live") == "live"
        screenshot(browser, "dashboard-backend-down.png")


def test_pause_and_run_a_schedule_from_the_browser(browser: Any, make_site: MakeSite) -> None:
    from selenium.webdriver.common.by import By

    site = make_site()
    site.tasks.periodic(every=3600, name="hourly")(site.ok)
    with waitress_in_thread(site.app, wait=WAIT) as url:
        browser.get(url + "/queue/")
        browser.find_element(By.LINK_TEXT, "Schedules").click()
        wait_until(browser, "the schedules page", lambda b: b.current_url.endswith("/queue/schedules"))
        assert "every 3600 s" in text_of(browser, "schedules")
        browser.find_element(By.XPATH, "//button[text()='Pause']").click()
        wait_until(
            browser, "the notice", lambda b: "is paused" in b.find_element(By.CSS_SELECTOR, ".notice").text
        )
        assert browser.find_elements(By.XPATH, "//button[text()='Resume']")
        assert site.tasks.schedule_states()[0]["paused"]
        browser.find_element(By.XPATH, "//button[text()='Run now']").click()
        wait_until(
            browser, "the notice", lambda b: "enqueued now" in b.find_element(By.CSS_SELECTOR, ".notice").text
        )
    assert site.tasks.drain() == 1
