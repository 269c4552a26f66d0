"""Stage 2: distil the student CLIP from the frozen teacher (METHOD.md §3).

Run as `python -m training.train_student ...`, `accelerate launch -m training.train_student ...` or
`dclip train-student ...`; arguments are documented in `training/args.py` and `docs/training.md`. Library users (the
`dclip run` pipeline, tests) build their datasets themselves and call [`train_student`].
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset
from transformers import TrainerCallback, set_seed

from modeling_dclip import DCLIPStudentModel

from .args import DataArguments, ModelArguments, StudentTrainingArguments, parse_stage_args
from .train_teacher import load_split, run_trainer
from .trainer import DCLIPStudentTrainer, apply_trainable_policy

logger = logging.getLogger(__name__)


def train_student(
    model: DCLIPStudentModel,
    training_args: StudentTrainingArguments,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
    *,
    teacher: nn.Module | None = None,
    data_collator: Any = None,
    processing_class: Any = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    resume_from_checkpoint: str | bool | None = None,
) -> DCLIPStudentTrainer:
    """Distil `model` with the hybrid loss and save the final student (a stock CLIP checkpoint) to `output_dir`.

    Args:
        model: the student, initialised from the base CLIP; its trainable parameters are set here by
            `training_args.trainable_policy`.
        training_args: the stage's arguments (loss weights, temperature, policy, target source).
        train_dataset, eval_dataset: datasets yielding the student samples of `docs/internals.md` §3 (e.g.
            `training.stage_data.StudentDistillDataset`).
        teacher: the frozen teacher, only when `training_args.targets == "teacher"` (targets computed on the fly
            from teacher inputs carried by the batch).
        data_collator: builds the batch (e.g. `StudentDistillCollator`).
        processing_class: saved next to the student when given (e.g. a `CLIPProcessor`), so the folder is a
            complete CLIP.
        callbacks: extra Trainer callbacks.
        resume_from_checkpoint: a checkpoint folder or `latest`; defaults to `training_args.resume_from_checkpoint`.

    Returns:
        The trainer after training.
    """
    trainable = apply_trainable_policy(
        model, training_args.trainable_policy, train_logit_scale=training_args.learn_temperature
    )
    logger.info("Student: %d trainable parameters (policy %s).", trainable, training_args.trainable_policy)
    return run_trainer(
        DCLIPStudentTrainer,
        model,
        training_args,
        train_dataset,
        eval_dataset,
        resume_from_checkpoint=resume_from_checkpoint,
        data_collator=data_collator,
        processing_class=processing_class,
        callbacks=list(callbacks or []),
        teacher=teacher if training_args.targets == "teacher" else None,
    )


def build_student(model_args: ModelArguments) -> DCLIPStudentModel:
    """The student: a CLIP initialised from `clip_name_or_path` (the teacher's base checkpoint)."""
    if not model_args.clip_name_or_path:
        raise ValueError("Pass --clip_name_or_path: the student starts from the same CLIP as the teacher.")
    return DCLIPStudentModel.from_clip(model_args.clip_name_or_path)


def build_student_datasets(
    model_args: ModelArguments, data_args: DataArguments, seed: int
) -> tuple[Dataset, Dataset | None, Any, Any]:
    """Train/val student datasets from the teacher-target and text-feature caches, their collator and processor."""
    from transformers import CLIPProcessor

    from . import features, stage_data

    if not (data_args.teacher_targets_dir and data_args.text_features_dir):
        raise ValueError(
            "The student stage reads --teacher_targets_dir (the teacher targets g(I, c)) and --text_features_dir "
            "(frozen CLIP's caption embeddings t); compute them first (`dclip run` does)."
        )
    processor = CLIPProcessor.from_pretrained(model_args.clip_name_or_path)
    targets = features.load_teacher_targets(data_args.teacher_targets_dir)
    text_features = features.load_text_features(data_args.text_features_dir)

    def make(split: Any) -> Dataset | None:
        if split is None:
            return None
        return stage_data.StudentDistillDataset(split, targets, text_features, processor.image_processor, seed=seed)

    train = make(load_split(data_args, data_args.train_split, data_args.max_train_samples))
    val = make(load_split(data_args, data_args.eval_split, data_args.max_eval_samples))
    return train, val, stage_data.StudentDistillCollator(processor.tokenizer), processor


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (`python -m training.train_student`, `dclip train-student`)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_stage_args("student", argv)
    if training_args.targets == "teacher":
        raise ValueError(
            "The command line reads teacher targets from --teacher_targets_dir (targets='cache'). On-the-fly targets "
            "need batches that carry the teacher's inputs: call training.train_student.train_student(..., "
            "teacher=DCLIPTeacherModel.from_pretrained(...)) with such a dataset."
        )
    set_seed(training_args.seed)
    model = build_student(model_args)
    train_dataset, eval_dataset, collator, processor = build_student_datasets(
        model_args, data_args, training_args.seed
    )
    train_student(
        model, training_args, train_dataset, eval_dataset, data_collator=collator, processing_class=processor
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
