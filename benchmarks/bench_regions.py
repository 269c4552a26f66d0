"""Benchmark 4: region extraction, batched vs one-image-at-a-time YOLO predict (images/s).

Both runs go through `training.regions.YoloRegionSource` (the code path of `dclip extract-regions`) on the same
images; only `batch_size` differs. The default detector is a randomly initialised `yolov8n.yaml` (no download): it
finds nothing, so it costs the forward pass of trained weights of that size but less NMS. Pass `--weights yolov8x.pt`
for the paper's detector when the file is present.

    python benchmarks/bench_regions.py [--images 32] [--batch_size 16] [--imgsz 640] [--weights yolov8n.yaml]

Writes `benchmarks/results/regions.json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


COCO_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375)]


def make_images(count: int, seed: int, coco_like: bool) -> list[Image.Image]:
    """Random RGB images: sides 320-640 px, all different (`coco_like=False`), or mostly COCO's common sizes."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        if coco_like and rng.random() < 0.8:
            width, height = COCO_SIZES[int(rng.integers(len(COCO_SIZES)))]
        else:
            width, height = (int(v) for v in rng.integers(320, 641, size=2))
        images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
    return images


def time_source(source, images: list[Image.Image], repeats: int) -> float:
    """Best images/s over `repeats` full passes (after one warm-up call)."""
    source(images[:1], [{}])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        source(images, [{}] * len(images))
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def machine() -> dict:
    import torch
    import ultralytics

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "regions.json"))
    args = parser.parse_args(argv)

    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="dclip-bench-yolo-"))
    from training.regions import YoloRegionSource

    common = dict(weights=args.weights, imgsz=args.imgsz, device=args.device)
    single = YoloRegionSource(batch_size=1, **common)
    modes = {
        "one at a time": single,
        "batched (default plan)": YoloRegionSource(batch_size=args.batch_size, detector=single.detector, **common),
        "batched (mixed shapes)": YoloRegionSource(
            batch_size=args.batch_size, mix_shapes=True, detector=single.detector, **common
        ),
    }
    rates: dict[str, dict[str, float]] = {}
    for image_set, coco_like in (("mixed sizes", False), ("coco-like sizes", True)):
        images = make_images(args.images, args.seed, coco_like)
        rates[image_set] = {
            mode: round(time_source(source, images, args.repeats), 3) for mode, source in modes.items()
        }
        for mode in list(modes)[1:]:
            rates[image_set][f"{mode} / one at a time"] = round(
                rates[image_set][mode] / rates[image_set]["one at a time"], 3
            )
    result = {
        "benchmark": "region extraction: batched vs one-image-at-a-time YOLO predict (images/s)",
        "command": "python benchmarks/bench_regions.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "images": args.images,
            "sizes": "mixed: 320-640 px per side, all different; coco-like: 80% of 640x480/480x640/640x427/500x375",
            "weights": args.weights,
            "imgsz": args.imgsz,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
        },
        "machine": machine(),
        "images_per_s": rates,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'images':<18}{'mode':<26}{'images/s':>10}{'vs single':>11}")
    for image_set, values in rates.items():
        for mode in modes:
            ratio = values.get(f"{mode} / one at a time", 1.0)
            print(f"{image_set:<18}{mode:<26}{values[mode]:>10.2f}{ratio:>10.2f}x")
    print(f"written {output}")
    return result


if __name__ == "__main__":
    main()
