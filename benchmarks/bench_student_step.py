"""Benchmarks 1–3 of the performance issue: what DCLIP's two stages cost next to plain CLIP fine-tuning.

1. Student step with cached teacher targets vs a plain CLIP fine-tuning step (HF's CLIP loss), same model, batch,
   precision and trainable parameters: the ratio must be <= 1.15.
2. The reference pipeline's cost model, where the teacher is recomputed every step (JPEG decode of every image,
   region crops preprocessed and run through frozen CLIP, caption token embeddings, cross-attention) at 2, 6 and 12
   regions per image: our cached student step must keep >= 90% of the ideal advantage
   `(pipeline - ours) / (pipeline - plain)`.
3. Teacher stage with feature caches (cross-attention on cached embeddings) vs without (crops decoded and encoded by
   frozen CLIP every step): per-sample speed-up must be >= 50x (an epoch is the same number of samples either way;
   the one-off cost of building the caches is not counted).

Every step is forward + backward + optimizer step in fp32 (the paper's precision) on random weights (no download),
through the real trainer code (`DCLIPStudentTrainer.compute_loss`, `DCLIPTeacherTrainer.compute_loss`). Sizes: `tiny`
(the test config) and `vitb`: ViT-B/16 widths and depths (vision 768 x 12, text 512 x 12, D = 512, vocab 49,408).
On a 2-core CPU a 224-px ViT-B/16 student step takes tens of seconds, so benchmarks 1–2 use 64-px images and batch 4
by default (`--vitb-image-size 224 --vitb-batch-size 32` is the paper's step; `--vitb-layers` shrinks the depth).
Small images make region crops cheap, so the pipeline's extra cost over a plain step is smaller than at 224 px
(where the issue measured ~2.5x at 6 regions) and "advantage kept", a ratio of two differences, is noisy on a busy
machine. Benchmark 3 runs at full ViT-B/16 depth and resolution (224 px, batch 2), where the frozen-CLIP work the
caches save is what it is in training. Variants are timed interleaved (one repetition of each in turn; fast steps
looped to >= 0.5 s per timing) and the median is kept, so a machine whose load changes hurts all variants alike. One
torch thread by default: on a shared CPU, OpenMP threads wait on descheduled siblings (`--threads 0` lifts it).

    python -m benchmarks.bench_student_step                      # default run, writes benchmarks/results/
    python -m benchmarks.bench_student_step --sizes vitb --vitb-image-size 224 --vitb-batch-size 32 --threads 0
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from modeling_dclip import DCLIPProcessor, DCLIPStudentModel, DCLIPTeacherModel
from training.args import StudentTrainingArguments, TeacherTrainingArguments
from training.tokenizer import train_clip_tokenizer
from training.trainer import DCLIPStudentTrainer, DCLIPTeacherTrainer, apply_trainable_policy

RESULTS = Path(__file__).resolve().parent / "results" / "student_step.json"
CAPTION_TOKENS = 20  # a typical COCO caption with start/end tokens
TARGETS = {"student_vs_plain_max": 1.15, "advantage_kept_min": 0.90, "teacher_cache_speedup_min": 50.0}


def clip_config(size: str, image_size: int, layers: int | None = None) -> CLIPConfig:
    """Random-weight CLIP: the tests' tiny config, or ViT-B/16 widths (and depths, unless `layers`) at `image_size`."""
    if size == "tiny":
        text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
        vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, patch_size=6)
        projection = 32
    elif size == "vitb":
        text = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12)
        vision = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
        vision["patch_size"] = 16
        projection = 512
    else:
        raise ValueError(f"Unknown size {size!r}; use 'tiny' or 'vitb'.")
    if layers is not None:
        text["num_hidden_layers"] = vision["num_hidden_layers"] = layers
    vocab = 49408 if size == "vitb" else 64
    text.update(vocab_size=vocab, max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1)
    text["pad_token_id"] = vocab - 1
    vision["image_size"] = image_size
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


