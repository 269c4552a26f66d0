"""Stage 1: train DCLIP's cross-modal teacher (METHOD.md §2).

Run as `python -m training.train_teacher ...`, `accelerate launch -m training.train_teacher ...` or
`dclip train-teacher ...`; arguments are documented in `training/args.py` and `docs/training.md`. Library users (the
`dclip run` pipeline, tests) build their datasets themselves and call [`train_teacher`].
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_dclip import DCLIPTeacherModel

from .args import DataArguments, ModelArguments, TeacherTrainingArguments, parse_stage_args
from .trainer import DCLIPTeacherTrainer

logger = logging.getLogger(__name__)


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str | None) -> str | None:
    """Turn `--resume_from_checkpoint` into a checkpoint folder: `None`, a path, or `latest` (newest in output_dir).

    Raises:
        FileNotFoundError: the path does not exist, or `latest` finds no checkpoint.
    """
    if resume_from_checkpoint in (None, "", False, "false", "False"):
        return None
    if resume_from_checkpoint in (True, "latest", "true", "True"):
        last = get_last_checkpoint(output_dir) if output_dir and os.path.isdir(output_dir) else None
        if last is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest found no checkpoint-* folder in output_dir {output_dir!r}; start "
                "without it, or pass the checkpoint folder of the run to continue."
            )
        return last
    if not os.path.isdir(resume_from_checkpoint):
        raise FileNotFoundError(
            f"Checkpoint folder {resume_from_checkpoint!r} does not exist; pass a checkpoint-* folder or 'latest'."
        )
    return str(resume_from_checkpoint)


def _check_eval_setup(training_args: Any, eval_dataset: Dataset | None) -> None:
    if eval_dataset is None and (training_args.eval_strategy != "no" or training_args.load_best_model_at_end):
        raise ValueError(
            f"eval_strategy={training_args.eval_strategy!r} / load_best_model_at_end="
            f"{training_args.load_best_model_at_end} need a validation set: pass eval_dataset (or --eval_split), or "
            "run with --eval_strategy no --load_best_model_at_end false."
        )


def train_teacher(
    model: DCLIPTeacherModel,
    training_args: TeacherTrainingArguments,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
    *,
    data_collator: Any = None,
    processing_class: Any = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    resume_from_checkpoint: str | bool | None = None,
) -> DCLIPTeacherTrainer:
    """Train the cross-attention block of `model` and save the best (lowest val loss) teacher to `output_dir`.

    Args:
        model: the teacher; its CLIP must be frozen (as `DCLIPTeacherModel` builds it).
        training_args: the stage's arguments (loss knobs included).
        train_dataset, eval_dataset: datasets yielding the teacher samples of `docs/internals.md` §3 (e.g.
            `training.stage_data.TeacherFeatureDataset`).
        data_collator: builds the batch (e.g. `TeacherFeatureCollator`).
        processing_class: saved next to the model when given (e.g. a `DCLIPProcessor`).
        callbacks: extra Trainer callbacks.
        resume_from_checkpoint: a checkpoint folder or `latest`; defaults to `training_args.resume_from_checkpoint`.

    Returns:
        The trainer after training (its `state.log_history` holds the logged losses).
    """
    trainable_clip = [name for name, p in model.clip.named_parameters() if p.requires_grad]
    if trainable_clip:
        raise ValueError(
            f"The teacher's CLIP must stay frozen, but {trainable_clip[:3]} (and {len(trainable_clip)} in all) "
            "require gradients; call `model.clip.requires_grad_(False)`."
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Teacher: %d trainable parameters (cross-attention block only).", trainable)
    return run_trainer(
        DCLIPTeacherTrainer,
        model,
        training_args,
        train_dataset,
        eval_dataset,
        resume_from_checkpoint=resume_from_checkpoint,
        data_collator=data_collator,
        processing_class=processing_class,
        callbacks=list(callbacks or []),
    )


def run_trainer(
    trainer_class: type,
    model: Any,
    training_args: Any,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    *,
    resume_from_checkpoint: str | bool | None,
    **trainer_kwargs: Any,
) -> Any:
    """Build a stage's Trainer, train (resuming when asked), and save the final model, metrics and state.

    Both stages end the same way: `output_dir` holds the model to use next (the best one when
    `load_best_model_at_end`), `train_results.json` and `trainer_state.json`.
    """
    _check_eval_setup(training_args, eval_dataset)
    checkpoint = resolve_checkpoint(
        resume_from_checkpoint if resume_from_checkpoint is not None else training_args.resume_from_checkpoint,
        training_args.output_dir,
    )
    trainer = trainer_class(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset, **trainer_kwargs
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return trainer


def build_teacher(model_args: ModelArguments) -> DCLIPTeacherModel:
    """A teacher from `teacher_name_or_path`, or a fresh cross-attention block around `clip_name_or_path`."""
    if model_args.teacher_name_or_path:
        return DCLIPTeacherModel.from_pretrained(model_args.teacher_name_or_path)
    if not model_args.clip_name_or_path:
        raise ValueError("Pass --clip_name_or_path (the base CLIP) or --teacher_name_or_path (a teacher to continue).")
    return DCLIPTeacherModel.from_clip(
        model_args.clip_name_or_path,
        num_attention_heads=model_args.cross_attention_heads,
        num_cross_layers=model_args.cross_layers,
        empty_region_policy=model_args.empty_region_policy,
        use_padding_masks=model_args.use_padding_masks,
    )


def load_split(data_args: DataArguments, split: str | None, limit: int | None) -> Any:
    """The images of one `split` of the saved dataset in `data_args.dataset_dir` (`None` when `split` is `None`)."""
    if split is None:
        return None
    if not data_args.dataset_dir:
        raise ValueError(
            "Pass --dataset_dir: a folder written by `datasets.Dataset.save_to_disk` (docs/internals §1)."
        )
    if not os.path.isdir(data_args.dataset_dir):
        raise FileNotFoundError(f"--dataset_dir {data_args.dataset_dir!r} does not exist.")
    from datasets import load_from_disk

    dataset = load_from_disk(data_args.dataset_dir)
    selected = dataset.filter(lambda value: value == split, input_columns="split")
    if len(selected) == 0:
        raise ValueError(
            f"No image of {data_args.dataset_dir!r} has split {split!r} (splits: {sorted(set(dataset['split']))})."
        )
    return selected.select(range(min(limit, len(selected)))) if limit else selected


def build_teacher_datasets(
    model_args: ModelArguments, data_args: DataArguments, seed: int
) -> tuple[Dataset, Dataset | None, Any]:
    """Train/val teacher datasets and their collator: cached features when given, else region crops (slow)."""
    from . import features, stage_data

    train = load_split(data_args, data_args.train_split, data_args.max_train_samples)
    val = load_split(data_args, data_args.eval_split, data_args.max_eval_samples)
    if data_args.image_features_dir and data_args.text_features_dir:
        image_features = features.load_image_features(data_args.image_features_dir)
        text_features = features.load_text_features(data_args.text_features_dir)

        def make(split: Any) -> Dataset | None:
            if split is None:
                return None
            return stage_data.TeacherFeatureDataset(split, image_features, text_features, seed=seed)

        return make(train), make(val), stage_data.TeacherFeatureCollator()
    if not data_args.regions_dir:
        raise ValueError(
            "The teacher stage needs --image_features_dir and --text_features_dir (fast), or --regions_dir to encode "
            "region crops every step."
        )
    from modeling_dclip import DCLIPProcessor

    from .regions import load_region_cache

    logger.warning("No feature caches given: every step encodes region crops with frozen CLIP (much slower).")
    regions = load_region_cache(data_args.regions_dir)
    processor = DCLIPProcessor.from_pretrained(model_args.teacher_name_or_path or model_args.clip_name_or_path)
    collator = stage_data.TeacherRawCollator(processor)

    def make_raw(split: Any) -> Dataset | None:
        return None if split is None else stage_data.TeacherRawDataset(split, regions, seed=seed)

    return make_raw(train), make_raw(val), collator


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (`python -m training.train_teacher`, `dclip train-teacher`)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_stage_args("teacher", argv)
    set_seed(training_args.seed)
    model = build_teacher(model_args)
    train_dataset, eval_dataset, collator = build_teacher_datasets(model_args, data_args, training_args.seed)
    train_teacher(model, training_args, train_dataset, eval_dataset, data_collator=collator)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
