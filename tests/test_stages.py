"""Resumable pipeline stages: skip when up to date, re-run on changed inputs, missing outputs or force."""

from __future__ import annotations

import json

import pytest

from training.stages import StageRunner, fingerprint, write_json_atomic


def _work(calls, out_path):
    def work():
        calls.append(1)
        out_path.write_text("done")
        return {"path": str(out_path), "count": 3}

    return work


def test_stage_is_skipped_when_inputs_are_unchanged(tmp_path):
    calls = []
    out = tmp_path / "out.txt"
    for _ in range(2):
        runner = StageRunner(tmp_path)
        result = runner.run("a", {"lr": 1}, _work(calls, out), paths=lambda o: [o["path"]])
    assert calls == [1]
    assert result == {"path": str(out), "count": 3}
    assert runner.timings() == {"a": "skipped"}


def test_changed_inputs_missing_outputs_and_force_rerun_the_stage(tmp_path):
    calls = []
    out = tmp_path / "out.txt"
    StageRunner(tmp_path).run("a", {"lr": 1}, _work(calls, out), paths=lambda o: [o["path"]])
    StageRunner(tmp_path).run("a", {"lr": 2}, _work(calls, out), paths=lambda o: [o["path"]])
    assert len(calls) == 2
    out.unlink()
    StageRunner(tmp_path).run("a", {"lr": 2}, _work(calls, out), paths=lambda o: [o["path"]])
    assert len(calls) == 3
    StageRunner(tmp_path, force={"a"}).run("a", {"lr": 2}, _work(calls, out), paths=lambda o: [o["path"]])
    assert len(calls) == 4


def test_upstream_change_invalidates_downstream(tmp_path):
    calls = []
    for lr in (1, 1, 2):
        runner = StageRunner(tmp_path)
        runner.run("up", {"lr": lr}, lambda: {})
        runner.run("down", {}, lambda: calls.append(1) or {}, upstream=("up",))
    assert len(calls) == 2
    with pytest.raises(RuntimeError, match="needs \\['missing'\\]"):
        StageRunner(tmp_path).run("x", {}, lambda: {}, upstream=("missing",))


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path).run("a", {}, boom)
    assert not (tmp_path / "stages" / "a.json").exists()


def test_atomic_json_and_stable_fingerprint(tmp_path):
    write_json_atomic(tmp_path / "x" / "f.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "x" / "f.json").read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["f.json"]
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1}) != fingerprint({"a": 2, "b": 2})
