"""Frozen-CLIP feature caches and teacher-target caches (docs/internals.md §2).

Three caches, each a [`ShardedCache`] folder (Arrow IPC files, memory-mapped on read, fp16 vectors as raw bytes):

- image features: `image_id -> region_embeds [R, D], image_embeds [D]`, keyed by the CLIP checkpoint, its
  preprocessing and the region cache;
- text features: `(image_id, caption_index) -> token_embeds [L, D]` (valid positions only: start/end/padding tokens
  trimmed, so the mask is all ones), `text_embeds [D]`, keyed by the CLIP checkpoint and its tokenizer;
- teacher targets: `(image_id, caption_index) -> teacher_embeds [D]` (fp32), keyed by the teacher checkpoint and the
  two feature caches. Computed from the feature caches alone (no CLIP pass).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import nn

from modeling_dclip import DCLIPProcessor, DCLIPTeacherModel

from .regions import (
    CacheRunSummary,
    RegionTable,
    ShardedCache,
    StaleCacheError,
    default_image_loader,
    run_sharded,
)

logger = logging.getLogger(__name__)

FEATURE_DTYPE = np.float16
TARGET_DTYPE = np.float32

IMAGE_FEATURE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("num_regions", pa.int32()),
        ("region_embeds", pa.binary()),  # fp16 [R, D]
        ("image_embeds", pa.binary()),  # fp16 [D]
    ]
)
TEXT_FEATURE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("caption_index", pa.int32()),
        ("caption", pa.string()),
        ("num_tokens", pa.int32()),
        ("token_embeds", pa.binary()),  # fp16 [L, D], valid positions only
        ("text_embeds", pa.binary()),  # fp16 [D]
    ]
)
PIXEL_SCHEMA = pa.schema([("image_id", pa.string()), ("pixel_values", pa.binary())])
TARGET_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("caption_index", pa.int32()),
        ("teacher_embeds", pa.binary()),  # fp32 [D]
    ]
)


# --------------------------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------------------------


# Config keys that record where/how a checkpoint was saved, not what it computes (weights are hashed separately).
_PROVENANCE_KEYS = ("transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype")


def _architecture_only(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _architecture_only(v) for k, v in value.items() if k not in _PROVENANCE_KEYS}
    return value


def module_fingerprint(module: nn.Module, config: Any = None) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes, bytes) and of its config."""
    digest = hashlib.sha256()
    if config is not None:
        config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        digest.update(json.dumps(_architecture_only(config_dict), sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}".encode())
        if data.numel():
            digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's full definition (vocabulary, merges, normaliser) and context length."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    payload += f"|{type(tokenizer).__name__}|{getattr(tokenizer, 'model_max_length', None)}"
    return hashlib.sha256(payload.encode()).hexdigest()


def clip_feature_description(model: DCLIPTeacherModel, processor: DCLIPProcessor) -> dict:
    """What frozen-CLIP features depend on: the CLIP weights/config and the preprocessing."""
    image_processor = processor.image_processor.to_dict()
    image_processor.pop("processor_class", None)
    return {
        "clip": module_fingerprint(model.clip, model.config.clip_config),
        "image_processor": hashlib.sha256(
            json.dumps(image_processor, sort_keys=True, default=str).encode()
        ).hexdigest(),
        "tokenizer": tokenizer_fingerprint(processor.tokenizer),
        "embed_dim": model.embed_dim,
        "storage": "float16",
    }


# --------------------------------------------------------------------------------------------------------------------
# Reading caches
# --------------------------------------------------------------------------------------------------------------------


class _BinaryColumn:
    """Zero-copy access to a binary column of vectors (memory-mapped Arrow) as numpy arrays.

    Chunks are kept as they are: combining them would copy a memory-mapped cache into RAM, and a combined binary array
    overflows its 32-bit offsets past 2 GiB (a paper-size token cache is larger).
    """

    def __init__(self, column: pa.ChunkedArray, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.starts = np.cumsum([0] + [len(chunk) for chunk in column.chunks])
        self.chunks = []
        for chunk in column.chunks:
            if chunk.type != pa.binary():
                raise TypeError(f"Expected a binary column, got {chunk.type}.")
            _, offsets, data = chunk.buffers()
            offsets = np.frombuffer(offsets, dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
            self.chunks.append(
                (offsets, np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8))
            )

    def __getitem__(self, row: int) -> np.ndarray:
        chunk = int(np.searchsorted(self.starts, row, side="right")) - 1
        offsets, data = self.chunks[chunk]
        local = row - self.starts[chunk]
        return data[offsets[local] : offsets[local + 1]].view(self.dtype)


class ImageFeatureTable:
    """A loaded image-feature cache: `get(image_id) -> (region_embeds [R, D], image_embeds [D])` (fp16 numpy)."""

    def __init__(self, cache: ShardedCache) -> None:
        table = cache.read()
        self.fingerprint = cache.fingerprint
        self.embed_dim = int(cache.description["embed_dim"])
        self.clip_fingerprint = cache.description["clip"]
        self.row = {image_id: row for row, image_id in enumerate(table.column("image_id").to_pylist())}
        self.num_regions = np.asarray(table.column("num_regions").to_numpy(), dtype=np.int64)
        self._regions = _BinaryColumn(table.column("region_embeds"), FEATURE_DTYPE)
        self._images = _BinaryColumn(table.column("image_embeds"), FEATURE_DTYPE)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.row

    def __len__(self) -> int:
        return len(self.row)

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        row = self.row[image_id]
        return self._regions[row].reshape(-1, self.embed_dim), self._images[row]


class TextFeatureTable:
    """A loaded text-feature cache: `get(image_id, i) -> (token_embeds [L, D], text_embeds [D])` (fp16 numpy)."""

    def __init__(self, cache: ShardedCache) -> None:
        table = cache.read()
        self.fingerprint = cache.fingerprint
        self.embed_dim = int(cache.description["embed_dim"])
        self.clip_fingerprint = cache.description["clip"]
        ids = table.column("image_id").to_pylist()
        indices = table.column("caption_index").to_pylist()
        self.row = {(image_id, index): row for row, (image_id, index) in enumerate(zip(ids, indices))}
        self.captions = table.column("caption").to_pylist()
        self._tokens = _BinaryColumn(table.column("token_embeds"), FEATURE_DTYPE)
        self._texts = _BinaryColumn(table.column("text_embeds"), FEATURE_DTYPE)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.row

    def __len__(self) -> int:
        return len(self.row)

    def caption(self, image_id: str, caption_index: int) -> str:
        return self.captions[self.row[(image_id, caption_index)]]

    def get(self, image_id: str, caption_index: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.row[(image_id, caption_index)]
        return self._tokens[row].reshape(-1, self.embed_dim), self._texts[row]


class TeacherTargetTable:
    """A loaded teacher-target cache: `get(image_id, i) -> teacher_embeds [D]` (fp32 numpy)."""

    def __init__(self, cache: ShardedCache) -> None:
        table = cache.read()
        self.fingerprint = cache.fingerprint
        self.teacher_fingerprint = cache.description["teacher"]
        ids = table.column("image_id").to_pylist()
        indices = table.column("caption_index").to_pylist()
        self.row = {(image_id, index): row for row, (image_id, index) in enumerate(zip(ids, indices))}
        self._targets = _BinaryColumn(table.column("teacher_embeds"), TARGET_DTYPE)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.row

    def __len__(self) -> int:
        return len(self.row)

    def get(self, image_id: str, caption_index: int) -> np.ndarray:
        return self._targets[self.row[(image_id, caption_index)]]


def load_image_features(cache_dir: str | os.PathLike) -> ImageFeatureTable:
    """Open an image-feature cache folder written by [`compute_image_features`]."""
    return ImageFeatureTable(ShardedCache.from_folder(cache_dir, kind="image_features", schema=IMAGE_FEATURE_SCHEMA))


def load_text_features(cache_dir: str | os.PathLike) -> TextFeatureTable:
    """Open a text-feature cache folder written by [`compute_text_features`]."""
    return TextFeatureTable(ShardedCache.from_folder(cache_dir, kind="text_features", schema=TEXT_FEATURE_SCHEMA))


def load_teacher_targets(cache_dir: str | os.PathLike) -> TeacherTargetTable:
    """Open a teacher-target cache folder written by [`compute_teacher_targets`]."""
    return TeacherTargetTable(ShardedCache.from_folder(cache_dir, kind="teacher_targets", schema=TARGET_SCHEMA))


# --------------------------------------------------------------------------------------------------------------------
# Computing caches
# --------------------------------------------------------------------------------------------------------------------


def _items(dataset: Any, columns: Sequence[str]) -> list[dict]:
    names = getattr(dataset, "column_names", None)
    if names is not None:
        present = [c for c in columns if c in names]
        data = dataset.select_columns(present).to_dict()
        return [dict(zip(present, values)) for values in zip(*(data[c] for c in present))]
    return [{c: row[c] for c in columns if c in row} for row in dataset]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _encode_pixels(model: DCLIPTeacherModel, pixel_values: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`get_image_features` over many images/crops, `batch_size` per forward; returns fp32 on the CPU."""
    device, dtype = _device(model), model.clip.dtype
    out = [
        model.get_image_features(pixel_values[part].to(device=device, dtype=dtype)).float().cpu()
        for part in _chunks(len(pixel_values), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


def image_feature_cache(
    cache_dir: str | os.PathLike, model: DCLIPTeacherModel, processor: DCLIPProcessor, region_fingerprint: str
) -> ShardedCache:
    """The image-feature cache for this CLIP/preprocessing/region cache in `cache_dir` (nothing written)."""
    description = {**clip_feature_description(model, processor), "regions": region_fingerprint}
    description.pop("tokenizer")
    return ShardedCache(
        cache_dir, kind="image_features", description=description, schema=IMAGE_FEATURE_SCHEMA, file_format="arrow"
    )


def text_feature_cache(
    cache_dir: str | os.PathLike, model: DCLIPTeacherModel, processor: DCLIPProcessor
) -> ShardedCache:
    """The text-feature cache for this CLIP/tokenizer in `cache_dir` (nothing written)."""
    description = clip_feature_description(model, processor)
    description.pop("image_processor")
    return ShardedCache(
        cache_dir, kind="text_features", description=description, schema=TEXT_FEATURE_SCHEMA, file_format="arrow"
    )


@torch.no_grad()
def compute_image_features(
    dataset: Any,
    regions: RegionTable,
    model: DCLIPTeacherModel,
    processor: DCLIPProcessor,
    cache_dir: str | os.PathLike,
    *,
    images_per_batch: int = 32,
    crops_per_forward: int = 256,
    chunk_size: int = 512,
    load_image: Callable[[str], Image.Image | None] | None = None,
    progress: bool = True,
) -> CacheRunSummary:
    """Frozen-CLIP embeddings of every image's region crops and of the whole image, cached as fp16.

    An image with no region in the cache gets `R = 0` (the teacher's empty-region policy decides later); an image
    missing from the region cache or unreadable is skipped and counted.

    Args:
        dataset: rows with `image_id` and `image` (path).
        regions: the loaded region cache ([`load_region_cache`]).
        model: the teacher (only its frozen CLIP is used), in eval mode on its device.
        processor: the CLIP preprocessing (crops get exactly the same preprocessing as whole images).
        cache_dir: cache folder; a folder made by another CLIP/preprocessing/region cache raises `StaleCacheError`.
        images_per_batch: images decoded and cropped together.
        crops_per_forward: crops and whole images per CLIP forward pass.
        chunk_size: images per shard.
        load_image: `path -> upright RGB image or None`; defaults to `training.data.load_image`.
        progress: show a progress bar.
    """
    loader = load_image or default_image_loader()
    cache = image_feature_cache(cache_dir, model, processor, regions.fingerprint)
    model.eval()
    image_processor = processor.image_processor
    dim = model.embed_dim

    def compute(chunk: list[Mapping[str, Any]], summary: CacheRunSummary) -> dict[str, list]:
        columns: dict[str, list] = {name: [] for name in IMAGE_FEATURE_SCHEMA.names}
        for part in _chunks(len(chunk), images_per_batch):
            ids, images, crops, counts = [], [], [], []
            for item in chunk[part]:
                if item["image_id"] not in regions:
                    summary.counts["missing_regions"] += 1
                    continue
                image = loader(item["image"])
                if image is None:
                    summary.counts["failed_images"] += 1
                    summary.failed_images.append(str(item["image"]))
                    continue
                boxes = regions[item["image_id"]].boxes
                # Cached boxes are already sanitised: an empty list is "no detection", kept as R = 0.
                image_crops = processor.crop_regions(image, boxes) if len(boxes) else []
                ids.append(item["image_id"])
                images.append(image)
                crops.extend(image_crops)
                counts.append(len(image_crops))
            if not ids:
                continue
            pixels = image_processor(images=images + crops, return_tensors="pt")["pixel_values"]
            embeds = _encode_pixels(model, pixels, crops_per_forward).numpy().astype(FEATURE_DTYPE)
            whole, region_embeds = embeds[: len(images)], embeds[len(images) :]
            bounds = np.cumsum([0, *counts])
            summary.counts["regions"] += int(bounds[-1])
            summary.counts["images_without_regions"] += sum(c == 0 for c in counts)
            for row, image_id in enumerate(ids):
                columns["image_id"].append(image_id)
                columns["num_regions"].append(counts[row])
                columns["region_embeds"].append(
                    region_embeds[bounds[row] : bounds[row + 1]].reshape(-1, dim).tobytes()
                )
                columns["image_embeds"].append(whole[row].tobytes())
        return columns

    return run_sharded(
        cache,
        _items(dataset, ["image_id", "image"]),
        compute,
        chunk_size=chunk_size,
        description="image features",
        progress=progress,
    )


@torch.no_grad()
def compute_text_features(
    dataset: Any,
    model: DCLIPTeacherModel,
    processor: DCLIPProcessor,
    cache_dir: str | os.PathLike,
    *,
    captions_per_forward: int = 512,
    chunk_size: int = 2048,
    progress: bool = True,
) -> CacheRunSummary:
    """Frozen-CLIP token embeddings (valid positions only) and sentence embeddings of every caption, as fp16.

    Args:
        dataset: rows with `image_id` and `captions`.
        model: the teacher (only its frozen CLIP is used).
        processor: tokenizer (captions are truncated to the context length, counted in `processor.stats`).
        cache_dir: cache folder; a folder made by another CLIP/tokenizer raises `StaleCacheError`.
        captions_per_forward: captions per text-tower pass.
        chunk_size: images per shard (all captions of an image are in the same shard).
        progress: show a progress bar.
    """
    cache = text_feature_cache(cache_dir, model, processor)
    model.eval()
    device = _device(model)

    def compute(chunk: list[Mapping[str, Any]], summary: CacheRunSummary) -> dict[str, list]:
        keys = [(item["image_id"], index, caption) for item in chunk for index, caption in enumerate(item["captions"])]
        summary.counts["images_without_captions"] += sum(not item["captions"] for item in chunk)
        columns: dict[str, list] = {name: [] for name in TEXT_FEATURE_SCHEMA.names}
        for part in _chunks(len(keys), captions_per_forward):
            batch_keys = keys[part]
            encoded = processor(text=[caption for _, _, caption in batch_keys], return_tensors="pt")
            features = model.get_text_features(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))
            mask = features.token_mask.cpu()
            counts = mask.sum(-1).tolist()
            valid = features.token_embeds.float().cpu()[mask].numpy().astype(FEATURE_DTYPE)
            texts = features.text_embeds.float().cpu().numpy().astype(FEATURE_DTYPE)
            bounds = np.cumsum([0, *counts])
            for row, (image_id, index, caption) in enumerate(batch_keys):
                columns["image_id"].append(image_id)
                columns["caption_index"].append(index)
                columns["caption"].append(caption)
                columns["num_tokens"].append(counts[row])
                columns["token_embeds"].append(valid[bounds[row] : bounds[row + 1]].tobytes())
                columns["text_embeds"].append(texts[row].tobytes())
            summary.counts["captions"] += len(batch_keys)
        return columns

    return run_sharded(
        cache,
        _items(dataset, ["image_id", "captions"]),
        compute,
        chunk_size=chunk_size,
        description="text features",
        progress=progress,
    )


def check_feature_compatibility(image_features: ImageFeatureTable, text_features: TextFeatureTable) -> None:
    """Raise if the two feature caches come from different CLIP checkpoints (widths or weights differ)."""
    if image_features.clip_fingerprint != text_features.clip_fingerprint:
        raise StaleCacheError(
            "The image- and text-feature caches were computed with different CLIP checkpoints "
            f"({image_features.clip_fingerprint[:12]} vs {text_features.clip_fingerprint[:12]}); recompute one of "
            "them with the run's CLIP."
        )


def teacher_target_cache(
    cache_dir: str | os.PathLike,
    teacher: DCLIPTeacherModel,
    image_features: ImageFeatureTable,
    text_features: TextFeatureTable,
) -> ShardedCache:
    """The teacher-target cache for this teacher checkpoint and these feature caches (nothing written)."""
    description = {
        "teacher": module_fingerprint(teacher, teacher.config),
        "image_features": image_features.fingerprint,
        "text_features": text_features.fingerprint,
        "storage": "float32",
    }
    return ShardedCache(
        cache_dir, kind="teacher_targets", description=description, schema=TARGET_SCHEMA, file_format="arrow"
    )


@torch.no_grad()
def compute_teacher_targets(
    dataset: Any,
    teacher: DCLIPTeacherModel,
    image_features: ImageFeatureTable,
    text_features: TextFeatureTable,
    cache_dir: str | os.PathLike,
    *,
    pairs_per_forward: int = 256,
    chunk_size: int = 4096,
    progress: bool = True,
) -> CacheRunSummary:
    """The (frozen, trained) teacher's `g(I, c)` for every (image, caption) pair, from the feature caches only.

    Args:
        dataset: rows with `image_id` and `captions`.
        teacher: the trained teacher (eval mode; no CLIP pass is made).
        image_features, text_features: loaded feature caches of the teacher's CLIP.
        cache_dir: cache folder; a folder made by another teacher or other features raises `StaleCacheError`.
        pairs_per_forward: image–caption pairs per teacher forward.
        chunk_size: images per shard.
        progress: show a progress bar.
    """
    from .stage_data import collate_teacher_features, teacher_feature_sample

    check_feature_compatibility(image_features, text_features)
    if image_features.embed_dim != teacher.embed_dim:
        raise ValueError(
            f"The feature caches have width {image_features.embed_dim} but the teacher's CLIP has "
            f"{teacher.embed_dim}; use features computed with the teacher's own CLIP."
        )
    cache = teacher_target_cache(cache_dir, teacher, image_features, text_features)
    teacher.eval()
    device = _device(teacher)

    def compute(chunk: list[Mapping[str, Any]], summary: CacheRunSummary) -> dict[str, list]:
        pairs = []
        for item in chunk:
            if item["image_id"] not in image_features:
                summary.counts["missing_image_features"] += 1
                continue
            for index in range(len(item["captions"])):
                if (item["image_id"], index) not in text_features:
                    summary.counts["missing_text_features"] += 1
                    continue
                pairs.append((item["image_id"], index))
        columns: dict[str, list] = {name: [] for name in TARGET_SCHEMA.names}
        for part in _chunks(len(pairs), pairs_per_forward):
            samples = [
                teacher_feature_sample(image_features, text_features, image_id, index, image_index=0)
                for image_id, index in pairs[part]
            ]
            batch = collate_teacher_features(samples)
            batch.pop("image_index")
            targets = teacher(**{k: v.to(device) for k, v in batch.items()}).teacher_embeds
            targets = targets.float().cpu().numpy().astype(TARGET_DTYPE)
            for row, (image_id, index) in enumerate(pairs[part]):
                columns["image_id"].append(image_id)
                columns["caption_index"].append(index)
                columns["teacher_embeds"].append(targets[row].tobytes())
            summary.counts["pairs"] += len(pairs[part])
        return columns

    return run_sharded(
        cache,
        _items(dataset, ["image_id", "captions"]),
        compute,
        chunk_size=chunk_size,
        description="teacher targets",
        progress=progress,
    )


class PixelTable:
    """A loaded pixel cache: `get(image_id) -> pixel_values [3, H, W]` (fp16 numpy), the student's exact inputs."""

    def __init__(self, cache: ShardedCache) -> None:
        table = cache.read()
        self.fingerprint = cache.fingerprint
        self.shape = tuple(cache.description["shape"])
        self.image_processor_hash = cache.description["image_processor"]
        self.row = {image_id: row for row, image_id in enumerate(table.column("image_id").to_pylist())}
        self._pixels = _BinaryColumn(table.column("pixel_values"), FEATURE_DTYPE)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.row

    def __len__(self) -> int:
        return len(self.row)

    def get(self, image_id: str) -> np.ndarray:
        return self._pixels[self.row[image_id]].reshape(self.shape)


def image_processor_hash(image_processor: Any) -> str:
    """Hash of every preprocessing setting (two processors with equal hashes give identical `pixel_values`)."""
    return hashlib.sha256(json.dumps(image_processor.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def pixel_cache(cache_dir: str | os.PathLike, image_processor: Any) -> ShardedCache:
    """The pixel cache of this CLIP preprocessing in `cache_dir` (nothing written)."""
    size = image_processor.crop_size
    description = {
        "image_processor": image_processor_hash(image_processor),
        "shape": [3, int(size["height"]), int(size["width"])],
        "storage": "float16",
    }
    return ShardedCache(cache_dir, kind="pixels", description=description, schema=PIXEL_SCHEMA, file_format="arrow")


def load_pixel_cache(cache_dir: str | os.PathLike) -> PixelTable:
    return PixelTable(ShardedCache.from_folder(cache_dir, kind="pixels", schema=PIXEL_SCHEMA))


def compute_pixel_cache(
    dataset: Any,
    image_processor: Any,
    cache_dir: str | os.PathLike,
    *,
    images_per_batch: int = 64,
    chunk_size: int = 512,
    load_image: Callable[[str], Image.Image | None] | None = None,
    progress: bool = True,
) -> CacheRunSummary:
    """Decode and CLIP-preprocess every image once and store the student's input tensors (fp16).

    The student stage has no augmentation, so an image's `pixel_values` are the same in every epoch; with this cache
    the student's data loading is a memory-mapped read instead of a JPEG decode and resize per sample and epoch
    (`benchmarks/bench_pixel_cache.py`). fp16 keeps ~3 significant digits, finer than the 8-bit source pixels.

    Args:
        dataset: rows with `image_id` and `image` (path).
        image_processor: the student's `CLIPImageProcessor`.
        cache_dir: cache folder; one made with other preprocessing raises `StaleCacheError`.
        images_per_batch: images preprocessed together.
        chunk_size: images per shard.
        load_image: `path -> upright RGB image or None`; defaults to `training.data.load_image`.
        progress: show a progress bar.
    """
    loader = load_image or default_image_loader()
    cache = pixel_cache(cache_dir, image_processor)

    def compute(chunk: list[Mapping[str, Any]], summary: CacheRunSummary) -> dict[str, list]:
        columns: dict[str, list] = {name: [] for name in PIXEL_SCHEMA.names}
        for part in _chunks(len(chunk), images_per_batch):
            ids, images = [], []
            for item in chunk[part]:
                image = loader(item["image"])
                if image is None:
                    summary.counts["failed_images"] += 1
                    summary.failed_images.append(str(item["image"]))
                    continue
                ids.append(item["image_id"])
                images.append(image)
            if not ids:
                continue
            pixels = image_processor(images=images, return_tensors="pt")["pixel_values"].numpy().astype(FEATURE_DTYPE)
            columns["image_id"] += ids
            columns["pixel_values"] += [row.tobytes() for row in pixels]
            summary.counts["images"] += len(ids)
        return columns

    return run_sharded(
        cache,
        _items(dataset, ["image_id", "image"]),
        compute,
        chunk_size=chunk_size,
        description="pixels",
        progress=progress,
    )


@dataclass
class FeatureCachePaths:
    """Conventional, fingerprint-named folders of a run's caches under one root (changed inputs -> new folders)."""

    root: str

    def image_features(self, model: DCLIPTeacherModel, processor: DCLIPProcessor, region_fingerprint: str) -> str:
        fingerprint = image_feature_cache(self.root, model, processor, region_fingerprint).fingerprint
        return os.path.join(self.root, f"image-features-{fingerprint[:12]}")

    def text_features(self, model: DCLIPTeacherModel, processor: DCLIPProcessor) -> str:
        fingerprint = text_feature_cache(self.root, model, processor).fingerprint
        return os.path.join(self.root, f"text-features-{fingerprint[:12]}")

    def pixels(self, image_processor: Any) -> str:
        fingerprint = pixel_cache(self.root, image_processor).fingerprint
        return os.path.join(self.root, f"pixels-{fingerprint[:12]}")

    def teacher_targets(
        self, teacher: DCLIPTeacherModel, image_features: ImageFeatureTable, text_features: TextFeatureTable
    ) -> str:
        fingerprint = teacher_target_cache(self.root, teacher, image_features, text_features).fingerprint
        return os.path.join(self.root, f"teacher-targets-{fingerprint[:12]}")
