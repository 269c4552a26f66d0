"""Bootstrapping the tiny base CLIP: the loss, a micro training run, and a folder that stock CLIP classes load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPProcessor
from transformers.models.clip.modeling_clip import image_text_contrastive_loss as clip_loss

from training.bootstrap import BootstrapConfig, bootstrap_clip, contrastive_loss, encode_images, save_model_atomic
from training.synthetic import SyntheticConfig, build_synthetic
from training.tokenizer import train_clip_tokenizer

MICRO_DATA = dict(num_pretrain_scenes=6, num_pretrain_closeups=10, num_train=2, num_val=1, num_test=2, num_zero_shot=6)
MICRO_MODEL = dict(
    image_size=16,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
    projection_dim=16,
    vocab_size=600,
    steps=3,
    batch_size=8,
    warmup_steps=1,
)


def test_contrastive_loss_equals_hf_clip_loss_when_captions_are_distinct():
    torch.manual_seed(0)
    logits = torch.randn(6, 6) * 3
    assert torch.allclose(contrastive_loss(logits, torch.arange(6)), clip_loss(logits), atol=1e-6)


def test_contrastive_loss_treats_identical_captions_as_positives():
    torch.manual_seed(1)
    logits_per_text = torch.randn(5, 5)
    ids = torch.tensor([0, 1, 0, 2, 1])
    # Naive reference: per row, average cross-entropy over that row's positives.
    total_text, total_image = 0.0, 0.0
    for i in range(5):
        positives = [j for j in range(5) if ids[j] == ids[i]]
        log_text = F.log_softmax(logits_per_text[i], dim=0)
        log_image = F.log_softmax(logits_per_text[:, i], dim=0)
        total_text += -sum(log_text[j] for j in positives) / len(positives)
        total_image += -sum(log_image[j] for j in positives) / len(positives)
    expected = (total_text / 5 + total_image / 5) / 2
    assert torch.allclose(contrastive_loss(logits_per_text, ids), torch.as_tensor(expected), atol=1e-6)


def test_micro_bootstrap_saves_a_folder_that_stock_clip_loads_offline(tmp_path):
    data = build_synthetic(tmp_path / "data", SyntheticConfig(seed=1, **MICRO_DATA))
    out = tmp_path / "base"
    metrics = bootstrap_clip(
        data.splits["pretrain"].to_list(),
        out,
        BootstrapConfig(**MICRO_MODEL),
        zero_shot_sets={name: data.zero_shot(name) for name in data.zero_shot_dirs},
        progress=False,
    )
    assert set(metrics["zero_shot"]) == {"shape", "color", "pattern"}
    assert all(0.0 <= value <= 100.0 for value in metrics["zero_shot"].values())
    assert metrics["steps"] == 3 and torch.isfinite(torch.tensor(metrics["final_loss"]))
    assert json.loads((out / "bootstrap_metrics.json").read_text())["zero_shot"] == metrics["zero_shot"]

    model = CLIPModel.from_pretrained(out, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(out, local_files_only=True)
    assert model.config.vision_config.image_size == 16 and model.config.projection_dim == 16
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert processor.image_processor.crop_size == {"height": 16, "width": 16}
    # The tokenizer was trained on the captions: their words are whole tokens, not bytes.
    assert len(processor.tokenizer.tokenize("a red striped circle")) == 4

    row = data.splits["test"][0]
    pixels = encode_images(processor, [row["image"]])
    inputs = processor(text=row["captions"], return_tensors="pt", padding=True)
    with torch.no_grad():
        text = model.get_text_features(**inputs).pooler_output
        image = model.get_image_features(pixel_values=pixels).pooler_output
    assert text.shape == (2, 16) and image.shape == (1, 16)
    assert torch.isfinite(text).all() and torch.isfinite(image).all()


def test_bootstrap_is_deterministic_for_a_seed_and_tokenizer(tmp_path):
    data = build_synthetic(tmp_path / "data", SyntheticConfig(seed=2, **MICRO_DATA))
    rows = data.splits["pretrain"].to_list()
    tokenizer = train_clip_tokenizer([c for r in rows for c in r["captions"]], vocab_size=600)
    config = BootstrapConfig(**MICRO_MODEL)
    first = bootstrap_clip(rows, tmp_path / "a", config, tokenizer=tokenizer, progress=False)
    second = bootstrap_clip(rows, tmp_path / "b", config, tokenizer=tokenizer, progress=False)
    assert first["final_loss"] == pytest.approx(second["final_loss"], abs=1e-6)
    a = CLIPModel.from_pretrained(tmp_path / "a").state_dict()
    b = CLIPModel.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_failed_save_keeps_the_previous_model_folder(tmp_path, monkeypatch):
    out = tmp_path / "base"
    out.mkdir()
    (out / "marker").write_text("previous")

    class Broken:
        def save_pretrained(self, folder):
            (folder / "half.bin").write_bytes(b"x")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_model_atomic(Broken(), Broken(), out, {})
    assert (out / "marker").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(image_size=50), "multiple of patch_size"), (dict(text_width=30), "divisible"), (dict(steps=0), "steps")],
)
def test_invalid_bootstrap_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BootstrapConfig(**kwargs)


def test_bootstrap_without_captions_raises(tmp_path):
    with pytest.raises(ValueError, match="at least one caption"):
        bootstrap_clip([{"image": "x.png", "captions": []}], tmp_path / "m", BootstrapConfig(**MICRO_MODEL))
