"""`dclip evaluate`: retrieval, hard-negative and zero-shot evaluation of one or more CLIP-compatible models.

Every model (a local folder, a Hub id, or an in-memory `(model, processor)` pair) is run on every set; embeddings
are cached per (model fingerprint, preprocessing, data) so re-evaluating with new metrics does not re-encode. Under
`accelerate launch` each set is split across the processes and the embeddings are gathered; only the main process
scores and writes. Images that fail to load are skipped and counted.

Sets (YAML/JSON mappings, or `NAME=...` strings on the command line):
    * retrieval: a `training.data.SourceSpec` mapping whose `name` names the set, e.g. COCO 5k =
      `{name: coco_5k, type: karpathy, path: dataset_coco.json, image_root: coco/, splits: [test]}`; COCO 1k adds
      `max_images: 1000` (the first 1,000 test images); Flickr30k 1k = its Karpathy test split. Command line:
      `coco_5k=karpathy:dataset_coco.json,image_root=coco,splits=test` (keys as in `SourceSpec`; `+` separates
      list items).
    * zero_shot: `{name, path, templates}` for `training.data.load_zero_shot_folder`; `templates` is a set name
      of `training.zero_shot.TEMPLATE_SETS` or a list (default: `cifar` if the name contains "cifar", else the
      paper's `"a photo of a {c}"`). Command line: `caltech=path/to/folder,templates=imagenet80`.
    * hard_negatives: `{name, path, image_root}` for a triples JSON (docs/internals.md §4), or
      `{name, retrieval: <retrieval set name>, seed}` to build lexicon swaps from that set's captions.
      Command line: `synthetic_hn=path/to/triples.json` or `coco_hn=lexicon:coco_5k`.

Outputs in `output_dir`: `results.json`, `results.md` (Markdown tables), `recall_at_k_<set>.png` (Recall@K curves,
text→image and image→text side by side, one line per model) and `zero_shot_retention.png` (top-1 retention bars).

`results.json` layout (read by the model card, `hub_card/card.py`, and the pipeline, `training/pipeline.py`)::

    {
      "models": {                       # every metric, per model, per set
        "<model>": {
          "<retrieval set>": {"t2i_recall@1": %, ..., "i2t_map": %, "t2i_median_rank": r, ...,   # metrics.py keys
                              "n_images": n, "n_texts": n, "n_failed_images": n},
          "<zero-shot set>": {"top1": %, "top5": %, "mean_per_class_recall": %, "n_images": n, "n_classes": n,
                              "n_failed": n},
          "<hard-negative set>": {"hn_accuracy": %, "hn_pairwise_accuracy": %, "hn_<swap>_accuracy": %,
                                  "hn_<swap>_count": n, "hn_n_triples": n, "hn_skipped_images": n,
                                  "hn_lexicon_skipped_images": n}       # the last only for lexicon sets
        }
      },
      "gains": {"<model>": {"<retrieval or hard-negative set>": {"<metric>": (model - base) / base}}},
                                        # fractions (0.2 = +20 %), every non-base model, recall/mrr/map/hn accuracies
      "retention": {"<model>": {"<zero-shot set>": top1_model / top1_base}},   # a ratio (0.94 = 94 % kept)
      "meta": {"base": "<model>", "models": {"<model>": {"source": str, "fingerprint": str}},
               "datasets": {"<set>": {"kind": "retrieval" | "zero_shot" | "hard_negatives", ...counts}},
               "ks": [...], "chunk_size": int, "created": ISO time, "versions": {...}}
    }
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .hard_negatives import evaluate_hard_negatives, load_triples, make_lexicon_triples
from .metrics import DEFAULT_CHUNK_SIZE, retrieval_metrics
from .zero_shot import CLIPEncoder, class_embeddings, resolve_templates, retention, zero_shot_metrics

logger = logging.getLogger(__name__)

CURVE_KS = (1, 2, 5, 10, 20, 50, 100)
GAIN_METRIC_PREFIXES = ("t2i_recall@", "i2t_recall@", "t2i_mrr", "i2t_mrr", "t2i_map", "i2t_map", "hn_accuracy")


@dataclass
class EvaluateArguments:
    """Arguments of `dclip evaluate` (flags, or one YAML/JSON file with the same keys)."""

    models: list[str] = field(
        default_factory=list,
        metadata={"help": "Models to evaluate as NAME=PATH_OR_HUB_ID (or just PATH; the name is its folder name)."},
    )
    base: str | None = field(default=None, metadata={"help": "Name of the base model for gains (default: first)."})
    retrieval: list[str] = field(default_factory=list, metadata={"help": "Retrieval sets (see module docstring)."})
    zero_shot: list[str] = field(default_factory=list, metadata={"help": "Zero-shot sets (see module docstring)."})
    hard_negatives: list[str] = field(default_factory=list, metadata={"help": "Hard-negative sets (see docstring)."})
    output_dir: str = field(default="eval", metadata={"help": "Where results.json, results.md and plots go."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Embedding cache folder (default: <output_dir>/embedding_cache)."}
    )
    no_cache: bool = field(default=False, metadata={"help": "Always re-encode; do not read or write the cache."})
    batch_size: int = field(default=64, metadata={"help": "Images or captions per forward pass."})
    chunk_size: int = field(default=DEFAULT_CHUNK_SIZE, metadata={"help": "Score-block side for retrieval metrics."})
    ks: list[int] = field(default_factory=lambda: [1, 5, 10], metadata={"help": "Recall@K cut-offs to report."})
    templates: str | None = field(default=None, metadata={"help": "Prompt template set for every zero-shot set."})
    max_images: int | None = field(default=None, metadata={"help": "Cap on images per set (quick runs)."})
    seed: int = field(default=0, metadata={"help": "Seed of the lexicon hard-negative swaps."})
    no_plots: bool = field(default=False, metadata={"help": "Do not write PNG plots."})
    no_progress: bool = field(default=False, metadata={"help": "Hide progress bars."})


# ---------------------------------------------------------------------------------------------------------- specs


def _parse_value(key: str, value: str) -> Any:
    if key in ("splits", "path", "image_root", "instances") and "+" in value:
        return value.split("+")
    if key in ("max_images", "seed"):
        return int(value)
    if key in ("check_files", "keep_uncaptioned"):
        return value.lower() in ("1", "true", "yes")
    if key == "splits":
        return [value]
    return value


def parse_set_spec(spec: str | Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A set spec as a dict: a mapping is copied; a string is JSON or `NAME=[TYPE:]PATH[,key=value...]`.

    Args:
        spec: the spec.
        kind: `retrieval`, `zero_shot` or `hard_negatives` (what `TYPE:` means: a `SourceSpec` type for retrieval,
            `lexicon:` for hard negatives).
    """
    if isinstance(spec, Mapping):
        out = dict(spec)
    elif isinstance(spec, str) and spec.lstrip().startswith("{"):
        out = json.loads(spec)
    elif isinstance(spec, str) and "=" in spec:
        name, rest = spec.split("=", 1)
        head, *pairs = rest.split(",")
        out = {"name": name}
        if kind == "retrieval":
            if ":" not in head:
                raise ValueError(f"Retrieval set {spec!r} needs TYPE:PATH, e.g. coco_5k=karpathy:dataset_coco.json.")
            out["type"], out["path"] = head.split(":", 1)
        elif kind == "hard_negatives" and head.startswith("lexicon:"):
            out["retrieval"] = head.split(":", 1)[1]
        else:
            out["path"] = head
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"Bad option {pair!r} in {spec!r}; use key=value.")
            key, value = pair.split("=", 1)
            out[key] = _parse_value(key, value)
    else:
        raise ValueError(f"Cannot read {kind} set {spec!r}; use NAME=... or a mapping (see `dclip evaluate --help`).")
    if not out.get("name"):
        raise ValueError(f"The {kind} set {spec!r} needs a name.")
    return out


