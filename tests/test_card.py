"""Model cards: offline rendering, Hub metadata and model-index round trips, tolerant results reading, the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from hub_card import card as card_module
from hub_card.card import (
    NOT_EVALUATED,
    build_card,
    eval_results_for,
    relative_gain,
    resolve_model_names,
    usage_snippet,
    zero_shot_retention,
)

REPO_ID = "dclip-test/dclip-tiny"

# The layout of training/evaluate.py: {"models": {name: {dataset: {metric: value}}}, "gains", "retention", "meta"}.
RESULTS = {
    "models": {
        "base": {
            "coco_5k": {
                "t2i_recall@1": 30.0,
                "t2i_recall@5": 55.0,
                "t2i_recall@10": 66.0,
                "i2t_recall@1": 50.0,
                "i2t_recall@5": 75.0,
                "i2t_recall@10": 83.0,
                "t2i_mrr": 41.0,
                "i2t_mrr": 60.0,
                "t2i_map": 41.0,
                "i2t_map": 35.0,
                "t2i_median_rank": 3.0,
            },
            "imagenet": {"top1": 68.0, "top5": 90.0},
            "hard_negatives": {"color_accuracy": 60.0, "object_accuracy": 70.0},
        },
        "dclip": {
            "coco_5k": {
                "t2i_recall@1": 36.0,
                "t2i_recall@5": 60.5,
                "t2i_recall@10": 70.0,
                "i2t_recall@1": 52.5,
                "i2t_recall@5": 76.0,
                "i2t_recall@10": 84.0,
                "t2i_mrr": 46.0,
                "i2t_mrr": 62.0,
                "t2i_map": 46.0,
                "i2t_map": 37.0,
                "t2i_median_rank": 2.0,
            },
            "imagenet": {"top1": 63.92, "top5": 88.0},
            "hard_negatives": {"color_accuracy": 66.0, "object_accuracy": 71.0},
            "flickr30k": {"t2i_recall@1": 65.0, "weird_new_metric": 1.5, "note": "n/a"},
        },
    },
    "gains": {},
    "retention": {},
    "meta": {"hardware": "1x NVIDIA A100 80GB", "train_runtime": 5400.0},
}
RUN_ARGS = {
    "clip_model_name_or_path": "openai/clip-vit-base-patch16",
    "data": {"selection": "clean", "sources": ["coco", "flickr30k", "cc3m"], "root": "/home/someone/data/coco"},
    "student": {"learning_rate": 1e-6, "num_train_epochs": 2, "per_device_train_batch_size": 32, "seed": 42},
}


def naive_model_index_entries(results, model):
    """Reference: every numeric t2i_/i2t_ metric and every top-k metric of `model`, as comparable tuples."""
    out = set()
    for dataset, metrics in results["models"][model].items():
        if dataset == "hard_negatives":
            continue
        for key, value in metrics.items():
            if not isinstance(value, (int, float)):
                continue
            if key.startswith("t2i_"):
                out.add(("text-to-image-retrieval", dataset, key[4:], value))
            elif key.startswith("i2t_"):
                out.add(("image-to-text-retrieval", dataset, key[4:], value))
            elif key.startswith("top"):
                out.add(("zero-shot-image-classification", dataset, key, value))
    return out


def as_tuples(eval_results):
    return {(r.task_type, r.dataset_type, r.metric_type, r.metric_value) for r in eval_results}


@pytest.fixture
def student_card() -> ModelCard:
    return build_card(kind="student", repo_id=REPO_ID, run_args=RUN_ARGS, results=RESULTS, plots=["/tmp/recall.png"])


def test_student_card_metadata_validates_and_round_trips(student_card):
    reloaded = ModelCard(str(student_card))
    data = reloaded.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.license == "apache-2.0"
    assert data.base_model == "openai/clip-vit-base-patch16"
    assert {"dclip", "dclip-student", "arxiv:2505.21549"} <= set(data.tags)
    assert data.model_name == "dclip-tiny"
    # Every retrieval and zero-shot result of this checkpoint, nothing of the base, no hard-negative/unknown metric.
    assert as_tuples(data.eval_results) == naive_model_index_entries(RESULTS, "dclip")
    # The YAML header is a valid model-index: it survives the Hub library's own conversions both ways.
    header = yaml.safe_load(str(student_card).split("---")[1])
    name, parsed = model_index_to_eval_results(header["model-index"])
    assert name == "dclip-tiny"
    assert eval_results_to_model_index(name, parsed) == header["model-index"]
    assert ModelCardData(**header).to_dict()["model-index"] == header["model-index"]


def test_card_body_has_every_section_and_the_leakage_setting(student_card):
    text = student_card.text
    for heading in (
        "## What DCLIP is",
        "## How this checkpoint was trained",
        "## Results",
        "## Usage",
        "## Limitations",
        "## Citation",
    ):
        assert heading in text
    assert "**clean**" in text and "leakage" in text
    assert "1x NVIDIA A100 80GB" in text and "90.0 min" in text
    assert "| `learning_rate` | 1e-06 |" in text
    assert "2505.21549" in text and "@misc{csizmadia2025dclip" in text
    assert "![recall.png](plots/recall.png)" in text
    # Absolute paths of the training machine are not published.
    assert "/home/someone" not in text and "…/coco" in text


def test_results_table_gains_and_retention_match_hand_computation(student_card):
    text = student_card.text
    assert "| t2i_recall@1 | 30.00 | 36.00 | +20.0 % |" in text
    assert relative_gain(36.0, 30.0) == pytest.approx(20.0)
    assert zero_shot_retention(RESULTS, "dclip", "base") == {"imagenet": pytest.approx(63.92 / 68.0 * 100)}
    assert "zero-shot top-1 retention 94.0 % of the base model" in text
    assert "text→image R@1 30.00 → 36.00 (+20.0 % relative)" in text
    # Rank metrics are marked as lower-is-better rather than silently shown as a "gain".
    assert "| t2i_median_rank (lower is better) | 3.00 | 2.00 |" in text


def test_unknown_metrics_are_listed_generically_and_missing_ones_say_not_evaluated(student_card):
    text = student_card.text
    assert "| weird_new_metric | not evaluated | 1.50 | — |" in text
    assert "| note | not evaluated | n/a | — |" in text
    assert "| color_accuracy | 60.00 | 66.00 | +10.0 % |" in text
    assert not any(r.metric_type in ("weird_new_metric", "color_accuracy") for r in student_card.data.eval_results)


@pytest.mark.parametrize(
    "results",
    [None, {}, {"models": None}, {"models": {}}, {"gains": 1, "meta": "x"}],
    ids=["none", "empty", "null-models", "no-models", "junk-sections"],
)
def test_missing_results_give_a_valid_card_that_says_not_evaluated(results):
    card = build_card(kind="student", repo_id=REPO_ID, run_args=None, results=results)
    reloaded = ModelCard(str(card))
    assert "model-index" not in str(card) and not reloaded.data.eval_results
    assert NOT_EVALUATED in card.text
    assert "not recorded" in card.text  # no run arguments: selection, hardware and time are unknown


def test_faithful_selection_warns_and_local_base_is_not_metadata(tmp_path):
    args = {"data_selection": "faithful", "clip_model_name_or_path": str(tmp_path)}
    card = build_card(kind="student", repo_id=REPO_ID, run_args=args, results=RESULTS)
    assert "**faithful**" in card.text and "optimistic" in card.text
    assert card.data.base_model is None  # a local path is not a Hub id: the Hub would reject it


def test_teacher_card_uses_remote_code_and_reports_missing_teacher_results():
    card = build_card(kind="teacher", repo_id="org/dclip-teacher-tiny", run_args=RUN_ARGS, results=RESULTS)
    reloaded = ModelCard(str(card))
    assert {"dclip-teacher", "custom_code"} <= set(reloaded.data.tags)
    assert not reloaded.data.eval_results  # the run has no teacher entry
    snippet = usage_snippet(card)
    assert 'AutoModel.from_pretrained("org/dclip-teacher-tiny", trust_remote_code=True)' in snippet
    assert "This checkpoint was not evaluated directly (the teacher embeds image–caption *pairs*" in card.text


def test_model_names_resolve_from_hints_names_and_explicit_keys():
    assert resolve_model_names(RESULTS, "student") == ("dclip", "base")
    with_meta = {**RESULTS, "meta": {"model": "base", "base": "dclip"}}
    assert resolve_model_names(with_meta, "student") == ("base", "dclip")
    assert resolve_model_names(RESULTS, "student", model_key="base", base_key="dclip") == ("base", "dclip")
    assert resolve_model_names({"models": {"x": {}}}, "student") == ("x", None)
    assert resolve_model_names(None, "student") == (None, None)
    with pytest.raises(ValueError, match="model_key='nope'"):
        resolve_model_names(RESULTS, "student", model_key="nope")
    ambiguous = copy.deepcopy(RESULTS)
    ambiguous["models"]["dclip_seed1"] = {}
    with pytest.raises(ValueError, match="--model_key"):
        resolve_model_names(ambiguous, "student")


def test_eval_results_skip_non_finite_values():
    results = {"models": {"dclip": {"coco_5k": {"t2i_recall@1": float("nan"), "i2t_recall@1": 12.5}}}}
    assert as_tuples(eval_results_for(results, "dclip")) == {("image-to-text-retrieval", "coco_5k", "recall@1", 12.5)}


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="kind"):
        build_card(kind="both", repo_id=REPO_ID)
    with pytest.raises(ValueError, match="repo_id"):
        build_card(kind="student", repo_id=" ")


def test_card_cli_renders_readme_from_files(tmp_path, capsys):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(RESULTS), encoding="utf-8")
    (tmp_path / "recall_at_k.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    config_path = tmp_path / "experiment.yaml"
    config_path.write_text(yaml.safe_dump(RUN_ARGS), encoding="utf-8")
    out = tmp_path / "card" / "README.md"
    argv = ["--kind", "student", "--repo_id", REPO_ID, "--results", str(results_path), "--config", str(config_path)]
    assert card_module.main([*argv, "--output", str(out)]) == 0
    saved = ModelCard.load(out)
    assert as_tuples(saved.data.eval_results) == naive_model_index_entries(RESULTS, "dclip")
    assert "![recall_at_k.png](plots/recall_at_k.png)" in saved.text  # plots beside results.json by default
    assert card_module.main(argv) == 0
    assert "model-index" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="results"):
        card_module.main(["--kind", "student", "--repo_id", REPO_ID, "--results", str(tmp_path / "missing.json")])


def test_experiment_yaml_sections_drive_the_stage_card_and_selection():
    experiment = {
        "seed": 42,
        "clip_name_or_path": "openai/clip-vit-base-patch16",
        "data": {
            "sources": [
                {"name": "coco", "kind": "coco", "path": "/data/coco/captions_train2017.json", "max_images": 50000},
                {"name": "flickr30k", "kind": "karpathy", "path": "/data/flickr/dataset_flickr30k.json"},
            ],
            "exclude_file": "/data/karpathy/dataset_coco.json",
        },
        "regions": {"source": "yolo", "weights": "yolov8x.pt", "conf": 0.25},
        "teacher": {"learning_rate": 1e-5, "num_train_epochs": 5, "cross_attention_heads": 8},
        "student": {"learning_rate": 1e-6, "num_train_epochs": 2},
        "smoke": {"teacher": {"cross_attention_heads": 4}, "student": {"seed": 7}},  # only applied with --smoke
    }
    teacher = build_card(kind="teacher", repo_id=REPO_ID, run_args=experiment).text
    student = build_card(kind="student", repo_id=REPO_ID, run_args=experiment).text
    assert "| `learning_rate` | 1e-05 |" in teacher and "| `num_train_epochs` | 5 |" in teacher
    assert "| `learning_rate` | 1e-06 |" in student and "| `num_train_epochs` | 2 |" in student
    assert "| `cross_attention_heads` | 8 |" in teacher and "| `cross_attention_heads` |" not in student
    assert "| `seed` | 42 |" in student
    for text in (teacher, student):
        assert "**Training data:** coco (≤ 50000 images), flickr30k" in text
        assert "**clean**" in text  # an exclusion list was applied
        assert "**Regions for the teacher:** yolo (yolov8x.pt, conf 0.25)" in text
        assert "/data/" not in text and "| `data.sources.0.path` | …/captions_train2017.json |" in text
    del experiment["data"]["exclude_file"]
    assert "**faithful**" in build_card(kind="student", repo_id=REPO_ID, run_args=experiment).text
    synthetic = build_card(kind="student", repo_id=REPO_ID, run_args={"data": {"synthetic": {"num_images": 10}}})
    assert "**synthetic**" in synthetic.text and "synthetic scenes generated by" in synthetic.text


def test_card_reads_the_real_evaluate_output(tiny_tokenizer, tiny_image_processor, shared_data, tmp_path):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from tests.conftest import tiny_clip_config
    from training.evaluate import evaluate_models

    processor = CLIPProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer)
    models = {}
    for seed, name in ((0, "base"), (1, "dclip")):
        torch.manual_seed(seed)
        models[name] = (CLIPModel(tiny_clip_config(vocab_size=len(tiny_tokenizer))).eval(), processor)
    coco = shared_data / "coco_mini_captions"
    evaluate_models(
        models,
        retrieval_sets=[
            {
                "name": "coco_mini",
                "type": "csv",
                "path": str(coco / "captions.csv"),
                "image_root": str(coco / "images"),
            }
        ],
        zero_shot_sets=[{"name": "caltech_mini", "path": str(shared_data / "caltech101_subset20")}],
        hard_negative_sets=[{"name": "coco_hn", "retrieval": "coco_mini", "seed": 0}],
        output_dir=tmp_path / "eval",
        max_images=6,
        progress=False,
    )
    results_path = tmp_path / "eval" / "results.json"
    out = tmp_path / "README.md"
    assert card_module.main(["--kind", "student", "--repo_id", REPO_ID, "--results", str(results_path),
                             "--output", str(out)]) == 0  # fmt: skip
    card = ModelCard.load(out)
    results = json.loads(results_path.read_text())
    expected = set()
    for dataset, metrics in results["models"]["dclip"].items():
        kind = results["meta"]["datasets"][dataset]["kind"]
        for key, value in metrics.items():
            if kind == "retrieval" and key[:4] in ("t2i_", "i2t_"):
                task = "text-to-image-retrieval" if key.startswith("t2i_") else "image-to-text-retrieval"
                expected.add((task, dataset, key[4:], round(value, 4)))
            elif kind == "zero_shot" and not key.startswith("n_"):
                expected.add(("zero-shot-image-classification", dataset, key, round(value, 4)))
    assert as_tuples(card.data.eval_results) == expected
    assert {"top1", "top5", "mean_per_class_recall", "recall@1", "mrr", "map"} <= {m for _, _, m, _ in expected}
    # Counts are set sizes, not results; hard negatives are tabulated; the evaluator's plots are embedded.
    assert "`n_images` 6" in card.text and "| hn_accuracy |" in card.text
    for plot in ("recall_at_k_coco_mini.png", "zero_shot_retention.png"):
        assert f"](plots/{plot})" in card.text
