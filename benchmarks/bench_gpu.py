"""Benchmarks 1–3 on a GPU: ViT-B/16-sized random weights, bf16 autocast, SDPA, several batch sizes.

For each batch size it times (forward + backward + AdamW step, after warm-up) and records peak memory of:

1. `plain` — CLIP fine-tuning with HF's CLIP loss; `dclip` — the DCLIP student step with cached teacher targets
   (the real `DCLIPStudentTrainer.compute_loss`). Ratio dclip / plain: target <= 1.15.
2. `pipeline` — the reference pipeline's cost model: the frozen teacher recomputes `g(I, c)` every step (R region
   crops per image through frozen CLIP, caption token embeddings, cross-attention), then the student step. Crops are
   already on the GPU here, so JPEG decoding and cropping (CPU work the reference also pays) are *not* counted: the
   figure understates the reference's cost. Advantage kept = (pipeline - dclip) / (pipeline - plain): target >= 90 %.
3. `teacher_cached` vs `teacher_raw` — a teacher-stage step on cached frozen-CLIP features vs encoding the crops and
   captions every step. Speed-up target >= 50x.

It needs no download (random weights) and prints samples/s and peak memory per variant. A variant that runs out of
memory is reported as OOM and the rest go on. `benchmarks/gpu_bench.sh` runs it with the issue's settings; on a CPU it
runs too (`--device cpu --size tiny`), which is how the test suite keeps it working.

    python -m benchmarks.bench_gpu --device cuda --dtype bfloat16 --batch-sizes 32 128 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig

from modeling_dclip import DCLIPStudentConfig, DCLIPStudentModel, DCLIPTeacherConfig, DCLIPTeacherModel
from training.args import StudentTrainingArguments, TeacherTrainingArguments
from training.trainer import DCLIPStudentTrainer, DCLIPTeacherTrainer, apply_trainable_policy

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
CAPTION_TOKENS = 20
SIZES = {
    # ViT-B/16: vision 768 x 12 layers, patch 16 at 224 px; text 512 x 12 layers; D = 512; CLIP's vocabulary.
    "vitb16": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
        vision=dict(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, patch_size=16
        ),
        image_size=224,
        projection_dim=512,
        vocab_size=49408,
    ),
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
        vision=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, patch_size=6),
        image_size=30,
        projection_dim=32,
        vocab_size=100,
    ),
}


def clip_config(size: str) -> CLIPConfig:
    spec = SIZES[size]
    vocab = spec["vocab_size"]
    return CLIPConfig(
        text_config=dict(
            **spec["text"],
            vocab_size=vocab,
            max_position_embeddings=77,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
        ),
        vision_config=dict(**spec["vision"], image_size=spec["image_size"]),
        projection_dim=spec["projection_dim"],
    )


class GpuWorkload:
    """Models and one batch of every variant, on `device`."""

    def __init__(self, size: str, batch_size: int, regions: int, device: torch.device, workdir: str) -> None:
        torch.manual_seed(0)
        self.device, self.batch_size, self.regions, self.workdir = device, batch_size, regions, workdir
        config = clip_config(size)
        self.config = config
        student_config = DCLIPStudentConfig.from_clip_config(config)
        base = DCLIPStudentModel._from_config(student_config, attn_implementation="sdpa")
        self.base_state = base.state_dict()
        teacher_config = DCLIPTeacherConfig(
            clip_config=config.to_dict(), num_attention_heads=8 if size != "tiny" else 4
        )
        self.teacher = DCLIPTeacherModel._from_config(teacher_config, attn_implementation="sdpa").to(device).eval()
        self.teacher.clip.load_state_dict({k: v for k, v in self.base_state.items()}, strict=True)
        image, vocab, dim = SIZES[size]["image_size"], config.text_config.vocab_size, config.projection_dim
        ids = torch.randint(0, vocab - 2, (batch_size, CAPTION_TOKENS))
        ids[:, 0], ids[:, -1] = vocab - 2, vocab - 1
        self.batch = {
            "pixel_values": torch.randn(batch_size, 3, image, image),
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "teacher_embeds": torch.randn(batch_size, dim),
            "target_text_embeds": torch.randn(batch_size, dim),
            "image_index": torch.arange(batch_size),
            "region_pixel_values": torch.randn(batch_size, regions, 3, image, image),
            "region_mask": torch.ones(batch_size, regions, dtype=torch.bool),
        }
        self.batch = {k: v.to(device) for k, v in self.batch.items()}

    def _args(self, cls, name: str, **overrides):
        quiet = dict(report_to="none", disable_tqdm=True, eval_strategy="no", save_strategy="no")
        return cls(output_dir=os.path.join(self.workdir, name), load_best_model_at_end=False, **quiet, **overrides)

    def _student(self) -> DCLIPStudentModel:
        model = DCLIPStudentModel._from_config(
            DCLIPStudentConfig.from_clip_config(self.config), attn_implementation="sdpa"
        )
        model.load_state_dict(self.base_state)
        apply_trainable_policy(model, "paper_code")
        return model.to(self.device).train()

    @staticmethod
    def _step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], lr: float) -> Callable[[], None]:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

        def step() -> None:
            loss_fn().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def variants(self) -> dict[str, Callable[[], Callable[[], None]]]:
        """Builders (so only one variant's model and optimizer state is on the device at a time)."""
        student_keys = ("pixel_values", "input_ids", "attention_mask")

        def plain():
            model = self._student()
            inputs = {k: self.batch[k] for k in student_keys}
            return self._step(model, lambda: model(**inputs, return_loss=True).loss, 1e-6)

        def dclip():
            model = self._student()
            trainer = DCLIPStudentTrainer(model=model, args=self._args(StudentTrainingArguments, "dclip"))
            cached = {k: v for k, v in self.batch.items() if not k.startswith("region")}
            return self._step(model, lambda: trainer.compute_loss(model, cached), 1e-6)

        def pipeline():
            model = self._student()
            args = self._args(StudentTrainingArguments, "pipeline", targets="teacher")
            trainer = DCLIPStudentTrainer(model=model, args=args, teacher=self.teacher)
            raw = {k: v for k, v in self.batch.items() if k not in ("teacher_embeds", "target_text_embeds")}
            return self._step(model, lambda: trainer.compute_loss(model, raw), 1e-6)

        def teacher(cached: bool):
            def build():
                model = DCLIPTeacherModel.from_clip(
                    self.teacher.clip, num_attention_heads=self.teacher.config.num_attention_heads
                )
                model = model.to(self.device).train()
                trainer = DCLIPTeacherTrainer(model=model, args=self._args(TeacherTrainingArguments, "teacher"))
                batch = {
                    k: self.batch[k]
                    for k in (
                        "input_ids",
                        "attention_mask",
                        "pixel_values",
                        "image_index",
                        "region_pixel_values",
                        "region_mask",
                    )
                }
                if cached:
                    with torch.no_grad():
                        text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
                        batch = {
                            "token_embeds": text.token_embeds.half().float(),
                            "token_mask": text.token_mask,
                            "text_embeds": text.text_embeds.half().float(),
                            "region_embeds": model.get_region_features(batch["region_pixel_values"]).half().float(),
                            "region_mask": batch["region_mask"],
                            "image_embeds": model.get_image_features(batch["pixel_values"]).half().float(),
                            "image_index": batch["image_index"],
                        }
                return self._step(model, lambda: trainer.compute_loss(model, batch), 1e-5)

            return build

        return {
            "plain": plain,
            "dclip": dclip,
            "pipeline": pipeline,
            "teacher_cached": teacher(True),
            "teacher_raw": teacher(False),
        }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    build: Callable[[], Callable[[], None]], device: torch.device, dtype: torch.dtype, warmup: int, steps: int
):
    """Seconds per step and peak device memory (CUDA only) of one variant."""
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with autocast:
            step = build()
            for _ in range(warmup):
                step()
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _synchronize(device)
        seconds = (time.perf_counter() - start) / steps
    except torch.OutOfMemoryError:
        return {"oom": True}
    finally:
        step = None
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds_per_step": seconds, "peak_memory_gib": peak}


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    def sec(name):
        return None if results[name].get("oom") else results[name]["seconds_per_step"]

    plain, dclip, pipeline = sec("plain"), sec("dclip"), sec("pipeline")
    cached, raw = sec("teacher_cached"), sec("teacher_raw")
    return {
        "dclip_over_plain": dclip / plain if plain and dclip else None,
        "advantage_kept": (pipeline - dclip) / (pipeline - plain)
        if None not in (plain, dclip, pipeline) and pipeline > plain
        else None,
        "teacher_cache_speedup": raw / cached if raw and cached else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--size", default="vitb16", choices=sorted(SIZES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--regions", type=int, default=6, help="regions per image of the pipeline/teacher variants")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible; use --device cpu --size tiny for a dry run.")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = getattr(torch, args.dtype)
    report: dict[str, Any] = {
        "benchmark": "bench_gpu",
        "command": "python -m benchmarks.bench_gpu " + " ".join(argv or []),
        "settings": vars(args),
        "machine": {
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch": torch.__version__,
        },
        "batch_sizes": {},
    }
    print(f"{'batch':>6} {'variant':<15} {'samples/s':>10} {'peak GiB':>9}")
    with tempfile.TemporaryDirectory() as workdir:
        for batch_size in args.batch_sizes:
            work = GpuWorkload(args.size, batch_size, args.regions, device, workdir)
            results = {}
            for name, build in work.variants().items():
                results[name] = measure(build, device, dtype, args.warmup, args.steps)
                result = results[name]
                if result.get("oom"):
                    print(f"{batch_size:>6} {name:<15} {'OOM':>10}")
                    continue
                result["samples_per_second"] = batch_size / result["seconds_per_step"]
                peak = "" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:9.2f}"
                print(f"{batch_size:>6} {name:<15} {result['samples_per_second']:>10.1f} {peak}")
            summary = ratios(results)
            print(
                f"{batch_size:>6} ratios: "
                + ", ".join(f"{k} {'–' if v is None else f'{v:.3f}'}" for k, v in summary.items())
            )
            report["batch_sizes"][str(batch_size)] = {"variants": results, "ratios": summary}
            del work
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
