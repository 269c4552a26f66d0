"""`dclip run`: the real-data smoke run end to end, resume without recomputation, and experiment-file errors."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO_ROOT
from training.pipeline import apply_smoke, load_experiment, main, summary_table

COCO_MINI = REPO_ROOT / "training" / "configs" / "experiments" / "coco_mini.yaml"


@pytest.fixture(scope="module")
def coco_mini_run(tmp_path_factory, shared_data):
    run_dir = tmp_path_factory.mktemp("coco_mini")
    assert main(["--config", str(COCO_MINI), "--output_dir", str(run_dir), "--smoke", "--quiet"]) == 0
    return run_dir


def test_coco_mini_smoke_run_writes_every_output(coco_mini_run, capsys):
    summary = json.loads((coco_mini_run / "summary.json").read_text())
    outputs = summary["outputs"]
    assert outputs["data"]["counts"] == {"train": 143, "val": 16}  # 159 non-test images, 90/10
    assert outputs["regions"]["counts"]["boxes"] > 0
    results = json.loads((coco_mini_run / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"base", "dclip"}
    test = results["models"]["dclip"]["coco_mini_test"]
    assert test["n_images"] == 24 and 0 <= test["t2i_recall@1"] <= test["t2i_recall@10"] <= 100
    assert results["models"]["dclip"]["caltech20"]["n_classes"] == 20
    assert "coco_mini_test_swaps" in results["models"]["dclip"]
    assert set(outputs["reload_check"]["checks"]) == {"student", "teacher"}
    student = json.loads((coco_mini_run / "hub" / "student" / "config.json").read_text())
    assert student["model_type"] == "clip"
    assert (coco_mini_run / "hub" / "teacher" / "modeling_dclip.py").is_file()
    assert (coco_mini_run / "hub" / "student" / "README.md").read_text().count("coco_mini_test") > 0


def test_rerun_skips_every_finished_stage(coco_mini_run, capsys):
    assert main(["--config", str(COCO_MINI), "--output_dir", str(coco_mini_run), "--smoke", "--quiet"]) == 0
    summary = json.loads((coco_mini_run / "summary.json").read_text())
    assert set(summary["stages"].values()) == {"skipped"}
    out = capsys.readouterr().out
    assert "coco_mini_test" in out and "T→I R@1" in out and "results.json" in out


def test_changed_student_setting_reruns_only_the_student_and_what_follows(coco_mini_run, tmp_path):
    experiment = yaml.safe_load(COCO_MINI.read_text())
    experiment["smoke"]["student"]["learning_rate"] = 3.0e-6
    config = tmp_path / "changed.yaml"
    config.write_text(yaml.safe_dump(experiment))
    assert main(["--config", str(config), "--output_dir", str(coco_mini_run), "--smoke", "--quiet"]) == 0
    stages = json.loads((coco_mini_run / "summary.json").read_text())["stages"]
    assert all(stages[name] == "skipped" for name in ("data", "base", "regions", "features", "teacher", "targets"))
    assert all(stages[name] != "skipped" for name in ("student_dclip", "evaluate", "hub", "reload_check"))


def _write(tmp_path, experiment) -> str:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return str(path)


def test_experiment_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_experiment(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['trainer'\]"):
        load_experiment(_write(tmp_path, {"data": {}, "base": {}, "trainer": {}}))
    with pytest.raises(ValueError, match="section 'base' is missing"):
        load_experiment(_write(tmp_path, {"data": {"synthetic": {}}}))
    with pytest.raises(ValueError, match=r"unknown control\(s\) \['nothing'\]"):
        load_experiment(_write(tmp_path, {"data": {}, "base": {}, "controls": ["nothing"]}))


def test_offline_hub_base_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    experiment = yaml.safe_load(COCO_MINI.read_text())
    experiment.pop("smoke")
    experiment["base"] = {"clip_name_or_path": "no-such-org/no-such-clip"}
    config = _write(tmp_path, experiment)
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-clip.*offline"):
        main(["--config", config, "--output_dir", str(tmp_path / "run"), "--quiet"])
    assert not (tmp_path / "run" / "teacher").exists()


def test_smoke_section_replaces_the_base_and_merges_the_rest():
    experiment = apply_smoke(load_experiment(COCO_MINI))
    assert "clip_name_or_path" not in experiment["base"] and "bootstrap" in experiment["base"]
    assert experiment["teacher"]["per_device_train_batch_size"] == 16
    assert experiment["evaluation"]["retrieval"][0]["name"] == "coco_mini_test"
    assert "smoke" not in experiment


def test_summary_table_shows_relative_gains_and_retention():
    results = {
        "models": {
            "base": {"set": {"t2i_recall@1": 20.0, "i2t_recall@1": 40.0}},
            "dclip": {"set": {"t2i_recall@1": 25.0, "i2t_recall@1": 30.0}},
        },
        "retention": {"dclip": {"zs": 0.94}},
    }
    table = summary_table(results)
    assert "25.00 %" in table and "-25.00 %" in table and "94.00 %" in table


def test_unset_environment_variable_in_an_experiment_is_named(monkeypatch):
    monkeypatch.delenv("DCLIP_DATA", raising=False)
    with pytest.raises(ValueError, match=r"\['DCLIP_DATA'\].*export DCLIP_DATA="):
        load_experiment(REPO_ROOT / "training" / "configs" / "experiments" / "paper_vitb16.yaml")
    monkeypatch.setenv("DCLIP_DATA", "/data")
    experiment = load_experiment(REPO_ROOT / "training" / "configs" / "experiments" / "paper_vitb16.yaml")
    assert experiment["evaluation"]["retrieval"][0]["path"] == "/data/karpathy/dataset_coco.json"


def test_run_refuses_to_start_under_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="one process"):
        main(["--config", str(COCO_MINI)])


def test_typo_in_a_stage_argument_fails_when_the_file_is_read(tmp_path):
    experiment = yaml.safe_load(COCO_MINI.read_text())
    experiment["teacher"]["lerning_rate"] = 1.0
    with pytest.raises(
        ValueError,
        match=r"Unknown teacher-stage argument\(s\) \[.lerning_rate.\] in section .teacher. of .*experiment.yaml",
    ):
        load_experiment(_write(tmp_path, experiment))
    experiment = yaml.safe_load(COCO_MINI.read_text())
    experiment["smoke"]["student"]["temprature"] = 0.1
    with pytest.raises(ValueError, match=r"\['temprature'\] in section 'smoke.student'"):
        load_experiment(_write(tmp_path, experiment))
    (tmp_path / "broken.yaml").write_text("data: {synthetic: [\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        load_experiment(tmp_path / "broken.yaml")
