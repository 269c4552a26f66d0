"""Benchmark 6 of the performance issue: how each pipeline stage's time grows with the data size.

Runs the real `dclip run` stages (training/pipeline.py) on the synthetic data at three sizes (N, 2N, 4N training
images; a tiny random-init CLIP, one epoch per training stage so the work per image is fixed) and prints, per stage,
the seconds, the seconds per image and the *scaling exponent* fitted on log(time) vs log(size): 1.0 is linear. A stage
is flagged when its exponent exceeds 1.15 (super-linear) — fixed start-up costs push small-size exponents *below* 1,
so the per-image time at the largest size is printed too. Writes `benchmarks/results/scaling.json`.

    python -m benchmarks.bench_scaling                 # N = 200 (about 3-4 minutes on 2 CPU cores)
    python -m benchmarks.bench_scaling --base-size 400
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from training.pipeline import Pipeline

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"
STAGES = ("regions", "features", "teacher", "targets", "student_dclip", "evaluate")
LINEAR_MAX_EXPONENT = 1.15


def experiment(num_train: int) -> dict[str, Any]:
    """A demo-like experiment whose per-image work is constant: fixed epochs, fixed batch, test split ∝ train."""
    return {
        "name": f"scaling-{num_train}",
        "seed": 0,
        "data": {
            "synthetic": {
                "seed": 0,
                "num_pretrain_scenes": 16,
                "num_pretrain_closeups": 16,
                "num_train": num_train,
                "num_val": max(8, num_train // 10),
                "num_test": max(8, num_train // 4),
                "num_zero_shot": 15,
            }
        },
        "base": {
            "bootstrap": {
                "image_size": 32,
                "patch_size": 8,
                "vision_width": 32,
                "vision_layers": 1,
                "vision_heads": 2,
                "text_width": 32,
                "text_layers": 1,
                "text_heads": 2,
                "projection_dim": 32,
                "vocab_size": 700,
                "steps": 2,
                "batch_size": 16,
                "warmup_steps": 1,
            }
        },
        "regions": {"source": "annotations"},
        "teacher": {"cross_attention_heads": 4, "num_train_epochs": 1, "per_device_train_batch_size": 32},
        "student": {
            "num_train_epochs": 1,
            "per_device_train_batch_size": 32,
            "gradient_accumulation_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
        },
        "evaluation": {"batch_size": 64},
    }


def time_stages(num_train: int, work_dir: Path) -> dict[str, float]:
    pipeline = Pipeline(experiment(num_train), work_dir / f"n{num_train}", progress=False)
    pipeline.stage_data()
    pipeline.stage_base()
    seconds = {}
    for name in STAGES:
        step = getattr(pipeline, "stage_student" if name == "student_dclip" else f"stage_{name}")
        start = time.perf_counter()
        step()
        seconds[name] = time.perf_counter() - start
    return seconds


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) on log(size)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(max(t, 1e-6)) for t in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-size", type=int, default=200, help="N: training images at the smallest size")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    sizes = [args.base_size, 2 * args.base_size, 4 * args.base_size]
    with tempfile.TemporaryDirectory(prefix="dclip-scaling-") as tmp:
        timings = {size: time_stages(size, Path(tmp)) for size in sizes}
    rows = []
    for stage in STAGES:
        seconds = [timings[size][stage] for size in sizes]
        fit = exponent(sizes, seconds)
        rows.append(
            {
                "stage": stage,
                "seconds": dict(zip(map(str, sizes), [round(s, 3) for s in seconds])),
                "ms_per_image_at_largest": round(1000 * seconds[-1] / sizes[-1], 2),
                "exponent": round(fit, 3),
                "linear": fit <= LINEAR_MAX_EXPONENT,
            }
        )
    result = {
        "benchmark": "scaling",
        "sizes": sizes,
        "stages": rows,
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    header = f"{'stage':<15}" + "".join(f"{f'N={s} (s)':>12}" for s in sizes) + f"{'ms/img':>10}{'exponent':>10}"
    print(header)
    for row in rows:
        cells = "".join(f"{row['seconds'][str(s)]:>12.2f}" for s in sizes)
        flag = "" if row["linear"] else "  SUPER-LINEAR"
        print(f"{row['stage']:<15}{cells}{row['ms_per_image_at_largest']:>10.2f}{row['exponent']:>10.2f}{flag}")
    print(f"\nWrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
