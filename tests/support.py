"""Helpers shared by the tests: synthetic sources, the CLI as a subprocess, workspace snapshots."""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def cli_env(**extra) -> dict:
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("DDSM_WORKSPACE", None)
    return env | {k: str(v) for k, v in extra.items()}


def cli(*args, env=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """Run `python -m ddsm_core ARGS` and return the finished process (text output)."""
    result = subprocess.run([sys.executable, "-m", "ddsm_core", *map(str, args)], capture_output=True,
                            text=True, env=env or cli_env(), timeout=timeout, cwd=PROJECT)
    if check and result.returncode != 0:
        raise AssertionError(f"ddsm_core {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def start_cli(*args, env=None, log=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ddsm_core", *map(str, args)], env=env or cli_env(),
                            stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=PROJECT)


def errors(result: subprocess.CompletedProcess) -> list[str]:
    """The `error: ...` lines the CLI printed."""
    return [line[len("error: "):] for line in result.stderr.splitlines() if line.startswith("error: ")]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root with a hash of its bytes: equal snapshots mean nothing changed."""
    root = Path(root)
    if not root.exists():
        return {}
    result = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        result[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return result


def edit_csv(path, edit) -> None:
    """Rewrite a source CSV through edit(frame), every cell kept as the text it was (empty stays empty)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)


def seed_csv_args(name: str, source: Path, workspace: Path) -> list[str]:
    return ["import", "seed-csv", "--workspace", workspace, "--name", name,
            "--train-csv", source / "train.csv", "--train-images", source / "train_images",
            "--test-csv", source / "test.csv", "--test-images", source / "test_images"]


def copy_workspace(source: Path, target: Path, run_id: str) -> None:
    """A private copy of a workspace, without the lock files its processes held."""
    from ddsm_core import runs

    locks = runs.lock_file(source, run_id).name, runs.dispatch_lock_file(source).name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*locks))


APP = str(PROJECT / "streamlit_app.py")


def assert_clean(at) -> None:
    """An AppTest run showed no exception."""
    assert not at.exception, [e.value for e in at.exception]


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def plotly_values(values) -> list:
    """A trace's x or y from a chart spec as a list: plotly sends numeric arrays as typed base64 ("bdata")."""
    if isinstance(values, dict) and "bdata" in values:
        import numpy as np
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)
