"""Worker processes: spawned, and blind to the caller's __main__ (after an AppTest it is a dashboard page)."""
import sys
import types

from ddsm_core.processes import spawn_pool


def test_spawned_workers_do_not_rerun_the_callers_main_script(tmp_path, monkeypatch):
    marker = tmp_path / "main-ran"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('the caller main ran')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    with spawn_pool(2) as pool:
        assert list(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]
    assert not marker.exists(), "a worker ran the caller's __main__ script"
    assert sys.modules["__main__"] is fake_main  # put back
