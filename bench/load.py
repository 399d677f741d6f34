"""Load: many dashboard sessions at once on a run with 15,364 test predictions, through a real server and
real headless Chromium tabs.

    python bench/load.py [--sessions 10] [--pages 4] [--opens 2] [--keep DIR] [--no-write]

Builds (or reuses, with --keep) the workspace of bench/page_render.py: a synthetic dataset with 15,364 test
patches and one trained, evaluated small_cnn run. Starts `streamlit run` on 127.0.0.1 and, in one Chromium,
opens first one session, then --sessions sessions at once (one browser context each, driven concurrently).
Each session loads the Gallery, pages through "Browse and filter" (--pages pages of 20 patches) and opens
--opens patches in the detail dialog. An action's time runs from the input to the new content on screen
(the first tile's caption changed, the dialog drawn). The server's resident memory is sampled every 0.1 s.

Prints a table (p50 and p95 action time, server peak memory, 1 session beside N) and writes the "Load" section
of docs/PERFORMANCE.md. Browser and server share the machine's cores, so the times include the browsers' own
work: an upper bound for a server with remote users.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "bench"))

from page_render import build_workspace, machine  # noqa: E402
from report import add_no_write, command_line, write_section  # noqa: E402

SECTION = "## Load: many dashboard sessions at once"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 180_000
FIRST_CAPTION = """() => {  // the first tile's caption in the visible tab
    const panel = [...document.querySelectorAll('[role="tabpanel"]')].find(p => !p.hidden && p.offsetParent !== null);
    const caption = panel && panel.querySelector('[data-testid="stImage"] div');
    return caption ? caption.innerText : ""; }"""


class Server:
    """`streamlit run` on 127.0.0.1 with its memory sampled in a thread."""

    def __init__(self, root: Path, port: int = 8611):
        self.url = f"http://127.0.0.1:{port}"
        env = os.environ | {"DDSM_WORKSPACE": str(root)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
             "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.peak_kib, self._stop = 0, threading.Event()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        else:
            self.process.kill()
            raise RuntimeError(f"the dashboard did not answer on {self.url}/_stcore/health within 60 s")
        threading.Thread(target=self._sample, daemon=True).start()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.rss_kib())
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> None:
        self.peak_kib = self.rss_kib()

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        self.process.wait(20)


async def settled(page) -> None:
    """The script run is over: Streamlit's 'Running' status widget is gone."""
    await page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                 timeout=TIMEOUT_MS)


async def session(browser, url: str, run_id: str, pages: int, opens: int, times: dict) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        started = time.perf_counter()
        await page.goto(f"{url}/gallery?run={run_id}")
        await page.get_by_role("heading", name="Gallery", exact=True).wait_for(state="visible")
        await page.locator('[data-testid="stImage"] img').first.wait_for(state="visible")
        await settled(page)
        times["load gallery"].append(time.perf_counter() - started)
        await page.get_by_role("tab", name="Browse and filter").click()
        number = page.get_by_label("Page (of", exact=False)
        for target in range(2, pages + 2):
            before = await page.evaluate(FIRST_CAPTION)
            started = time.perf_counter()
            await number.fill(str(target))
            await number.press("Enter")
            await page.wait_for_function(f"() => ({FIRST_CAPTION})() !== {before!r} && ({FIRST_CAPTION})() !== ''",
                                         timeout=TIMEOUT_MS)
            times["next gallery page"].append(time.perf_counter() - started)
            await settled(page)
        panel = page.locator('[role="tabpanel"]:visible')
        for index in range(opens):
            started = time.perf_counter()
            # the tiles' Open buttons (a select box's toggle is also a button named "Open")
            await panel.locator('[data-testid="stButton"]').get_by_role("button", name="Open", exact=True).nth(index).click()
            dialog = page.get_by_role("dialog")
            await dialog.locator('[data-testid="stImage"] img').first.wait_for(state="visible")
            times["open patch"].append(time.perf_counter() - started)
            await settled(page)
            await page.keyboard.press("Escape")
            await dialog.wait_for(state="hidden")
            await settled(page)
    finally:
        await context.close()


