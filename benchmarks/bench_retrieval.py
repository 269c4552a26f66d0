"""Benchmark 5: `retrieval_metrics` vs the bare similarity matmul and a full-matrix argsort evaluation.

Random normalised embeddings of COCO-5k size (5,000 images x 25,000 captions, 5 per image, dim 512; captions are
noisy copies of their image so ranks are realistic). Three methods, each in a fresh subprocess:

* `matmul`: the bare `texts @ images.T` (the floor any exact evaluation pays);
* `argsort`: the usual full-matrix evaluation (score matrix, `argsort` per caption and per image, first hit);
* `retrieval_metrics`: `training.metrics.retrieval_metrics` (chunked counting, all metrics both directions).

Time is the best of `--repeats` calls (one for the slow argsort baseline). Peak extra memory = peak resident set
size during the call minus the RSS just before it (inputs already built), sampled every millisecond from
`/proc/self/statm` by a thread and checked against `getrusage(RUSAGE_SELF).ru_maxrss` (torch's CPU allocations are
invisible to `tracemalloc`). The 100,000 x 500,000 figures are extrapolated: time from the measured cost per score;
memory from the block size (`chunk_size**2` floats + a bool mask) plus the per-caption/per-image counters, plus the
part of the measured COCO-5k peak the formula does not explain (allocator and BLAS workspace, size-independent).

    python benchmarks/bench_retrieval.py [--images 5000] [--captions_per_image 5] [--dim 512] [--chunk_size 4096]

Writes `benchmarks/results/retrieval.json` and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PAGE = os.sysconf("SC_PAGE_SIZE")
NOISE = 7.0  # caption = image + noise of norm ~NOISE: text-to-image R@1 of roughly 30 %, like CLIP on COCO-5k


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakRSS:
    """Samples the resident set size every millisecond in a background thread."""

    def __enter__(self) -> PeakRSS:
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def make_embeddings(n_images: int, per_image: int, dim: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=generator), dim=-1)
    owner = torch.arange(n_images * per_image) // per_image
    noise = torch.randn(len(owner), dim, generator=generator)
    texts = torch.nn.functional.normalize(images[owner] + NOISE * noise / dim**0.5, dim=-1)
    return images, texts, owner


def argsort_metrics(images, texts, owner, ks=(1, 5, 10)) -> dict:
    """The straightforward evaluation: full score matrix, a full argsort per query, rank of the first hit."""
    import torch

    scores = texts @ images.T
    order = scores.argsort(dim=1, descending=True)
    t2i_rank = (order == owner[:, None]).nonzero()[:, 1] + 1
    del order
    order = scores.T.argsort(dim=1, descending=True)  # [images, texts]
    hits = owner[order] == torch.arange(images.shape[0])[:, None]
    i2t_rank = hits.int().argmax(dim=1) + 1
    out = {f"t2i_recall@{k}": float((t2i_rank <= k).float().mean() * 100) for k in ks}
    out.update({f"i2t_recall@{k}": float((i2t_rank <= k).float().mean() * 100) for k in ks})
    return out


def _measure(method: str, args: dict, queue) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    images, texts, owner = make_embeddings(args["images"], args["per_image"], args["dim"], args["seed"])
    from training.metrics import retrieval_metrics

    calls = {
        "matmul": lambda: texts @ images.T,
        "argsort": lambda: argsort_metrics(images, texts, owner),
        "retrieval_metrics": lambda: retrieval_metrics(images, texts, owner, chunk_size=args["chunk_size"]),
    }
    call = calls[method]
    best = float("inf")
    peak_extra = 0
    for _ in range(args["repeats"]):
        import gc

        gc.collect()
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with PeakRSS() as meter:
            start = time.perf_counter()
            result = call()
            elapsed = time.perf_counter() - start
        maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        extra = max(meter.peak, maxrss_after if maxrss_after > maxrss_before else 0) - meter.start
        peak_extra = max(peak_extra, extra)
        best = min(best, elapsed)
        del result
    summary = None
    if method != "matmul":
        summary = {k: round(v, 4) for k, v in call().items() if "recall@1" in k or "recall@10" in k}
    queue.put({"seconds": best, "peak_extra_bytes": peak_extra, "summary": summary})


def measure(method: str, args: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(method, args, queue))
    process.start()
    out = queue.get()
    process.join()
    return out


def memory_model(n_images: int, n_texts: int, dim: int, chunk: int, max_caps: int) -> int:
    """Bytes `retrieval_metrics` allocates beyond its inputs (the formula the extrapolation uses)."""
    block = min(chunk, n_images) * min(chunk, n_texts)
    blocks = block * (4 + 1)  # float32 scores + bool mask
    normalised = (min(chunk, n_images) + min(chunk, n_texts)) * dim * 4
    per_text = n_texts * 8 * 6  # positives, thresholds, owner/order/slot indices, t2i counts
    per_image = n_images * max_caps * 8 * 4  # caption table, thresholds, i2t counts, ranks
    return blocks + normalised + per_text + per_image


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions_per_image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk_size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_argsort", action="store_true", help="skip the (memory-hungry) argsort baseline")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "retrieval.json"))
    args = parser.parse_args(argv)

    settings = {
        "images": args.images,
        "per_image": args.captions_per_image,
        "dim": args.dim,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "threads": args.threads,
        "seed": args.seed,
    }
    methods = ["matmul", "retrieval_metrics"] + ([] if args.skip_argsort else ["argsort"])
    # The argsort baseline is slow (minutes) and only needs one run.
    measured = {
        method: measure(method, {**settings, "repeats": 1} if method == "argsort" else settings) for method in methods
    }
    n_texts = args.images * args.captions_per_image
    matmul, ours = measured["matmul"], measured["retrieval_metrics"]
    ratios = {"retrieval_metrics / matmul (time)": ours["seconds"] / matmul["seconds"]}
    if "argsort" in measured:
        ratios["argsort / matmul (time)"] = measured["argsort"]["seconds"] / matmul["seconds"]
        ratios["retrieval_metrics / argsort (time)"] = ours["seconds"] / measured["argsort"]["seconds"]
        ratios["retrieval_metrics / argsort (peak memory)"] = ours["peak_extra_bytes"] / max(
            1, measured["argsort"]["peak_extra_bytes"]
        )
    big_images, big_texts = 100_000, 500_000
    small_model = memory_model(args.images, n_texts, args.dim, args.chunk_size, args.captions_per_image)
    big_model = memory_model(big_images, big_texts, args.dim, args.chunk_size, args.captions_per_image)
    per_score = ours["seconds"] / (args.images * n_texts)
    extrapolated = {
        "images": big_images,
        "texts": big_texts,
        "seconds_estimate": per_score * big_images * big_texts,
        "matmul_seconds_estimate": matmul["seconds"] / (args.images * n_texts) * big_images * big_texts,
        "peak_extra_bytes_model": big_model,
        # The model plus what it missed at the measured size (allocator and BLAS workspace: size-independent).
        "peak_extra_bytes_estimate": big_model + max(0, ours["peak_extra_bytes"] - small_model),
        "full_score_matrix_bytes": big_images * big_texts * 4,
    }
    result = {
        "benchmark": "retrieval metrics vs bare similarity matmul and full-matrix argsort (COCO-5k size)",
        "command": "python benchmarks/bench_retrieval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {**settings, "texts": n_texts},
        "memory_method": "peak RSS sampled every 1 ms from /proc/self/statm (+ ru_maxrss), minus RSS before the call",
        "machine": machine(),
        "measured": measured,
        "memory_model_bytes_at_this_size": small_model,
        "ratios": ratios,
        "target": "retrieval_metrics / matmul (time) <= 2",
        "extrapolated_100k_x_500k": extrapolated,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    mib = 1024**2
    print(
        f"{args.images} images x {n_texts} captions, dim {args.dim}, chunk {args.chunk_size}, {args.threads} threads"
    )
    print(f"{'method':<20}{'seconds':>10}{'peak extra MiB':>16}")
    for method, values in measured.items():
        print(f"{method:<20}{values['seconds']:>10.3f}{values['peak_extra_bytes'] / mib:>16.1f}")
    for name, value in ratios.items():
        print(f"{name:<45}{value:>8.2f}x")
    print(
        f"100k x 500k estimate: {extrapolated['seconds_estimate'] / 3600:.1f} h "
        f"(bare matmul {extrapolated['matmul_seconds_estimate'] / 3600:.1f} h), "
        f"{extrapolated['peak_extra_bytes_estimate'] / mib:.0f} MiB extra "
        f"(full score matrix would be {extrapolated['full_score_matrix_bytes'] / 1024**3:.0f} GiB)"
    )
    print(f"written {output}")
    return result


if __name__ == "__main__":
    main()
