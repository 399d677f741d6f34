"""Training runs: the CLI contract, settings checks, kill -9 and SIGTERM with resume, jobs, strategies."""
import json
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from ddsm_core import jobs, processes, runs, synth
from ddsm_core.config import RunConfig
from ddsm_core.data.seed_csv import import_seed_csv
from ddsm_core.runs import create_run
from ddsm_core.tasks import TASKS
from ddsm_core.training import train_run
from support import PROJECT, cli, cli_env, errors, snapshot, start_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A workspace with a synthetic dataset `s` and a copy `no_mm` without malignant masses."""
    root = tmp_path_factory.mktemp("ws")
    source = tmp_path_factory.mktemp("src")
    synth.write_seed_csv(source, n_train=200, n_test=60, size=48, seed=2)
    import_seed_csv(root, "s", source / "train.csv", source / "train_images", source / "test.csv",
                    source / "test_images")
    for split in ("train", "test"):
        frame = pd.read_csv(source / f"{split}.csv")
        frame[frame["y"] != 4].to_csv(source / f"{split}_no_mm.csv", index=False)
    import_seed_csv(root, "no_mm", source / "train_no_mm.csv", source / "train_images",
                    source / "test_no_mm.csv", source / "test_images")
    return root


def train_args(root, *extra, epochs=3, size=64):
    return ["train", "--workspace", root, "--dataset", "s", "--task", "0", "--backbone", "small_cnn",
            "--epochs", epochs, "--image-size", size, *extra]


def wait_for(condition, timeout=180, every=0.01):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def in_second_epoch(root, run_id):
    status = runs.read_status(root, run_id) if runs.exists(root, run_id) else {}
    return status.get("state") == "running" and status.get("epoch") == 1 and status.get("step", 0) >= 2


def newest_run(root):
    ids = runs.list_ids(root)
    return max(ids, key=lambda r: runs.read_config(root, r)["created"] + r) if ids else None


def history_epochs(root, run_id):
    return runs.read_history(root, run_id)["epoch"].tolist()


# ---------------------------------------------------------------- the CLI contract

def test_cli_train_leaves_a_complete_run(root):
    result = cli(*train_args(root), check=True)
    run_id = result.stdout.strip().splitlines()[-1]
    for path in (runs.config_file(root, run_id), runs.status_file(root, run_id), runs.history_file(root, run_id),
                 runs.best_checkpoint(root, run_id), runs.metrics_file(root, run_id, "test"),
                 runs.predictions_file(root, run_id, "test")):
        assert path.is_file(), path
    assert runs.read_status(root, run_id)["state"] == "completed"
    assert history_epochs(root, run_id) == [1, 2, 3]
    config = runs.read_config(root, run_id)
    assert (config["dataset"], config["task"], config["backbone"], config["image_size"]) == ("s", 0, "small_cnn", 64)


@pytest.mark.parametrize("extra, message", [
    (["--lr", "1.1111"], "learning rate 1.1111 is outside (0, 1)"),
    (["--lr", "0"], "learning rate 0.0 is outside (0, 1)"),
    (["--epochs", "0"], "epochs must be a positive whole number"),
    (["--batch-size", "0"], "batch size must be a positive whole number"),
    (["--image-size", "16"], "image size 16 is too small: use at least 32 pixels"),
    (["--backbone", "resnet51"], "unknown backbone 'resnet51': choose one of resnet50, vgg16, efficientnetb0, "
                                 "densenet121, mobilenetv3small, small_cnn"),
    (["--dataset", "nope"], "no dataset named 'nope'"),
    (["--dataset", "no_mm", "--task", "5"], "dataset 'no_mm' cannot serve task 5 (mass: benign vs malignant): "
                                            "no training patches of malignant mass"),
])
def test_invalid_settings_refused_before_any_work(root, extra, message):
    args = train_args(root) + extra  # later flags win in argparse
    before = snapshot(root / "runs")
    result = cli(*args)
    assert result.returncode == 1
    assert any(message in line for line in errors(result)), result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(root / "runs") == before


def test_imagenet_weights_missing_fail_fast_with_the_file_named(root, tmp_path, measurement):
    env = cli_env(HOME=tmp_path, KERAS_HOME=tmp_path / "keras")
    started = time.time()
    result = cli(*train_args(root, "--backbone", "resnet50", "--weights", "imagenet"), env=env, timeout=60)
    elapsed = time.time() - started
    measurement(f"--weights imagenet with an empty Keras cache failed in {elapsed:.1f} s")
    assert result.returncode == 1
    (line,) = errors(result)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in line and str(tmp_path / "keras") in line


def test_weights_from_a_given_file_are_loaded(tmp_path):
    import numpy as np

    from ddsm_core.models import build_backbone, build_classifier, get_backbone

    source = build_backbone(get_backbone("mobilenetv3small"), 64, None)
    source.save_weights(tmp_path / "mobilenet.weights.h5")
    model = build_classifier("mobilenetv3small", 2, 64, weights=str(tmp_path / "mobilenet.weights.h5"),
                             fine_tune="head")
    loaded = model.get_layer(source.name)
    assert all(np.array_equal(a, b) for a, b in zip(source.get_weights(), loaded.get_weights()))
    assert not loaded.trainable, "--fine-tune head freezes the backbone"


# ---------------------------------------------------------------- kill, cancel, resume

def test_kill_9_in_second_epoch_then_resume(root):
    process = start_cli(*train_args(root, "--batch-size", "4", size=96), env=cli_env(DDSM_STATUS_SECONDS=0))
    try:
        run_id = wait_for(lambda: newest_run(root) if in_second_epoch(root, newest_run(root)) else None)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
    assert runs.read_status(root, run_id)["state"] == "running"
    assert runs.effective_state(root, run_id) == "interrupted"
    assert history_epochs(root, run_id) == [1]
    result = cli("train", "--workspace", root, "--resume", run_id, "--no-evaluate", check=True)
    assert result.stdout.strip().splitlines()[-1] == run_id
    assert runs.read_status(root, run_id)["state"] == "completed"
    assert history_epochs(root, run_id) == [1, 2, 3], "history contiguous, no epoch counted twice"


def test_sigterm_cancels_within_a_batch_and_resumes(root):
    process = start_cli(*train_args(root, "--batch-size", "4", "--no-evaluate", size=96),
                        env=cli_env(DDSM_STATUS_SECONDS=0))
    run_id = wait_for(lambda: newest_run(root) if in_second_epoch(root, newest_run(root)) else None)
    step_at_signal = runs.read_status(root, run_id)["step"]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    status = runs.read_status(root, run_id)
    assert process.returncode == 1 and f"--resume {run_id}" in output
    assert status["state"] == "cancelled"
    steps = runs.read_status(root, run_id)["steps_per_epoch"]
    assert step_at_signal < steps
    assert history_epochs(root, run_id) == [1], "stopped inside epoch 2, which is not recorded"
    cli("train", "--workspace", root, "--resume", run_id, "--no-evaluate", check=True)
    assert runs.read_status(root, run_id)["state"] == "completed"
    assert history_epochs(root, run_id) == [1, 2, 3]


# ---------------------------------------------------------------- jobs

LAUNCHER = """
import sys
from pathlib import Path
from ddsm_core import jobs
from ddsm_core.config import RunConfig
config = RunConfig(dataset="s", task=int(sys.argv[2]), backbone="small_cnn", epochs=int(sys.argv[3]),
                   image_size=64, batch_size=4)