async def phase(server: Server, run_id: str, sessions: int, pages: int, opens: int) -> dict:
    from playwright.async_api import async_playwright

    times = {"load gallery": [], "next gallery page": [], "open patch": []}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        server.reset_peak()
        started, cpu = time.perf_counter(), server.cpu_seconds()
        await asyncio.gather(*(session(browser, server.url, run_id, pages, opens, times) for _ in range(sessions)))
        wall, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu
        await browser.close()
    return {"times": times, "peak_mib": server.peak_kib / 1024, "wall": wall, "server_cpu": cpu}


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def table(one: dict, many: dict, sessions: int, baseline_mib: float) -> list[str]:
    lines = [f"| action | 1 session: p50 / p95 (s) | {sessions} sessions: p50 / p95 (s) | p95 ratio |",
             "|---|---|---|---|"]
    for action, values in one["times"].items():
        crowd = many["times"][action]
        lines.append(f"| {action} (n = {len(values)} / {len(crowd)}) | {statistics.median(values):.2f} / "
                     f"{p95(values):.2f} | {statistics.median(crowd):.2f} / {p95(crowd):.2f} | "
                     f"{p95(crowd) / p95(values):.1f}x |")
    per_session = (many["peak_mib"] - one["peak_mib"]) / max(sessions - 1, 1)
    lines += ["", "| server memory | 1 session | " + f"{sessions} sessions |", "|---|---|---|",
              f"| resident before the sessions (caches warm) | {baseline_mib:.0f} MiB | |",
              f"| peak while the sessions ran | {one['peak_mib']:.0f} MiB | {many['peak_mib']:.0f} MiB |",
              f"| each session beyond the first | | {per_session:.1f} MiB |",
              f"| wall time of the phase | {one['wall']:.1f} s | {many['wall']:.1f} s |",
              f"| server CPU time in the phase (user + system) | {one['server_cpu']:.1f} s | "
              f"{many['server_cpu']:.1f} s ({many['server_cpu'] / max(one['server_cpu'], 1e-9):.1f}x for "
              f"{sessions}x the work) |"]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--opens", type=int, default=2)
    parser.add_argument("--test-patches", type=int, default=15364)
    parser.add_argument("--keep", type=Path, help="build the workspace here (or reuse it) and keep it")
    add_no_write(parser)
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="ddsm-load-"))
    marker = base / "run_id.txt"
    if marker.exists():
        root, run_id = base / "workspace", marker.read_text().strip()
    else:
        root, run_id = build_workspace(base, args.test_patches, 600)
        marker.write_text(run_id)
    load_before = os.getloadavg()[0]
    server = Server(root)
    try:
        asyncio.run(phase(server, run_id, 1, 1, 1))  # warm-up: the shared caches are filled once
        baseline = server.rss_kib() / 1024
        one = asyncio.run(phase(server, run_id, 1, args.pages, args.opens))
        many = asyncio.run(phase(server, run_id, args.sessions, args.pages, args.opens))
    finally:
        server.stop()
    flags = {f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "amx_tile", "avx512_bf16")}
    lines = [SECTION, "",
             f"Measured by `{command}` on {machine()}; CPU flags {' '.join(sorted(flags))}; load average "
             f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end. One `streamlit run` server, "
             f"a run with {args.test_patches:,} test predictions; each session loads the Gallery, pages "
             f"{args.pages} times through 20-patch pages and opens {args.opens} patches in the detail dialog. "
             "Times are from the input to the new content on screen, in headless Chromium on the same 2 cores "
             "as the server (so they include the browsers' own work).", "",
             *table(one, many, args.sessions, baseline), "",
             "Caches are shared across sessions: a run's results (predictions and metrics) and the dataset "
             "manifest sit in `st.cache_resource` (one copy per server, dashboard/cache.py); patches are decoded "
             "per draw (a few ms each). A session adds only its widget state and the page it is drawing."]
    print("\n".join(lines))
    if not args.no_write:
        write_section("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
