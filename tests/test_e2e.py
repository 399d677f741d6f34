"""End to end: the real dashboard (`streamlit run streamlit_app.py`) in a real headless Chromium (Playwright).

One server per module on a private copy of the trained workspace (conftest's
`trained_workspace`: two evaluated small_cnn runs on a small synthetic set):
every page renders without an exception and is screenshotted to
test-output/screenshots/<page>.png, a confusion-matrix cell picked by a real
click on the chart opens exactly its patches, and a retrain started from the
sidebar shows its progress and finishes. A second, fresh server checks the
first visit to a non-default page URL (see test_first_visit_...).

Slow (about a minute): `pytest -m slow tests/test_e2e.py`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from support import PROJECT, copy_workspace

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SCREENSHOTS = PROJECT / "test-output" / "screenshots"
# url path -> the page's title: Runs is streamlit_app.py, served at "/"; the others are pages/<path>.py
PAGES = {"": "Runs", "training_curves": "Training curves", "confusion_matrix": "Confusion matrix",
         "certainty": "Certainty", "gallery": "Gallery", "review": "Review", "compare": "Compare", "data": "Data"}
APP_TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


# ---------------------------------------------------------------- the server and the browser

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m streamlit run streamlit_app.py` on a free port, on a given workspace."""

    def __init__(self, workspace: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"DDSM_WORKSPACE": str(workspace), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
             "--server.port", str(self.port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=PROJECT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the streamlit server exited with {self.process.returncode}: "
                                     f"{Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"the streamlit server did not answer /_stcore/health within {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def e2e_workspace(trained_workspace, tmp_path_factory):
    """A private copy of the trained workspace (the retrain adds a run to it)."""
    root = tmp_path_factory.mktemp("e2e") / "workspace"
    copy_workspace(trained_workspace.root, root, trained_workspace.run_t0)
    return replace(trained_workspace, root=root)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(e2e_workspace, browser, tmp_path_factory):
    """The dashboard server, with one visit to its main URL to know it serves the app."""
    running = Server(e2e_workspace.root, tmp_path_factory.mktemp("e2e-log") / "streamlit.log")
    context = browser.new_context()
    try:
        warm = context.new_page()
        warm.goto(running.url + "/")
        warm.get_by_role("heading", name="Runs", exact=True).wait_for(state="visible", timeout=APP_TIMEOUT_MS)
    except Exception:
        running.stop()
        raise
    finally:
        context.close()
    yield running
    running.stop()
    _stop_jobs(e2e_workspace.root)


def _stop_jobs(root: Path, timeout: float = 60) -> None:
    """Cancel every training job still running or queued in the workspace and wait for its process to end."""
    from ddsm_core import jobs, runs
    from ddsm_core.errors import UserError

    for run_id in jobs.queued_ids(root) + jobs.running_ids(root):
        with contextlib.suppress(UserError):
            jobs.cancel(root, run_id)
    deadline = time.monotonic() + timeout
    while jobs.running_ids(root) and time.monotonic() < deadline:
        time.sleep(0.5)
    for run_id in jobs.running_ids(root):  # did not stop on SIGTERM: do not leave it behind
        pid = runs.read_status(root, run_id).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(APP_TIMEOUT_MS)
    yield tab
    context.close()


# ---------------------------------------------------------------- waiting and checking

def wait_for_app(page, title: str | None = None, settle: float = 0.5) -> None:
    """Wait until the script run is over: the title (when given) is visible and the 'Running' widget has gone
    (it must stay gone for `settle` seconds, as a fragment may start right after the main run)."""
    if title:
        page.get_by_role("heading", name=title, exact=True).first.wait_for(state="visible")
    status = page.locator('[data-testid="stStatusWidget"]')
    deadline = time.monotonic() + APP_TIMEOUT_MS / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        running = status.count() > 0 and "Running" in (status.first.inner_text() or "")
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return
        time.sleep(0.1)
    raise AssertionError(f"the app was still running after {APP_TIMEOUT_MS / 1000:.0f} s on {page.url}")


def assert_healthy(page, where: str) -> None:
    """No exception box, no 'Page not found' dialog, no error alert on the page."""
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{where}: exception shown: {exceptions.first.inner_text()[:1500]}"
    body = page.inner_text("body")
    assert "Page not found" not in body, f"{where}: 'Page not found' shown"
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{where}: error alert: {errors.first.inner_text()[:500]}"


def sidebar_nav_entries(page) -> list[str]:
    """The app's own navigation: the page links at the top of the sidebar, by title."""
    links = page.locator('[data-testid="stSidebar"] [data-testid="stPageLink-NavLink"]')
    # the sidebar can paint up to a few seconds after the main area's title on a loaded machine
    page.wait_for_function("n => document.querySelectorAll("
                           "'[data-testid=\"stSidebar\"] [data-testid=\"stPageLink-NavLink\"]').length >= n",
                           arg=len(PAGES), timeout=APP_TIMEOUT_MS)
    # each link's text is its material icon's name, then its title: keep the title
    return [text.strip().splitlines()[-1] for text in links.all_inner_texts()]


def streamlit_page_list(page) -> list[str]:
    """Streamlit's automatic page list (named after the files): must never be shown."""
    return page.locator('[data-testid="stSidebarNav"]').all_inner_texts()


def screenshot(page, name: str) -> None:
    """Full-page screenshot once every patch image has loaded and every table has drawn its rows."""
    page.wait_for_function("""() => {
        // not inside a collapsed expander or a hidden tab
        const shown = e => e.offsetParent !== null && !e.closest('details:not([open])');
        return [...document.querySelectorAll('[data-testid="stImage"] img')].filter(shown)
                   .every(i => i.complete && i.naturalWidth > 0)
            && [...document.querySelectorAll('[data-testid="stDataFrame"]')].filter(shown)
                   .every(d => d.querySelectorAll('[role="row"]').length > 1
                               && d.getBoundingClientRect().height > 60); }""", timeout=15_000)
    page.wait_for_timeout(300)  # the tables' canvas paints after their layout
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def confusion_counts(root: Path, run_id: str) -> tuple[list[str], list[list[int]]]:
    from ddsm_core import runs
    from ddsm_core.tasks import get_task

    metrics = json.loads(runs.metrics_file(root, run_id, "test").read_text())
    return list(get_task(runs.read_config(root, run_id)["task"]).class_names), metrics["confusion_matrix"]


# ---------------------------------------------------------------- the tests

def test_first_visit_to_a_page_url_on_a_fresh_server(trained_workspace, browser, page, tmp_path):
    """The first browser visit after a server start, straight to /training_curves, shows that page with the
    app's own navigation from its first paint: never Streamlit's automatic page list, never 'Page not found'.
    Then every page URL, each in a new browser session on the same server, opens its own page."""
    fresh = Server(trained_workspace.root, tmp_path / "streamlit.log")
    try:
        page.goto(f"{fresh.url}/training_curves")
        automatic, not_found = watch_first_run(page, "Training curves")
        screenshot(page, "first_visit_curves")
        assert not automatic, f"Streamlit's own page list was shown: {automatic}"
        assert not not_found, "the first visit to /training_curves showed 'Page not found'"
        assert urllib.parse.urlparse(page.url).path == "/training_curves"
        assert sidebar_nav_entries(page) == list(PAGES.values())
        assert_healthy(page, "first visit /training_curves")
        for path, title in PAGES.items():
            context = browser.new_context()
            try:
                visit = context.new_page()
                visit.set_default_timeout(APP_TIMEOUT_MS)
                visit.goto(f"{fresh.url}/{path}")
                automatic, not_found = watch_first_run(visit, title)
                assert not automatic and not not_found, f"/{path}: {automatic or 'Page not found'}"
                assert urllib.parse.urlparse(visit.url).path == f"/{path}"
                assert_healthy(visit, f"first visit /{path}")
            finally:
                context.close()
    finally:
        fresh.stop()


def watch_first_run(page, title: str, timeout: float = 30) -> tuple[list[str], bool]:
    """Watch a page from its first paint until its title shows: Streamlit's automatic page list (if it ever
    appeared) and whether 'Page not found' ever appeared."""
    automatic, not_found = [], False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        automatic += streamlit_page_list(page)
        not_found = not_found or page.get_by_text("Page not found").count() > 0
        if page.get_by_role("heading", name=title, exact=True).count():
            break
        time.sleep(0.05)
    wait_for_app(page, title)
    automatic += streamlit_page_list(page)
    return automatic, not_found or page.get_by_text("Page not found").count() > 0


def test_every_page_renders_without_errors(server, e2e_workspace, page):
    run_t0 = e2e_workspace.run_t0
    for path, title in PAGES.items():
        page.goto(f"{server.url}/{path}?run={run_t0}")
        wait_for_app(page, title)
        assert_healthy(page, f"/{path}")
        assert sidebar_nav_entries(page) == list(PAGES.values()), f"/{path}: sidebar navigation"
        assert page.get_by_text(f"Workspace: {e2e_workspace.root}").count() == 1
        screenshot(page, path or "runs")
    # the content each page is about, beyond its title
    page.goto(f"{server.url}/?run={run_t0}")
    wait_for_app(page, "Runs")
    rows = page.locator('[data-testid="stDataFrame"]').first.locator('[role="row"]')
    page.wait_for_function("n => (document.querySelector('[data-testid=\"stDataFrame\"]')"  # null until it paints
                           "?.querySelectorAll('[role=\"row\"]').length || 0) >= n", arg=1 + len(e2e_workspace.run_ids))
    assert rows.count() == 1 + len(e2e_workspace.run_ids)  # header + one row per run
    page.goto(f"{server.url}/training_curves?run={run_t0}")
    wait_for_app(page, "Training curves")
    assert page.get_by_text(f"Run {run_t0}: 2 epoch(s)").count() == 1
    charts = page.locator('[data-testid="stPlotlyChart"]')
    charts.nth(1).wait_for(state="visible")  # charts may attach after the script run ends
    assert charts.count() == 2


def test_clicking_a_confusion_cell_opens_its_patches(server, e2e_workspace, page):
    root, run_t0 = e2e_workspace.root, e2e_workspace.run_t0
    names, counts = confusion_counts(root, run_t0)
    k = len(names)
    page.goto(f"{server.url}/confusion_matrix?run={run_t0}")
    wait_for_app(page, "Confusion matrix")
    heading = page.locator("h3").filter(has_text=re.compile(r"^True .+, predicted .+: \d+ patch\(es\)"))
    before = heading.first.inner_text()
    # a cell that is not the one shown by default (the worst off-diagonal cell): the largest diagonal cell
    i = max(range(k), key=lambda c: counts[c][c])
    j = i
    assert f"True {names[i]}, predicted {names[j]}:" not in before, "pick a cell other than the default"
    points = page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace .points path.point')
    points.first.wait_for(state="visible")
    assert points.count() == k * k
    points.nth(i * k + j).click(force=True)  # cells are drawn row by row: true i, predicted j
    expected = f"True {names[i]}, predicted {names[j]}: {counts[i][j]} patch(es), most confident first"
    page.get_by_role("heading", name=expected, exact=True).wait_for(state="visible")
    wait_for_app(page, "Confusion matrix")
    assert_healthy(page, "/confusion_matrix after the click")
    images = page.locator('[data-testid="stImage"]')
    assert images.count() == min(counts[i][j], 15)  # the first page of 15 tiles
    screenshot(page, "confusion_cell")


def test_retrain_from_the_sidebar_shows_progress_and_finishes(server, e2e_workspace, page):
    from ddsm_core import jobs, runs

    root = e2e_workspace.root
    before = set(runs.list_ids(root))
    page.goto(f"{server.url}/training_curves?run={e2e_workspace.run_t0}")
    wait_for_app(page, "Training curves")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("New training run").click()
    for label, value in (("Epochs", "1"), ("Image size (pixels)", "32")):
        box = sidebar.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Tab")
    sidebar.get_by_role("button", name="Start").click()
    started = sidebar.get_by_text(re.compile(r"^Started run \S+\.$"))
    started.wait_for(state="visible")
    run_id = started.inner_text().removeprefix("Started run ").removesuffix(".")
    assert set(runs.list_ids(root)) - before == {run_id}
    config = runs.read_config(root, run_id)
    assert (config["epochs"], config["image_size"]) == (1, 32)
    # the job panel (a fragment polling every 2 s) shows the new run with a progress bar and its state
    sidebar.get_by_text(f"Job {run_id}").wait_for(state="visible")
    progress = sidebar.locator('[data-testid="stProgress"]')
    progress.first.wait_for(state="visible")
    assert re.search(r"(queued|running|completed): epoch \d/1", progress.first.inner_text())
    try:
        # the panel keeps polling through the evaluation and ends on "completed and evaluated"
        sidebar.get_by_text(f"Run {run_id} completed and evaluated.").wait_for(state="visible", timeout=180_000)
    except Exception:
        screenshot(page, "retrain_failed")
        raise
    finally:
        if runs.effective_state(root, run_id) in ("running", "queued"):
            jobs.cancel(root, run_id)
    assert runs.effective_state(root, run_id) == "completed"
    assert runs.read_status(root, run_id)["evaluation"] == "done"
    assert runs.metrics_file(root, run_id, "test").exists()
    # the finished run appears in the run picker without a restart
    sidebar.get_by_role("link", name="Confusion matrix").click()
    wait_for_app(page, "Confusion matrix")
    page.locator('[data-testid="stSidebar"]').get_by_text(run_id).first.wait_for(state="attached")
    assert_healthy(page, "after the retrain")
    screenshot(page, "retrain_done")


def test_review_records_verdicts_by_click_and_by_keyboard_shortcut(server, e2e_workspace, page, tmp_path):
    """On the Review page: the reviewer's name once, a verdict by a real click on Agree, another by pressing
    4 (relabel to malignant mass); `review export` then holds both, under that name. Then the next patch's
    Grad-CAM, computed by a background process, appears by itself (the page polls until it is cached)."""
    import pandas as pd

    from support import cli

    root, run_t0 = e2e_workspace.root, e2e_workspace.run_t0
    page.goto(f"{server.url}/review?run={run_t0}")
    wait_for_app(page, "Review")
    assert_healthy(page, "/review")
    shown = page.locator('[data-testid="stMain"] h3').first  # the patch's file name heads the detail
    agree = page.get_by_role("button", name=re.compile(r"^Agree"))
    assert agree.is_disabled()  # no reviewer yet
    name = page.locator('[data-testid="stSidebar"]').get_by_label("Reviewer (your name)", exact=True)
    name.fill("Dr. Playwright")
    name.press("Enter")
    page.get_by_text("Recording as Dr. Playwright.").wait_for(state="visible")
    wait_for_app(page, "Review")
    first = shown.inner_text().strip()
    agree.click()  # a real click
    page.wait_for_function("([selector, before]) => { const h = document.querySelector(selector); "
                           "return h && h.innerText.trim() !== before; }",
                           arg=['[data-testid="stMain"] h3', first])
    wait_for_app(page, "Review")
    second = shown.inner_text().strip()
    page.get_by_role("heading", name="Review", exact=True).click()  # focus outside any text field
    page.keyboard.press("4")  # the shortcut of "relabel to 4, malignant mass"
    page.wait_for_function("([selector, before]) => { const h = document.querySelector(selector); "
                           "return h && h.innerText.trim() !== before; }",
                           arg=['[data-testid="stMain"] h3', second])
    wait_for_app(page, "Review")
    assert_healthy(page, "/review after two verdicts")
    screenshot(page, "review")
    out = tmp_path / "verdicts.csv"
    cli("review", "export", "--workspace", root, "--dataset", "synth", "--out", out, check=True)
    exported = pd.read_csv(out).set_index("filename")
    assert (exported.loc[first, "verdict"], exported.loc[first, "reviewer"]) == ("agree", "Dr. Playwright")
    assert (exported.loc[second, "verdict"], exported.loc[second, "new_label"]) == ("relabel", 4)
    assert exported.loc[second, "reviewer"] == "Dr. Playwright"
    page.get_by_role("button", name=re.compile(r"Compute Grad-CAM")).click()
    try:
        page.get_by_text(re.compile(r"^predicted class: ")).first.wait_for(state="visible", timeout=180_000)
    except Exception:
        screenshot(page, "review_gradcam_failed")
        raise
    assert page.get_by_text(re.compile(r"^true class: ")).count() == 1
    assert_healthy(page, "/review with Grad-CAM")


def test_data_page_runs_the_audit_in_the_background_and_shows_its_findings(server, e2e_workspace, page):
    """A click on the Data page starts the audit as a background process; the page polls its progress and draws
    the findings (near-duplicates, shortcut probe) when it ends, without a reload."""
    from ddsm_core import audit

    root, run_t0 = e2e_workspace.root, e2e_workspace.run_t0
    page.goto(f"{server.url}/data?run={run_t0}")
    wait_for_app(page, "Data")
    page.get_by_text("This dataset has not been audited yet.").wait_for(state="visible")
    page.get_by_role("button", name="Run the audit").click()
    try:
        page.get_by_role("heading", name="Shortcut probe").wait_for(state="visible", timeout=300_000)
    except Exception:
        screenshot(page, "audit_failed")
        raise
    state = audit.job_state(root, "synth")
    assert state["state"] == "completed", state
    stored = audit.load(root, "synth", run_t0)
    assert stored is not None and not stored["stale"]
    page.get_by_role("heading", name="Near-duplicates").wait_for(state="visible")
    pairs = page.get_by_test_id("stMetric").filter(has_text="Pairs")
    assert pairs.first.inner_text().split()[-1] == str(stored["summary"]["pairs"])
    wait_for_app(page, "Data")
    assert_healthy(page, "/data after the audit")
    screenshot(page, "data_audit")
