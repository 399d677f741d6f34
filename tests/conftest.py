"""Shared fixtures: a small workspace with real trained runs (built once per session) and copies of it."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

MEASUREMENTS: list[str] = []


@pytest.fixture
def measurement():
    """Record a number worth reading in the test output (shown at the end of the run, whatever passes)."""
    return MEASUREMENTS.append


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@dataclass(frozen=True)
class TrainedWorkspace:
    root: Path
    run_t0: str  # task 0 (five classes), small_cnn, 2 epochs, evaluated on test
    run_t5: str  # task 5 (mass: benign vs malignant), created after run_t0, so the default run

    @property
    def run_ids(self) -> list[str]:
        return [self.run_t0, self.run_t5]


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory) -> TrainedWorkspace:
    """Synthetic seed-csv dataset "synth" and two trained, evaluated small_cnn runs (a few seconds each), in
    float32 so that their numbers are the same on every machine (precision auto would pick bfloat16 on some)."""
    from ddsm_core import synth
    from ddsm_core.config import RunConfig
    from ddsm_core.data.seed_csv import import_seed_csv
    from ddsm_core.runs import create_run
    from ddsm_core.training import train_and_evaluate

    base = tmp_path_factory.mktemp("review")
    src, root = base / "src", base / "workspace"
    synth.write_seed_csv(src, n_train=240, n_test=120, size=64, seed=1)
    import_seed_csv(root, "synth", src / "train.csv", src / "train_images", src / "test.csv", src / "test_images")
    run_ids = []
    for task in (0, 5):
        run_id = create_run(root, RunConfig(dataset="synth", task=task, backbone="small_cnn", epochs=2,
                                            image_size=32, batch_size=32, lr=1e-3, precision="float32"))
        train_and_evaluate(root, run_id, log=lambda *_: None)
        run_ids.append(run_id)
    return TrainedWorkspace(root, *run_ids)


@pytest.fixture
def workspace_copy(trained_workspace, tmp_path) -> TrainedWorkspace:
    """A private copy of the trained workspace, for tests that change it (predictions keep absolute paths
    into the original dataset folder, which stays untouched)."""
    from support import copy_workspace

    root = tmp_path / "workspace"
    copy_workspace(trained_workspace.root, root, trained_workspace.run_t0)
    return replace(trained_workspace, root=root)


@pytest.fixture
def open_app(monkeypatch):
    """open_app(root, page=None, run=None): the dashboard under AppTest on a workspace, on a page, with ?run=."""
    from streamlit.testing.v1 import AppTest

    from support import APP, assert_clean

    def opener(root, page=None, run=None) -> AppTest:
        monkeypatch.setenv("DDSM_WORKSPACE", str(root))
        at = AppTest.from_file(APP, default_timeout=60)
        if run:
            at.query_params["run"] = run
        at.run()
        # The first run executes under the main script's page hash, later runs under the page's own,
        # so widget ids change once (a folder named pages/ puts AppTest in legacy multipage mode):
        # a second run (or the page switch) makes the ids stable before a test interacts.
        at.switch_page(page).run() if page else at.run()
        assert_clean(at)
        return at
    return opener