@dataclass
class RetrievalSet:
    name: str
    images: list[str]
    captions: list[str]
    text_to_image: np.ndarray
    rows: list[dict[str, Any]]


def load_retrieval_set(spec: Mapping[str, Any], max_images: int | None = None) -> RetrievalSet:
    """Load a retrieval set through `training.data.load_source`; `name` is both the set and the source name."""
    from .data import load_source

    spec = dict(spec)
    if max_images is not None and spec.get("max_images") is None:
        spec["max_images"] = max_images
    dataset = load_source(spec)
    rows = [dict(zip(dataset.column_names, values)) for values in zip(*(dataset[c] for c in dataset.column_names))]
    captions, owner = [], []
    for index, row in enumerate(rows):
        captions += row["captions"]
        owner += [index] * len(row["captions"])
    if not captions:
        raise ValueError(f"Retrieval set {spec['name']!r} has no captions; check its source and splits.")
    return RetrievalSet(spec["name"], [r["image"] for r in rows], captions, np.asarray(owner, dtype=np.int64), rows)


# ---------------------------------------------------------------------------------------------------------- models


def load_model(source: str | os.PathLike) -> tuple[Any, Any]:
    """Load a CLIP-compatible model and its processor from a local folder or a Hub id.

    Raises:
        FileNotFoundError: a Hub id that is not available offline (or a missing folder), with how to fix it.
    """
    from transformers import AutoModel, AutoProcessor, CLIPModel, CLIPProcessor

    source = os.fspath(source)
    local = os.path.isdir(source)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or os.path.exists(source)
    if not local and looks_like_path:
        raise FileNotFoundError(f"Model folder {source!r} does not exist; pass a trained model folder or a Hub id.")
    kwargs = {} if local else {"local_files_only": offline}
    try:
        try:
            model = CLIPModel.from_pretrained(source, **kwargs)
        except (ValueError, TypeError, KeyError):
            model = AutoModel.from_pretrained(source, **kwargs)
        try:
            processor = CLIPProcessor.from_pretrained(source, **kwargs)
        except (ValueError, TypeError, KeyError):
            processor = AutoProcessor.from_pretrained(source, **kwargs)
    except OSError as error:
        where = "the local Hub cache (HF_HUB_OFFLINE=1)" if offline else "the Hub"
        raise FileNotFoundError(
            f"Could not load model {source!r} from {where}: {str(error).rstrip('.')}. Download it first "
            f"(`hf download {source}` on a machine with access) or pass a local model folder."
        ) from error
    return model, processor


