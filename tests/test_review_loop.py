"""The review loop outside the pages: the CLI (review add/export/import, compare, explain), run comparison
against scikit-learn, review queues on hand-made predictions, and sign-in (rules, AppTest, make run's check).

Run comparison in a workspace uses conftest's trained run_t0 as run A and, as run B, a second run of the same
dataset and task whose predictions parquet this file writes (a seeded perturbation of run A's probabilities,
see add_predicted_run): what compare reads is the stored predictions, however they were made, and writing
them keeps the test to seconds. The Grad-CAM command runs on the real trained checkpoint.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score
from streamlit import config as streamlit_config
from streamlit.testing.v1 import AppTest

from dashboard import auth, detail
from ddsm_core import compare, explain, review_queue, runs, verdicts, workspace
from ddsm_core.config import RunConfig
from ddsm_core.data import store
from ddsm_core.evaluation import probability_columns
from ddsm_core.metrics import compute_metrics
from ddsm_core.tasks import get_task
from support import PROJECT, cli, cli_env, errors

APP = str(PROJECT / "streamlit_app.py")


# ---------------------------------------------------------------- helpers

def sklearn_metrics(y_true, probs, y_pred) -> dict:
    k = probs.shape[1]
    auc = roc_auc_score(y_true, probs[:, 1]) if k == 2 else roc_auc_score(y_true, probs, multi_class="ovr")
    return {"accuracy": accuracy_score(y_true, y_pred), "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
            "macro_f1": f1_score(y_true, y_pred, average="macro"), "roc_auc": auc}


def random_predictions(n: int, k: int, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += shift
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def add_predicted_run(root: Path, source_run: str, seed: int = 7, noise: float = 0.8) -> str:
    """A run of source_run's dataset and task whose test predictions are a seeded perturbation of source_run's,
    written with evaluation's columns (and metrics), marked completed. No training."""
    config = runs.read_config(root, source_run)
    task = get_task(config["task"])
    run_id = runs.create_run(root, RunConfig(dataset=config["dataset"], task=config["task"], backbone="small_cnn",
                                             epochs=1, image_size=config["image_size"], batch_size=32, lr=1e-3))
    frame = pd.read_parquet(runs.predictions_file(root, source_run, "test"))
    columns = probability_columns(task)
    rng = np.random.default_rng(seed)
    logits = np.log(np.clip(frame[columns].to_numpy(), 1e-9, 1)) + rng.normal(0, noise, (len(frame), len(columns)))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame[columns] = probs
    frame["y_pred"] = probs.argmax(axis=1)
    frame["confidence"] = probs.max(axis=1)
    frame["correct"] = frame["y_pred"] == frame["y_true"]
    workspace.write_parquet(runs.predictions_file(root, run_id, "test"), frame)
    workspace.write_json(runs.metrics_file(root, run_id, "test"),
                         compute_metrics(frame["y_true"].to_numpy(), probs, task.class_names, n_boot=20))
    runs.write_status(root, run_id, state="completed", epoch=1)
    return run_id


@pytest.fixture
def paired(workspace_copy):
    """(root, run A = the trained run_t0, run B = add_predicted_run of it, run_t5 of another task)."""
    root = workspace_copy.root
    return root, workspace_copy.run_t0, add_predicted_run(root, workspace_copy.run_t0), workspace_copy.run_t5


# ---------------------------------------------------------------- compare: pure functions

@pytest.mark.parametrize("k", [2, 5])
def test_compare_predictions_equals_sklearn(k):
    y, probs_a = random_predictions(400, k, 1.0, seed=1)
    _, probs_b = random_predictions(400, k, 1.0, seed=2)
    probs_b = 0.5 * probs_b + 0.5 * np.eye(k)[y] * 0.6 + 0.5 * probs_a * 0.4  # correlated, still rows sum to 1
    probs_b /= probs_b.sum(axis=1, keepdims=True)
    pred_a, pred_b = probs_a.argmax(axis=1), probs_b.argmax(axis=1)
    result = compare.compare_predictions(y, probs_a, pred_a, probs_b, pred_b, [f"c{i}" for i in range(k)], n_boot=200)
    expected_a, expected_b = sklearn_metrics(y, probs_a, pred_a), sklearn_metrics(y, probs_b, pred_b)
    for name in compare.METRICS:
        values = result["metrics"][name]
        assert values["a"] == pytest.approx(expected_a[name], abs=1e-12), name
        assert values["b"] == pytest.approx(expected_b[name], abs=1e-12), name
        assert values["difference"] == pytest.approx(expected_b[name] - expected_a[name], abs=1e-12)
        low, high = values["ci"]
        assert low <= high
    assert result["confusion_matrices"]["a"] == confusion_matrix(y, pred_a, labels=range(k)).tolist()
    assert result["confusion_matrices"]["b"] == confusion_matrix(y, pred_b, labels=range(k)).tolist()
    assert result["disagreements"] == int((pred_a != pred_b).sum())
    json.dumps(result)  # JSON-serialisable


