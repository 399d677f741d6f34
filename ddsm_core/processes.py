"""The one way ddsm_core starts worker processes (the audit's per-patch pass, the CBIS-DDSM importer's
per-mammogram work), and the one way it asks whether a process still lives."""
from __future__ import annotations

import multiprocessing
import sys
import types
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def spawn_pool(workers: int):
    """A ProcessPoolExecutor of `workers` spawned processes, shut down (pending work cancelled) on exit.

    Spawned, not forked: the caller may hold threads (TensorFlow's, a test process's), which a forked child
    would inherit mid-lock. Spawned workers run the parent's __main__ script again before their work; after a
    Streamlit AppTest (or in a notebook) that script is a dashboard page, so the parent's __main__ is set
    aside while the pool lives: the workers need only the modules of the functions they are given.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)
        sys.modules["__main__"] = main


def pid_alive(pid) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as dead."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
