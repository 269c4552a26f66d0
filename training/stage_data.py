"""Datasets and collators that feed the two training stages (docs/internals.md §3).

Every sample is one image with one of its captions, drawn uniformly per epoch: `set_epoch(epoch)` changes the draw,
and the draw is a deterministic function of `(seed, epoch, index)`, so it is the same in every process and worker.
Datasets return plain dicts and the collators build exactly the batch keys the models take, so they survive the HF
`Trainer` with `remove_unused_columns=False`. A sample whose image cannot be read comes back as `None`; collators
drop it and count it in `stats` (never a crash mid-epoch).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from modeling_dclip import DCLIPProcessor

from .features import (
    ImageFeatureTable,
    TeacherTargetTable,
    TextFeatureTable,
    check_feature_compatibility,
    image_processor_hash,
)
from .regions import RegionTable, StaleCacheError, default_image_loader

logger = logging.getLogger(__name__)

TEACHER_FEATURE_KEYS = ("token_embeds", "token_mask", "text_embeds", "region_embeds", "region_mask", "image_embeds")
TEACHER_RAW_KEYS = ("input_ids", "attention_mask", "region_pixel_values", "region_mask", "pixel_values")
STUDENT_KEYS = ("pixel_values", "input_ids", "attention_mask", "teacher_embeds", "target_text_embeds")


def draw_caption_index(seed: int, epoch: int, index: int, num_captions: int) -> int:
    """The caption of sample `index` in `epoch`: uniform over its captions, a pure function of its arguments."""
    if num_captions < 1:
        raise ValueError(f"Sample {index} has no caption to draw.")
    return int(np.random.default_rng((seed, epoch, index)).integers(num_captions))


def _rows(dataset: Any, columns: Sequence[str]) -> list[dict]:
    names = getattr(dataset, "column_names", None)
    if names is not None:
        data = dataset.select_columns([c for c in columns if c in names]).to_dict()
        present = list(data)
        return [dict(zip(present, values)) for values in zip(*(data[c] for c in present))]
    return [{c: row[c] for c in columns if c in row} for row in dataset]


class _CaptionDrawDataset(Dataset):
    """Common part: the eligible images (index into the source dataset) and the per-epoch caption draw."""

    def __init__(self, rows: list[dict], eligible: list[int], seed: int) -> None:
        self.rows = rows
        self.eligible = eligible
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the caption draw of `epoch` (called by accelerate/the Trainer at the start of every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.eligible)

    def _draw(self, index: int) -> tuple[dict, int, int]:
        image_index = self.eligible[index]
        row = self.rows[image_index]
        return row, image_index, draw_caption_index(self.seed, self.epoch, index, len(row["captions"]))


def _eligible(rows: list[dict], keep: Callable[[dict], bool], what: str) -> list[int]:
    eligible, reasons = [], Counter()
    for index, row in enumerate(rows):
        if not row["captions"]:
            reasons["no_caption"] += 1
        elif not keep(row):
            reasons[what] += 1
        else:
            eligible.append(index)
    if reasons:
        logger.warning("Left out %d of %d images: %s.", len(rows) - len(eligible), len(rows), dict(reasons))
    if not eligible:
        raise ValueError(f"No usable image: all {len(rows)} were left out ({dict(reasons)}); check the caches.")
    return eligible


# --------------------------------------------------------------------------------------------------------------------
# Teacher stage, cached features
# --------------------------------------------------------------------------------------------------------------------


def teacher_feature_sample(
    image_features: ImageFeatureTable,
    text_features: TextFeatureTable,
    image_id: str,
    caption_index: int,
    image_index: int,
) -> dict[str, Any]:
    """One cached teacher sample (fp16 tensors, unpadded)."""
    region_embeds, image_embeds = image_features.get(image_id)
    token_embeds, text_embeds = text_features.get(image_id, caption_index)
    return {
        "token_embeds": torch.from_numpy(token_embeds.copy()),
        "text_embeds": torch.from_numpy(text_embeds.copy()),
        "region_embeds": torch.from_numpy(region_embeds.copy()),
        "image_embeds": torch.from_numpy(image_embeds.copy()),
        "image_index": image_index,
    }


def _pad(tensors: Sequence[torch.Tensor], dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([t.shape[0] for t in tensors])
    longest = int(lengths.max()) if len(tensors) else 0
    out = torch.zeros(len(tensors), longest, dim, dtype=dtype)
    mask = torch.arange(longest)[None, :] < lengths[:, None]
    if longest:
        out[mask] = torch.cat([t.to(dtype) for t in tensors])
    return out, mask


def collate_teacher_features(samples: Sequence[Mapping[str, Any] | None], dtype: torch.dtype = torch.float32) -> dict:
    """Pad cached samples into the teacher's cached batch (docs/internals.md §3); `None` samples are dropped."""
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError("Every sample of this batch failed to load; check the caches and the run summary.")
    dim = samples[0]["text_embeds"].shape[-1]
    token_embeds, token_mask = _pad([s["token_embeds"] for s in samples], dim, dtype)
    region_embeds, region_mask = _pad([s["region_embeds"] for s in samples], dim, dtype)
    return {
        "token_embeds": token_embeds,
        "token_mask": token_mask,
        "text_embeds": torch.stack([s["text_embeds"] for s in samples]).to(dtype),
        "region_embeds": region_embeds,
        "region_mask": region_mask,
        "image_embeds": torch.stack([s["image_embeds"] for s in samples]).to(dtype),
        "image_index": torch.tensor([s["image_index"] for s in samples], dtype=torch.long),
    }