def test_paired_bootstrap_is_sklearn_on_each_paired_resample():
    """The vectorised interval equals a plain loop that scores both runs with sklearn on the same resample."""
    n, k, n_boot, seed = 150, 3, 60, 11
    y, probs_a = random_predictions(n, k, 1.2, seed=3)
    _, probs_b = random_predictions(n, k, 0.4, seed=4)
    pred_a, pred_b = probs_a.argmax(axis=1), probs_b.argmax(axis=1)
    result = compare.compare_predictions(y, probs_a, pred_a, probs_b, pred_b, ["x", "y", "z"], n_boot=n_boot, seed=seed)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # one chunk: the same stream
    differences = {name: [] for name in compare.METRICS}
    for rows in draws:
        a, b = sklearn_metrics(y[rows], probs_a[rows], pred_a[rows]), sklearn_metrics(y[rows], probs_b[rows], pred_b[rows])
        for name in compare.METRICS:
            differences[name].append(b[name] - a[name])
    for name in compare.METRICS:
        assert result["metrics"][name]["ci"] == pytest.approx(list(np.percentile(differences[name], [2.5, 97.5])),
                                                              abs=1e-9), name


def test_compare_is_seeded_and_a_clear_difference_excludes_zero():
    y, probs_a = random_predictions(2000, 4, 0.3, seed=5)
    _, probs_b = random_predictions(2000, 4, 0.3, seed=6)
    probs_b = 0.3 * probs_b + 0.7 * np.eye(4)[y]  # b is much better
    args = (y, probs_a, probs_a.argmax(1), probs_b, probs_b.argmax(1), list("abcd"))
    first, again = compare.compare_predictions(*args, seed=3), compare.compare_predictions(*args, seed=3)
    assert first == again
    assert first["metrics"]["accuracy"]["ci"][0] > 0
    other_seed = compare.compare_predictions(*args, seed=4)
    assert other_seed["metrics"]["accuracy"]["ci"] != first["metrics"]["accuracy"]["ci"]


def test_compare_without_a_class_says_auc_is_undefined():
    y = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1]] * 3 + [[0.2, 0.7, 0.1]] * 3)
    result = compare.compare_predictions(y, probs, probs.argmax(1), probs, probs.argmax(1), list("abc"), n_boot=10)
    assert result["metrics"]["roc_auc"] == {"a": None, "b": None, "difference": None, "ci": None}
    assert any("ROC AUC is undefined" in note for note in result["notes"])


# ---------------------------------------------------------------- review queues on hand-made predictions

@pytest.fixture
def hand_made():
    """Six patches of a 3-class task: y_true, y_pred, probabilities chosen so every ranking is known."""
    probs = np.array([[0.10, 0.80, 0.10],   # a: wrong (true 0), confidence 0.80
                      [0.60, 0.30, 0.10],   # b: right, margin 0.30
                      [0.05, 0.05, 0.90],   # c: wrong (true 1), confidence 0.90
                      [0.40, 0.38, 0.22],   # d: right, margin 0.02
                      [0.34, 0.33, 0.33],   # e: wrong (true 2), confidence 0.34, margin 0.01
                      [0.20, 0.70, 0.10]])  # f: right, margin 0.50
    frame = pd.DataFrame({"filename": list("abcdef"), "y_true": [0, 0, 1, 0, 2, 1], "y_pred": probs.argmax(1),
                          "confidence": probs.max(1)})
    for c in range(3):
        frame[f"p_c{c}"] = probs[:, c]
    context = review_queue.QueueContext([f"p_c{c}" for c in range(3)], ["c0", "c1", "c2"])
    return frame, context


