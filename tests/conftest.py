"""Shared fixtures: tiny random CLIP configs, a locally trained tiny tokenizer, the offline shared data folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import CLIPConfig, CLIPImageProcessor  # noqa: E402

from modeling_dclip import DCLIPProcessor  # noqa: E402
from training.tokenizer import train_clip_tokenizer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_CORPUS = [
    "a red circle left of a blue square",
    "two green triangles above a yellow star",
    "a man riding a horse on a beach",
    "a plate of food with broccoli and a fork",
    "a cat sitting on a laptop keyboard",
    "a striped dotted solid small large object",
]
TINY_IMAGE_SIZE = 30


def shared_data_dir() -> Path:
    """`DCLIP_SHARED_DATA` or `../shared/data` next to the repository (read-only: never write there)."""
    return Path(os.environ.get("DCLIP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def tiny_clip_config(vocab_size: int, projection_dim: int = 32) -> CLIPConfig:
    """A random CLIP small enough for CPU tests (hidden 32, 2 layers, image 30, patch 6).

    `vocab_size` must be `len(tokenizer)`: the trained tokenizer puts its start/end tokens at the last two ids.
    """
    return CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=6,
        ),
        projection_dim=projection_dim,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_clip_tokenizer(TOKENIZER_CORPUS, vocab_size=600)


@pytest.fixture(scope="session")
def tiny_image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )


@pytest.fixture
def tiny_processor(tiny_tokenizer, tiny_image_processor) -> DCLIPProcessor:
    return DCLIPProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer)


@pytest.fixture
def clip_config(tiny_tokenizer) -> CLIPConfig:
    torch.manual_seed(0)
    return tiny_clip_config(vocab_size=len(tiny_tokenizer))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "coco_mini_captions" / "captions.csv").is_file():
        pytest.fail(f"Shared test data not found under {root}; set DCLIP_SHARED_DATA to the shared/data folder.")
    return root


@pytest.fixture(scope="session")
def coco_captions(shared_data) -> list[str]:
    with open(shared_data / "coco_mini_captions" / "captions.csv", newline="", encoding="utf-8") as handle:
        return [row["caption"] for row in csv.DictReader(handle)]
