"""Zero-shot classification: templates, metrics on hand-made embeddings, and a tiny random CLIP on Caltech."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from tests.conftest import tiny_clip_config
from training.data import load_zero_shot_folder
from training.zero_shot import (
    IMAGENET_80_TEMPLATES,
    CLIPEncoder,
    class_embeddings,
    resolve_templates,
    retention,
    zero_shot_classify,
    zero_shot_metrics,
)


def test_template_sets_follow_the_paper_and_clip():
    assert resolve_templates("imagenet") == ("a photo of a {c}",)
    assert resolve_templates("cifar") == ("a photo of a {c}, a type of object",)
    assert len(IMAGENET_80_TEMPLATES) == 80 and len(set(IMAGENET_80_TEMPLATES)) == 80
    assert all("{c}" in t for t in IMAGENET_80_TEMPLATES)
    assert resolve_templates(["a {c}", "the {c}"]) == ("a {c}", "the {c}")
    with pytest.raises(ValueError, match="placeholder"):
        resolve_templates(["no class here"])
    with pytest.raises(ValueError, match="Unknown template set"):
        resolve_templates("imagenet81")


def test_zero_shot_metrics_match_hand_computation():
    classes = torch.eye(3)
    # image 0 → class 0 (right), image 1 → class 2 (true 1: rank 2), image 2 → class 2 (right), image 3 true 0: rank 3.
    images = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.5, 0.9], [0.1, 0.0, 1.0], [0.1, 0.5, 0.9]])
    out = zero_shot_metrics(images, classes, [0, 1, 2, 0], ks=(1, 2))
    assert out["top1"] == pytest.approx(50.0)
    assert out["top2"] == pytest.approx(75.0)
    # per-class top-1 recall: class 0: 1/2, class 1: 0, class 2: 1 → mean 50 %.
    assert out["mean_per_class_recall"] == pytest.approx(50.0)
    assert out["n_images"] == 4 and out["n_classes"] == 3


def test_zero_shot_ties_count_against_the_model():
    out = zero_shot_metrics(torch.ones(4, 3), torch.ones(5, 3), [0, 1, 2, 3], ks=(1, 5))
    assert out["top1"] == 0.0 and out["top5"] == 100.0


def test_retention_is_the_top1_ratio():
    assert retention(47.0, 50.0) == pytest.approx(0.94)
    assert retention(10.0, 0.0) is None


class _FakeEncoder:
    """Text embeddings = a fixed random vector per prompt string, to check the ensemble arithmetic."""

    def __init__(self):
        self.table = {}

    def encode_texts(self, texts, desc=""):
        for text in texts:
            self.table.setdefault(text, torch.nn.functional.normalize(torch.randn(4), dim=0))
        return torch.stack([self.table[t] for t in texts])


def test_class_embedding_is_the_normalised_mean_over_templates():
    torch.manual_seed(0)
    encoder = _FakeEncoder()
    out = class_embeddings(encoder, ["cat", "dog"], ["a {c}", "the {c}"])
    expected = torch.nn.functional.normalize(encoder.table["a dog"] + encoder.table["the dog"], dim=0)
    assert torch.allclose(out[1], expected, atol=1e-6)


@pytest.fixture
def tiny_clip(tiny_tokenizer, tiny_image_processor):
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config(vocab_size=len(tiny_tokenizer)))
    return model, CLIPProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer)


def test_zero_shot_on_caltech_subset_with_tiny_clip_gives_values_in_range(shared_data, tiny_clip):
    data = load_zero_shot_folder(shared_data / "caltech101_subset20")
    picks = list(range(0, len(data.images), 10))  # 2 images per class
    images = [data.images[i] for i in picks]
    labels = [data.labels[i] for i in picks]
    model, processor = tiny_clip
    out = zero_shot_classify(model, processor, images, labels, data.class_names, "paper", batch_size=16)
    assert out["n_images"] == 40 and out["n_classes"] == 20 and out["n_failed"] == 0
    assert 0.0 <= out["top1"] <= out["top5"] <= 100.0
    assert 0.0 <= out["mean_per_class_recall"] <= 100.0


def test_unreadable_images_are_skipped_and_counted(tmp_path, shared_data, tiny_clip):
    data = load_zero_shot_folder(shared_data / "caltech101_subset20")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    model, processor = tiny_clip
    encoder = CLIPEncoder(model, processor, batch_size=4)
    out = zero_shot_classify(
        None, None, [data.images[0], str(broken), data.images[25]], [0, 1, 1], data.class_names, encoder=encoder
    )
    assert out["n_images"] == 2 and out["n_failed"] == 1
    assert encoder.failed_images == [str(broken)]