def test_wrong_most_confident_first(hand_made):
    frame, context = hand_made
    queue = review_queue.rank(frame, "wrong, most confident first", context)
    assert list(queue["filename"]) == ["c", "a", "e"]
    assert list(queue["rank"]) == [1, 2, 3]
    assert queue["why"].iat[0] == "predicted c2 with 0.90, true c1"


def test_smallest_margin_first(hand_made):
    frame, context = hand_made
    queue = review_queue.rank(frame, "smallest margin between the two best classes", context)
    assert list(queue["filename"]) == ["e", "d", "b", "f", "a", "c"]
    assert queue["why"].iat[0].startswith("margin 0.010: c0 0.34 vs c1 0.33")


def test_disagreement_needs_and_ranks_the_other_run(hand_made):
    frame, context = hand_made
    with pytest.raises(Exception, match="needs other"):
        review_queue.rank(frame, "disagreement with another run", context)
    other = frame.assign(y_pred=[1, 1, 2, 1, 0, 1], confidence=[0.9, 0.5, 0.9, 0.95, 0.6, 0.7])
    other = other[other["filename"] != "e"]  # the other run did not predict e
    with_other = review_queue.QueueContext(context.probability_columns, context.class_names, other=other,
                                           other_run="run-b")
    queue = review_queue.rank(frame, "disagreement with another run", with_other)
    # b: 0 vs 1 (min confidence 0.5); d: 0 vs 1 (min 0.40)
    assert list(queue["filename"]) == ["b", "d"]
    assert queue["why"].iat[0] == "this run: c0 (0.60); run-b: c1 (0.50)"


def test_filters_progress_and_neighbours(hand_made):
    frame, context = hand_made
    current = pd.DataFrame({"filename": ["a", "d"], "verdict": ["relabel", "agree"], "new_label": [2, None]})
    queue = review_queue.with_verdicts(review_queue.rank(frame, "smallest margin between the two best classes",
                                                         context), current)
    assert review_queue.progress(queue) == (2, 6)
    assert list(review_queue.select(queue, state="unreviewed")["filename"]) == ["e", "b", "f", "c"]
    assert list(review_queue.select(queue, state="reviewed")["filename"]) == ["d", "a"]
    assert list(review_queue.select(queue, state="relabel")["filename"]) == ["a"]
    assert list(review_queue.select(queue, true=[0])["filename"]) == ["d", "b", "a"]
    assert list(review_queue.select(queue, true=[0], pred=[1])["filename"]) == ["a"]
    assert review_queue.neighbours(["e", "d", "b"], "d") == ("e", "b")
    assert review_queue.neighbours(["e", "d", "b"], "e") == (None, "d")
    assert review_queue.neighbours(["e", "d", "b"], "b") == ("d", None)
    with pytest.raises(Exception, match="unknown verdict state"):
        review_queue.select(queue, state="maybe")


def test_a_new_reason_plugs_into_the_registry(hand_made):
    frame, context = hand_made
    reason = review_queue.Reason("likely label error (test)", "hand-made scores",
                                 lambda rows, ctx: (rows["filename"].map(ctx.extra["scores"]), rows["filename"]),
                                 needs=("scores",))
    review_queue.register(reason)
    try:
        scored = review_queue.QueueContext(context.probability_columns, context.class_names,
                                           extra={"scores": {"b": 0.2, "f": 0.9}})
        assert list(review_queue.rank(frame, reason.name, scored)["filename"]) == ["f", "b"]
        with pytest.raises(Exception, match="needs scores"):
            review_queue.rank(frame, reason.name, context)
    finally:
        review_queue.REASONS.pop(reason.name)


# ---------------------------------------------------------------- the detail's small helpers

def test_badges_and_zoom():
    assert detail.badge(None) == "" and detail.badge(np.nan) == ""
    assert detail.badge("relabel", 3) == "✎ relabel → 3 MC"
    assert detail.badge("exclude") == "⊘ exclude"
    image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    assert detail.zoomed(image, 1) is image
    assert detail.zoomed(image, 2).tolist() == image[2:7, 2:7].tolist()
    assert detail.zoomed(image, 2, 0.0, 1.0).tolist() == image[5:10, 0:5].tolist()  # kept inside the image


# ---------------------------------------------------------------- sign-in: rules

