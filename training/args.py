"""Arguments of the two training stages, parsed by `HfArgumentParser` from flags, a JSON/YAML file, or both.

Three ways to pass them (the same for `python -m training.train_teacher`, `accelerate launch -m ...` and
`dclip train-teacher`):

* flags only: `--clip_name_or_path openai/clip-vit-base-patch16 --output_dir runs/teacher ...`;
* a file as the only argument: `train_teacher.py experiment.yaml` (or `.json`);
* `--config experiment.yaml` plus flags, where the flags override the file.

A file is either flat (its keys are this stage's argument names) or an experiment file with one section per stage:
top-level scalar keys are shared by both stages, `base: {clip_name_or_path: ...}` names the base CLIP, the
`teacher:` / `student:` section holds the stage's own values and wins over the shared ones, and every other section
(`data:`, `regions:`, `evaluation:`, ...) belongs to other steps and is not read here (`docs/training.md`).
A key in the stage's section that is no argument of the stage is an error (a typo must not be silently ignored); an
unknown top-level scalar is logged and skipped (it may belong to another step).

Training knobs (loss weights, temperature, trainable parameters) live here, never in the model configs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

logger = logging.getLogger(__name__)

TRAINABLE_POLICIES = ("paper_code", "frozen_text", "full")
TARGET_SOURCES = ("cache", "teacher")
STAGES = ("teacher", "student")


@dataclass
class ModelArguments:
    """Which checkpoints a stage starts from, and the teacher's architecture when it is built from a CLIP.

    Args:
        clip_name_or_path: the base CLIP (Hub id or folder); both stages and every cache must use the same one.
        teacher_name_or_path: a trained teacher folder (student stage: needed to compute targets on the fly; teacher
            stage: start from it instead of a fresh cross-attention block).
        cross_attention_heads: heads of each cross-attention (paper: 8).
        cross_layers: number of cross-modal layers (paper: 1).
        empty_region_policy: `whole_image` (default) or `zero_vector` (reference code).
        use_padding_masks: mask padded tokens/regions (default) or reproduce the reference code (`False`).
    """

    clip_name_or_path: str | None = field(
        default=None, metadata={"help": "Base CLIP: Hub id (e.g. openai/clip-vit-base-patch16) or local folder."}
    )
    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "Trained teacher folder (student stage with targets='teacher')."}
    )
    cross_attention_heads: int = field(default=8, metadata={"help": "Heads of each cross-attention (paper: 8)."})
    cross_layers: int = field(default=1, metadata={"help": "Cross-modal layers (paper: 1)."})
    empty_region_policy: str = field(
        default="whole_image", metadata={"help": "Images without regions: whole_image or zero_vector."}
    )
    use_padding_masks: bool = field(default=True, metadata={"help": "Mask padded tokens and regions."})


@dataclass
class DataArguments:
    """The stage's data: an image dataset saved with `datasets.Dataset.save_to_disk` and the cache folders.

    The dataset has the columns of `docs/internals.md` §1 (what `training.data` loaders return); `split` selects the
    training and validation images. The caches are those written by `training.regions` and `training.features`.
    `dclip run` builds all of this and calls the stages' library functions directly.

    Args:
        dataset_dir: folder of the saved image dataset.
        train_split, eval_split: values of the `split` column used for training and validation.
        image_features_dir, text_features_dir: frozen-CLIP feature caches (teacher stage: fast path; student stage:
            `text_features_dir` gives the frozen CLIP sentence embeddings `t`).
        regions_dir: region cache, for the teacher stage without feature caches (crops are encoded every step).
        teacher_targets_dir: teacher-target cache `g(I, c)` of the student stage.
        max_train_samples, max_eval_samples: use at most this many images (smoke runs).
    """

    dataset_dir: str | None = field(default=None, metadata={"help": "Saved image dataset (save_to_disk folder)."})
    train_split: str = field(default="train", metadata={"help": "`split` value of the training images."})
    eval_split: str | None = field(default="val", metadata={"help": "`split` value of the validation images."})
    image_features_dir: str | None = field(default=None, metadata={"help": "Image-feature cache folder."})
    text_features_dir: str | None = field(default=None, metadata={"help": "Text-feature cache folder."})
    regions_dir: str | None = field(default=None, metadata={"help": "Region cache folder (teacher without features)."})
    teacher_targets_dir: str | None = field(default=None, metadata={"help": "Teacher-target cache folder."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many train images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many val images."})


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


@dataclass
class TeacherTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the teacher stage's defaults (METHOD.md §2) and its loss knobs.

    Adam (= AdamW without weight decay), lr 1e-5, constant, batch 32, fp32, seed 42, 5 epochs, no gradient clipping,
    evaluation and a checkpoint every epoch, and the best checkpoint by validation loss kept and reloaded at the end.

    Args:
        temperature: fixed InfoNCE temperature (paper: 0.05).
        same_image_positives: all captions of one image in a batch are positives (off = paper).
    """

    output_dir: str | None = field(default="runs/teacher", metadata={"help": "Checkpoints and logs."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Adam learning rate (paper: 1e-5)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (paper: none)."})
    optim: str = field(default="adamw_torch", metadata={"help": "AdamW with weight_decay=0 is exactly Adam."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Paper: no schedule."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Paper: 32 (global, 1 GPU)."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Validation batch size."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Paper: 5 for ViT-B/16."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping (paper: none = 0)."})
    seed: int = field(default=42, metadata={"help": "Paper: 42."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every collated key."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Validate every epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint."})
    metric_for_best_model: str | None = field(default="eval_loss", metadata={"help": "Best = lowest val loss."})
    greater_is_better: bool | None = field(default=False, metadata={"help": "Lower eval_loss is better."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "The teacher reports its loss only."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the best and the latest checkpoints."})
    temperature: float = field(default=0.05, metadata={"help": "Fixed InfoNCE temperature (paper: 0.05)."})
    same_image_positives: bool = field(
        default=False, metadata={"help": "All captions of the same image in a batch are positives."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r} (the paper uses 0.05).")


@dataclass
class StudentTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the student stage's defaults (METHOD.md §3) and its loss knobs.

    AdamW lr 1e-6, weight decay 0.01, constant LR, gradient clip 0.5, batch 32 x 4 accumulation, fp32, seed 42,
    2 epochs; evaluation (val loss and retrieval) every epoch.

    Args:
        weight_image: weight of `1 - cos(v, g)` (paper: 1).
        weight_text: weight of `1 - cos(u, t)` (paper: 1).
        weight_contrastive: weight of `InfoNCE(v, u)` (paper: 1).
        temperature: fixed InfoNCE temperature (paper: 0.05).
        learn_temperature: use and train CLIP's own `logit_scale` (clamped at 100) instead.
        same_image_positives: all captions of one image in a batch are positives (off = paper).
        trainable_policy: `paper_code` (vision q/k/v/out + visual projection + text tower), `frozen_text`
            (vision part only, the paper README's variant) or `full`.
        targets: `cache` (teacher targets come in the batch) or `teacher` (computed on the fly by the frozen teacher).
    """

    output_dir: str | None = field(default="runs/student", metadata={"help": "Checkpoints and logs."})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (paper: 1e-6)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper: 0.01)."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (paper: AdamW)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Paper: constant LR."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Paper: 32."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Validation batch size."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Paper: 4."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Paper: 2 (longer erodes zero-shot)."})
    max_grad_norm: float = field(default=0.5, metadata={"help": "Gradient clipping (paper: 0.5)."})
    seed: int = field(default=42, metadata={"help": "Paper: 42."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every collated key."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Validate every epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the latest checkpoints."})
    weight_image: float = field(default=1.0, metadata={"help": "Weight of 1 - cos(v, g)."})
    weight_text: float = field(default=1.0, metadata={"help": "Weight of 1 - cos(u, t)."})
    weight_contrastive: float = field(default=1.0, metadata={"help": "Weight of InfoNCE(v, u)."})
    temperature: float = field(default=0.05, metadata={"help": "Fixed InfoNCE temperature (paper: 0.05)."})
    learn_temperature: bool = field(default=False, metadata={"help": "Train CLIP's logit_scale (clamped at 100)."})
    same_image_positives: bool = field(
        default=False, metadata={"help": "All captions of the same image in a batch are positives."}
    )
    trainable_policy: str = field(
        default="paper_code", metadata={"help": f"Trainable parameters: one of {TRAINABLE_POLICIES}."}
    )
    targets: str = field(default="cache", metadata={"help": f"Teacher targets: one of {TARGET_SOURCES}."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("trainable_policy", self.trainable_policy, TRAINABLE_POLICIES)
        _check_choice("targets", self.targets, TARGET_SOURCES)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r} (the paper uses 0.05).")
        for name in ("weight_image", "weight_text", "weight_contrastive"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}.")


TEACHER_ARGUMENTS = (ModelArguments, DataArguments, TeacherTrainingArguments)
STUDENT_ARGUMENTS = (ModelArguments, DataArguments, StudentTrainingArguments)
_STAGE_TYPES = {"teacher": TEACHER_ARGUMENTS, "student": STUDENT_ARGUMENTS}


def _field_names(types: Sequence[type]) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t) if f.init}


def _read_file(path: str | os.PathLike) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Argument file {str(path)!r} does not exist; pass a .yaml/.yml/.json file path.")
    with open(path, encoding="utf-8") as handle:
        if str(path).endswith(".json"):
            data = json.load(handle)
        else:
            import yaml

            data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"Argument file {str(path)!r} must hold a mapping of argument names to values.")
    return data


def load_stage_config(path: str | os.PathLike, stage: str) -> dict[str, Any]:
    """The values a flat or sectioned (experiment) file gives one stage, validated against its arguments.

    Args:
        path: a `.yaml`, `.yml` or `.json` file.
        stage: `teacher` or `student`.

    Returns:
        `{argument name: value}` (flags given on the command line still override these).
    """
    _check_choice("stage", stage, STAGES)
    known = _field_names(_STAGE_TYPES[stage])
    data = _read_file(path)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            continue  # a section: the stage's own is merged below, the others belong to other steps
        if key in known:
            values[key] = value
        else:
            logger.info("%s: top-level key %r is no %s-stage argument; skipped.", path, key, stage)
    base = data.get("base")
    if isinstance(base, dict) and base.get("clip_name_or_path"):
        # The pipeline's `base:` section names the base CLIP; a standalone stage reads the same file.
        values["clip_name_or_path"] = base["clip_name_or_path"]
    section = data.get(stage) or {}
    check_stage_section(stage, section, where=f"section {stage!r} of {str(path)!r}")
    values.update(section)
    return values


def check_stage_section(stage: str, section: Any, where: str) -> None:
    """Raise `ValueError` unless `section` is a mapping of `stage`'s argument names (a typo must not pass silently).

    Args:
        stage: `teacher` or `student`.
        section: the section's content.
        where: how the error names the section's place (file and section).
    """
    _check_choice("stage", stage, STAGES)
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be a mapping of {stage}-stage arguments, got {type(section).__name__}.")
    unknown = sorted(set(section) - _field_names(_STAGE_TYPES[stage]))
    if unknown:
        raise ValueError(
            f"Unknown {stage}-stage argument(s) {unknown} in {where}; see "
            f"`python -m training.train_{stage} --help` for the accepted names."
        )


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        return argv[0], []
    rest, config = [], None
    index = 0
    while index < len(argv):
        item = argv[index]
        if item == "--config":
            if index + 1 >= len(argv):
                raise ValueError("--config needs a file path: --config experiment.yaml")
            config = argv[index + 1]
            index += 2
            continue
        if item.startswith("--config="):
            config = item.split("=", 1)[1]
        else:
            rest.append(item)
        index += 1
    return config, rest


def parse_stage_args(stage: str, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse a stage's `(ModelArguments, DataArguments, <Stage>TrainingArguments)` from flags and/or a file.

    Args:
        stage: `teacher` or `student`.
        argv: the command line without the program name (defaults to `sys.argv[1:]`).
    """
    _check_choice("stage", stage, STAGES)
    argv = list(sys.argv[1:] if argv is None else argv)
    config, rest = _split_config_flag(argv)
    parser = HfArgumentParser(_STAGE_TYPES[stage])
    if config is not None:
        # File values become parser defaults, so explicit flags override them and argparse converts strings
        # (YAML reads `1e-5` as a string) exactly as it converts flags.
        parser.set_defaults(**load_stage_config(config, stage))
    return tuple(parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False))
