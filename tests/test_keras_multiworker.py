"""The Keras multi-worker workaround runs only on the Keras it was written for (no training here)."""
import re

import pytest

from ddsm_core import keras_multiworker
from support import PROJECT


def test_the_pinned_keras_is_the_one_the_workaround_was_written_for():
    pinned = re.search(r"^keras==(\S+)$", (PROJECT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert pinned.startswith(keras_multiworker.WRITTEN_FOR + "."), "bumping keras: check the workaround first"
    keras_multiworker.check_version()


def test_every_private_name_the_workaround_touches_exists_in_the_installed_keras():
    assert keras_multiworker.missing_names() == []


def test_a_moved_private_name_is_reported(monkeypatch):
    moved = ("keras.src.trainers.trainer.Trainer._no_such_build", "keras.src.no_such_module.thing")
    monkeypatch.setattr(keras_multiworker, "PRIVATE_NAMES", keras_multiworker.PRIVATE_NAMES + moved)
    assert keras_multiworker.missing_names() == list(moved)


@pytest.mark.parametrize("version", ["3.15.0", "3.15.1", "3.15.7"])
def test_any_patch_release_is_accepted(monkeypatch, version):
    monkeypatch.setattr(keras_multiworker, "installed_version", lambda: version)
    keras_multiworker.check_version()


@pytest.mark.parametrize("version", ["3.16.0", "3.1.5", "3.150.0", "4.0.0", "2.15.0"])
def test_another_keras_is_refused_with_the_reason(monkeypatch, version):
    monkeypatch.setattr(keras_multiworker, "installed_version", lambda: version)
    with pytest.raises(RuntimeError) as refused:
        keras_multiworker.check_version()
    message = str(refused.value)
    assert f"needs Keras 3.15.x, but Keras {version} is installed" in message
    assert "tensorflow/tensorflow/issues/72388" in message
    assert "_maybe_symbolic_build" in message and "_collective_all_reduce_multi_worker" in message
    assert "requirements.txt" in message