def test_password_hash_round_trip():
    stored = auth.hash_password("correct horse", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$") and "correct horse" not in stored
    assert auth.verify_password("correct horse", stored)
    assert not auth.verify_password("correct hors", stored)
    assert auth.hash_password("x", iterations=1000) != auth.hash_password("x", iterations=1000)  # salted
    assert not auth.verify_password("x", "not a hash") and not auth.verify_password("x", "md5$1$aa$bb")


def test_what_counts_as_beyond_localhost():
    assert auth.is_local("127.0.0.1") and auth.is_local("localhost") and auth.is_local("::1")
    assert auth.is_local("unix:///tmp/dashboard.sock")
    for address in ("0.0.0.0", "::", "192.168.1.20", "", None):
        assert not auth.is_local(address), address
    password = {"dashboard": {"password_hash": "pbkdf2_sha256$1$00$00"}}
    oidc = {"auth": {"redirect_uri": "x", "cookie_secret": "y", "client_id": "z"}}
    assert auth.serve_problem("0.0.0.0", {}, environ={}).startswith("The dashboard would be served on 0.0.0.0")
    assert auth.serve_problem(None, {}, environ={}).startswith("The dashboard would be served on every network")
    assert auth.serve_problem("0.0.0.0", password, environ={}) is None
    assert auth.serve_problem("0.0.0.0", oidc, environ={}) is None
    assert auth.serve_problem("0.0.0.0", {}, environ={"DDSM_ALLOW_OPEN": "1"}) is None
    assert auth.serve_problem("127.0.0.1", {}, environ={}) is None
    assert auth.oidc_providers({"auth": {"redirect_uri": "x", "google": {"client_id": "a"}}}) == ["google"]


# ---------------------------------------------------------------- sign-in: the app beyond localhost (AppTest)

@pytest.fixture
def served_beyond(monkeypatch, tmp_path):
    """server.address 0.0.0.0 (as `streamlit run --server.address 0.0.0.0` sets it), an empty workspace,
    no allow-open flag; the address is restored afterwards."""
    monkeypatch.setenv("DDSM_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.delenv(auth.ALLOW_OPEN_ENV, raising=False)
    before = streamlit_config.get_option("server.address")
    streamlit_config.set_option("server.address", "0.0.0.0")
    yield
    streamlit_config.set_option("server.address", before)


def shows_the_app(at: AppTest) -> bool:
    return [t.value for t in at.title] == ["Runs"] and len(at.sidebar.get("page_link")) > 0


def test_beyond_localhost_without_sign_in_configured_shows_only_how_to(served_beyond):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "0.0.0.0" in message and "no sign-in is configured" in message and "hash-password" in message
    assert not at.title and not at.button and not at.sidebar.children and not shows_the_app(at)
    assert [element.type for element in at.main.children.values()] == ["error"]


def test_the_allow_open_flag_serves_without_sign_in(served_beyond, monkeypatch):
    monkeypatch.setenv(auth.ALLOW_OPEN_ENV, "1")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and shows_the_app(at)


def test_team_password_lets_the_right_password_in_and_records_the_reviewer(served_beyond):
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["dashboard"] = {"password_hash": auth.hash_password("s3cret team", iterations=1000)}
    at.run()
    assert not shows_the_app(at) and [t.value for t in at.title] == ["Sign in"]
    at.text_input(key="sign_in_name").set_value("Dr. Rivera")
    at.text_input(key="sign_in_password").set_value("wrong")
    at.button[0].click().run()
    assert "Wrong password." in [e.value for e in at.error] and not shows_the_app(at)
    assert auth.PASSWORD_USER not in at.session_state
    at.text_input(key="sign_in_password").set_value("s3cret team")
    at.button[0].click().run()
    assert not at.exception and shows_the_app(at)
    assert at.session_state[auth.PASSWORD_USER] == "Dr. Rivera"
    assert any("signed in as **Dr. Rivera**" in c.value for c in at.sidebar.caption)


def test_oidc_sign_in_is_asked_for_and_the_signed_in_user_reviews(served_beyond):
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = {"redirect_uri": "http://example.org/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "id", "client_secret": "secret",
                          "server_metadata_url": "https://accounts.example.org/.well-known/openid-configuration"}
    at.user = {"is_logged_in": False}
    at.run()
    assert not shows_the_app(at) and [b.label for b in at.button] == ["Sign in"]
    at.user = {"is_logged_in": True, "name": "Dr. Chen", "email": "chen@example.org"}
    at.run()
    assert not at.exception and shows_the_app(at)
    assert any("signed in as **Dr. Chen**" in c.value for c in at.sidebar.caption)


def test_on_localhost_the_reviewer_name_is_asked_once(monkeypatch, tmp_path):
    monkeypatch.setenv("DDSM_WORKSPACE", str(tmp_path / "workspace"))
    assert auth.is_local(streamlit_config.get_option("server.address"))  # .streamlit/config.toml's default
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert shows_the_app(at)
    at.text_input(key="reviewer_input").set_value("  Dr. Okafor ").run()
    assert at.session_state[auth.REVIEWER] == "Dr. Okafor"
    at.run()
    assert at.text_input(key="reviewer_input").value == "Dr. Okafor"


# ---------------------------------------------------------------- sign-in: make run's check

@pytest.mark.slow
def test_make_run_refuses_beyond_localhost_without_sign_in_unless_allowed(tmp_path):
    if (PROJECT / ".streamlit" / "secrets.toml").exists():
        pytest.skip("this checkout has a .streamlit/secrets.toml: the check would read it")

    def check_line(**variables) -> str:
        plan = subprocess.run(["make", "-n", "run", *(f"{k}={v}" for k, v in variables.items())], cwd=PROJECT,
                              capture_output=True, text=True, check=True).stdout.splitlines()
        checks = [i for i, line in enumerate(plan) if "dashboard.auth check-serve" in line]
        serve = [i for i, line in enumerate(plan) if "streamlit run" in line]
        assert checks and serve and checks[0] < serve[0], plan  # the check comes before the server starts
        return plan[checks[0]]

    env = cli_env(HOME=tmp_path)  # no ~/.streamlit/secrets.toml
    env.pop("ALLOW_OPEN", None)
    env.pop(auth.ALLOW_OPEN_ENV, None)
    refused = subprocess.run(check_line(HOST="0.0.0.0"), shell=True, cwd=PROJECT, env=env, capture_output=True,
                             text=True)
    assert refused.returncode == 1
    assert "no sign-in is configured" in refused.stderr and "secrets.toml" in refused.stderr
    allowed = subprocess.run(check_line(HOST="0.0.0.0", ALLOW_OPEN=1), shell=True, cwd=PROJECT, env=env,
                             capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
    local = subprocess.run(check_line(), shell=True, cwd=PROJECT, env=env, capture_output=True, text=True)
    assert local.returncode == 0, local.stderr


@pytest.mark.slow
def test_hash_password_helper_prints_a_verifiable_secret():
    result = subprocess.run([sys.executable, "-m", "dashboard.auth", "hash-password"], input="team pass\n",
                            cwd=PROJECT, capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("password_hash"))
    assert auth.verify_password("team pass", shlex.split(line.split("=", 1)[1])[0])
    assert "[dashboard]" in result.stdout


# ---------------------------------------------------------------- the dashboard stays TensorFlow-free

@pytest.mark.slow
def test_the_review_loop_modules_the_dashboard_imports_load_no_tensorflow():
    code = ("import sys; import dashboard.auth, dashboard.detail, dashboard.patches, ddsm_core.compare, "
            "ddsm_core.review_queue, ddsm_core.explain, ddsm_core.verdicts; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- the CLI (subprocesses)

@pytest.mark.slow
def test_review_add_export_import_round_trip(workspace_copy, tmp_path):
    root = workspace_copy.root
    manifest = store.load(root, "synth").manifest
    first, second = manifest["filename"].iloc[0], manifest["filename"].iloc[-1]
    added = cli("review", "add", "--workspace", root, "--dataset", "synth", "--filename", first, "--verdict", "relabel",
                "--label", 3, "--note", "spiculated margin", "--reviewer", "ann", check=True)
    assert f"recorded relabel (label 3) for {first}" in added.stdout
    cli("review", "add", "--workspace", root, "--dataset", "synth", "--filename", second, "--verdict", "exclude",
        env=cli_env(USER="bob"), check=True)  # the reviewer defaults to $USER
    cli("review", "add", "--workspace", root, "--dataset", "synth", "--filename", first, "--verdict", "agree",
        "--reviewer", "cy", check=True)
    current = verdicts.current(root, "synth").set_index("filename")
    assert current.loc[first, "verdict"] == "agree" and current.loc[second, "reviewer"] == "bob"

    out = tmp_path / "current.csv"
    cli("review", "export", "--workspace", root, "--dataset", "synth", "--out", out, check=True)
    exported = pd.read_csv(out)
    assert list(exported.columns) == list(verdicts.EXPORT_COLUMNS)
    assert set(exported["filename"]) == {first, second} and len(exported) == 2
    history = tmp_path / "history.parquet"
    cli("review", "export", "--workspace", root, "--dataset", "synth", "--out", history, "--history", check=True)
    assert len(pd.read_parquet(history)) == 3

    other = tmp_path / "other-workspace"
    other.mkdir()
    (other / "datasets").symlink_to(root / "datasets", target_is_directory=True)
    imported = cli("review", "import", "--workspace", other, "--dataset", "synth", "--file", history, check=True)
    assert "imported 3 new verdict(s)" in imported.stdout
    assert verdicts.history(other, "synth").equals(verdicts.history(root, "synth"))
    again = cli("review", "import", "--workspace", other, "--dataset", "synth", "--file", history, check=True)
    assert "imported 0 new verdict(s)" in again.stdout


@pytest.mark.slow
def test_review_cli_refuses_in_sentences_and_writes_nothing(workspace_copy, tmp_path):
    root = workspace_copy.root
    manifest = store.load(root, "synth").manifest
    name = manifest["filename"].iloc[0]
    cases = [
        (["--filename", "no-such.png", "--verdict", "agree"], ["no-such.png: no patch with this filename in synth"]),
        (["--filename", name, "--verdict", "maybe"], ["unknown verdict 'maybe' (use agree, relabel, exclude or unsure)"]),
        (["--filename", name, "--verdict", "relabel", "--label", "7"], ["new_label '7' is not a source label 0-4"]),
        (["--filename", name, "--verdict", "agree", "--label", "2"],
         ["new_label '2' given with verdict 'agree': only relabel takes a label"]),
        (["--filename", name, "--verdict", "agree", "--reviewer", " "], ["reviewer is empty: name who gave the verdict"]),
    ]
    for extra, expected in cases:
        result = cli("review", "add", "--workspace", root, "--dataset", "synth", "--reviewer", "ann", *extra)
        assert result.returncode == 1 and errors(result) == expected, (extra, result.stderr)
        assert "Traceback" not in result.stderr
    assert verdicts.current(root, "synth").empty
    missing = cli("review", "export", "--workspace", root, "--dataset", "nope", "--out", tmp_path / "x.csv")
    assert missing.returncode == 1 and errors(missing)[0].startswith("no dataset named 'nope'")
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,verdict,new_label,note,reviewer,time\n"
                   f"{name},agree,,,ann,\nghost.png,agree,,,ann,\n{name},relabel,,,ann,\n")
    refused = cli("review", "import", "--workspace", root, "--dataset", "synth", "--file", bad)
    assert refused.returncode == 1
    assert errors(refused) == ["bad.csv line 3: ghost.png: not a patch of dataset 'synth'",
                               f"bad.csv line 4: {name}: relabel needs new_label, the correct source label 0-4",
                               "2 bad row(s) in bad.csv: nothing was imported"]
    assert verdicts.history(root, "synth").empty


@pytest.mark.slow
def test_compare_cli_json_equals_sklearn_on_the_stored_predictions(paired):
    root, run_a, run_b, _ = paired
    result = cli("compare", "--workspace", root, "--runs", run_a, run_b, "--json", check=True)
    report = json.loads(result.stdout)
    assert report["runs"] == {"a": run_a, "b": run_b}
    assert {"runs", "metrics", "disagreements", "patches"} <= set(report)
    a = pd.read_parquet(runs.predictions_file(root, run_a, "test"))
    b = pd.read_parquet(runs.predictions_file(root, run_b, "test")).set_index("filename").loc[a["filename"]]
    columns = probability_columns(get_task(0))
    expected_a = sklearn_metrics(a["y_true"], a[columns].to_numpy(), a["y_pred"])
    expected_b = sklearn_metrics(b["y_true"], b[columns].to_numpy(), b["y_pred"])
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
        values = report["metrics"][name]
        assert values["a"] == pytest.approx(expected_a[name], abs=1e-9), name
        assert values["b"] == pytest.approx(expected_b[name], abs=1e-9), name
        assert values["difference"] == pytest.approx(expected_b[name] - expected_a[name], abs=1e-9)
        assert values["ci"][0] <= values["difference"] <= values["ci"][1] or name == "roc_auc"
    disagree = a["y_pred"].to_numpy() != b["y_pred"].to_numpy()
    assert report["disagreements"] == int(disagree.sum()) > 0
    assert {p["filename"] for p in report["patches"]} == set(a.loc[disagree, "filename"])
    patch = report["patches"][0]
    row_a, row_b = a.set_index("filename").loc[patch["filename"]], b.loc[patch["filename"]]
    assert (patch["y_true"], patch["pred_a"], patch["pred_b"]) == (row_a["y_true"], row_a["y_pred"], row_b["y_pred"])
    assert report["confusion_matrices"]["b"] == confusion_matrix(b["y_true"], b["y_pred"], labels=range(5)).tolist()
    text = cli("compare", "--workspace", root, "--runs", run_a, run_b, check=True).stdout
    assert f"{report['disagreements']} patch(es) where the runs disagree" in text and "95% CI" in text


@pytest.mark.slow
def test_compare_refuses_runs_of_another_task_or_without_predictions(paired):
    root, run_a, run_b, run_t5 = paired
    other_task = cli("compare", "--workspace", root, "--runs", run_a, run_t5)
    assert other_task.returncode == 1
    assert errors(other_task) == [f"runs {run_a} and {run_t5} solve different tasks (0 and 5), whose classes differ: "
                                  "compare runs of one task"]
    runs.predictions_file(root, run_b, "test").unlink()
    unevaluated = cli("compare", "--workspace", root, "--runs", run_a, run_b)
    assert unevaluated.returncode == 1 and errors(unevaluated) == [
        f"run {run_b} has no test predictions: evaluate it first (python -m ddsm_core evaluate --run {run_b} "
        "--split test)"]
    unknown = cli("compare", "--workspace", root, "--runs", run_a, "nope")
    assert unknown.returncode == 1 and "no run 'nope'" in errors(unknown)[0]


@pytest.mark.slow
def test_compare_refuses_runs_of_another_dataset(paired, trained_workspace):
    from ddsm_core.data.seed_csv import import_seed_csv

    root, run_a, _, _ = paired
    source = trained_workspace.root.parent / "src"  # conftest's synthetic source, imported again under a new name
    import_seed_csv(root, "again", source / "train.csv", source / "train_images", source / "test.csv",
                    source / "test_images")
    config = runs.read_config(root, run_a)
    other = runs.create_run(root, RunConfig(dataset="again", task=0, backbone="small_cnn", epochs=1,
                                            image_size=config["image_size"], batch_size=32, lr=1e-3))
    runs.predictions_file(root, other, "test").parent.mkdir(parents=True, exist_ok=True)
    runs.predictions_file(root, other, "test").write_bytes(runs.predictions_file(root, run_a, "test").read_bytes())
    refused = cli("compare", "--workspace", root, "--runs", run_a, other)
    assert refused.returncode == 1 and errors(refused) == [
        f"runs {run_a} and {other} were trained on different datasets (synth and again): compare runs of one dataset"]


@pytest.mark.slow
def test_explain_command_fills_the_cache_the_dashboard_reads(workspace_copy, tmp_path):
    root, run_id = workspace_copy.root, workspace_copy.run_t0
    names = list(pd.read_parquet(runs.predictions_file(root, run_id, "test"))["filename"].iloc[:2])
    listed = tmp_path / "patches.txt"
    listed.write_text(names[1] + "\n")
    assert all(explain.job_state(root, run_id, name)["state"] == "none" for name in names)
    cli("explain", "--workspace", root, "--run", run_id, f"--filename={names[0]}", "--filenames-file", listed,
        check=True)
    for name in names:
        cached = explain.load_cached(root, run_id, name)
        assert cached is not None and cached["predicted"].shape == (32, 32)
        assert explain.job_state(root, run_id, name)["state"] == "cached"
    refused = cli("explain", "--workspace", root, "--run", run_id, "--filename=ghost.png")
    assert refused.returncode == 1 and errors(refused) == [
        f"ghost.png: no patch with this filename in run {run_id}'s test predictions"]
