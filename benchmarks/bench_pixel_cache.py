"""Student-stage data loading: decode + CLIP-preprocess every image every epoch (before) vs the pixel cache (after).

The profile of the student stage (`python -m cProfile` over `StudentDistillDataset.__getitem__`) showed that on
COCO-sized photos the per-sample work is JPEG decoding and the CLIP image processor's resize/crop/normalise — on a
GPU machine that is what limits a student step, not the model. The student has no augmentation, so
`training.features.compute_pixel_cache` does that work once; this benchmark times one epoch of samples both ways on
COCO-like 640x480 JPEGs at 224 px (ViT-B/16 input) and prints the ratio. Writes `benchmarks/results/pixel_cache.json`.

    python -m benchmarks.bench_pixel_cache [--images 64] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from transformers import CLIPImageProcessor

from training.features import compute_pixel_cache, load_pixel_cache
from training.stage_data import StudentDistillDataset

RESULTS = Path(__file__).resolve().parent / "results" / "pixel_cache.json"


class _Targets:
    """Stand-in teacher targets: the benchmark times image loading, not the (memory-mapped) vector lookups."""

    def __init__(self, dim: int = 512) -> None:
        self.vector = np.zeros(dim, dtype=np.float32)

    def __contains__(self, key) -> bool:
        return True

    def get(self, image_id, caption_index):
        return self.vector


class _TextFeatures(_Targets):
    """Stand-in text features (token embeddings, sentence embedding) with the captions of `make_images`."""

    def get(self, image_id, caption_index):
        return np.zeros((1, len(self.vector)), np.float16), self.vector.astype(np.float16)

    def caption(self, image_id, caption_index):
        return "a photo"


def make_images(folder: Path, count: int, seed: int = 0) -> Dataset:
    """COCO-like 640x480 JPEGs (smooth random content, quality 90)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        low = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((640, 480), Image.BICUBIC)
        path = folder / f"{index:05d}.jpg"
        image.save(path, quality=90)
        rows.append({"image_id": str(index), "image": str(path), "captions": ["a photo"]})
    return Dataset.from_list(rows)


def epoch_seconds(dataset: StudentDistillDataset) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    processor = CLIPImageProcessor(
        size={"shortest_edge": args.image_size}, crop_size={"height": args.image_size, "width": args.image_size}
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = make_images(Path(tmp), args.images)
        targets, texts = _Targets(), _TextFeatures()
        start = time.perf_counter()
        compute_pixel_cache(rows, processor, Path(tmp) / "pixels", progress=False)
        build = time.perf_counter() - start
        pixels = load_pixel_cache(Path(tmp) / "pixels")
        decoded = StudentDistillDataset(rows, targets, texts, processor)
        cached = StudentDistillDataset(rows, targets, texts, processor, pixels=pixels)
        torch.testing.assert_close(cached[0]["pixel_values"], decoded[0]["pixel_values"], atol=2e-2, rtol=1e-2)
        before = min(epoch_seconds(decoded) for _ in range(args.repeats))
        after = min(epoch_seconds(cached) for _ in range(args.repeats))
    result = {
        "benchmark": "student-stage data loading: decode every epoch vs pixel cache",
        "command": "python -m benchmarks.bench_pixel_cache " + " ".join(argv or []),
        "settings": vars(args),
        "ms_per_sample_decode": 1000 * before / args.images,
        "ms_per_sample_pixel_cache": 1000 * after / args.images,
        "speedup": before / after,
        "one_off_cache_build_ms_per_image": 1000 * build / args.images,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"decode + preprocess every epoch: {result['ms_per_sample_decode']:.2f} ms/sample")
    print(f"pixel cache:                     {result['ms_per_sample_pixel_cache']:.2f} ms/sample")
    print(f"speed-up: {result['speedup']:.1f}x  (one-off {result['one_off_cache_build_ms_per_image']:.2f} ms/image)")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