def model_fingerprint(model: Any) -> str:
    """Hash of the model class, config and every parameter/buffer byte (changes whenever the weights change)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _processor_fingerprint(processor: Any) -> str:
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    parts = [
        json.dumps(image_processor.to_dict(), sort_keys=True, default=str),
        type(tokenizer).__name__,
        str(len(tokenizer)),
        str(getattr(tokenizer, "model_max_length", "")),
        json.dumps(tokenizer.get_vocab(), sort_keys=True)[:100000],
    ]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


def _data_fingerprint(kind: str, items: Sequence[Any]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(kind.encode())
    for item in items:
        digest.update(str(item).encode() + b"\0")
        if kind == "images":
            try:
                stat = os.stat(item)
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            except OSError:
                digest.update(b"missing")
    return digest.hexdigest()


class CachedEncoder:
    """A `CLIPEncoder` whose results are cached in `cache_dir` as safetensors files keyed by model, preprocessing
    and data fingerprints (written by the main process, atomically)."""

    def __init__(self, encoder: CLIPEncoder, key: str, cache_dir: Path | None, accelerator: Any = None) -> None:
        self.encoder, self.key, self.cache_dir, self.accelerator = encoder, key, cache_dir, accelerator
        self.hits = 0
        self.misses = 0

    @property
    def failed_images(self) -> list[str]:
        return self.encoder.failed_images

    def _path(self, kind: str, items: Sequence[Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.key}-{kind}-{_data_fingerprint(kind, items)}.safetensors"

    def _load(self, path: Path | None) -> dict[str, torch.Tensor] | None:
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        self.hits += 1
        return load_file(path)

    def _save(self, path: Path | None, tensors: dict[str, torch.Tensor]) -> None:
        if path is None or (self.accelerator is not None and not self.accelerator.is_main_process):
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)

    def encode_texts(self, texts: Sequence[str], desc: str = "texts") -> torch.Tensor:
        path = self._path("texts", texts)
        cached = self._load(path)
        if cached is not None:
            return cached["embeds"]
        self.misses += 1
        embeds = self.encoder.encode_texts(texts, desc=desc)
        self._save(path, {"embeds": embeds})
        return embeds

    def encode_images(self, images: Sequence[str], desc: str = "images") -> tuple[torch.Tensor, np.ndarray]:
        path = self._path("images", images)
        cached = self._load(path)
        if cached is not None:
            ok = cached["ok"].bool().numpy()
            self.encoder.failed_images += [str(p) for p, good in zip(images, ok) if not good]
            return cached["embeds"], ok
        self.misses += 1
        embeds, ok = self.encoder.encode_images(images, desc=desc)
        self._save(path, {"embeds": embeds, "ok": torch.from_numpy(ok.astype(np.uint8))})
        return embeds, ok


# ---------------------------------------------------------------------------------------------------------- scoring


def _score_retrieval(encoder: Any, data: RetrievalSet, ks: Sequence[int], chunk_size: int) -> dict[str, float]:
    image_embeds, ok = encoder.encode_images(data.images, desc=f"{data.name} images")
    text_embeds = encoder.encode_texts(data.captions, desc=f"{data.name} captions")
    # Captions of images that failed to load have no correct answer left: they are dropped with their image.
    new_index = np.cumsum(ok) - 1
    keep_text = ok[data.text_to_image]
    if not ok.any() or not keep_text.any():
        raise ValueError(f"Retrieval set {data.name!r}: no image with captions could be loaded.")
    n_images = int(ok.sum())
    kept_ks = sorted({k for k in (*ks, *CURVE_KS) if k <= n_images} | set(ks))
    metrics = retrieval_metrics(
        image_embeds[torch.from_numpy(ok)],
        text_embeds[torch.from_numpy(keep_text)],
        new_index[data.text_to_image[keep_text]],
        ks=kept_ks,
        chunk_size=chunk_size,
    )
    metrics.update(n_images=float(n_images), n_texts=float(keep_text.sum()), n_failed_images=float((~ok).sum()))
    return metrics


def _score_zero_shot(encoder: Any, spec: Mapping[str, Any], data: Any, templates: str | None) -> dict[str, float]:
    chosen = templates or spec.get("templates") or ("cifar" if "cifar" in spec["name"].lower() else "paper")
    image_embeds, ok = encoder.encode_images(data.images, desc=f"{spec['name']} images")
    classes = class_embeddings(encoder, data.class_names, resolve_templates(chosen))
    out = zero_shot_metrics(image_embeds[torch.from_numpy(ok)], classes, np.asarray(data.labels)[ok])
    out["n_failed"] = float((~ok).sum())
    return out


def relative_gains(results: Mapping[str, Mapping[str, Mapping[str, float]]], base: str) -> dict[str, Any]:
    """`(model − base) / base` for every non-base model, set and gain metric (fractions; `None` if base is 0)."""
    gains: dict[str, Any] = {}
    base_sets = results.get(base, {})
    for name, per_set in results.items():
        if name == base:
            continue
        for dataset, metrics in per_set.items():
            reference = base_sets.get(dataset, {})
            for metric, value in metrics.items():
                if not metric.startswith(GAIN_METRIC_PREFIXES) or metric not in reference:
                    continue
                ref = reference[metric]
                gain = None if not ref else (value - ref) / ref
                gains.setdefault(name, {}).setdefault(dataset, {})[metric] = gain
    return gains


def zero_shot_retention(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], base: str, zero_shot_names: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """Top-1 of each non-base model / top-1 of the base, per zero-shot set."""
    out: dict[str, dict[str, float | None]] = {}
    for name, per_set in results.items():
        if name == base:
            continue
        for dataset in zero_shot_names:
            if dataset in per_set and dataset in results.get(base, {}):
                out.setdefault(name, {})[dataset] = retention(per_set[dataset]["top1"], results[base][dataset]["top1"])
    return out


# ---------------------------------------------------------------------------------------------------------- reports


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_report(report: Mapping[str, Any], ks: Sequence[int] = (1, 5, 10)) -> str:
    """Markdown tables of `results.json`: retrieval (R@K, MRR, mAP, gains), hard negatives and zero-shot."""
    models, kinds = report["models"], report["meta"]["datasets"]
    base = report["meta"]["base"]
    lines: list[str] = [f"# Evaluation results (base model: `{base}`)", ""]
    for dataset, info in kinds.items():
        kind = info["kind"]
        lines += [f"## {dataset} ({kind.replace('_', ' ')})", ""]
        if kind == "retrieval":
            cols = [f"{d}_recall@{k}" for d in ("t2i", "i2t") for k in ks] + [
                "t2i_mrr",
                "i2t_mrr",
                "t2i_map",
                "i2t_map",
            ]
            header = ["model", *cols, "t2i R@1 gain", "i2t R@1 gain"]
        elif kind == "zero_shot":
            cols = ["top1", "top5", "mean_per_class_recall"]
            header = ["model", *cols, "retention"]
        else:
            cols = sorted({k for m in models.values() for k in m.get(dataset, {}) if k.endswith("accuracy")})
            header = ["model", *cols, "hn_accuracy gain"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, per_set in models.items():
            metrics = per_set.get(dataset)
            if metrics is None:
                continue
            cells = [name, *[_fmt(metrics.get(c)) for c in cols]]
            gains = report["gains"].get(name, {}).get(dataset, {})
            if kind == "retrieval":
                cells += [_pct(gains.get("t2i_recall@1")), _pct(gains.get("i2t_recall@1"))]
            elif kind == "zero_shot":
                cells.append(_pct(report["retention"].get(name, {}).get(dataset), ratio=True))
            else:
                cells.append(_pct(gains.get("hn_accuracy")))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pct(value: float | None, ratio: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100.0 * value:.1f} %" if ratio else f"{100.0 * value:+.1f} %"


def write_plots(report: Mapping[str, Any], output_dir: Path) -> list[Path]:
    """Recall@K curves (both directions) per retrieval set and zero-shot retention bars, as PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    models = report["models"]
    for dataset, info in report["meta"]["datasets"].items():
        if info["kind"] != "retrieval":
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, direction, title in zip(axes, ("t2i", "i2t"), ("text → image", "image → text")):
            for name, per_set in models.items():
                metrics = per_set.get(dataset, {})
                points = sorted(
                    (int(key.split("@")[1]), value)
                    for key, value in metrics.items()
                    if key.startswith(f"{direction}_recall@")
                )
                if points:
                    ax.plot(*zip(*points), marker="o", label=name)
            ax.set_xscale("log")
            ax.set_xlabel("K")
            ax.set_title(f"{dataset}: {title}")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("Recall@K (%)")
        axes[1].legend()
        fig.tight_layout()
        path = output_dir / f"recall_at_k_{dataset}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    retention_table = report["retention"]
    if retention_table:
        datasets = sorted({d for per_set in retention_table.values() for d in per_set})
        names = list(retention_table)
        fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(datasets) * len(names)), 4))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            values = [100.0 * (retention_table[name].get(d) or 0.0) for d in datasets]
            ax.bar(np.arange(len(datasets)) + i * width, values, width, label=name)
        ax.axhline(100.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(np.arange(len(datasets)) + width * (len(names) - 1) / 2, datasets)
        ax.set_ylabel(f"zero-shot top-1 retention vs {report['meta']['base']} (%)")
        ax.legend()
        fig.tight_layout()
        path = output_dir / "zero_shot_retention.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------- runner


def evaluate_models(
    models: Mapping[str, Any],
    retrieval_sets: Sequence[str | Mapping[str, Any]] = (),
    zero_shot_sets: Sequence[str | Mapping[str, Any]] = (),
    hard_negative_sets: Sequence[str | Mapping[str, Any]] = (),
    output_dir: str | os.PathLike = "eval",
    base: str | None = None,
    *,
    batch_size: int = 64,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ks: Sequence[int] = (1, 5, 10),
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    max_images: int | None = None,
    templates: str | None = None,
    seed: int = 0,
    accelerator: Any = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate models on retrieval, zero-shot and hard-negative sets; write results.json, results.md and plots.

    Args:
        models: display name → a model folder / Hub id, or a `(model, processor)` pair already in memory.
        retrieval_sets: retrieval set specs (module docstring).
        zero_shot_sets: zero-shot set specs.
        hard_negative_sets: hard-negative set specs.
        output_dir: output folder (created).
        base: name of the base model for gains and retention (default: the first model).
        batch_size: images or captions per forward pass.
        chunk_size: score-block side of `retrieval_metrics`.
        ks: Recall@K cut-offs reported in the tables (the curves add 1, 2, 5, ..., 100).
        cache_dir: embedding cache (default `<output_dir>/embedding_cache`).
        use_cache: read and write the embedding cache.
        max_images: cap on images per set (quick runs).
        templates: prompt template set overriding every zero-shot set's own.
        seed: seed of lexicon hard-negative swaps.
        accelerator: an `accelerate.Accelerator` to split encoding across processes (default: one process).
        progress: show progress bars.
        plots: write PNG plots.

    Returns:
        The `results.json` content (see the module docstring).
    """
    from .data import DataStats, load_zero_shot_folder

    if not models:
        raise ValueError("No models to evaluate; pass at least one NAME=PATH.")
    base = base or next(iter(models))
    if base not in models:
        raise ValueError(f"base={base!r} is not one of the models {list(models)}.")
    output_dir = Path(output_dir)
    main_process = accelerator is None or accelerator.is_main_process
    if main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    cache = None if not use_cache else Path(cache_dir) if cache_dir is not None else output_dir / "embedding_cache"

    retrieval_specs = [parse_set_spec(s, "retrieval") for s in retrieval_sets]
    zero_shot_specs = [parse_set_spec(s, "zero_shot") for s in zero_shot_sets]
    hard_specs = [parse_set_spec(s, "hard_negatives") for s in hard_negative_sets]
    names = [s["name"] for s in (*retrieval_specs, *zero_shot_specs, *hard_specs)]
    if not names:
        raise ValueError("Nothing to evaluate: pass at least one retrieval, zero-shot or hard-negative set.")
    if len(set(names)) != len(names):
        raise ValueError(f"Set names must be unique across retrieval, zero-shot and hard-negative sets; got {names}.")

    datasets_meta: dict[str, dict[str, Any]] = {}
    retrieval_data = {}
    for spec in retrieval_specs:
        data = load_retrieval_set(spec, max_images)
        retrieval_data[spec["name"]] = data
        datasets_meta[spec["name"]] = {
            "kind": "retrieval",
            "n_images": len(data.images),
            "n_texts": len(data.captions),
            "uncaptioned_images": int(sum(1 for r in data.rows if not r["captions"])),
            "spec": {k: v for k, v in spec.items()},
        }
    zero_shot_data = {}
    for spec in zero_shot_specs:
        stats = DataStats()
        data = load_zero_shot_folder(spec["path"], name_column=spec.get("name_column", "name"), stats=stats)
        if max_images is not None and len(data.images) > max_images:
            # Keep the class balance of a capped set: every k-th image instead of the first ones.
            step = len(data.images) / max_images
            picks = [int(i * step) for i in range(max_images)]
            data.images, data.labels = [data.images[i] for i in picks], [data.labels[i] for i in picks]
        zero_shot_data[spec["name"]] = data
        datasets_meta[spec["name"]] = {
            "kind": "zero_shot",
            "n_images": len(data.images),
            "n_classes": len(data.class_names),
            "skipped": stats.as_dict(),
            "spec": spec,
        }
    hard_data = {}
    for spec in hard_specs:
        meta: dict[str, Any] = {"kind": "hard_negatives", "spec": spec}
        if spec.get("retrieval"):
            if spec["retrieval"] not in retrieval_data:
                raise ValueError(
                    f"Hard-negative set {spec['name']!r} uses retrieval set {spec['retrieval']!r}, which is not "
                    f"among the retrieval sets {list(retrieval_data)}."
                )
            triples, skipped = make_lexicon_triples(
                retrieval_data[spec["retrieval"]].rows, seed=int(spec.get("seed", seed))
            )
            meta["lexicon_skipped_images"] = skipped
        else:
            triples = load_triples(spec["path"], spec.get("image_root"))
            if max_images is not None:
                triples = triples[:max_images]
        if not triples:
            raise ValueError(f"Hard-negative set {spec['name']!r} has no triples.")
        hard_data[spec["name"]] = triples
        meta["n_triples"] = len(triples)
        datasets_meta[spec["name"]] = meta

    results: dict[str, dict[str, dict[str, float]]] = {}
    models_meta: dict[str, dict[str, Any]] = {}
    failed: dict[str, list[str]] = {}
    for name, source in models.items():
        if isinstance(source, (tuple, list)):
            model, processor = source
            label = f"in-memory {type(model).__name__}"
        else:
            model, processor = load_model(source)
            label = os.fspath(source)
        if accelerator is not None:
            model = model.to(accelerator.device)
        fingerprint = model_fingerprint(model)
        key = hashlib.blake2b((fingerprint + _processor_fingerprint(processor)).encode(), digest_size=16).hexdigest()
        encoder = CachedEncoder(
            CLIPEncoder(model, processor, batch_size=batch_size, accelerator=accelerator, progress=progress),
            key,
            cache,
            accelerator,
        )
        per_set: dict[str, dict[str, float]] = {}
        for set_name, data in retrieval_data.items():
            per_set[set_name] = _score_retrieval(encoder, data, ks, chunk_size)
        for spec in zero_shot_specs:
            per_set[spec["name"]] = _score_zero_shot(encoder, spec, zero_shot_data[spec["name"]], templates)
        for set_name, triples in hard_data.items():
            metrics = evaluate_hard_negatives(encoder, triples)
            if "lexicon_skipped_images" in datasets_meta[set_name]:
                metrics["hn_lexicon_skipped_images"] = float(datasets_meta[set_name]["lexicon_skipped_images"])
            per_set[set_name] = metrics
        results[name] = per_set
        models_meta[name] = {
            "source": label,
            "fingerprint": fingerprint,
            "cache_hits": encoder.hits,
            "cache_misses": encoder.misses,
        }
        failed[name] = sorted(set(encoder.failed_images))
        if failed[name]:
            logger.warning("%s: %d image(s) failed to load and were skipped.", name, len(failed[name]))
        del model

    report = {
        "models": results,
        "gains": relative_gains(results, base),
        "retention": zero_shot_retention(results, base, [s["name"] for s in zero_shot_specs]),
        "meta": {
            "base": base,
            "models": models_meta,
            "datasets": datasets_meta,
            "failed_images": {name: len(paths) for name, paths in failed.items()},
            "failed_image_examples": {name: paths[:20] for name, paths in failed.items() if paths},
            "ks": list(ks),
            "chunk_size": chunk_size,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        },
    }
    if main_process:
        _write_text_atomic(output_dir / "results.json", json.dumps(report, indent=2, default=str))
        _write_text_atomic(output_dir / "results.md", markdown_report(report, ks))
        if plots:
            write_plots(report, output_dir)
    return report


def _versions() -> dict[str, str]:
    import transformers

    from modeling_dclip import __version__

    return {"dclip": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _model_entry(entry: str) -> tuple[str, str]:
    if "=" in entry:
        name, source = entry.split("=", 1)
        return name, source
    return Path(entry.rstrip("/")).name or entry, entry


def main(argv: Sequence[str] | None = None) -> int:
    """`dclip evaluate --models base=PATH dclip=PATH --retrieval ... --zero_shot ... --output_dir DIR`."""
    from transformers import HfArgumentParser

    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(
        EvaluateArguments,
        prog="dclip evaluate",
        description="Evaluate CLIP-compatible models (see docs/evaluation.md).",
    )
    if len(args_list) == 1 and args_list[0].endswith((".yaml", ".yml")):
        (args,) = parser.parse_yaml_file(args_list[0])
    elif len(args_list) == 1 and args_list[0].endswith(".json"):
        (args,) = parser.parse_json_file(args_list[0])
    else:
        (args,) = parser.parse_args_into_dataclasses(args=args_list)
    if not args.models:
        parser.error("--models is required (NAME=PATH_OR_HUB_ID ...).")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from accelerate import Accelerator

    accelerator = Accelerator()
    models = dict(_model_entry(entry) for entry in args.models)
    report = evaluate_models(
        models,
        args.retrieval,
        args.zero_shot,
        args.hard_negatives,
        args.output_dir,
        args.base,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        ks=args.ks,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        max_images=args.max_images,
        templates=args.templates,
        seed=args.seed,
        accelerator=accelerator,
        progress=not args.no_progress,
        plots=not args.no_plots,
    )
    if accelerator.is_main_process:
        print(markdown_report(report, args.ks))
        print(f"Wrote {Path(args.output_dir) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
