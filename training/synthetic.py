"""Embedded default data: procedurally generated scenes of small objects, with captions, boxes and zero-shot labels.

Why it looks like this (see `docs/demo_design.md` and `../shared/design/DEMO_NOTES.md`):

- Scenes are rendered at 128 px with objects of 11–18 px; the demo's CLIP sees the whole image at 64 px, where an
  object's *pattern* (striped/dotted/solid) and its exact shape are degraded, while a region crop of the same object
  (resized to 64 px) shows them clearly. Region detail can therefore add something the global view lacks.
- Four splits with different random streams: `pretrain` (scenes with coarse captions plus object close-ups with
  attribute captions, used to bootstrap the base CLIP so it knows the attributes at crop scale), `train`/`val`
  (the distillation set, with *coarse* captions: colours or shapes, never patterns, never the full colour–shape–pattern
  binding of every object, so the regions hold information the text lacks) and `test` (full-detail queries).
- Hard negatives for the test split change exactly one thing of the positive caption (one object's shape, colour or
  pattern; the spatial word; the count), chosen so the changed caption is false for the scene.

Everything is a deterministic function of the seed: each item draws from its own generator seeded by
`(seed, split, index)`, so a split's content does not depend on the size of the others. Files are written atomically
into a folder named by the settings' fingerprint, with a manifest written last; a finished folder is reused as is.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 80, 225),
    "yellow": (235, 215, 35),
    "purple": (150, 55, 205),
    "orange": (245, 140, 25),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SPLIT_CODES = {"pretrain": 11, "pretrain_closeup": 12, "train": 21, "val": 22, "test": 31, "zero_shot": 41}
ATTRIBUTES = ("shape", "color", "pattern")
COARSE_STYLES = ("colors_relation", "shapes_relation", "colors_list", "shapes_list", "count_one")
HARD_NEGATIVE_SWAPS = ("shape", "color", "pattern", "spatial", "count")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and rendering settings of the synthetic data set (all fields enter the cache fingerprint).

    Args:
        seed: master seed; the same seed gives byte-identical images and identical captions and boxes.
        image_size: render size in pixels (square).
        num_pretrain_scenes: scenes (coarse captions) in the base's pre-training split.
        num_pretrain_closeups: object close-ups (attribute captions) in the pre-training split.
        num_train, num_val: scenes of the distillation split (coarse captions by default).
        num_test: scenes with full-detail captions (retrieval queries and hard negatives).
        num_zero_shot: object close-ups of the zero-shot sets (one set per attribute: shape, color, pattern).
        min_objects, max_objects: objects per scene.
        min_object_size, max_object_size: object side in pixels at `image_size`.
        captions_per_image: captions per distillation/pre-training scene.
        distill_captions: `"coarse"` (default) or `"full"` captions for the train/val split.
        closeup_margin: largest extra margin (fraction of the object side, each way) around a close-up crop.
        noise_std: standard deviation of the background's pixel noise.
        clutter: faint random lines per background.
    """

    seed: int = 0
    image_size: int = 96
    num_pretrain_scenes: int = 1500
    num_pretrain_closeups: int = 3000
    num_train: int = 1500
    num_val: int = 150
    num_test: int = 300
    num_zero_shot: int = 300
    min_objects: int = 2
    max_objects: int = 4
    min_object_size: int = 9
    max_object_size: int = 14
    captions_per_image: int = 3
    distill_captions: str = "coarse"
    closeup_margin: float = 0.25
    noise_std: float = 18.0
    clutter: int = 3

    def __post_init__(self) -> None:
        if self.distill_captions not in ("coarse", "full"):
            raise ValueError(f"distill_captions must be 'coarse' or 'full', got {self.distill_captions!r}.")
        if not 1 <= self.min_objects <= self.max_objects <= max(COUNT_WORDS):
            raise ValueError(
                f"Need 1 <= min_objects <= max_objects <= {max(COUNT_WORDS)}, got {self.min_objects}, "
                f"{self.max_objects}."
            )
        if self.min_objects < 2:
            raise ValueError("min_objects must be >= 2: every scene caption names a relation between two objects.")
        if not 4 <= self.min_object_size <= self.max_object_size <= self.image_size // 3:
            raise ValueError(
                f"Need 4 <= min_object_size <= max_object_size <= image_size/3, got {self.min_object_size}, "
                f"{self.max_object_size} at image_size {self.image_size}."
            )
        for name in (
            "num_pretrain_scenes",
            "num_pretrain_closeups",
            "num_train",
            "num_val",
            "num_test",
            "num_zero_shot",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.captions_per_image < 1:
            raise ValueError(f"captions_per_image must be >= 1, got {self.captions_per_image}.")

    def fingerprint(self) -> str:
        """Short hash of every setting and the generator version (names the cache folder)."""
        payload = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# scenes


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one item: a pure function of `(seed, split, index)`."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def describe(obj: dict, *, with_pattern: bool = True) -> str:
    """`"red striped circle"` (or `"red circle"` without the pattern)."""
    words = [obj["color"], obj["pattern"], obj["shape"]] if with_pattern else [obj["color"], obj["shape"]]
    return " ".join(words)


def relation(a: dict, b: dict) -> str:
    """Spatial word for `a` relative to `b` along the axis where their centres differ most."""
    (ax, ay), (bx, by) = _center(a["box"]), _center(b["box"])
    if abs(ax - bx) >= abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


def _center(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def sample_scene(rng: np.random.Generator, config: SyntheticConfig) -> dict:
    """Draw a scene: background tint and 2–4 non-overlapping objects with shape, colour, pattern and a box.

    Objects are distinct as (shape, colour, pattern) triples so that every full description names one object.
    """
    size = config.image_size
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects: list[dict] = []
    used: set[tuple[str, str, str]] = set()
    attempts = 0
    while len(objects) < count:
        attempts += 1
        if attempts > 500:
            break  # very crowded settings: keep what fits (count is recomputed below)
        side = int(rng.integers(config.min_object_size, config.max_object_size + 1))
        x0 = int(rng.integers(2, size - side - 2))
        y0 = int(rng.integers(2, size - side - 2))
        box = [float(x0), float(y0), float(x0 + side), float(y0 + side)]
        gap = 3
        if any(
            box[0] < o["box"][2] + gap
            and o["box"][0] < box[2] + gap
            and box[1] < o["box"][3] + gap
            and o["box"][1] < box[3] + gap
            for o in objects
        ):
            continue
        attrs = (
            SHAPES[int(rng.integers(len(SHAPES)))],
            list(COLORS)[int(rng.integers(len(COLORS)))],
            PATTERNS[int(rng.integers(len(PATTERNS)))],
        )
        if attrs in used:
            continue
        used.add(attrs)
        objects.append({"shape": attrs[0], "color": attrs[1], "pattern": attrs[2], "box": box})
    if len(objects) < 2:
        raise ValueError(
            f"Could not place 2 objects of {config.min_object_size}-{config.max_object_size} px in a "
            f"{size} px image; lower the object size or raise image_size."
        )
    tint = rng.integers(70, 171, size=3)
    tint = (tint.mean() + 0.35 * (tint - tint.mean())).round().astype(int)  # low saturation: objects stand out
    return {
        "image_size": size,
        "background": [int(v) for v in tint],
        "background_seed": int(rng.integers(2**31 - 1)),
        "objects": objects,
    }


def render_scene(scene: dict, config: SyntheticConfig) -> Image.Image:
    """Draw `scene` (a pure function of the scene: noise comes from its `background_seed`)."""
    size = scene["image_size"]
    rng = np.random.default_rng(scene["background_seed"])
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = np.asarray(scene["background"], dtype=np.float32)
    canvas += rng.standard_normal(size=(size, size, 1), dtype=np.float32) * np.float32(config.noise_std)
    canvas += rng.standard_normal(size=(size, size, 3), dtype=np.float32) * np.float32(config.noise_std / 3)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(config.clutter):
        points = rng.integers(0, size, size=4).tolist()
        shade = int(np.mean(scene["background"]) + rng.integers(-40, 41))
        draw.line(points, fill=(shade, shade, shade), width=1)
    pixels = np.asarray(image).copy()
    for obj in scene["objects"]:
        _paint_object(pixels, obj)
    return Image.fromarray(pixels)


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean `[side, side]` mask of `shape` filling its box."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    last = side - 1
    if shape == "circle":
        draw.ellipse([0, 0, last, last], fill=255)
    elif shape == "square":
        inset = round(side * 0.06)
        draw.rectangle([inset, inset, last - inset, last - inset], fill=255)
    elif shape == "triangle":
        draw.polygon([(last / 2, 0), (last, last), (0, last)], fill=255)
    elif shape == "diamond":
        draw.polygon([(last / 2, 0), (last, last / 2), (last / 2, last), (0, last / 2)], fill=255)
    elif shape == "cross":
        arm = max(2, round(side * 0.34))
        lo = (side - arm) // 2
        draw.rectangle([lo, 0, lo + arm - 1, last], fill=255)
        draw.rectangle([0, lo, last, lo + arm - 1], fill=255)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")
    return np.asarray(mask) > 127


def pattern_mask(pattern: str, side: int) -> np.ndarray:
    """Boolean `[side, side]` mask of the pixels painted in the object's colour (the rest is painted white)."""
    rows, cols = np.mgrid[0:side, 0:side]
    if pattern == "solid":
        return np.ones((side, side), dtype=bool)
    if pattern == "striped":
        return (rows // 2) % 2 == 0  # 2 px bands: clear in a crop, blurred in the 2x-downscaled global view
    if pattern == "dotted":
        return ~(((rows % 4) < 2) & ((cols % 4) < 2))
    raise ValueError(f"Unknown pattern {pattern!r}; expected one of {PATTERNS}.")


def _paint_object(pixels: np.ndarray, obj: dict) -> None:
    x0, y0, x1, y1 = (int(v) for v in obj["box"])
    side = x1 - x0
    inside = shape_mask(obj["shape"], side)
    colored = inside & pattern_mask(obj["pattern"], side)
    region = pixels[y0:y1, x0:x1]
    region[inside] = (245, 245, 245)
    region[colored] = COLORS[obj["color"]]


# ----------------------------------------------------------------------------------------------------
# captions


def _article(phrase: str) -> str:
    return f"a {phrase}"


def full_captions(scene: dict, rng: np.random.Generator) -> tuple[list[str], dict]:
    """Two full-detail captions: a counted relation caption and a left-to-right list.

    Returns:
        `(captions, relation_info)`: `relation_info` holds the indices of the two related objects and the spatial word
        (the hard negatives edit that caption).
    """
    objects = scene["objects"]
    first, second = (int(i) for i in rng.choice(len(objects), size=2, replace=False))
    word = relation(objects[first], objects[second])
    count = COUNT_WORDS[len(objects)]
    relation_caption = (
        f"{count} objects: {_article(describe(objects[first]))} {word} {_article(describe(objects[second]))}"
    )
    ordered = sorted(objects, key=lambda o: _center(o["box"])[0])
    listing = [_article(describe(o)) for o in ordered]
    list_caption = "from left to right: " + ", ".join(listing[:-1]) + " and " + listing[-1]
    return [relation_caption, list_caption], {"first": first, "second": second, "relation": word}


def coarse_caption(scene: dict, rng: np.random.Generator, style: str) -> str:
    """A caption that leaves out detail: colours only, shapes only, or one object named; never a pattern."""
    objects = scene["objects"]
    count = COUNT_WORDS[len(objects)]
    if style in ("colors_relation", "shapes_relation"):
        first, second = (int(i) for i in rng.choice(len(objects), size=2, replace=False))
        a, b = objects[first], objects[second]
        word = relation(a, b)
        if style == "colors_relation":
            return f"a {a['color']} object {word} a {b['color']} object"
        return f"a {a['shape']} {word} a {b['shape']}"
    if style in ("colors_list", "shapes_list"):
        ordered = sorted(objects, key=lambda o: _center(o["box"])[0])
        key = "color" if style == "colors_list" else "shape"
        names = [f"a {o['color']} object" if key == "color" else f"a {o['shape']}" for o in ordered]
        return f"{count} objects: " + ", ".join(names[:-1]) + " and " + names[-1]
    if style == "count_one":
        obj = objects[int(rng.integers(len(objects)))]
        return f"{count} objects, one of them {_article(describe(obj, with_pattern=False))}"
    raise ValueError(f"Unknown caption style {style!r}; expected one of {COARSE_STYLES}.")


def coarse_captions(scene: dict, rng: np.random.Generator, count: int) -> list[str]:
    """`count` coarse captions in distinct styles (cycled when `count` exceeds the number of styles)."""
    order = [COARSE_STYLES[int(i)] for i in rng.permutation(len(COARSE_STYLES))]
    return [coarse_caption(scene, rng, order[i % len(order)]) for i in range(count)]


def closeup_captions(obj: dict, rng: np.random.Generator) -> list[str]:
    """The full description of a close-up, its shape alone, and one partial description in a zero-shot prompt form.

    The shape-only caption is always there: colour and pattern are learnt quickly from any caption, while shape, the
    hardest cue, is otherwise left at chance by a tiny CLIP (DEMO_NOTES.md).
    """
    partial = [
        f"a {obj['color']} object",
        f"a {obj['pattern']} object",
        f"a {obj['color']} {obj['shape']}",
        f"a {obj['pattern']} {obj['shape']}",
        f"a {obj['color']} {obj['pattern']} object",
    ]
    return [_article(describe(obj)), f"a {obj['shape']}", partial[int(rng.integers(len(partial)))]]


ZERO_SHOT_CLASSES: dict[str, list[str]] = {
    "shape": list(SHAPES),
    "color": [f"{c} object" for c in COLORS],
    "pattern": [f"{p} object" for p in PATTERNS],
}
ZERO_SHOT_TEMPLATE = "a {}"


# ----------------------------------------------------------------------------------------------------
# hard negatives


def hard_negatives(scene: dict, relation_info: dict, rng: np.random.Generator) -> list[dict]:
    """One negative per swap type for the relation caption of `full_captions`; each one false for the scene.

    Returns:
        `[{"caption": str, "swap": "shape" | "color" | "pattern" | "spatial" | "count"}, ...]`.
    """
    objects = scene["objects"]
    first, second, word = relation_info["first"], relation_info["second"], relation_info["relation"]
    present = {(o["shape"], o["color"], o["pattern"]) for o in objects}
    count = len(objects)

    def caption(a: dict, b: dict, spatial: str, n: int) -> str:
        return f"{COUNT_WORDS[n]} objects: {_article(describe(a))} {spatial} {_article(describe(b))}"

    negatives = []
    values = {"shape": SHAPES, "color": tuple(COLORS), "pattern": PATTERNS}
    for attribute in ATTRIBUTES:
        target = first if rng.random() < 0.5 else second
        obj = objects[target]
        # The changed object must match no object of the scene, or the negative could be true.
        choices = [
            v
            for v in values[attribute]
            if v != obj[attribute]
            and (
                _with(obj, attribute, v)["shape"],
                _with(obj, attribute, v)["color"],
                _with(obj, attribute, v)["pattern"],
            )
            not in present
        ]
        new = choices[int(rng.integers(len(choices)))]
        a = _with(objects[first], attribute, new) if target == first else objects[first]
        b = _with(objects[second], attribute, new) if target == second else objects[second]
        negatives.append({"caption": caption(a, b, word, count), "swap": attribute})
    negatives.append({"caption": caption(objects[first], objects[second], OPPOSITE[word], count), "swap": "spatial"})
    other_counts = [n for n in (count - 1, count + 1) if n in COUNT_WORDS and n >= 2]
    new_count = other_counts[int(rng.integers(len(other_counts)))]
    negatives.append({"caption": caption(objects[first], objects[second], word, new_count), "swap": "count"})
    return negatives


def _with(obj: dict, attribute: str, value: str) -> dict:
    return {**obj, attribute: value}


# ----------------------------------------------------------------------------------------------------
# files


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """Write `image` as PNG so that `path` either does not exist or holds a complete file (temp file + rename)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    write_bytes_atomic(buffer.getvalue(), path)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """Write `data` to `path` through a temp file in the same folder and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the cache is ordinary readable data
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def closeup_crop(image: Image.Image, box: Sequence[float], rng: np.random.Generator, margin: float) -> Image.Image:
    """Square crop around `box` with a random margin in `[0, margin]` of its side (clipped to the image)."""
    x0, y0, x1, y1 = box
    side = x1 - x0
    extra = float(rng.uniform(0.0, margin)) * side
    shift_x, shift_y = rng.uniform(-0.5, 0.5, size=2) * extra
    left = max(0, round(x0 - extra + shift_x))
    top = max(0, round(y0 - extra + shift_y))
    right = min(image.width, round(x1 + extra + shift_x))
    bottom = min(image.height, round(y1 + extra + shift_y))
    return image.crop((left, top, right, bottom))


@dataclass
class SyntheticData:
    """What `build_synthetic` produced.

    Args:
        root: the cache folder of these settings.
        splits: `{"pretrain", "train", "val", "test"}` → `datasets.Dataset` in the schema of docs/internals.md §1.
        hard_negatives_path: JSON list of hard-negative triples of the test split (docs/internals.md §4).
        zero_shot_dirs: `{"shape", "color", "pattern"}` → folder with `classes.csv`, `labels.csv` and `images/`
            (the layout of the shared Caltech subset).
        zero_shot_template: prompt for the zero-shot class names (`"a {}"`).
    """

    root: Path
    splits: dict
    hard_negatives_path: Path
    zero_shot_dirs: dict[str, Path]
    zero_shot_template: str = ZERO_SHOT_TEMPLATE

    def zero_shot(self, attribute: str) -> tuple[list[str], list[int], list[str]]:
        """`(image_paths, labels, class_names)` of the zero-shot set of `attribute`."""
        return read_zero_shot_folder(self.zero_shot_dirs[attribute])


def read_zero_shot_folder(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """Read a `classes.csv` + `labels.csv` folder → `(absolute image paths, labels, class names)`."""
    folder = Path(folder)
    with open(folder / "classes.csv", newline="", encoding="utf-8") as handle:
        classes = sorted(csv.DictReader(handle), key=lambda row: int(row["label"]))
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [str(folder / r["image"]) for r in rows], [int(r["label"]) for r in rows], [c["name"] for c in classes]


def _scene_rows(config: SyntheticConfig, split: str, count: int, images_dir: Path, records: list) -> list[dict]:
    rows = []
    for index in range(count):
        rng = item_rng(config.seed, split, index)
        scene = sample_scene(rng, config)
        image = render_scene(scene, config)
        image_id = f"synthetic:{split}:{index:06d}"
        path = images_dir / split / f"{index:06d}.png"
        save_png_atomic(image, path)
        full, relation_info = full_captions(scene, rng)
        if split == "test" or (split in ("train", "val") and config.distill_captions == "full"):
            captions = full
        else:
            captions = coarse_captions(scene, rng, config.captions_per_image)
        if split == "test":
            records.append(
                {
                    "image_id": image_id,
                    "image": str(path),
                    "positive": full[0],
                    "negatives": hard_negatives(scene, relation_info, rng),
                }
            )
        rows.append(
            {
                "image_id": image_id,
                "image": str(path),
                "captions": captions,
                "split": split,
                "boxes": [list(o["box"]) for o in scene["objects"]],
                "box_labels": [describe(o) for o in scene["objects"]],
                "source": "synthetic",
                "scene": json.dumps({**scene, "full_captions": full}, sort_keys=True),
            }
        )
    return rows


def _closeups(config: SyntheticConfig, split: str, count: int) -> list[tuple[Image.Image, dict, np.random.Generator]]:
    """`count` close-ups (crop, object, rng) cut from scenes of the split's own stream."""
    out: list = []
    scene_index = 0
    while len(out) < count:
        rng = item_rng(config.seed, split, scene_index)
        scene = sample_scene(rng, config)
        image = render_scene(scene, config)
        for obj in scene["objects"]:
            if len(out) == count:
                break
            out.append((closeup_crop(image, obj["box"], rng, config.closeup_margin), obj, rng))
        scene_index += 1
    return out


def _closeup_rows(config: SyntheticConfig, images_dir: Path) -> list[dict]:
    rows = []
    for index, (crop, obj, rng) in enumerate(_closeups(config, "pretrain_closeup", config.num_pretrain_closeups)):
        path = images_dir / "pretrain_closeup" / f"{index:06d}.png"
        save_png_atomic(crop, path)
        rows.append(
            {
                "image_id": f"synthetic:pretrain_closeup:{index:06d}",
                "image": str(path),
                "captions": closeup_captions(obj, rng),
                "split": "pretrain",
                "boxes": [],
                "box_labels": [],
                "source": "synthetic",
                "scene": json.dumps({"closeup": {k: obj[k] for k in ATTRIBUTES}}, sort_keys=True),
            }
        )
    return rows


def _write_zero_shot(config: SyntheticConfig, root: Path) -> dict[str, Path]:
    closeups = _closeups(config, "zero_shot", config.num_zero_shot)
    folders = {}
    for attribute, names in ZERO_SHOT_CLASSES.items():
        folder = root / "zero_shot" / attribute
        values = list(SHAPES) if attribute == "shape" else list(COLORS) if attribute == "color" else list(PATTERNS)
        label_rows = []
        for index, (crop, obj, _) in enumerate(closeups):
            label = values.index(obj[attribute])
            relative = f"images/{values[label]}/{index:06d}.png"
            save_png_atomic(crop, folder / relative)
            label_rows.append([relative, label, values[label], crop.width, crop.height, "RGB"])
        _write_csv(
            folder / "classes.csv",
            ["label", "folder", "name"],
            [[i, v, n] for i, (v, n) in enumerate(zip(values, names))],
        )
        _write_csv(folder / "labels.csv", ["image", "label", "folder", "width", "height", "mode"], label_rows)
        folders[attribute] = folder
    return folders


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_bytes_atomic(buffer.getvalue().encode("utf-8"), path)


def build_synthetic(output_dir: str | os.PathLike, config: SyntheticConfig | None = None) -> SyntheticData:
    """Generate (or reuse) the synthetic data set under `output_dir/<fingerprint>/`.

    Args:
        output_dir: cache folder (a run or cache folder, never beside shared read-only data).
        config: sizes and settings; defaults to `SyntheticConfig()`.

    Returns:
        A [`SyntheticData`] with one `datasets.Dataset` per split (`pretrain`, `train`, `val`, `test`), the
        hard-negative JSON path and the zero-shot folders.
    """
    from datasets import Dataset

    from .data import dataset_features

    config = config or SyntheticConfig()
    root = Path(output_dir).resolve() / f"synthetic-{config.fingerprint()}"
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        rows_by_split = {
            split: [{**r, "image": str(root / r["image"])} for r in _read_jsonl(root / name)]
            for split, name in manifest["splits"].items()
        }
    else:
        images_dir = root / "images"
        records: list[dict] = []
        rows_by_split = {
            "pretrain": _scene_rows(config, "pretrain", config.num_pretrain_scenes, images_dir, records)
            + _closeup_rows(config, images_dir),
            "train": _scene_rows(config, "train", config.num_train, images_dir, records),
            "val": _scene_rows(config, "val", config.num_val, images_dir, records),
            "test": _scene_rows(config, "test", config.num_test, images_dir, records),
        }
        write_bytes_atomic(json.dumps(records, indent=1).encode("utf-8"), root / "hard_negatives_test.json")
        _write_zero_shot(config, root)
        for split, rows in rows_by_split.items():
            # Paths relative to the folder on disk, so a moved cache stays valid; rows returned are absolute.
            relative = [{**r, "image": os.path.relpath(r["image"], root)} for r in rows]
            write_bytes_atomic(
                "".join(json.dumps(r) + "\n" for r in relative).encode("utf-8"), root / f"{split}.jsonl"
            )
        manifest = {
            "config": dataclasses.asdict(config),
            "version": GENERATOR_VERSION,
            "splits": {split: f"{split}.jsonl" for split in rows_by_split},
            "counts": {split: len(rows) for split, rows in rows_by_split.items()},
        }
        write_bytes_atomic(json.dumps(manifest, indent=1).encode("utf-8"), manifest_path)
        logger.info("Synthetic data written to %s: %s", root, manifest["counts"])
    splits = {split: Dataset.from_list(rows, features=dataset_features()) for split, rows in rows_by_split.items()}
    return SyntheticData(
        root=root,
        splits=splits,
        hard_negatives_path=root / "hard_negatives_test.json",
        zero_shot_dirs={attribute: root / "zero_shot" / attribute for attribute in ZERO_SHOT_CLASSES},
    )


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m training.synthetic --output-dir DIR [--seed N] [--num-train N] ...`: build the data set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    for field in dataclasses.fields(SyntheticConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)}
    data = build_synthetic(args.output_dir, SyntheticConfig(**values))
    print(json.dumps({"root": str(data.root), **{k: len(v) for k, v in data.splits.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
