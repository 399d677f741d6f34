"""The demo at a reduced size: six completed, evaluated runs; a second demo does nothing; a killed demo resumes."""
import os
import signal
import time

import pytest

from ddsm_core import demo, processes, runs
from ddsm_core.tasks import TASKS
from support import cli, start_cli

pytestmark = pytest.mark.slow

SMALL = ["--n-train", 300, "--n-test", 100, "--image-size", 32, "--epochs", 2]


def kill_running_workers(root):
    for run_id in runs.list_ids(root):
        pid = runs.read_status(root, run_id).get("pid")
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_demo_builds_six_evaluated_runs_and_resumes_after_a_kill(tmp_path):
    root = tmp_path / "ws"
    process = start_cli("demo", "--workspace", root, *SMALL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not demo._evaluated(root, 0):
            time.sleep(0.2)
        assert demo._evaluated(root, 0), "the first demo run did not finish"
    finally:
        process.kill()  # the demo, and the training under it, die as in a power cut
        process.wait()
        kill_running_workers(root)
    first_finished = runs.read_status(root, demo.run_id_for(0))["finished"]
    assert not demo.is_complete(root)

    result = cli("demo", "--workspace", root, *SMALL, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for task_id in TASKS:
        run_id = demo.run_id_for(task_id)
        assert runs.effective_state(root, run_id) == "completed"
        assert runs.predictions_file(root, run_id, "test").is_file()
        assert runs.metrics_file(root, run_id, "test").is_file()
        assert runs.read_config(root, run_id)["task"] == task_id
    assert runs.read_status(root, demo.run_id_for(0))["finished"] == first_finished, "finished runs are not redone"
    assert "AUC" in result.stdout and all(TASKS[t].name in result.stdout for t in TASKS), "summary table"

    again = cli("demo", "--workspace", root, check=True)
    assert "is complete (six evaluated runs); nothing to do" in again.stdout


def test_demo_if_empty_leaves_a_workspace_with_data_alone(tmp_path):
    (tmp_path / "ws" / "datasets" / "mine").mkdir(parents=True)
    (tmp_path / "ws" / "datasets" / "mine" / "dataset.json").write_text("{}")
    result = cli("demo", "--workspace", tmp_path / "ws", "--if-empty", check=True)
    assert "already has data; not building the demo" in result.stdout
    assert not (tmp_path / "ws" / "runs").exists()
