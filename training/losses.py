"""Every DCLIP training objective (METHOD.md §2–3): symmetric InfoNCE, cosine distillation, the hybrid student loss.

Distributed training. Contrastive losses need the negatives of the *global* batch, so under several processes the
embeddings are all-gathered **with gradients** ([`gather_with_grad`]) and every process computes the same loss over the
whole global batch. Why the gradients then equal those of one process holding that batch:

* every rank computes the identical global loss `L`, so the gradient reaching the gathered tensor is `dL/dZ` on every
  rank;
* the backward of the gather *sums* those gradients over the ranks before keeping the local rows, so rank `r` receives
  `W * dL/dz_r` for its own rows (`W` = world size);
* DDP (and FSDP / DeepSpeed) then *average* parameter gradients over the ranks: `(1/W) * sum_r W * dL/dθ|_r = dL/dθ`.

The factor `W` from the summing backward cancels DDP's `1/W`, so no extra scaling is needed. The cosine terms are
computed on the gathered embeddings too, so the whole hybrid loss (not only InfoNCE) is the one-process value, also
when the ranks hold batches of different sizes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

DEFAULT_TEMPERATURE = 0.05
MAX_LOGIT_SCALE = 100.0


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _gather_sizes(tensor: torch.Tensor) -> list[int]:
    size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _all_gather_padded(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    # all_gather needs equal shapes: pad every rank's rows to the largest, then strip the padding.
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradients over ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return _all_gather_padded(tensor, sizes)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        # all_reduce works on every backend (gloo has no reduce_scatter); it costs W times the traffic of a
        # reduce-scatter on tensors of [global batch, D], which is negligible next to the model's gradients.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All-gather tensors along the batch dimension from every process, keeping the autograd graph.

    A no-op (returns the inputs) when `torch.distributed` is not initialised or has one process. Ranks may hold
    different batch sizes. Integer/bool tensors (e.g. `image_index`) are gathered without gradients.

    Args:
        *tensors: tensors of the same leading size on this rank.

    Returns:
        The gathered tensors, rank 0's rows first, in the order given.
    """
    if _world_size() == 1:
        return tensors
    sizes = _gather_sizes(tensors[0])
    gathered = []
    for tensor in tensors:
        if tensor.shape[0] != tensors[0].shape[0]:
            raise ValueError(
                f"gather_with_grad needs tensors with one leading (batch) size, got {tensor.shape[0]} and "
                f"{tensors[0].shape[0]}."
            )
        if tensor.is_floating_point() and tensor.requires_grad:
            gathered.append(_GatherWithGrad.apply(tensor, sizes))
        elif tensor.dtype == torch.bool:
            gathered.append(_all_gather_padded(tensor.long(), sizes).bool())
        else:
            gathered.append(_all_gather_padded(tensor, sizes))
    return tuple(gathered)