def _jpegs(count: int, size: tuple[int, int], generator: np.random.Generator) -> list[bytes]:
    # Smooth random images compress like photos (pure noise would make JPEG decoding unrealistically slow).
    out = []
    for _ in range(count):
        low = generator.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize(size, Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _boxes(count: int, regions: int, size: tuple[int, int], generator: np.random.Generator) -> list[list[list[float]]]:
    width, height = size
    boxes = []
    for _ in range(count):
        x0 = generator.uniform(0, width * 0.6, regions)
        y0 = generator.uniform(0, height * 0.6, regions)
        w = generator.uniform(width * 0.15, width * 0.4, regions)
        h = generator.uniform(height * 0.15, height * 0.4, regions)
        boxes.append(np.stack([x0, y0, x0 + w, y0 + h], 1).round(1).tolist())
    return boxes


class Workload:
    """One size: the models, a batch, and the step functions of every variant."""

    def __init__(self, size: str, batch_size: int, image_size: int, workdir: str, layers: int | None = None) -> None:
        self.size, self.batch_size, self.image_size = size, batch_size, image_size
        torch.manual_seed(0)
        config = clip_config(size, image_size, layers)
        self.config = config
        base = DCLIPStudentModel(DCLIPStudentModel.config_class.from_clip_config(config))
        self.base_state = {k: v.clone() for k, v in base.state_dict().items()}
        self.teacher = DCLIPTeacherModel.from_clip(base, num_attention_heads=8).eval()
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        # Only the region cropping of the processor is timed; its tokenizer is a small locally built one.
        tokenizer = train_clip_tokenizer(["a photo of a dog", "a red car on a street"], vocab_size=600)
        self.processor = DCLIPProcessor(
            image_processor=image_processor, tokenizer=tokenizer, whole_image_if_empty=False
        )
        generator = torch.Generator().manual_seed(1)
        rng = np.random.default_rng(1)
        vocab = config.text_config.vocab_size
        ids = torch.randint(0, vocab - 2, (batch_size, CAPTION_TOKENS), generator=generator)
        ids[:, 0], ids[:, -1] = vocab - 2, vocab - 1
        dim = config.projection_dim
        self.batch = {
            "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "teacher_embeds": torch.randn(batch_size, dim, generator=generator),
            "target_text_embeds": torch.randn(batch_size, dim, generator=generator),
            "image_index": torch.arange(batch_size),
        }
        self.photo_size = (640, 480)  # COCO-like originals: crops come from the full-size image
        self.jpegs = _jpegs(batch_size, self.photo_size, rng)
        self.rng = rng
        self.workdir = workdir

    def student(self, name: str) -> DCLIPStudentModel:
        model = DCLIPStudentModel(DCLIPStudentModel.config_class.from_clip_config(self.config))
        model.load_state_dict(self.base_state)
        apply_trainable_policy(model, "paper_code")
        return model.train()

    def _args(self, cls, name: str, **overrides):
        quiet = dict(report_to="none", disable_tqdm=True, eval_strategy="no", save_strategy="no")
        return cls(output_dir=os.path.join(self.workdir, name), load_best_model_at_end=False, **quiet, **overrides)

    def _optimizer(self, model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    @staticmethod
    def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]):
        def step() -> None:
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def raw_regions(self, regions: int) -> dict[str, torch.Tensor]:
        """Decode every JPEG, crop its boxes and preprocess the crops: what a cache-free step must do first."""
        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in self.jpegs]
        boxes = _boxes(len(images), regions, self.photo_size, self.rng)
        out = self.processor.process_regions(images, boxes)
        return {"region_pixel_values": out["region_pixel_values"], "region_mask": out["region_mask"]}

    # ----- student stage -----

    def plain_step(self) -> Callable[[], None]:
        model = self.student("plain")
        optimizer = self._optimizer(model, 1e-6, 0.01)
        inputs = {k: self.batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
        return self._step(model, optimizer, lambda: model(**inputs, return_loss=True).loss)

    def dclip_step(self) -> Callable[[], None]:
        model = self.student("dclip")
        trainer = DCLIPStudentTrainer(model=model, args=self._args(StudentTrainingArguments, "dclip"))
        optimizer = self._optimizer(model, 1e-6, 0.01)
        return self._step(model, optimizer, lambda: trainer.compute_loss(model, self.batch))

    def pipeline_step(self, regions: int) -> Callable[[], None]:
        model = self.student(f"pipeline{regions}")
        args = self._args(StudentTrainingArguments, f"pipeline{regions}", targets="teacher")
        trainer = DCLIPStudentTrainer(model=model, args=args, teacher=self.teacher)
        optimizer = self._optimizer(model, 1e-6, 0.01)
        student_batch = {k: v for k, v in self.batch.items() if k not in ("teacher_embeds", "target_text_embeds")}
        return self._step(
            model, optimizer, lambda: trainer.compute_loss(model, {**student_batch, **self.raw_regions(regions)})
        )

    # ----- teacher stage -----

    def _teacher_trainer(self, name: str) -> tuple[DCLIPTeacherModel, DCLIPTeacherTrainer, torch.optim.Optimizer]:
        teacher = DCLIPTeacherModel.from_clip(self.teacher.clip, num_attention_heads=8)
        trainer = DCLIPTeacherTrainer(model=teacher, args=self._args(TeacherTrainingArguments, name))
        return teacher, trainer, self._optimizer(teacher, 1e-5, 0.0)

    def teacher_cached_step(self, regions: int) -> Callable[[], None]:
        teacher, trainer, optimizer = self._teacher_trainer("teacher_cached")
        with torch.no_grad():
            text = teacher.get_text_features(self.batch["input_ids"], self.batch["attention_mask"])
            raw = self.raw_regions(regions)
            region_embeds = teacher.get_region_features(raw["region_pixel_values"], raw["region_mask"])
        # The cache stores fp16; the collator hands the trainer fp32 tensors, as timed here.
        cached = {
            "token_embeds": text.token_embeds.half().float(),
            "token_mask": text.token_mask,
            "text_embeds": text.text_embeds.half().float(),
            "region_embeds": region_embeds.half().float(),
            "region_mask": raw["region_mask"].bool(),
            "image_embeds": teacher.get_image_features(self.batch["pixel_values"]).half().float(),
            "image_index": self.batch["image_index"],
        }
        teacher.train()
        return self._step(teacher, optimizer, lambda: trainer.compute_loss(teacher, cached))

    def teacher_raw_step(self, regions: int) -> Callable[[], None]:
        teacher, trainer, optimizer = self._teacher_trainer("teacher_raw")
        teacher.train()
        text = {k: self.batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_index")}
        return self._step(
            teacher, optimizer, lambda: trainer.compute_loss(teacher, {**text, **self.raw_regions(regions)})
        )


def time_interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, min_seconds: float = 0.5, slow_seconds: float = 5.0
) -> dict[str, float]:
    """Median seconds per call of each step, the variants timed in turn `repeats` times.

    A warm-up call of each step sets how many calls one timing spans (at least `min_seconds`, so millisecond steps
    are not lost in timer and scheduler noise); a step slower than `slow_seconds` counts its warm-up as one sample
    (its one-off costs are negligible next to its run time).
    """
    inner: dict[str, int] = {}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        warm = time.perf_counter() - start
        inner[name] = max(1, math.ceil(min_seconds / max(warm, 1e-6)))
        if warm >= slow_seconds:
            times[name].append(warm)
    for _ in range(repeats):
        for name, step in steps.items():
            if len(times[name]) >= repeats:
                continue
            start = time.perf_counter()
            for _ in range(inner[name]):
                step()
            times[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(values) for name, values in times.items()}


def run_teacher_stage(
    size: str, batch_size: int, image_size: int, regions: int, repeats: int, layers: int | None
) -> dict[str, Any]:
    """Benchmark 3: a teacher step on cached features vs on decoded, cropped and CLIP-encoded regions."""
    with tempfile.TemporaryDirectory() as workdir:
        work = Workload(size, batch_size, image_size, workdir, layers)
        steps = {"cached": work.teacher_cached_step(regions), "raw": work.teacher_raw_step(regions)}
        teacher = time_interleaved(steps, repeats)
        depth = work.config.vision_config.num_hidden_layers
    return {
        "config": {"batch_size": batch_size, "image_size": image_size, "layers_per_tower": depth},
        "regions_per_image": regions,
        "seconds_per_step_cached": teacher["cached"],
        "seconds_per_step_raw": teacher["raw"],
        "samples_per_second_cached": batch_size / teacher["cached"],
        "samples_per_second_raw": batch_size / teacher["raw"],
        "speedup": teacher["raw"] / teacher["cached"],
    }


def run_size(
    size: str,
    batch_size: int,
    image_size: int,
    regions: list[int],
    repeats: int,
    layers: int | None = None,
) -> dict[str, Any]:
    """Benchmarks 1 and 2 at one size."""
    with tempfile.TemporaryDirectory() as workdir:
        work = Workload(size, batch_size, image_size, workdir, layers)
        started = time.perf_counter()
        student = time_interleaved({"plain": work.plain_step(), "dclip_cached": work.dclip_step()}, repeats)
        pipeline = {}
        for count in regions:
            pipeline[count] = time_interleaved({"pipeline": work.pipeline_step(count)}, repeats)["pipeline"]
        elapsed = time.perf_counter() - started
    plain, ours = student["plain"], student["dclip_cached"]
    result: dict[str, Any] = {
        "config": {
            "size": size,
            "batch_size": batch_size,
            "image_size": image_size,
            "layers_per_tower": work.config.vision_config.num_hidden_layers,
            "caption_tokens": CAPTION_TOKENS,
            "precision": "fp32",
            "trainable_policy": "paper_code",
            "repeats": repeats,
        },
        "seconds_per_step": {"plain_clip": plain, "dclip_cached_targets": ours},
        "samples_per_second": {"plain_clip": batch_size / plain, "dclip_cached_targets": batch_size / ours},
        "student_vs_plain_ratio": ours / plain,
        "pipeline": {},
        "wall_seconds": elapsed,
    }
    for count, seconds in pipeline.items():
        advantage = (seconds - ours) / (seconds - plain) if seconds > plain else float("nan")
        result["pipeline"][str(count)] = {
            "seconds_per_step": seconds,
            "pipeline_vs_plain": seconds / plain,
            "advantage_kept": advantage,
        }
    return result


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: dict[str, Any]) -> str:
    """Human-readable summary of `results["sizes"]`, one block per size."""
    lines = []
    for size, res in results["sizes"].items():
        cfg = res["config"]
        lines.append(
            f"== {size}: batch {cfg['batch_size']}, image {cfg['image_size']} px, "
            f"{cfg['layers_per_tower']} layers per tower, fp32 =="
        )
        sps, ratio = res["samples_per_second"], res["student_vs_plain_ratio"]
        limit = TARGETS["student_vs_plain_max"]
        lines.append(
            f"student step   plain CLIP {sps['plain_clip']:8.2f} samples/s | DCLIP cached "
            f"{sps['dclip_cached_targets']:8.2f} samples/s | ratio {ratio:.3f} (<= {limit}) {_verdict(ratio <= limit)}"
        )
        for count, entry in res["pipeline"].items():
            kept, least = entry["advantage_kept"], TARGETS["advantage_kept_min"]
            lines.append(
                f"pipeline R={count:>2}  {entry['pipeline_vs_plain']:6.2f}x plain step | advantage kept {kept:6.1%} "
                f"(>= {least:.0%}) {_verdict(kept >= least)}"
            )
        teacher, least = res["teacher_stage"], TARGETS["teacher_cache_speedup_min"]
        tcfg = teacher["config"]
        lines.append(
            f"teacher (batch {tcfg['batch_size']}, {tcfg['image_size']} px, {tcfg['layers_per_tower']} layers, "
            f"R={teacher['regions_per_image']})  cached "
            f"{teacher['samples_per_second_cached']:9.1f} samples/s | "
            f"raw {teacher['samples_per_second_raw']:7.2f} samples/s | speed-up {teacher['speedup']:.0f}x "
            f"(>= {least:.0f}x) {_verdict(teacher['speedup'] >= least)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "vitb"], choices=["tiny", "vitb"])
    parser.add_argument("--tiny-batch-size", type=int, default=32)
    parser.add_argument("--vitb-batch-size", type=int, default=4)
    parser.add_argument("--vitb-image-size", type=int, default=64)
    parser.add_argument("--vitb-layers", type=int, default=12, help="layers per tower (ViT-B/16 has 12)")
    parser.add_argument("--regions", type=int, nargs="+", default=[2, 6, 12])
    parser.add_argument("--teacher-regions", type=int, default=6)
    parser.add_argument("--vitb-teacher-batch-size", type=int, default=2)
    parser.add_argument("--vitb-teacher-image-size", type=int, default=224)
    parser.add_argument("--vitb-teacher-layers", type=int, default=12, help="benchmark 3 at full ViT-B/16 depth")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads:
        # On a shared machine, OpenMP threads wait on descheduled siblings: with 2 threads under a load of ~6 the tiny
        # step ran 26x slower than with 1 and the ratios were noise. One thread gives stable ratios everywhere.
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "benchmark": "bench_student_step",
        "targets": TARGETS,
        "machine": machine(),
        "sizes": {},
    }
    results["command"] = "python -m benchmarks.bench_student_step " + " ".join(argv or [])
    for size in args.sizes:
        batch = args.tiny_batch_size if size == "tiny" else args.vitb_batch_size
        image = 30 if size == "tiny" else args.vitb_image_size
        layers = args.vitb_layers if size == "vitb" else None
        results["sizes"][size] = run_size(size, batch, image, args.regions, args.repeats, layers)
        if size == "vitb":
            teacher_args = (args.vitb_teacher_batch_size, args.vitb_teacher_image_size)
            teacher_layers = args.vitb_teacher_layers
        else:
            teacher_args, teacher_layers = (batch, image), None
        results["sizes"][size]["teacher_stage"] = run_teacher_stage(
            size, *teacher_args, args.teacher_regions, args.repeats, teacher_layers
        )
        print(report({"sizes": {size: results["sizes"][size]}}), flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
