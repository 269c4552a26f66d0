"""Model cards for DCLIP checkpoints: pure and offline (no Hub call), from a run's arguments and its `results.json`.

`build_card(kind=..., repo_id=..., run_args=..., results=...)` returns a `huggingface_hub.ModelCard` whose YAML header
carries the Hub metadata and a `model-index` with every retrieval and zero-shot result of the checkpoint, and whose
body explains DCLIP, how the checkpoint was trained, its results against the base model, a runnable usage snippet,
limitations and the citation. `dclip card` renders one to a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

logger = logging.getLogger(__name__)

KINDS = ("student", "teacher")
TEMPLATE_PATH = Path(__file__).with_name("template.md")
PAPER_ARXIV = "2505.21549"
PAPER_TITLE = "Distill CLIP (DCLIP): Enhancing Image-Text Retrieval via Cross-Modal Transformer Distillation"
CITATION = """@misc{csizmadia2025dclip,
  title         = {Distill CLIP (DCLIP): Enhancing Image-Text Retrieval via Cross-Modal Transformer Distillation},
  author        = {Csizmadia, Daniel and Codreanu, Andrei and Sim, Victor and Prabhu, Vighnesh and Lu, Michael and
                   Zhu, Kevin and O'Brien, Sean and Sharma, Vasu},
  year          = {2025},
  eprint        = {2505.21549},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2505.21549}
}"""
NOT_EVALUATED = "not evaluated"
NOT_RECORDED = "not recorded"

# Retrieval metric keys are `<direction>_<metric>` (training/metrics.py); ranks are the only lower-is-better ones.
_RETRIEVAL_KEY = re.compile(r"^(t2i|i2t)_(.+)$")
_DIRECTIONS = {
    "t2i": ("text-to-image-retrieval", "Text-to-Image Retrieval"),
    "i2t": ("image-to-text-retrieval", "Image-to-Text Retrieval"),
}
_ZERO_SHOT_TASK = ("zero-shot-image-classification", "Zero-Shot Image Classification")
_ZERO_SHOT_KEY = re.compile(r"(top[-_@]?\d+|acc|accuracy|per[-_]class)", re.IGNORECASE)
_HARD_NEGATIVE_KEY = re.compile(r"(hard|^hn_|_hn_|swap|negative)", re.IGNORECASE)
# Set sizes and skip counters (`n_images`, `hn_color_count`, `hn_skipped_images`, ...) are not results.
_COUNT_KEY = re.compile(r"(^n_|_n_|^num_|_count$|skipped|failed)", re.IGNORECASE)
_DATASET_KINDS = {"retrieval": "retrieval", "zero_shot": "zero_shot", "hard_negatives": "other"}
_TOP1_KEY = re.compile(r"(^|[^0-9])(top[-_@]?1|acc(uracy)?@1|top1_acc(uracy)?)($|[^0-9])", re.IGNORECASE)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_BASE_NAMES = ("base", "clip", "baseline", "base_clip", "clip_base", "frozen_clip")

# Pretty names of the evaluation sets this package knows (anything else is shown under its own key).
KNOWN_DATASETS = {
    "coco_5k": ("MS-COCO 5k (Karpathy test)", "test"),
    "coco_1k": ("MS-COCO 1k (first 1,000 Karpathy test images)", "test"),
    "coco": ("MS-COCO (Karpathy test)", "test"),
    "flickr30k": ("Flickr30k 1k (Karpathy test)", "test"),
    "flickr30k_1k": ("Flickr30k 1k (Karpathy test)", "test"),
    "imagenet": ("ImageNet-1k val", "validation"),
    "imagenet1k": ("ImageNet-1k val", "validation"),
    "cifar10": ("CIFAR-10 test", "test"),
    "cifar100": ("CIFAR-100 test", "test"),
    "caltech101": ("Caltech-101", None),
    "caltech_mini": ("Caltech-101 (20-class subset)", None),
    "coco_mini": ("MS-COCO mini (shared test photos)", None),
    "synthetic": ("Synthetic scenes (test split)", "test"),
}

_SELECTION_TEXT = {
    "clean": (
        "**clean** — an exclusion list (the Karpathy val/test images) removed the evaluation images from training, "
        "so the retrieval numbers below are free of train/test leakage."
    ),
    "synthetic": "**synthetic** — procedurally generated scenes (`training/synthetic.py`), no public test images.",
    "faithful": (
        "**faithful** (the paper's selection) — the training images overlap the Karpathy test images, so retrieval "
        "numbers on the Karpathy COCO/Flickr30k test splits are optimistic. Prefer a `clean` run for comparisons."
    ),
}
_SELECTION_KEYS = ("data_selection", "selection", "leakage", "leakage_setting", "split_selection")
_BASE_MODEL_KEYS = ("base_model", "clip_model_name_or_path", "clip_model", "clip_name_or_path", "model_name_or_path")
_HARDWARE_KEYS = ("hardware", "device", "devices", "accelerator", "gpu", "gpus", "machine")
_TIME_KEYS = (
    "train_runtime",
    "training_time",
    "training_time_s",
    "runtime_s",
    "wall_time",
    "wall_time_s",
    "elapsed_s",
)
_SOURCE_KEYS = ("sources", "train_sources", "dataset", "datasets", "data", "train_data")
_HIGHLIGHT_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "optim",
    "temperature",
    "learn_temperature",
    "weight_image",
    "weight_text",
    "weight_contrastive",
    "trainable_policy",
    "cross_attention_heads",
    "cross_layers",
    "empty_region_policy",
    "use_padding_masks",
    "seed",
)


# --------------------------------------------------------------------------------------------------- inputs


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read an evaluation `results.json` (`{"models": {name: {dataset: {metric: value}}}, ...}`).

    Raises:
        FileNotFoundError: when `path` does not exist.
        ValueError: when it is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} not found; run `dclip evaluate` first or omit --results.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({error}); pass the results.json of `dclip evaluate`."
        ) from error
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} holds a {type(data).__name__}, expected a JSON object with a 'models' key.")
    return data


def load_run_args(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run's arguments: an experiment YAML or a JSON file (e.g. a saved `training_args.json`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run arguments file {str(path)!r} not found; pass the experiment YAML of the run.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} holds a {type(data).__name__}, expected a mapping of argument names.")
    return data


def flatten_args(args: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Flatten nested run arguments to dotted keys: `{"student": {"lr": 1e-6}}` → `{"student.lr": 1e-6}`.

    Lists of mappings (e.g. data source specs) are flattened by index: `data.sources.0.name`.
    """
    flat: dict[str, Any] = {}
    for key, value in (args or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_args(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            for index, item in enumerate(value):
                flat.update(flatten_args(item, prefix=f"{name}.{index}."))
        else:
            flat[name] = value
    return flat


def _leaf(flat: Mapping[str, Any], keys: Sequence[str], section: str | None = None) -> Any:
    """Value of the first of `keys` found: in `section` (e.g. the card's stage), then top level, then anywhere else.

    The other stage's section is never read for a stage card: a teacher card must not show the student's lr.
    """
    other = {"student": "teacher", "teacher": "student"}.get(section or "")
    for key in keys:
        candidates = ([f"{section}.{key}"] if section else []) + [key]
        for name in candidates:
            if flat.get(name) not in (None, "", [], {}):
                return flat[name]
        for name, value in flat.items():
            parts = name.split(".")
            # `smoke:` is an overlay the pipeline applies only with --smoke: its values are not the run's.
            if parts[0] == "smoke" or (other and other in parts[:-1]):
                continue
            if parts[-1] == key and value not in (None, "", [], {}):
                return value
    return None


def _display_value(value: Any) -> str:
    # Absolute paths name the training machine, not the model: show only the file/folder name.
    if isinstance(value, str) and os.path.isabs(value):
        return f"…/{Path(value).name}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_display_value(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------------------------------- results


def classify_metric(dataset: str, metric: str, dataset_kind: str | None = None) -> tuple[str, str, str]:
    """Group of a metric: `("retrieval", direction, name)`, `("zero_shot", "", name)`, `("count", "", name)` or
    `("other", "", name)` (hard negatives and unknown metrics).

    `dataset_kind` is the set's kind from `results["meta"]["datasets"]` (`retrieval`, `zero_shot`,
    `hard_negatives`); without it the metric and set names decide.
    """
    if _COUNT_KEY.search(metric):
        return "count", "", metric
    match = _RETRIEVAL_KEY.match(metric)
    if match and dataset_kind in (None, "retrieval"):
        return "retrieval", match.group(1), match.group(2)
    if dataset_kind in _DATASET_KINDS:
        return ("zero_shot" if dataset_kind == "zero_shot" else "other"), "", metric
    if _HARD_NEGATIVE_KEY.search(metric) or _HARD_NEGATIVE_KEY.search(dataset):
        return "other", "", metric
    if _ZERO_SHOT_KEY.search(metric):
        return "zero_shot", "", metric
    return "other", "", metric


def dataset_kinds(results: Mapping[str, Any] | None) -> dict[str, str]:
    """`{set: kind}` from `results["meta"]["datasets"]` (empty when the run did not record it)."""
    meta = (results or {}).get("meta")
    datasets = meta.get("datasets") if isinstance(meta, Mapping) else None
    if not isinstance(datasets, Mapping):
        return {}
    return {
        str(name): str(info["kind"])
        for name, info in datasets.items()
        if isinstance(info, Mapping) and isinstance(info.get("kind"), str)
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _lower_is_better(metric: str) -> bool:
    return "rank" in metric


def pretty_dataset(name: str) -> str:
    """Readable name of an evaluation set (`coco_5k` → `MS-COCO 5k (Karpathy test)`)."""
    return KNOWN_DATASETS.get(name.lower(), (name, None))[0]


def _model_table(results: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    models = results.get("models")
    if not isinstance(models, Mapping):
        return {}
    return {
        str(name): {str(ds): dict(metrics) for ds, metrics in datasets.items() if isinstance(metrics, Mapping)}
        for name, datasets in models.items()
        if isinstance(datasets, Mapping)
    }


def resolve_model_names(
    results: Mapping[str, Any] | None, kind: str, model_key: str | None = None, base_key: str | None = None
) -> tuple[str | None, str | None]:
    """Which entry of `results["models"]` is this checkpoint and which is the base model.

    Explicit keys win; then `results["meta"]` hints (`model`, `base`/`base_model`); then names: the base is called
    like `base`/`clip`/`baseline`, the checkpoint like `dclip`/`student` (or `teacher` for a teacher card).

    Returns:
        `(model_key, base_key)`; either is `None` when results do not contain it.

    Raises:
        ValueError: an explicit key is missing from the results, or several entries could be this checkpoint.
    """
    models = _model_table(results or {})
    for label, key in (("model_key", model_key), ("base_key", base_key)):
        if key is not None and key not in models:
            raise ValueError(f"{label}={key!r} is not a model of results.json; it has {sorted(models)}.")
    if not models:
        return model_key, base_key
    meta = (results or {}).get("meta") or {}
    if base_key is None:
        hint = meta.get("base") or meta.get("base_model") if isinstance(meta, Mapping) else None
        if isinstance(hint, str) and hint in models:
            base_key = hint
        else:
            base_key = next((name for name in models if name.lower() in _BASE_NAMES), None)
    if model_key is None:
        hint = meta.get(kind) or meta.get("model") if isinstance(meta, Mapping) else None
        if isinstance(hint, str) and hint in models:
            return hint, base_key
        others = [name for name in models if name != base_key]
        wanted = ("teacher",) if kind == "teacher" else ("dclip", "student")
        named = [name for name in others if any(word in name.lower() for word in wanted)]
        if kind == "student":
            named = [name for name in named if "teacher" not in name.lower()] or named
        if len(named) == 1:
            model_key = named[0]
        elif not named and len(others) == 1 and kind == "student":
            model_key = others[0]
        elif len(named) > 1:
            raise ValueError(
                f"results.json has several candidate {kind} models {named}; pass model_key (`--model_key`) to pick."
            )
    return model_key, base_key


def eval_results_for(results: Mapping[str, Any] | None, model_key: str | None) -> list[EvalResult]:
    """Every numeric retrieval and zero-shot result of `model_key`, as `EvalResult`s for the card's model-index."""
    models = _model_table(results or {})
    if model_key is None or model_key not in models:
        return []
    kinds = dataset_kinds(results)
    out = []
    for dataset, metrics in models[model_key].items():
        for metric, raw in metrics.items():
            value = _number(raw)
            group, direction, name = classify_metric(dataset, metric, kinds.get(dataset))
            if value is None or group not in ("retrieval", "zero_shot"):
                continue
            task_type, task_name = _DIRECTIONS[direction] if group == "retrieval" else _ZERO_SHOT_TASK
            out.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=dataset,
                    dataset_name=pretty_dataset(dataset),
                    dataset_split=KNOWN_DATASETS.get(dataset.lower(), (dataset, None))[1],
                    metric_type=name,
                    metric_name=f"{task_name.split(' ')[0]} {name}" if group == "retrieval" else name,
                    metric_value=round(value, 4),
                )
            )
    return out


def relative_gain(value: float | None, base: float | None) -> float | None:
    """`(value − base) / base` in %, or `None` when either is missing or the base is 0."""
    if value is None or base is None or base == 0:
        return None
    return (value - base) / abs(base) * 100.0


def zero_shot_retention(
    results: Mapping[str, Any] | None, model_key: str | None, base_key: str | None
) -> dict[str, float]:
    """Per zero-shot dataset: top-1 of this model / top-1 of the base, in %."""
    models = _model_table(results or {})
    if model_key not in models or base_key not in models:
        return {}
    kinds = dataset_kinds(results)
    retention = {}
    for dataset, metrics in models[model_key].items():
        base_metrics = models[base_key].get(dataset, {})
        for metric, raw in metrics.items():
            if classify_metric(dataset, metric, kinds.get(dataset))[0] != "zero_shot" or not _TOP1_KEY.search(metric):
                continue
            ratio = relative_gain(_number(raw), _number(base_metrics.get(metric)))
            if ratio is not None:
                retention[dataset] = 100.0 + ratio
                break
    return retention


def _fmt(value: Any) -> str:
    number = _number(value)
    if number is not None:
        return f"{number:.2f}"
    return "—" if value is None else str(value)


def _count(value: Any) -> str:
    number = _number(value)
    return f"{number:,.0f}" if number is not None and number == int(number) else _fmt(value)


def _fmt_gain(gain: float | None) -> str:
    return "—" if gain is None else f"{gain:+.1f} %"


def results_tables(results: Mapping[str, Any] | None, model_key: str | None, base_key: str | None) -> str:
    """Markdown tables of every model of `results`, one per evaluation set, with the relative gain over the base."""
    models = _model_table(results or {})
    if not models:
        return f"This checkpoint was {NOT_EVALUATED}: no `results.json` was given when the card was built.\n"
    order = [name for name in (base_key, model_key) if name] + sorted(
        n for n in models if n not in (base_key, model_key)
    )
    datasets: list[str] = []
    for name in order:
        datasets += [ds for ds in models[name] if ds not in datasets]
    blocks = []
    show_gain = model_key is not None and base_key is not None
    kinds = dataset_kinds(results)
    for dataset in datasets:
        metrics: list[str] = []
        counts: dict[str, Any] = {}
        for name in order:
            for metric, value in models[name].get(dataset, {}).items():
                if classify_metric(dataset, metric, kinds.get(dataset))[0] == "count":
                    counts.setdefault(metric, value)
                elif metric not in metrics:
                    metrics.append(metric)
        header = ["metric"] + [f"**{n}** (this model)" if n == model_key else n for n in order]
        if show_gain:
            header.append("relative gain")
        kind_label = {"retrieval": ", retrieval", "zero_shot": ", zero-shot", "hard_negatives": ", hard negatives"}
        title = f"**{pretty_dataset(dataset)}** (`{dataset}`{kind_label.get(kinds.get(dataset, ''), '')})"
        lines = [title, "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for metric in metrics:
            label = f"{metric} (lower is better)" if _lower_is_better(metric) else metric
            row = [label]
            for name in order:
                if dataset not in models[name]:
                    row.append(NOT_EVALUATED)
                else:
                    row.append(_fmt(models[name][dataset].get(metric)))
            if show_gain:
                gain = relative_gain(
                    _number(models[model_key].get(dataset, {}).get(metric)),
                    _number(models[base_key].get(dataset, {}).get(metric)),
                )
                row.append(_fmt_gain(gain))
            lines.append("| " + " | ".join(row) + " |")
        if counts:
            lines += [
                "",
                "Set size and skips: " + ", ".join(f"`{key}` {_count(value)}" for key, value in counts.items()),
            ]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def headline(results: Mapping[str, Any] | None, model_key: str | None, base_key: str | None) -> list[str]:
    """Short bullet lines: text-to-image / image-to-text R@1 gains and zero-shot retention per dataset."""
    models = _model_table(results or {})
    if model_key not in models or base_key not in models:
        return []
    lines = []
    for dataset, metrics in models[model_key].items():
        base = models[base_key].get(dataset, {})
        for direction, label in (("t2i", "text→image"), ("i2t", "image→text")):
            key = f"{direction}_recall@1"
            gain = relative_gain(_number(metrics.get(key)), _number(base.get(key)))
            if gain is not None:
                lines.append(
                    f"{pretty_dataset(dataset)}: {label} R@1 {_fmt(base[key])} → {_fmt(metrics[key])} "
                    f"({_fmt_gain(gain)} relative)"
                )
    for dataset, value in zero_shot_retention(results, model_key, base_key).items():
        lines.append(f"{pretty_dataset(dataset)}: zero-shot top-1 retention {value:.1f} % of the base model")
    return lines


# --------------------------------------------------------------------------------------------------- card


def _regions_text(flat: Mapping[str, Any]) -> str:
    """`yolo (yolov8x.pt, conf 0.25, iou 0.7, imgsz 640, max_det 300)`, `annotations`, ... or not recorded."""
    source = flat.get("regions.source")
    if not source:
        return NOT_RECORDED
    details = [
        f"{key} {_display_value(flat[f'regions.{key}'])}"
        if key != "weights"
        else _display_value(flat["regions.weights"])
        for key in ("weights", "conf", "iou", "imgsz", "max_det")
        if flat.get(f"regions.{key}") not in (None, "")
    ]
    return f"{source} ({', '.join(details)})" if details else str(source)


def _source_names(flat: Mapping[str, Any]) -> str | None:
    """`coco (≤ 50000 images), flickr30k` from flattened data source specs, or `None` when there are none."""
    names = []
    index = 0
    while any(name.startswith(f"data.sources.{index}.") for name in flat):
        label = str(flat.get(f"data.sources.{index}.name") or flat.get(f"data.sources.{index}.kind") or index)
        cap = flat.get(f"data.sources.{index}.max_images")
        names.append(f"{label} (≤ {cap} images)" if cap else label)
        index += 1
    if names:
        return ", ".join(names)
    if any(name.startswith("data.synthetic") for name in flat):
        return "synthetic scenes generated by `training/synthetic.py`"
    return None


def _training_facts(
    kind: str, flat: Mapping[str, Any], meta: Mapping[str, Any], hardware: str | None, training_time: str | None
) -> dict[str, Any]:
    selection = _leaf(flat, _SELECTION_KEYS) or _leaf(flatten_args(meta), _SELECTION_KEYS)
    if selection is None:
        # The data step's own rule (training/data.py MixSummary): an exclusion list makes the selection "clean".
        if _leaf(flat, ("exclude_file", "exclude_ids")) is not None:
            selection = "clean"
        elif any(name.startswith("data.synthetic") for name in flat):
            selection = "synthetic"
        elif any(name.startswith("data.sources") for name in flat):
            selection = "faithful"
    selection_key = str(selection).lower() if selection is not None else None
    selection_text = _SELECTION_TEXT.get(
        selection_key or "",
        f"**{selection}**" if selection else f"{NOT_RECORDED} — treat retrieval numbers as possibly leaked.",
    )
    flat_meta = flatten_args(meta)
    hardware = hardware or _leaf(flat, _HARDWARE_KEYS) or _leaf(flat_meta, _HARDWARE_KEYS)
    time_value = training_time or _leaf(flat, _TIME_KEYS) or _leaf(flat_meta, _TIME_KEYS)
    if _number(time_value) is not None:
        time_value = f"{float(time_value) / 60:.1f} min"
    sources = _source_names(flat) or _leaf(flat, _SOURCE_KEYS)
    highlights = [
        (key, _display_value(value))
        for key in _HIGHLIGHT_KEYS
        if (value := _leaf(flat, (key,), section=kind)) is not None
    ]
    all_args = [
        (name, _display_value(value))
        for name, value in sorted(flat.items())
        if isinstance(value, (str, int, float, bool, list, tuple)) and value not in ("", [], ())
    ]
    return {
        "selection": selection_key or NOT_RECORDED,
        "selection_text": selection_text,
        "hardware": _display_value(hardware) if hardware else NOT_RECORDED,
        "training_time": str(time_value) if time_value else NOT_RECORDED,
        "sources": _display_value(sources) if sources else NOT_RECORDED,
        "regions": _regions_text(flat),
        "highlights": highlights,
        "all_args": all_args,
    }


def build_card(
    *,
    kind: str,
    repo_id: str,
    run_args: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    model_key: str | None = None,
    base_key: str | None = None,
    base_model: str | None = None,
    plots: Sequence[str | os.PathLike] = (),
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
    hardware: str | None = None,
    training_time: str | None = None,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Render the model card of a DCLIP student or teacher checkpoint (offline, no Hub call).

    Args:
        kind: `"student"` (a drop-in CLIP) or `"teacher"` (custom code, `trust_remote_code=True`).
        repo_id: the Hub repository the card is for (`org/name`); used in the usage snippet and as model name.
        run_args: the run's arguments (experiment YAML / training arguments as a dict, nested sections allowed).
        results: the parsed `results.json` of `dclip evaluate`; `None` gives a card that says "not evaluated".
        model_key, base_key: names of this checkpoint and of the base model in `results["models"]` (auto-detected).
        base_model: Hub id of the base CLIP for the metadata; defaults to the run's CLIP id when it is a Hub id.
        plots: evaluation PNGs to show; they are referenced as `plots/<file name>` (`save_for_hub` copies them there).
        license: SPDX-style Hub license id.
        datasets: Hub dataset ids used for training (metadata only).
        tags: extra tags.
        hardware, training_time: override what the run arguments / results meta record.
        template_path: a Jinja2 Markdown template; defaults to `hub_card/template.md`.

    Raises:
        ValueError: unknown `kind`, a malformed `repo_id`, or ambiguous model names in `results`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"repo_id must be a non-empty string like 'my-org/dclip-vit-b16', got {repo_id!r}.")
    flat = flatten_args(run_args)
    meta = (results or {}).get("meta") or {}
    meta = meta if isinstance(meta, Mapping) else {}
    model_key, base_key = resolve_model_names(results, kind, model_key, base_key)
    eval_results = eval_results_for(results, model_key)

    if base_model is None:
        candidate = _leaf(flat, _BASE_MODEL_KEYS) or meta.get("base_model_id")
        # The Hub rejects a base_model that is not a model id; local paths (demo runs) are only shown in the text.
        if isinstance(candidate, str) and _HUB_ID.match(candidate) and not os.path.exists(candidate):
            base_model = candidate
    base_display = base_model or _display_value(_leaf(flat, _BASE_MODEL_KEYS) or NOT_RECORDED)
    if base_model is None and any(name.startswith("base.bootstrap") for name in flat):
        base_display = (
            "a tiny CLIP bootstrapped from scratch on the run's own captions (offline demo, no pretrained CLIP)"
        )

    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification" if kind == "student" else "feature-extraction",
        license=license,
        base_model=base_model,
        datasets=list(datasets) or None,
        tags=["dclip", f"dclip-{kind}", "clip", "image-text-retrieval", "distillation", f"arxiv:{PAPER_ARXIV}", *tags],
        model_name=repo_id.split("/")[-1] if eval_results else None,
        eval_results=eval_results or None,
    )
    if kind == "teacher":
        card_data.tags.append("custom_code")
    plot_names = [Path(p).name for p in plots]
    facts = _training_facts(kind, flat, meta, hardware, training_time)
    template = Path(template_path) if template_path is not None else TEMPLATE_PATH
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        kind=kind,
        repo_id=repo_id,
        base_display=base_display,
        results_tables=results_tables(results, model_key, base_key),
        has_results=bool(_model_table(results or {})),
        headline=headline(results, model_key, base_key),
        model_key=model_key or NOT_EVALUATED,
        base_key=base_key or NOT_EVALUATED,
        plots=plot_names,
        paper_arxiv=PAPER_ARXIV,
        paper_title=PAPER_TITLE,
        citation=CITATION,
        **facts,
    )


def usage_snippet(card: ModelCard | str) -> str:
    """The first ```` ```python ```` block of a rendered card (what the usage test runs)."""
    text = card.text if isinstance(card, ModelCard) else str(card)
    match = re.search(r"```python\n(.*?)```", text, flags=re.DOTALL)
    if not match:
        raise ValueError("The card has no ```python code block; the template must keep its usage snippet.")
    return match.group(1)


# --------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dclip card", description="Render the model card (README.md) of a run.")
    parser.add_argument("--kind", choices=KINDS, required=True, help="student (drop-in CLIP) or teacher.")
    parser.add_argument("--repo_id", required=True, help="Hub repository the card is for, e.g. my-org/dclip-b16.")
    parser.add_argument("--results", help="results.json written by `dclip evaluate` (omit: 'not evaluated').")
    parser.add_argument("--config", help="the run's experiment YAML or training-arguments JSON.")
    parser.add_argument("--plots", nargs="*", default=None, help="PNG plots to embed (default: *.png beside results).")
    parser.add_argument("--model_key", help="name of this checkpoint in results.json (auto-detected).")
    parser.add_argument("--base_key", help="name of the base model in results.json (auto-detected).")
    parser.add_argument("--base_model", help="Hub id of the base CLIP for the metadata.")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--datasets", nargs="*", default=[], help="Hub dataset ids used for training.")
    parser.add_argument("--hardware", help="e.g. '1x A100 80GB' (default: from the run's records).")
    parser.add_argument("--training_time", help="e.g. '2.5 h' (default: from the run's records).")
    parser.add_argument("--output", default="-", help="where to write the card (default: stdout).")
    return parser


def default_plots(results_path: str | os.PathLike | None) -> list[Path]:
    """The PNG plots `dclip evaluate` wrote next to `results.json` (sorted), or none."""
    if results_path is None:
        return []
    folder = Path(results_path).parent
    return sorted(folder.glob("*.png")) + sorted((folder / "plots").glob("*.png"))


def main(argv: Sequence[str] | None = None) -> int:
    """`dclip card`: render a model card to a file or stdout."""
    args = _parser().parse_args(argv)
    results = load_results(args.results) if args.results else None
    run_args = load_run_args(args.config) if args.config else None
    plots = args.plots if args.plots is not None else default_plots(args.results)
    card = build_card(
        kind=args.kind,
        repo_id=args.repo_id,
        run_args=run_args,
        results=results,
        model_key=args.model_key,
        base_key=args.base_key,
        base_model=args.base_model,
        plots=plots,
        license=args.license,
        datasets=args.datasets,
        hardware=args.hardware,
        training_time=args.training_time,
    )
    if args.output == "-":
        sys.stdout.write(str(card))
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        card.save(args.output)
        print(f"Wrote the {args.kind} card to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
