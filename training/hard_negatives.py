"""Fine-grained hard-negative retrieval: is an image's true caption scored above the same caption with one detail
swapped (colour, object noun, spatial word, count)?

Plain Recall@K barely sees detail sensitivity, which is DCLIP's claim; this test isolates it. Inputs are triples
(docs/internals.md §4), one per test image::

    [{"image_id": "397133", "image": "/abs/or/relative.jpg", "positive": "a red car left of a dog",
      "negatives": [{"caption": "a blue car left of a dog", "swap": "color"}, ...]}, ...]

They come from the synthetic generator's scene descriptions (`training/synthetic.py` writes them), from such a JSON
file, or from free-text captions through `make_lexicon_triples` (a small rule-based lexicon for COCO-style text).

Metrics (in %, per model and set): `hn_accuracy` (share of triples whose positive beats *all* its negatives),
`hn_pairwise_accuracy` (share of (positive, negative) pairs won), `hn_<swap>_accuracy` per swap type, and the counts
`hn_n_triples`, `hn_<swap>_count`, `hn_skipped_images` (images that failed to load). A tie counts as a loss.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Lexicon for COCO-style captions. Each swap replaces one matched word by another of the same group.
COLORS = (
    "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown", "gray", "grey", "silver",
)  # fmt: skip
# (singular, plural) object nouns; a swap keeps the number (a "dog" becomes a "cat", "dogs" become "cats").
OBJECTS = (
    ("man", "men"), ("woman", "women"), ("boy", "boys"), ("girl", "girls"), ("child", "children"),
    ("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("cow", "cows"), ("sheep", "sheep"),
    ("bird", "birds"), ("elephant", "elephants"), ("giraffe", "giraffes"), ("zebra", "zebras"), ("bear", "bears"),
    ("car", "cars"), ("bus", "buses"), ("truck", "trucks"), ("train", "trains"), ("bicycle", "bicycles"),
    ("motorcycle", "motorcycles"), ("boat", "boats"), ("airplane", "airplanes"), ("plane", "planes"),
    ("pizza", "pizzas"), ("sandwich", "sandwiches"), ("cake", "cakes"), ("banana", "bananas"), ("apple", "apples"),
    ("table", "tables"), ("chair", "chairs"), ("bench", "benches"), ("bed", "beds"), ("couch", "couches"),
    ("laptop", "laptops"), ("phone", "phones"), ("clock", "clocks"), ("umbrella", "umbrellas"), ("kite", "kites"),
    ("plate", "plates"), ("cup", "cups"), ("bowl", "bowls"), ("bottle", "bottles"), ("vase", "vases"),
)  # fmt: skip
# Spatial words and their opposites (multi-word phrases first so "on top of" is not read as "on").
SPATIAL = (
    ("in front of", "behind"), ("on top of", "under"), ("left", "right"), ("above", "below"), ("inside", "outside"),
    ("over", "under"), ("on", "under"),
)  # fmt: skip
COUNTS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SWAP_TYPES = ("color", "object", "spatial", "count")


def _pattern(words: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(set(words), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(word) for word in ordered) + r")\b", re.IGNORECASE)


_SPATIAL_MAP = {}
for _a, _b in SPATIAL:
    _SPATIAL_MAP.setdefault(_a, _b)
    _SPATIAL_MAP.setdefault(_b, _a)
_NOUN_FORMS = {singular: (singular, 0) for singular, _ in OBJECTS} | {plural: (plural, 1) for _, plural in OBJECTS}
_PATTERNS = {
    "color": _pattern(COLORS),
    "object": _pattern(_NOUN_FORMS),
    "spatial": _pattern(_SPATIAL_MAP),
    "count": _pattern(COUNTS),
}


def _match_case(template: str, word: str) -> str:
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


def _alternatives(swap: str, word: str, caption_words: set[str]) -> list[str]:
    lower = word.lower()
    if swap == "color":
        same = {"gray", "grey"} if lower in ("gray", "grey") else {lower}
        return [c for c in COLORS if c not in same and c not in caption_words]
    if swap == "object":
        number = _NOUN_FORMS[lower][1]
        present = {pair[0] for pair in OBJECTS if pair[0] in caption_words or pair[1] in caption_words}
        return [pair[number] for pair in OBJECTS if pair[0] not in present and pair[number] != lower]
    if swap == "spatial":
        return [_SPATIAL_MAP[lower]]
    return [c for c in COUNTS if c != lower]


def swap_caption(caption: str, swap: str, rng: np.random.Generator) -> str | None:
    """`caption` with one `swap` word (`color`, `object`, `spatial`, `count`) replaced, or `None` if it has none.

    The word to change and its replacement are drawn with `rng`; colour and object replacements never use a word
    already in the caption, so the negative cannot accidentally describe the image too.
    """
    if swap not in _PATTERNS:
        raise ValueError(f"Unknown swap type {swap!r}; use one of {SWAP_TYPES}.")
    matches = list(_PATTERNS[swap].finditer(caption))
    if not matches:
        return None
    match = matches[int(rng.integers(len(matches)))]
    caption_words = set(re.findall(r"[a-z]+", caption.lower()))
    choices = _alternatives(swap, match.group(0), caption_words)
    if not choices:
        return None
    new = _match_case(match.group(0), choices[int(rng.integers(len(choices)))])
    return caption[: match.start()] + new + caption[match.end() :]


def make_lexicon_triples(
    rows: Iterable[Mapping[str, Any]], *, seed: int = 0, swaps: Sequence[str] = SWAP_TYPES
) -> tuple[list[dict[str, Any]], int]:
    """Hard-negative triples from free-text captions with the rule-based lexicon (deterministic for a seed).

    For each image, the first caption with at least one swappable word is the positive; every applicable swap type
    gives one negative. The draw depends only on `seed` and the image id, not on the order of the rows.

    Args:
        rows: dataset rows with `image_id`, `image` and `captions` (docs/internals.md §1).
        seed: random seed of the word and replacement choices.
        swaps: swap types to try.

    Returns:
        `(triples, skipped)`: the triples and the number of images none of whose captions had anything to swap.
    """
    triples, skipped = [], 0
    for row in rows:
        image_id = str(row["image_id"])
        rng = np.random.default_rng([seed, zlib.crc32(image_id.encode("utf-8"))])
        triple = None
        for caption in row.get("captions") or []:
            negatives = []
            for swap in swaps:
                negative = swap_caption(caption, swap, rng)
                if negative is not None and negative != caption:
                    negatives.append({"caption": negative, "swap": swap})
            if negatives:
                triple = {"image_id": image_id, "image": row["image"], "positive": caption, "negatives": negatives}
                break
        if triple is None:
            skipped += 1
        else:
            triples.append(triple)
    return triples, skipped


def _check_triple(index: int, triple: Any, where: str) -> None:
    if not isinstance(triple, Mapping):
        raise ValueError(f"{where}: entry {index} is a {type(triple).__name__}, expected an object.")
    missing = [key for key in ("image_id", "image", "positive", "negatives") if key not in triple]
    if missing:
        raise ValueError(f"{where}: entry {index} lacks {missing}; see docs/internals.md §4 for the triple format.")
    if not isinstance(triple["negatives"], list) or not all(
        isinstance(n, Mapping) and isinstance(n.get("caption"), str) and isinstance(n.get("swap"), str)
        for n in triple["negatives"]
    ):
        raise ValueError(f"{where}: entry {index} 'negatives' must be a list of {{'caption': str, 'swap': str}}.")


def load_triples(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Read a JSON list of hard-negative triples; relative image paths resolve against `image_root` (default: the
    file's folder).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: not a JSON list of valid triples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Hard-negative triples file {str(path)!r} not found.")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of triples; got a {type(data).__name__}.")
    root = Path(image_root) if image_root is not None else path.parent
    triples = []
    for index, triple in enumerate(data):
        _check_triple(index, triple, str(path))
        image = Path(triple["image"])
        triples.append(
            {
                **triple,
                "image_id": str(triple["image_id"]),
                "image": str(image if image.is_absolute() else root / image),
            }
        )
    return triples


def write_triples(triples: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write triples as a JSON list, atomically (temporary file + `os.replace`)."""
    path = Path(path)
    for index, triple in enumerate(triples):
        _check_triple(index, triple, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(list(triples), indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def hard_negative_metrics(
    image_embeds: torch.Tensor,
    positive_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    negative_owner: Sequence[int],
    negative_swaps: Sequence[str],
) -> dict[str, float]:
    """Accuracy of ranking each true caption above its swapped versions.

    Args:
        image_embeds: `[n_triples, D]` image embeddings.
        positive_embeds: `[n_triples, D]` true-caption embeddings.
        negative_embeds: `[n_negatives, D]` swapped-caption embeddings.
        negative_owner: `[n_negatives]` triple index of each negative.
        negative_swaps: `[n_negatives]` swap type of each negative.

    Returns:
        `hn_accuracy`, `hn_pairwise_accuracy`, `hn_<swap>_accuracy` (%) and `hn_n_triples`, `hn_<swap>_count`.
    """
    n = image_embeds.shape[0]
    if n == 0:
        raise ValueError("No hard-negative triples to score (empty set or every image failed to load).")
    owner = torch.as_tensor(np.asarray(negative_owner), dtype=torch.long)
    image = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    positive = (image * torch.nn.functional.normalize(positive_embeds.float(), dim=-1)).sum(-1)
    negative = (image[owner] * torch.nn.functional.normalize(negative_embeds.float(), dim=-1)).sum(-1)
    if not (bool(torch.isfinite(positive).all()) and bool(torch.isfinite(negative).all())):
        raise ValueError("Hard-negative scores contain NaN/inf; check the model's embeddings.")
    won = (positive[owner] > negative).numpy()  # a tie is a loss
    lost_any = np.zeros(n, dtype=bool)
    np.logical_or.at(lost_any, owner.numpy(), ~won)
    out = {
        "hn_accuracy": float(100.0 * np.mean(~lost_any)),
        "hn_pairwise_accuracy": float(100.0 * np.mean(won)) if len(won) else float("nan"),
        "hn_n_triples": float(n),
    }
    swaps = np.asarray(list(negative_swaps))
    for swap in sorted(Counter(negative_swaps)):
        mask = swaps == swap
        out[f"hn_{swap}_accuracy"] = float(100.0 * np.mean(won[mask]))
        out[f"hn_{swap}_count"] = float(mask.sum())
    return out


def evaluate_hard_negatives(encoder: Any, triples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Encode the triples with a `training.zero_shot.CLIPEncoder` and score them (`hard_negative_metrics`).

    Images that fail to load are skipped and counted in `hn_skipped_images`.
    """
    image_embeds, ok = encoder.encode_images([t["image"] for t in triples], desc="hard-negative images")
    kept = [t for t, good in zip(triples, ok) if good]
    positives = encoder.encode_texts([t["positive"] for t in kept], desc="positives")
    negatives = [(i, n["caption"], n["swap"]) for i, t in enumerate(kept) for n in t["negatives"]]
    negative_embeds = encoder.encode_texts([caption for _, caption, _ in negatives], desc="negatives")
    out = hard_negative_metrics(
        image_embeds[torch.from_numpy(ok)],
        positives,
        negative_embeds,
        [i for i, _, _ in negatives],
        [swap for _, _, swap in negatives],
    )
    out["hn_skipped_images"] = float((~ok).sum())
    return out
