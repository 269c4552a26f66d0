"""Image-text retrieval metrics on the standard protocol, in bounded memory.

`retrieval_metrics` ranks every image for every caption (text→image) and every caption for every image
(image→text) by cosine similarity, without ever materialising the `n_texts × n_images` score matrix: scores are
computed block by block (at most `chunk_size × chunk_size` floats at a time) and each relevant item's rank is
obtained by *counting* the irrelevant items that score at least as high, so no sort is needed.

Definitions (all in %, except ranks; ranks start at 1):
    * t2i: each caption is a query with exactly one relevant image (the one it describes).
    * i2t: each image with at least one caption is a query whose relevant items are all of its captions; images
      without captions are gallery items only for t2i and are not i2t queries.
    * recall@k: share of queries whose first relevant item ranks ≤ k.
    * mrr: mean reciprocal rank of the first relevant item (what the DCLIP paper and its code call "MAP").
    * map: true mean average precision over all relevant items (equals mrr for t2i).
    * median_rank / mean_rank: of the first relevant item.

Ties never flatter a model: a relevant item that ties with irrelevant items is ranked after all of them, so
constant scores give chance-level results, not perfect ones. Two scores closer than `tie_tolerance` count as
tied, because the same cosine computed in two differently blocked matrix products can differ in the last bits.

This file depends only on the standard library, numpy and torch: `dclip_metrics/dclip_retrieval/` ships a
byte-identical copy so that the `evaluate` module gives identical numbers without the `dclip` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_CHUNK_SIZE = 4096
DEFAULT_TIE_TOLERANCE = 1e-6


def _as_float_tensor(name: str, values: Any, device: torch.device | str | None) -> torch.Tensor:
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [n, dim] array; got shape {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must hold floating-point embeddings; got dtype {tensor.dtype}.")
    tensor = tensor.detach()
    if device is not None:
        tensor = tensor.to(device)
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or inf values in {bad} row(s); fix the encoder output before scoring.")
    return tensor


def _as_index_tensor(text_to_image: Any, n_texts: int, n_images: int, device: torch.device) -> torch.Tensor:
    index = text_to_image if isinstance(text_to_image, torch.Tensor) else torch.as_tensor(np.asarray(text_to_image))
    if index.ndim != 1 or index.shape[0] != n_texts:
        raise ValueError(
            f"text_to_image must be a 1-D array with one image index per caption ({n_texts}); "
            f"got shape {tuple(index.shape)}."
        )
    if index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"text_to_image must hold integer image indices; got dtype {index.dtype}.")
    index = index.to(device=device, dtype=torch.long)
    if n_texts and (int(index.min()) < 0 or int(index.max()) >= n_images):
        raise ValueError(
            f"text_to_image values must be image indices in [0, {n_images}); got range "
            f"[{int(index.min())}, {int(index.max())}]."
        )
    return index


def _block(embeds: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return F.normalize(embeds[start:stop].float(), dim=-1)


# Boolean masks are counted 8 at a time by viewing them as int64 and summing at most _LANES int64 words per byte
# lane (so no lane exceeds 255 and carries into its neighbour), then adding the bytes up: ~8x faster than
# `mask.sum()`, which widens every bool to int64. Blocks are zero-padded to these multiples.
_LANES = 128
_ROW_GROUP = _LANES
_COL_GROUP = 8 * _LANES


def _padded_block(embeds: torch.Tensor, start: int, stop: int, multiple: int) -> torch.Tensor:
    block = _block(embeds, start, stop)
    if stop - start < multiple:  # small blocks are counted directly; padding them would cost more than it saves
        return block
    return F.pad(block, (0, 0, 0, -(stop - start) % multiple))


def _count_per_row(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = mask.shape
    if cols % _COL_GROUP:
        return mask.sum(1)
    words = mask.contiguous().view(torch.int64).view(rows, cols // _COL_GROUP, _LANES).sum(2)
    return words.view(torch.uint8).sum(1, dtype=torch.int64)


def _count_per_column(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = mask.shape
    if rows % _ROW_GROUP or cols % 8:
        return mask.sum(0)
    words = mask.contiguous().view(torch.int64).view(rows // _ROW_GROUP, _ROW_GROUP, cols // 8).sum(1)
    return words.view(torch.uint8).sum(0, dtype=torch.int64)


def retrieval_ranks(
    image_embeds: Any,
    text_embeds: Any,
    text_to_image: Any,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Pessimistic ranks of every relevant item, computed block-wise.

    Args:
        image_embeds: `[n_images, dim]` image embeddings (any scale; L2-normalised here).
        text_embeds: `[n_texts, dim]` caption embeddings.
        text_to_image: `[n_texts]` index of the image each caption describes.
        chunk_size: rows and columns of one score block; extra memory is about `5 * chunk_size**2` bytes plus
            `O(n_texts + n_images * max_captions_per_image)`.
        tie_tolerance: scores closer than this count as tied (and ties rank the relevant item last).
        device: where to compute (default: the device of `image_embeds`).

    Returns:
        `t2i_rank [n_texts]` (rank of each caption's image), `i2t_first_rank [n_queries]` (rank of each image
        query's best caption), `i2t_ap [n_queries]` (average precision over all its captions, in [0, 1]) and
        `i2t_query_images [n_queries]` (the image index of each i2t query: images with at least one caption).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}.")
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0; got {tie_tolerance}.")
    images = _as_float_tensor("image_embeds", image_embeds, device)
    texts = _as_float_tensor("text_embeds", text_embeds, images.device)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"image_embeds and text_embeds must have the same width; got {images.shape[1]} and {texts.shape[1]}."
        )
    n_images, n_texts = images.shape[0], texts.shape[0]
    if n_images == 0 or n_texts == 0:
        raise ValueError(f"Need at least one image and one caption; got {n_images} images and {n_texts} captions.")
    dev = images.device
    owner = _as_index_tensor(text_to_image, n_texts, n_images, dev)

    with torch.no_grad():
        # Score of each caption with its own image, computed once and shared by both directions.
        positive = torch.empty(n_texts, device=dev)
        for start in range(0, n_texts, chunk_size):
            stop = min(start + chunk_size, n_texts)
            img = F.normalize(images[owner[start:stop]].float(), dim=-1)
            positive[start:stop] = (_block(texts, start, stop) * img).sum(-1)

        # Captions of each image as a padded [n_images, max_captions] table, sorted by score (best first).
        counts = torch.bincount(owner, minlength=n_images)
        max_caps = int(counts.max())
        order = torch.argsort(owner * 4.0 - positive.double(), stable=True)  # group by image, best score first
        slot = torch.arange(n_texts, device=dev) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        caption_table = torch.full((n_images, max_caps), -1, dtype=torch.long, device=dev)
        caption_table[owner[order], slot] = order
        has_caption = caption_table >= 0
        threshold = torch.where(has_caption, positive[caption_table.clamp(min=0)] - tie_tolerance, torch.inf)
        text_threshold = positive - tie_tolerance

        # ge counts every text/image scoring >= threshold, relevant ones included; they are subtracted below.
        t2i_ge = torch.zeros(n_texts, dtype=torch.long, device=dev)
        i2t_ge = torch.zeros(n_images, max_caps, dtype=torch.long, device=dev)
        for i0 in range(0, n_images, chunk_size):
            i1 = min(i0 + chunk_size, n_images)
            img_block = _padded_block(images, i0, i1, _ROW_GROUP)
            pad_rows = img_block.shape[0] - (i1 - i0)
            block_threshold = F.pad(threshold[i0:i1], (0, 0, 0, pad_rows), value=torch.inf)
            for t0 in range(0, n_texts, chunk_size):
                t1 = min(t0 + chunk_size, n_texts)
                txt_block = _padded_block(texts, t0, t1, _COL_GROUP)
                pad_cols = txt_block.shape[0] - (t1 - t0)
                # Padding rows/columns are zero vectors: they score exactly 0 and are removed from the counts.
                scores = img_block @ txt_block.T  # [images, texts]
                col_threshold = F.pad(text_threshold[t0:t1], (0, pad_cols), value=torch.inf)
                t2i_ge[t0:t1] += _count_per_column(scores >= col_threshold[None, :])[: t1 - t0]
                t2i_ge[t0:t1] -= pad_rows * (text_threshold[t0:t1] <= 0).long()
                for k in range(max_caps):
                    column = block_threshold[:, k : k + 1]
                    hits = _count_per_row(scores >= column) - pad_cols * (column[:, 0] <= 0).long()
                    i2t_ge[i0:i1, k] += hits[: i1 - i0]
                # Relevant pairs inside this block: remove them from the "ge" counts of both directions.
                local = torch.nonzero((owner[t0:t1] >= i0) & (owner[t0:t1] < i1)).squeeze(1)
                if local.numel():
                    text_idx = local + t0
                    img_idx = owner[text_idx]
                    value = scores[img_idx - i0, local]
                    t2i_ge[text_idx] -= (value >= text_threshold[text_idx]).long()
                    hit = (value[:, None] >= threshold[img_idx]).long()
                    i2t_ge.index_put_((img_idx,), -hit, accumulate=True)

        t2i_rank = t2i_ge + 1
        # The k-th best caption (0-based) ranks after its k better siblings and after every irrelevant item that
        # ties or beats it.
        i2t_rank = i2t_ge + torch.arange(1, max_caps + 1, device=dev)[None, :]
        query = counts > 0
        precision = torch.arange(1, max_caps + 1, device=dev, dtype=torch.float64)[None, :] / i2t_rank.double()
        precision = torch.where(has_caption, precision, 0.0)
        i2t_ap = precision[query].sum(1) / counts[query].double()
    return {
        "t2i_rank": t2i_rank.cpu().numpy(),
        "i2t_first_rank": i2t_rank[query, 0].cpu().numpy(),
        "i2t_ap": i2t_ap.cpu().numpy(),
        "i2t_query_images": torch.nonzero(query).squeeze(1).cpu().numpy(),
    }


def metrics_from_ranks(
    first_rank: np.ndarray, average_precision: np.ndarray, prefix: str, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k, MRR, mAP (in %) and median/mean rank of one direction from per-query ranks.

    Args:
        first_rank: rank (1-based) of each query's first relevant item.
        average_precision: each query's average precision in [0, 1].
        prefix: `"t2i"` or `"i2t"`.
        ks: cut-offs for recall.
    """
    ranks = np.asarray(first_rank, dtype=np.float64)
    out = {f"{prefix}_recall@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out[f"{prefix}_mrr"] = float(100.0 * np.mean(1.0 / ranks))
    out[f"{prefix}_map"] = float(100.0 * np.mean(np.asarray(average_precision, dtype=np.float64)))
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
    return out


def retrieval_metrics(
    image_embeds: Any,
    text_embeds: Any,
    text_to_image: Any,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Text→image and image→text retrieval metrics (Recall@k, MRR, mAP, median/mean rank).

    Args:
        image_embeds: `[n_images, dim]` image embeddings (torch or numpy; L2-normalised here).
        text_embeds: `[n_texts, dim]` caption embeddings.
        text_to_image: `[n_texts]` index of the image caption j describes. Images may have any number of captions,
            including none (such an image is a t2i distractor but not an i2t query).
        ks: recall cut-offs.
        chunk_size: side of one score block; memory is bounded by it, not by `n_texts × n_images`.
        tie_tolerance: scores closer than this are ties; a relevant item tied with irrelevant ones ranks after them.
        device: where to compute (default: the device of `image_embeds`).

    Returns:
        A flat dict: `t2i_recall@{k}`, `i2t_recall@{k}`, `t2i_mrr`, `i2t_mrr`, `t2i_map`, `i2t_map` (all in %),
        `t2i_median_rank`, `i2t_median_rank`, `t2i_mean_rank`, `i2t_mean_rank`.

    Raises:
        ValueError: NaN/inf embeddings, mismatched shapes, out-of-range `text_to_image`, or bad `ks`.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs such as (1, 5, 10); got {ks}.")
    ranks = retrieval_ranks(
        image_embeds, text_embeds, text_to_image, chunk_size=chunk_size, tie_tolerance=tie_tolerance, device=device
    )
    t2i = ranks["t2i_rank"]
    out = metrics_from_ranks(t2i, 1.0 / t2i.astype(np.float64), "t2i", ks)
    out.update(metrics_from_ranks(ranks["i2t_first_rank"], ranks["i2t_ap"], "i2t", ks))
    return out
