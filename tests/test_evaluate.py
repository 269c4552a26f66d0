"""The `dclip evaluate` runner on the shared COCO/Caltech data, its cache, CLI, and the `evaluate` module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor

from tests.conftest import REPO_ROOT, tiny_clip_config
from training.evaluate import evaluate_models, load_model, main, parse_set_spec
from training.metrics import retrieval_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def two_models(tmp_path, tiny_tokenizer, tiny_image_processor):
    processor = CLIPProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer)
    torch.manual_seed(0)
    base = CLIPModel(tiny_clip_config(vocab_size=len(tiny_tokenizer)))
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    torch.manual_seed(1)
    other = CLIPModel(tiny_clip_config(vocab_size=len(tiny_tokenizer)))
    return {"base": str(base_dir), "dclip": (other, processor)}


def coco_spec(shared_data: Path, name: str = "coco_mini") -> str:
    root = shared_data / "coco_mini_captions"
    return (
        f"{name}=karpathy:{root / 'annotations' / 'dataset_coco_mini_karpathy_style.json'},"
        f"image_root={root / 'images'},splits=test"
    )


def test_set_specs_parse_from_strings_and_mappings():
    spec = parse_set_spec("coco_1k=karpathy:/d/coco.json,image_root=/d/img,splits=test,max_images=1000", "retrieval")
    assert spec == {
        "name": "coco_1k",
        "type": "karpathy",
        "path": "/d/coco.json",
        "image_root": "/d/img",
        "splits": ["test"],
        "max_images": 1000,
    }
    assert parse_set_spec("hn=lexicon:coco_5k", "hard_negatives") == {"name": "hn", "retrieval": "coco_5k"}
    assert parse_set_spec({"name": "c", "path": "/x"}, "zero_shot") == {"name": "c", "path": "/x"}
    with pytest.raises(ValueError, match="TYPE:PATH"):
        parse_set_spec("coco=/d/coco.json", "retrieval")


def test_runner_on_coco_and_caltech_writes_results_table_plots_and_reuses_the_cache(tmp_path, shared_data, two_models):
    out = tmp_path / "eval"
    kwargs = dict(
        retrieval_sets=[coco_spec(shared_data)],
        zero_shot_sets=[{"name": "caltech_mini", "path": str(shared_data / "caltech101_subset20")}],
        hard_negative_sets=["coco_hn=lexicon:coco_mini"],
        output_dir=out,
        base="base",
        max_images=12,
        batch_size=8,
        progress=False,
    )
    report = evaluate_models(two_models, **kwargs)
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"] == json.loads(json.dumps(report["models"]))
    assert set(saved["models"]) == {"base", "dclip"}
    for name in ("base", "dclip"):
        coco = saved["models"][name]["coco_mini"]
        assert coco["n_images"] == 12 and coco["n_texts"] == 60 and coco["n_failed_images"] == 0
        assert 0 <= coco["t2i_recall@1"] <= coco["t2i_recall@5"] <= coco["t2i_recall@10"] <= 100
        assert 1 <= coco["t2i_median_rank"] <= 12 and 1 <= coco["i2t_mean_rank"] <= 60
        assert "i2t_recall@2" in coco  # curve points
        caltech = saved["models"][name]["caltech_mini"]
        assert caltech["n_images"] == 12 and caltech["n_classes"] == 20
        assert 0 <= caltech["top1"] <= caltech["top5"] <= 100
        hn = saved["models"][name]["coco_hn"]
        assert hn["hn_n_triples"] + hn["hn_lexicon_skipped_images"] == 12
        assert 0 <= hn["hn_accuracy"] <= 100 and 0 <= hn["hn_pairwise_accuracy"] <= 100
    base, dclip = saved["models"]["base"]["coco_mini"], saved["models"]["dclip"]["coco_mini"]
    gain = saved["gains"]["dclip"]["coco_mini"]["t2i_mrr"]
    assert gain == pytest.approx((dclip["t2i_mrr"] - base["t2i_mrr"]) / base["t2i_mrr"])
    top1 = [saved["models"][n]["caltech_mini"]["top1"] for n in ("dclip", "base")]
    expected_retention = None if top1[1] == 0 else top1[0] / top1[1]
    assert saved["retention"]["dclip"]["caltech_mini"] == expected_retention
    assert saved["meta"]["base"] == "base" and saved["meta"]["datasets"]["coco_mini"]["kind"] == "retrieval"
    table = (out / "results.md").read_text()
    assert "## coco_mini (retrieval)" in table and "| dclip |" in table and "## caltech_mini (zero shot)" in table
    for plot in ("recall_at_k_coco_mini.png", "zero_shot_retention.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC

    again = evaluate_models(two_models, **kwargs)
    assert all(meta["cache_misses"] == 0 for meta in again["meta"]["models"].values())
    assert again["models"] == report["models"]


def test_images_that_fail_to_load_are_skipped_and_counted(tmp_path, shared_data, two_models):
    folder = tmp_path / "data"
    folder.mkdir()
    sources = sorted((shared_data / "coco_mini_captions" / "images" / "val2017").glob("*.jpg"))[:3]
    lines = ["image,caption"]
    for index, source in enumerate(sources):
        shutil.copy(source, folder / source.name)
        lines += [f"{source.name},a photo number {index}", f"{source.name},another caption {index}"]
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    lines.append("broken.jpg,a broken image")
    (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    report = evaluate_models(
        {"base": two_models["base"]},
        retrieval_sets=[{"name": "mini_csv", "type": "csv", "path": str(folder / "captions.csv")}],
        output_dir=tmp_path / "eval",
        use_cache=False,
        plots=False,
        progress=False,
    )
    metrics = report["models"]["base"]["mini_csv"]
    assert metrics["n_failed_images"] == 1 and metrics["n_images"] == 3 and metrics["n_texts"] == 6
    assert report["meta"]["failed_images"]["base"] == 1


def test_cli_main_evaluates_a_saved_model_on_a_triples_file(tmp_path, shared_data, two_models):
    images = sorted((shared_data / "caltech101_subset20" / "images" / "cup").glob("*.jpg"))[:2]
    triples = [
        {
            "image_id": p.stem,
            "image": str(p),
            "positive": "a red cup on a table",
            "negatives": [{"caption": "a blue cup on a table", "swap": "color"}],
        }
        for p in images
    ]
    (tmp_path / "hn.json").write_text(json.dumps(triples))
    out = tmp_path / "cli"
    code = main(
        [
            "--models",
            f"base={two_models['base']}",
            "--hard_negatives",
            f"hn={tmp_path / 'hn.json'}",
            "--output_dir",
            str(out),
            "--no_plots",
            "--no_progress",
        ]
    )
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"]["base"]["hn"]["hn_n_triples"] == 2
    assert saved["models"]["base"]["hn"]["hn_color_count"] == 2


def test_missing_hub_model_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hf download"):
        load_model("nobody-here/definitely-missing-clip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("./no/such/folder")


def test_evaluate_module_shares_the_metric_code_and_gives_identical_numbers():
    import evaluate

    module_dir = REPO_ROOT / "dclip_metrics" / "dclip_retrieval"
    assert (module_dir / "retrieval_core.py").read_bytes() == (REPO_ROOT / "training" / "metrics.py").read_bytes(), (
        "dclip_metrics/dclip_retrieval/retrieval_core.py must be the symlink to training/metrics.py."
    )
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 8)).astype(np.float32)
    owner = rng.integers(0, 15, size=50)
    texts = (images[owner] + rng.normal(size=(50, 8))).astype(np.float32)
    metric = evaluate.load(str(module_dir))
    got = metric.compute(text_embeds=texts, text_to_image=owner, image_embeds=images, chunk_size=7)
    assert got == retrieval_metrics(images, texts, owner, chunk_size=7)


@pytest.mark.slow
def test_two_processes_encode_and_score_like_one(tmp_path, shared_data, two_models):
    sets = [coco_spec(shared_data)]
    zero_shot = [f"caltech_mini={shared_data / 'caltech101_subset20'}"]
    single = evaluate_models(
        {"base": two_models["base"]},
        sets,
        zero_shot,
        output_dir=tmp_path / "one",
        max_images=5,  # odd: the two shards differ in size
        batch_size=2,
        plots=False,
        progress=False,
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1",
    }
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.evaluate"]
    arguments = ["--models", f"base={two_models['base']}", "--retrieval", *sets, "--zero_shot", *zero_shot]
    arguments += ["--output_dir", str(tmp_path / "two"), "--max_images", "5", "--batch_size", "2", "--no_plots"]
    completed = subprocess.run(
        [*launcher, *arguments], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    double = json.loads((tmp_path / "two" / "results.json").read_text())
    one_cache = sorted((tmp_path / "one" / "embedding_cache").iterdir())
    two_cache = sorted((tmp_path / "two" / "embedding_cache").iterdir())
    assert [p.name for p in one_cache] == [p.name for p in two_cache] and len(one_cache) == 4
    for a, b in zip(one_cache, two_cache):
        first, second = load_file(a), load_file(b)
        for key in first:
            assert torch.allclose(first[key].float(), second[key].float(), atol=1e-5), (a.name, key)
    for dataset, metrics in single["models"]["base"].items():
        assert double["models"]["base"][dataset] == pytest.approx(metrics, abs=1e-6), dataset
