"""`transformers.Trainer` subclasses of the two DCLIP stages (METHOD.md §2–3).

Both consume the batches of `docs/internals.md` §3 and override `compute_loss` only (plus `log`, to report each loss
term separately). Losses come from `training.losses`; under several processes they are computed over the global batch
with gathered embeddings, so no trainer code depends on the number of processes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import CLIPModel, EvalPrediction, Trainer, TrainerCallback

from .args import TRAINABLE_POLICIES, StudentTrainingArguments, TeacherTrainingArguments
from .losses import info_nce, student_distillation_loss
from .metrics import retrieval_metrics

# Batch keys (docs/internals.md §3) that DCLIPTeacherModel.forward reads; anything else stays out of the model call.
TEACHER_INPUT_KEYS = (
    "token_embeds",
    "token_mask",
    "text_embeds",
    "region_embeds",
    "region_mask",
    "image_embeds",
    "input_ids",
    "attention_mask",
    "region_pixel_values",
    "pixel_values",
)
STUDENT_INPUT_KEYS = ("pixel_values", "input_ids", "attention_mask")


def apply_trainable_policy(model: CLIPModel, policy: str, *, train_logit_scale: bool = False) -> int:
    """Set `requires_grad` of a student CLIP by policy and return the number of trainable parameters.

    Args:
        model: the student (any `CLIPModel`).
        policy: `paper_code` — in the vision tower only the self-attention q/k/v/out projections of every layer, plus
            `visual_projection`, plus the whole text tower (`text_model` and `text_projection`), as in the reference
            code; `frozen_text` — the same vision part with the text tower frozen (the paper README's variant);
            `full` — every weight of both towers and projections.
        train_logit_scale: also train CLIP's `logit_scale` (only meaningful with a learned temperature; otherwise it
            would receive no gradient, which DDP rejects).
    """
    if policy not in TRAINABLE_POLICIES:
        raise ValueError(f"trainable_policy must be one of {TRAINABLE_POLICIES}, got {policy!r}.")
    model.requires_grad_(policy == "full")
    if policy != "full":
        for layer in model.vision_model.encoder.layers:
            attention = layer.self_attn
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                projection.requires_grad_(True)
        model.visual_projection.requires_grad_(True)
        if policy == "paper_code":
            model.text_model.requires_grad_(True)
            model.text_projection.requires_grad_(True)
    model.logit_scale.requires_grad_(train_logit_scale)
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


class DatasetEpochCallback(TrainerCallback):
    """Calls `train_dataset.set_epoch(epoch)` at the start of every epoch, also the epoch a resumed run restarts in.

    The stage datasets draw one caption per image and epoch from `(seed, epoch, index)`; accelerate only forwards
    `set_epoch` to the dataset when its sampler has none, so the trainer does it itself.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            # state.epoch is `epoch + steps_done / steps_per_epoch`: its floor is the epoch being (re)started.
            dataset.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))


class _DCLIPTrainerBase(Trainer):
    # compute_loss returns a per-batch mean (it ignores num_items_in_batch): Trainer divides it by the accumulation
    # steps, so an accumulated step averages its micro-batches.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No batch carries `labels`: without this, evaluation would skip compute_loss and report no eval_loss.
        self.can_return_loss = True
        self.add_callback(DatasetEpochCallback(self))
        self._term_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._term_counts = {"train": 0, "eval": 0}

    def _record_terms(self, model: nn.Module, terms: dict[str, torch.Tensor]) -> None:
        phase = "train" if model.training else "eval"
        for name, value in terms.items():
            self._term_sums[phase][name] = self._term_sums[phase][name] + value.detach().float()
        self._term_counts[phase] += 1

    def _pop_terms(self, phase: str, prefix: str) -> dict[str, float]:
        count = self._term_counts[phase]
        if not count:
            return {}
        means = {f"{prefix}{name}": round(float(total) / count, 6) for name, total in self._term_sums[phase].items()}
        self._term_sums[phase] = defaultdict(float)
        self._term_counts[phase] = 0
        return means

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every process computes the terms over the gathered global batch, so local means are the global ones.
        if "loss" in logs:
            logs.update(self._pop_terms("train", ""))
        if "eval_loss" in logs:
            logs.update(self._pop_terms("eval", "eval_"))
        super().log(logs, start_time)


