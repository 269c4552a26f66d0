"""Benchmarks stay runnable: the GPU script's CPU dry run, and the scaling fit."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_gpu, bench_scaling


def test_gpu_benchmark_dry_runs_on_cpu_and_reports_every_variant(tmp_path):
    output = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--dtype", "bfloat16", "--size", "tiny", "--batch-sizes", "4"]
    assert bench_gpu.main([*argv, "--warmup", "1", "--steps", "1", "--regions", "2", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    variants = report["batch_sizes"]["4"]["variants"]
    assert set(variants) == {"plain", "dclip", "pipeline", "teacher_cached", "teacher_raw"}
    assert all(v["samples_per_second"] > 0 for v in variants.values())
    assert set(report["batch_sizes"]["4"]["ratios"]) == {"dclip_over_plain", "advantage_kept", "teacher_cache_speedup"}


def test_gpu_benchmark_refuses_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(bench_gpu.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench_gpu.main(["--device", "cuda"])


@pytest.mark.parametrize(("power", "expected"), [(1.0, 1.0), (2.0, 2.0), (0.5, 0.5)])
def test_scaling_exponent_recovers_the_power_law(power, expected):
    sizes = [100, 200, 400]
    assert bench_scaling.exponent(sizes, [3.0 * s**power for s in sizes]) == pytest.approx(expected)