class TeacherFeatureCollator:
    """Collator of [`TeacherFeatureDataset`] samples (`dtype`: the float type of the batch tensors)."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def __call__(self, samples: Sequence[Mapping[str, Any] | None]) -> dict:
        return collate_teacher_features(samples, self.dtype)


class TeacherFeatureDataset(_CaptionDrawDataset):
    """Teacher-stage samples from the feature caches: no image decoding and no CLIP pass.

    Args:
        dataset: the run's image dataset (schema of docs/internals.md §1).
        image_features, text_features: loaded caches of the same CLIP.
        seed: seed of the per-epoch caption draw.
    """

    def __init__(
        self, dataset: Any, image_features: ImageFeatureTable, text_features: TextFeatureTable, *, seed: int = 42
    ) -> None:
        check_feature_compatibility(image_features, text_features)
        rows = _rows(dataset, ["image_id", "captions"])
        _check_captions(rows, text_features)

        def cached(row: dict) -> bool:
            return row["image_id"] in image_features and (row["image_id"], 0) in text_features

        super().__init__(rows, _eligible(rows, cached, "not_in_feature_cache"), seed)
        self.image_features = image_features
        self.text_features = text_features

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, image_index, caption_index = self._draw(index)
        return teacher_feature_sample(
            self.image_features, self.text_features, row["image_id"], caption_index, image_index
        )


def _check_captions(rows: list[dict], text_features: TextFeatureTable) -> None:
    for row in rows:
        for index, caption in enumerate(row["captions"]):
            key = (row["image_id"], index)
            if key in text_features and text_features.caption(*key) != caption:
                raise StaleCacheError(
                    f"The text-feature cache holds {text_features.caption(*key)!r} for caption {index} of image "
                    f"{row['image_id']!r} but the dataset has {caption!r}: the dataset changed since the cache was "
                    "made; recompute the text features into a new folder."
                )


# --------------------------------------------------------------------------------------------------------------------
# Teacher stage, raw inputs (no cache)
# --------------------------------------------------------------------------------------------------------------------


class TeacherRawDataset(_CaptionDrawDataset):
    """Teacher-stage samples from images and cached boxes, preprocessed by [`TeacherRawCollator`] (no feature cache).

    Args:
        dataset: the run's image dataset.
        regions: the loaded region cache (images missing from it are left out and counted).
        seed: seed of the per-epoch caption draw.
        load_image: `path -> upright RGB image or None`; defaults to `training.data.load_image`.
    """

    def __init__(
        self,
        dataset: Any,
        regions: RegionTable,
        *,
        seed: int = 42,
        load_image: Callable[[str], Image.Image | None] | None = None,
    ) -> None:
        rows = _rows(dataset, ["image_id", "image", "captions"])
        super().__init__(rows, _eligible(rows, lambda row: row["image_id"] in regions, "not_in_region_cache"), seed)
        self.regions = regions
        self.load_image = load_image or default_image_loader()

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row, image_index, caption_index = self._draw(index)
        image = self.load_image(row["image"])
        if image is None:
            return None
        return {
            "image": image,
            "caption": row["captions"][caption_index],
            "boxes": self.regions[row["image_id"]].boxes,
            "image_index": image_index,
        }


class TeacherRawCollator:
    """Tokenise captions, crop and preprocess regions and whole images: the teacher's raw batch.

    Images without a region keep `R = 0` real regions (their `pixel_values` let the model's empty-region policy
    decide), exactly as in the cached path.
    """

    def __init__(self, processor: DCLIPProcessor) -> None:
        self.processor = processor
        # Cached boxes are sanitised, so "no box" is the only way to get zero crops; keep it as R = 0 (no whole-image
        # substitute here: the model's empty_region_policy owns that decision, exactly as in the cached path).
        self.region_processor = copy.copy(processor)
        self.region_processor.whole_image_if_empty = False
        self.stats: Counter = Counter()

    def __call__(self, samples: Sequence[Mapping[str, Any] | None]) -> dict:
        kept = [s for s in samples if s is not None]
        self.stats["failed_images"] += len(samples) - len(kept)
        if not kept:
            raise ValueError("Every image of this batch failed to load; see the run summary for the paths.")
        images = [s["image"] for s in kept]
        text = self.processor(text=[s["caption"] for s in kept], return_tensors="pt")
        pixel_values = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        regions = self.region_processor.process_regions(images, [s["boxes"] for s in kept])
        return {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "region_pixel_values": regions["region_pixel_values"],
            "region_mask": regions["region_mask"],
            "pixel_values": pixel_values,
            "image_index": torch.tensor([s["image_index"] for s in kept], dtype=torch.long),
        }


# --------------------------------------------------------------------------------------------------------------------
# Student stage
# --------------------------------------------------------------------------------------------------------------------


class StudentDistillDataset(_CaptionDrawDataset):
    """Student-stage samples: the image (CLIP preprocessing), one caption, its teacher target and frozen-CLIP text.

    Args:
        dataset: the run's image dataset.
        targets: the loaded teacher-target cache.
        text_features: the loaded text-feature cache (for `target_text_embeds`, frozen CLIP's `t`).
        image_processor: the student's CLIP image processor.
        seed: seed of the per-epoch caption draw.
        load_image: `path -> upright RGB image or None`; defaults to `training.data.load_image`.
        pixels: a loaded pixel cache ([`training.features.compute_pixel_cache`]) with the same preprocessing:
            images found there are read instead of decoded and preprocessed.
    """

    def __init__(
        self,
        dataset: Any,
        targets: TeacherTargetTable,
        text_features: TextFeatureTable,
        image_processor: Any,
        *,
        seed: int = 42,
        load_image: Callable[[str], Image.Image | None] | None = None,
        pixels: Any = None,
    ) -> None:
        rows = _rows(dataset, ["image_id", "image", "captions"])
        _check_captions(rows, text_features)
        if pixels is not None and pixels.image_processor_hash != image_processor_hash(image_processor):
            raise StaleCacheError(
                "The pixel cache was made with other preprocessing than this student's image processor (size, crop "
                "or normalisation differ); rebuild it with compute_pixel_cache(..., image_processor) elsewhere."
            )
        self.pixels = pixels

        def cached(row: dict) -> bool:
            keys = [(row["image_id"], i) for i in range(len(row["captions"]))]
            return all(key in targets and key in text_features for key in keys)

        super().__init__(rows, _eligible(rows, cached, "not_in_target_cache"), seed)
        self.targets = targets
        self.text_features = text_features
        self.image_processor = image_processor
        self.load_image = load_image or default_image_loader()

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row, image_index, caption_index = self._draw(index)
        if self.pixels is not None and row["image_id"] in self.pixels:
            pixel_values = torch.from_numpy(self.pixels.get(row["image_id"]).astype(np.float32))
        else:
            image = self.load_image(row["image"])
            if image is None:
                return None
            pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        _, text_embeds = self.text_features.get(row["image_id"], caption_index)
        return {
            "pixel_values": pixel_values,
            "caption": row["captions"][caption_index],
            "teacher_embeds": torch.from_numpy(self.targets.get(row["image_id"], caption_index).copy()),
            "target_text_embeds": torch.from_numpy(text_embeds.astype(np.float32)),
            "image_index": image_index,
        }


class StudentDistillCollator:
    """Stack student samples and tokenise their captions (dynamic padding, truncation to the context length)."""

    def __init__(self, tokenizer: Any, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        length = max_length or getattr(tokenizer, "model_max_length", 77)
        self.max_length = 77 if length is None or length > 10_000 else int(length)
        self.stats: Counter = Counter()

    def __call__(self, samples: Sequence[Mapping[str, Any] | None]) -> dict:
        kept = [s for s in samples if s is not None]
        self.stats["failed_images"] += len(samples) - len(kept)
        if not kept:
            raise ValueError("Every image of this batch failed to load; see the run summary for the paths.")
        text = self.tokenizer(
            [s["caption"] for s in kept],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": torch.stack([s["pixel_values"] for s in kept]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "teacher_embeds": torch.stack([s["teacher_embeds"] for s in kept]).float(),
            "target_text_embeds": torch.stack([s["target_text_embeds"] for s in kept]).float(),
            "image_index": torch.tensor([s["image_index"] for s in kept], dtype=torch.long),
        }