class DCLIPTeacherTrainer(_DCLIPTrainerBase):
    """Trains the cross-attention block of a `DCLIPTeacherModel` with symmetric InfoNCE against frozen CLIP text.

    The batch is the teacher batch of `docs/internals.md` §3, cached (`token_embeds`, `region_embeds`, ...) or raw
    (`input_ids`, `region_pixel_values`, ...). Only parameters with `requires_grad` reach the optimizer, so the frozen
    CLIP inside the teacher is never touched.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, TeacherTrainingArguments):
            raise TypeError(
                f"DCLIPTeacherTrainer needs TeacherTrainingArguments (it reads the loss knobs), got "
                f"{type(self.args).__name__}."
            )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outputs = model(**{key: inputs[key] for key in TEACHER_INPUT_KEYS if key in inputs}, return_dict=True)
        if outputs.text_embeds is None:
            raise ValueError(
                "The teacher batch has no frozen-CLIP sentence embedding: pass `text_embeds` with the cached features "
                "or `input_ids` so the teacher computes it."
            )
        loss = info_nce(
            outputs.teacher_embeds,
            outputs.text_embeds,
            temperature=self.args.temperature,
            image_index=inputs.get("image_index"),
            same_image_positives=self.args.same_image_positives,
        )
        if return_outputs:
            return loss, {"teacher_embeds": outputs.teacher_embeds, "text_embeds": outputs.text_embeds}
        return loss


def retrieval_compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` of the student: retrieval over the validation pairs, one entry per distinct image.

    `eval_pred.predictions` is `(image_embeds, text_embeds[, image_index])` as returned by
    [`DCLIPStudentTrainer.compute_loss`] and gathered by the Trainer.
    """
    predictions = eval_pred.predictions
    image_embeds, text_embeds = np.asarray(predictions[0], np.float32), np.asarray(predictions[1], np.float32)
    if len(predictions) > 2:
        image_index = np.asarray(predictions[2]).reshape(-1)
    else:
        image_index = np.arange(len(image_embeds))
    _, first, text_to_image = np.unique(image_index, return_index=True, return_inverse=True)
    return retrieval_metrics(image_embeds[first], text_embeds, text_to_image.reshape(-1))


class DCLIPStudentTrainer(_DCLIPTrainerBase):
    """Distils a student CLIP with DCLIP's hybrid loss; logs each term and validates with retrieval metrics.

    Targets (`teacher_embeds`, `target_text_embeds`) normally come in the batch from the teacher-target cache. When
    they do not, the frozen `teacher` passed here computes them on the fly from the batch's teacher inputs (cached
    features or raw crops and captions), in eval mode and without gradients.

    Args:
        teacher: the frozen `DCLIPTeacherModel`, only for on-the-fly targets.
        *args, **kwargs: as for `transformers.Trainer`; `args` must be a `StudentTrainingArguments`.
    """

    def __init__(self, *args: Any, teacher: nn.Module | None = None, **kwargs: Any) -> None:
        if kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = retrieval_compute_metrics
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, StudentTrainingArguments):
            raise TypeError(
                f"DCLIPStudentTrainer needs StudentTrainingArguments (it reads the loss knobs), got "
                f"{type(self.args).__name__}."
            )
        if self.args.targets == "teacher" and teacher is None:
            raise ValueError("targets='teacher' needs the frozen teacher: pass `teacher=` to DCLIPStudentTrainer.")
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            teacher.to(self.args.device)

    def _targets(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.args.targets == "cache" and "teacher_embeds" in inputs and "target_text_embeds" in inputs:
            return inputs["teacher_embeds"], inputs["target_text_embeds"]
        if self.teacher is None:
            raise ValueError(
                "The student batch has no `teacher_embeds`/`target_text_embeds` and no teacher was given: build the "
                "teacher-target cache, or pass `teacher=` with targets='teacher' to compute them on the fly."
            )
        with torch.no_grad():
            output = self.teacher(
                **{key: inputs[key] for key in TEACHER_INPUT_KEYS if key in inputs}, return_dict=True
            )
        return output.teacher_embeds, output.text_embeds

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher_embeds, target_text_embeds = self._targets(inputs)
        outputs = model(**{key: inputs[key] for key in STUDENT_INPUT_KEYS}, return_dict=True)
        logit_scale = self.accelerator.unwrap_model(model).logit_scale if self.args.learn_temperature else None
        result = student_distillation_loss(
            outputs.image_embeds,
            outputs.text_embeds,
            teacher_embeds,
            target_text_embeds,
            weight_image=self.args.weight_image,
            weight_text=self.args.weight_text,
            weight_contrastive=self.args.weight_contrastive,
            temperature=self.args.temperature,
            logit_scale=logit_scale,
            image_index=inputs.get("image_index"),
            same_image_positives=self.args.same_image_positives,
        )
        self._record_terms(model, result.terms())
        if not return_outputs:
            return result.loss
        predictions = {"image_embeds": outputs.image_embeds, "text_embeds": outputs.text_embeds}
        if "image_index" in inputs:
            predictions["image_index"] = inputs["image_index"]
        return result.loss, predictions