print(jobs.submit(Path(sys.argv[1]), config))
"""


def launch(root, task=0, epochs=3):
    """Submit a job from a separate process that exits right away."""
    result = subprocess.run([sys.executable, "-c", LAUNCHER, str(root), str(task), str(epochs)],
                            capture_output=True, text=True, env=cli_env(), cwd=PROJECT, timeout=120, check=True)
    return result.stdout.strip()


def wait_finished(root, run_id, timeout=300):
    """Until the job has trained and, when it completed, evaluated."""
    def finished():
        state = runs.effective_state(root, run_id)
        return state in runs.FINAL and (state != "completed"
                                           or runs.read_status(root, run_id).get("evaluation") not in (None, "running"))
    return wait_for(finished, timeout=timeout, every=0.2)


def test_job_outlives_its_launcher_and_cannot_be_trained_twice(root):
    run_id = launch(root)
    pid = runs.read_status(root, run_id)["pid"]
    assert processes.pid_alive(pid), "the worker keeps running after the launcher exited"
    wait_for(lambda: runs.is_locked(root, run_id), timeout=60)
    second = cli("train", "--workspace", root, "--resume", run_id)
    assert second.returncode == 1 and f"run {run_id} is already being trained" in errors(second)[0]
    wait_finished(root, run_id)
    assert runs.effective_state(root, run_id) == "completed"
    assert runs.read_status(root, run_id)["evaluation"] == "done"
    assert runs.metrics_file(root, run_id, "test").is_file(), "a finished job is evaluated"


def test_queue_starts_the_second_job_only_when_the_first_ends(root):
    first = launch(root, epochs=2)
    second = launch(root, task=3, epochs=1)
    assert runs.read_status(root, second)["state"] == "queued"
    assert jobs.queued_ids(root) == [second]
    wait_finished(root, first)
    wait_finished(root, second)
    first_status, second_status = runs.read_status(root, first), runs.read_status(root, second)
    assert second_status["state"] == "completed"
    assert second_status["started"] >= first_status["finished"]


def test_cancel_a_queued_job(root):
    blocker = launch(root, epochs=2)
    queued = launch(root, task=4, epochs=1)
    assert "now cancelled" in jobs.cancel(root, queued)
    wait_finished(root, blocker)
    time.sleep(2)
    assert runs.effective_state(root, queued) == "cancelled"


# ---------------------------------------------------------------- every task, every strategy

@pytest.mark.parametrize("task_id", list(TASKS))
def test_every_task_trains_with_its_number_of_outputs(root, task_id):
    import keras

    from ddsm_core.models import custom_objects

    run_id = create_run(root, RunConfig(dataset="s", task=task_id, backbone="small_cnn", epochs=1, image_size=32))
    assert train_run(root, run_id, log=lambda _: None) == "completed"
    model = keras.models.load_model(runs.best_checkpoint(root, run_id), custom_objects=custom_objects())
    assert model.output_shape == (None, TASKS[task_id].n_classes)


def test_mirrored_strategy_over_two_logical_cpus(root):
    result = cli(*train_args(root, "--strategy", "mirrored", "--no-evaluate", epochs=2),
                 env=cli_env(DDSM_CPU_DEVICES=2), check=True)
    assert "2 replica(s)" in result.stdout
    run_id = result.stdout.strip().splitlines()[-1]
    assert runs.read_status(root, run_id)["state"] == "completed"
    assert history_epochs(root, run_id) == [1, 2]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_multiworker_strategy_two_processes_on_localhost(root, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    args = train_args(root, "--strategy", "multiworker", "--run-id", "multi", "--no-evaluate", epochs=2)
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(2)]
    processes = [start_cli(*args, log=logs[i], env=cli_env(
        TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))) for i in range(2)]
    try:
        codes = [p.wait(timeout=300) for p in processes]
    finally:
        for p in processes:
            p.kill()
    output = [open(tmp_path / f"worker{i}.log").read() for i in range(2)]
    assert codes == [0, 0], output
    assert "2 replica(s)" in output[0]
    assert runs.read_status(root, "multi")["state"] == "completed"
    assert history_epochs(root, "multi") == [1, 2]