def logit_scale_from_parameter(logit_scale: torch.Tensor, max_scale: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """CLIP's learned temperature: `exp(logit_scale)` clamped at `max_scale` (CLIP stores the log of the scale)."""
    return logit_scale.exp().clamp(max=max_scale)


def _positive_mask(image_index: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    if image_index is None:
        return torch.eye(size, dtype=torch.bool, device=device)
    image_index = image_index.reshape(-1)
    if image_index.shape[0] != size:
        raise ValueError(f"image_index has {image_index.shape[0]} entries for a batch of {size} pairs.")
    return image_index[:, None] == image_index[None, :]


def info_nce(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    logit_scale: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
    same_image_positives: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE between paired embeddings (pair `i` is `image_embeds[i]`, `text_embeds[i]`).

    `L = (CE(S, pos) + CE(S^T, pos)) / 2` with `S = scale * norm(x) @ norm(y)^T` and `scale = 1 / temperature` (or the
    learned `exp(logit_scale)` clamped at 100). By default the positive of row `i` is column `i` only (the paper). With
    `same_image_positives`, every pair whose `image_index` matches is a positive too and a row's loss is
    `-log(sum_{pos} softmax(S_i))`.

    Args:
        image_embeds: `[B, D]` image-side embeddings (normalised inside).
        text_embeds: `[B, D]` text-side embeddings (normalised inside).
        temperature: fixed temperature (paper: 0.05); ignored when `logit_scale` is given.
        logit_scale: CLIP's learned log-scale parameter (a scalar tensor), for a learned temperature.
        image_index: `[B]` index of the image each pair belongs to; needed by `same_image_positives`.
        same_image_positives: treat all captions of the same image in the batch as positives.
        gather: all-gather the batch over processes (with gradients) when running distributed.

    Returns:
        The scalar loss, averaged over the global batch.
    """
    if image_embeds.shape != text_embeds.shape or image_embeds.dim() != 2:
        raise ValueError(
            f"info_nce needs two [batch, D] tensors of one shape, got {tuple(image_embeds.shape)} and "
            f"{tuple(text_embeds.shape)}."
        )
    if same_image_positives and image_index is None:
        raise ValueError("same_image_positives=True needs `image_index` (the image each caption belongs to).")
    if logit_scale is None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r} (the paper uses 0.05).")
    index = image_index if same_image_positives else None
    if gather:
        if index is None:
            image_embeds, text_embeds = gather_with_grad(image_embeds, text_embeds)
        else:
            image_embeds, text_embeds, index = gather_with_grad(image_embeds, text_embeds, index)
    return _info_nce_local(image_embeds, text_embeds, temperature, logit_scale, index)


def _info_nce_local(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    temperature: float,
    logit_scale: torch.Tensor | None,
    image_index: torch.Tensor | None,
) -> torch.Tensor:
    size = image_embeds.shape[0]
    positives = _positive_mask(image_index, size, image_embeds.device)
    if size == 1 or bool(positives.all()):
        warnings.warn(
            f"InfoNCE over a batch of {size} pair(s) in which every pair is a positive of every other is always 0 "
            "(identically 0) and trains nothing: use a (global) batch of at least 2 different images.",
            UserWarning,
            stacklevel=3,
        )
    scale = logit_scale_from_parameter(logit_scale) if logit_scale is not None else 1.0 / temperature
    image_embeds = F.normalize(image_embeds.float(), dim=-1)
    text_embeds = F.normalize(text_embeds.float(), dim=-1)
    logits = scale * image_embeds @ text_embeds.t()
    if image_index is None:
        targets = torch.arange(size, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
    # The positive mask is symmetric, so the text->image direction uses the same mask on the transposed logits.
    image_to_text = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), 1) - torch.logsumexp(logits, 1)
    text_to_image = torch.logsumexp(logits.t().masked_fill(~positives, float("-inf")), 1) - torch.logsumexp(
        logits.t(), 1
    )
    return -0.5 * (image_to_text.mean() + text_to_image.mean())


def cosine_distillation(embeds: torch.Tensor, targets: torch.Tensor, *, gather: bool = True) -> torch.Tensor:
    """Mean of `1 - cos(embeds_i, targets_i)` over the (global) batch; `targets` receive no gradient."""
    if embeds.shape != targets.shape:
        raise ValueError(
            f"cosine_distillation needs embeddings and targets of one shape, got {tuple(embeds.shape)} and "
            f"{tuple(targets.shape)}."
        )
    targets = targets.detach()
    if gather:
        embeds, targets = gather_with_grad(embeds, targets)
    return (1.0 - F.cosine_similarity(embeds.float(), targets.float(), dim=-1)).mean()


@dataclass
class StudentLossOutput:
    """The student's hybrid loss and its three (unweighted) terms.

    Args:
        loss: `w_img * image_distillation + w_txt * text_distillation + w_con * contrastive`.
        image_distillation: mean `1 - cos(v_i, g_i)` (student image vs teacher target).
        text_distillation: mean `1 - cos(u_i, t_i)` (student text vs frozen CLIP text).
        contrastive: symmetric InfoNCE between `v` and `u`.
    """

    loss: torch.Tensor
    image_distillation: torch.Tensor
    text_distillation: torch.Tensor
    contrastive: torch.Tensor

    def terms(self) -> dict[str, torch.Tensor]:
        """The three unweighted terms by their log names."""
        return {
            "loss_image_distill": self.image_distillation,
            "loss_text_distill": self.text_distillation,
            "loss_contrastive": self.contrastive,
        }


def student_distillation_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    teacher_embeds: torch.Tensor,
    target_text_embeds: torch.Tensor,
    *,
    weight_image: float = 1.0,
    weight_text: float = 1.0,
    weight_contrastive: float = 1.0,
    temperature: float = DEFAULT_TEMPERATURE,
    logit_scale: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
    same_image_positives: bool = False,
    gather: bool = True,
) -> StudentLossOutput:
    """DCLIP's student loss `w_img (1 - cos(v, g)) + w_txt (1 - cos(u, t)) + w_con InfoNCE(v, u)` (METHOD.md §3).

    Args:
        image_embeds: `[B, D]` student image embeddings `v`.
        text_embeds: `[B, D]` student text embeddings `u`.
        teacher_embeds: `[B, D]` teacher targets `g(I, c)` (no gradient).
        target_text_embeds: `[B, D]` frozen CLIP sentence embeddings `t` (no gradient).
        weight_image, weight_text, weight_contrastive: the term weights (paper: 1, 1, 1).
        temperature, logit_scale, image_index, same_image_positives: as in [`info_nce`].
        gather: all-gather over processes (with gradients) so every term is the global-batch value.
    """
    if same_image_positives and image_index is None:
        raise ValueError("same_image_positives=True needs `image_index` (the image each caption belongs to).")
    index = image_index if same_image_positives else None
    if gather:
        tensors = (image_embeds, text_embeds, teacher_embeds.detach(), target_text_embeds.detach())
        if index is not None:
            tensors = (*tensors, index)
        gathered = gather_with_grad(*tensors)
        image_embeds, text_embeds, teacher_embeds, target_text_embeds = gathered[:4]
        index = gathered[4] if index is not None else None
    image_term = cosine_distillation(image_embeds, teacher_embeds, gather=False)
    text_term = cosine_distillation(text_embeds, target_text_embeds, gather=False)
    contrastive = _info_nce_local(image_embeds, text_embeds, temperature, logit_scale, index)
    loss = weight_image * image_term + weight_text * text_term + weight_contrastive * contrastive
    return StudentLossOutput(
        loss=loss, image_distillation=image_term, text_distillation=text_term, contrastive=contrastive
    )
