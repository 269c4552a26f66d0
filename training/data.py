"""Image–caption datasets in one schema, multi-source mixing, robust image loading and zero-shot folders.

Every loader returns a `datasets.Dataset` with one row per image and the columns of `docs/internals.md` §1:
`image_id`, `image` (absolute path, decoded lazily by `load_image`), `captions`, `split`, `boxes` (xyxy pixels of the
upright, EXIF-transposed image), `box_labels`, `source`, `scene`. See `docs/data.md` for the formats and examples.

Degraded input never crashes a run: empty captions, missing/corrupt/truncated images, paths escaping the dataset root
and invalid boxes are skipped, logged and counted in a `DataStats` that the pipeline prints at the end.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import random
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from modeling_dclip.processing_dclip import sanitize_boxes, to_rgb

logger = logging.getLogger(__name__)

SOURCE_TYPES = ("coco", "karpathy", "csv", "imagefolder", "hub")
BOX_FRAMES = ("stored", "upright")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
EXIF_ORIENTATION_TAG = 0x0112
COLUMNS = ("image_id", "image", "captions", "split", "boxes", "box_labels", "source", "scene")


def dataset_features():
    """The `datasets.Features` of the common schema (docs/internals.md §1)."""
    from datasets import Features, Value

    try:
        from datasets import List
    except ImportError:  # datasets < 4
        from datasets import Sequence as List

    return Features(
        {
            "image_id": Value("string"),
            "image": Value("string"),
            "captions": List(Value("string")),
            "split": Value("string"),
            "boxes": List(List(Value("float32"))),
            "box_labels": List(Value("string")),
            "source": Value("string"),
            "scene": Value("string"),
        }
    )


# --------------------------------------------------------------------------------------------------------------------
# Run statistics
# --------------------------------------------------------------------------------------------------------------------


class DataStats:
    """Counter of skipped/degraded inputs, with example paths per kind, printed at the end of a run.

    Keys used by this module: `empty_caption`, `uncaptioned_image`, `missing_image`, `empty_file`, `corrupt_image`,
    `truncated_image`, `too_large_image`, `outside_root`, `invalid_box`, `rotated_boxes`, `excluded`, `capped`,
    `split_filtered`. Thread-safe; picklable (DataLoader workers get a copy: their counts stay in the worker).

    Args:
        max_examples: how many example paths to keep per key.
    """

    def __init__(self, max_examples: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.max_examples = max_examples
        self._lock = threading.Lock()

    def add(self, key: str, path: str | os.PathLike | None = None, n: int = 1) -> None:
        """Count `n` events of kind `key`, remembering `path` as an example."""
        if n <= 0:
            return
        with self._lock:
            self.counts[key] += n
            if path is not None and len(self.examples[key]) < self.max_examples:
                self.examples[key].append(str(path))

    def update(self, other: DataStats) -> None:
        """Add the counts and examples of `other` to this one."""
        for key, count in other.counts.items():
            self.counts[key] += count
            room = self.max_examples - len(self.examples[key])
            self.examples[key].extend(other.examples.get(key, [])[: max(room, 0)])

    def __getitem__(self, key: str) -> int:
        return self.counts[key]

    def __bool__(self) -> bool:
        return any(self.counts.values())

    def clear(self) -> None:
        with self._lock:
            self.counts.clear()
            self.examples.clear()

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items() if v}}

    def summary(self) -> str:
        """Multi-line human summary (`"no skipped inputs"` when clean)."""
        if not self:
            return "data: no skipped inputs"
        lines = ["data: skipped/degraded inputs"]
        for key, count in sorted(self.counts.items()):
            examples = self.examples.get(key) or []
            shown = f" (e.g. {', '.join(examples[:3])})" if examples else ""
            lines.append(f"  {key}: {count}{shown}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"DataStats({dict(self.counts)})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["examples"] = dict(self.examples)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.examples = defaultdict(list, self.examples)
        self._lock = threading.Lock()


DATA_STATS = DataStats()
"""Process-wide default sink for `load_image` and the loaders when no `stats` is passed."""


def _stats(stats: DataStats | None) -> DataStats:
    return DATA_STATS if stats is None else stats


# --------------------------------------------------------------------------------------------------------------------
# Captions, paths, images, boxes
# --------------------------------------------------------------------------------------------------------------------


def clean_caption(text: Any) -> str:
    """Collapse all whitespace (spaces, tabs, newlines) to single spaces and strip; non-strings give `""`."""
    if not isinstance(text, str):
        return ""
    return " ".join(text.split())


def clean_captions(captions: Iterable[Any], stats: DataStats | None = None, where: str | None = None) -> list[str]:
    """Clean every caption and drop the empty ones, counting them as `empty_caption`."""
    cleaned = [clean_caption(caption) for caption in captions]
    kept = [caption for caption in cleaned if caption]
    _stats(stats).add("empty_caption", where, len(cleaned) - len(kept))
    return kept


def resolve_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """Absolute, symlink-resolved `root / path`, or `None` when it lies outside `root`.

    `../` traversal, absolute paths elsewhere and symlinks pointing out of the root all resolve outside and give
    `None`. An absolute `path` inside the root is accepted.
    """
    root_resolved = _resolved_root(os.fspath(root))
    candidate = Path(path)
    full = candidate if candidate.is_absolute() else root_resolved / candidate
    resolved = full.resolve()
    if resolved == root_resolved or not resolved.is_relative_to(root_resolved):
        return None
    return resolved


@functools.lru_cache(maxsize=256)
def _resolved_root(root: str) -> Path:
    return Path(root).expanduser().resolve()


_truncation_warned = False


def load_image(
    path: str | os.PathLike, root: str | os.PathLike | None = None, stats: DataStats | None = None
) -> Image.Image | None:
    """Open an image file as an upright (EXIF-transposed) 8-bit RGB `PIL.Image`, or `None` if it cannot be used.

    Never raises for bad files: a missing, zero-byte, corrupt, truncated or oversized (decompression bomb) file, or a
    path resolving outside `root`, is logged and counted in `stats` (default: `DATA_STATS`) with its path.
    Truncated files are detected because the whole image is decoded here with `ImageFile.LOAD_TRUNCATED_IMAGES`
    left at its default (False); this function never changes that global.

    Args:
        path: image file; relative paths are taken relative to `root` when given.
        root: dataset root the file must stay inside (`None`: no containment check).
        stats: where to count skips.

    Returns:
        The RGB image (pixels loaded, file closed), or `None`.
    """
    global _truncation_warned
    stats = _stats(stats)
    file = Path(path)
    if root is not None:
        inside = resolve_inside(root, path)
        if inside is None:
            logger.warning("Skipping image %s: it resolves outside the dataset root %s.", path, root)
            stats.add("outside_root", path)
            return None
        file = inside
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _truncation_warned:
        _truncation_warned = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some other code): truncated images will load as "
            "partly grey instead of being skipped. Leave it False to let DCLIP detect them."
        )
    try:
        if file.stat().st_size == 0:
            logger.warning("Skipping image %s: the file is empty (0 bytes).", file)
            stats.add("empty_file", file)
            return None
        with Image.open(file) as image:
            image.load()
            return to_rgb(image)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        logger.warning("Skipping image %s: file not found.", file)
        stats.add("missing_image", file)
    except Image.DecompressionBombError as error:
        logger.warning("Skipping image %s: %s", file, error)
        stats.add("too_large_image", file)
    except UnidentifiedImageError:
        logger.warning("Skipping image %s: not a readable image (corrupt or unknown format).", file)
        stats.add("corrupt_image", file)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        kind = "truncated_image" if "truncated" in str(error).lower() else "corrupt_image"
        logger.warning("Skipping image %s: %s (%s).", file, kind.replace("_", " "), error)
        stats.add(kind, file)
    return None


def image_orientation(path: str | os.PathLike) -> tuple[int, int, int]:
    """`(stored_width, stored_height, exif_orientation)` of an image file, reading only its header.

    The orientation is 1 (upright) when the file has no EXIF orientation tag or an invalid one.
    """
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
        except (TypeError, ValueError):
            orientation = 1
    return width, height, orientation if 1 <= orientation <= 8 else 1


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """Size of the image after EXIF transposition (orientations 5–8 swap the axes)."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def boxes_to_upright(boxes: Sequence[Sequence[float]] | np.ndarray, width: int, height: int, orientation: int):
    """Map `xyxy` boxes drawn on the stored pixels to the upright image that `PIL.ImageOps.exif_transpose` returns.

    Args:
        boxes: `[N, 4]` boxes in stored-pixel coordinates (continuous: pixel `i` spans `[i, i + 1)`).
        width, height: stored (not transposed) image size.
        orientation: EXIF orientation 1–8.

    Returns:
        `[N, 4]` float64 array of `xyxy` boxes in upright-image coordinates.
    """
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = array.T
    w, h = float(width), float(height)
    # For each orientation: the upright x- and y-interval as functions of the stored ones (see exif_transpose).
    if orientation == 2:  # mirror horizontal
        out = (w - x1, y0, w - x0, y1)
    elif orientation == 3:  # rotate 180
        out = (w - x1, h - y1, w - x0, h - y0)
    elif orientation == 4:  # mirror vertical
        out = (x0, h - y1, x1, h - y0)
    elif orientation == 5:  # transpose
        out = (y0, x0, y1, x1)
    elif orientation == 6:  # rotate 90 clockwise for display
        out = (h - y1, x0, h - y0, x1)
    elif orientation == 7:  # transverse
        out = (h - y1, w - x1, h - y0, w - x0)
    elif orientation == 8:  # rotate 90 counter-clockwise for display
        out = (y0, w - x1, y1, w - x0)
    else:
        out = (x0, y0, x1, y1)
    return np.stack(out, axis=1) if len(array) else np.zeros((0, 4))


def _boxes_for_image(
    file: Path,
    boxes: list[list[float]],
    labels: list[str],
    frame: str,
    declared_size: tuple[int, int] | None,
    stats: DataStats,
) -> tuple[list[list[float]], list[str]]:
    """Bring annotation boxes into the upright frame, clip them, drop invalid ones (counted)."""
    if not boxes:
        return [], []
    try:
        width, height, orientation = image_orientation(file)
    except (OSError, SyntaxError, ValueError):
        if declared_size is None:
            stats.add("invalid_box", file, len(boxes))
            return [], []
        (width, height), orientation = declared_size, 1
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    up_width, up_height = upright_size(width, height, orientation)
    if orientation != 1 and frame == "stored":
        swapped = orientation in (5, 6, 7, 8) and (width, height) != (up_width, up_height)
        if swapped and declared_size is not None and tuple(declared_size) == (up_width, up_height):
            # The annotation declares the upright size: its boxes were drawn on the upright image already.
            logger.debug("Boxes of %s declare the upright size %s; not rotating them.", file, declared_size)
        else:
            array = boxes_to_upright(array, width, height, orientation)
            stats.add("rotated_boxes", file)
    # sanitize_boxes drops rows; track which labels survive by re-running its keep rule on indices.
    clean, dropped = sanitize_boxes(array, up_width, up_height)
    if dropped:
        stats.add("invalid_box", file, dropped)
        kept_labels = []
        for row, label in zip(array, labels):
            if len(sanitize_boxes(row[None], up_width, up_height)[0]):
                kept_labels.append(label)
        labels = kept_labels
    return [[float(v) for v in box] for box in clean], list(labels)


# --------------------------------------------------------------------------------------------------------------------
# Source specifications
# --------------------------------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(item) for item in value]


@dataclass
class SourceSpec:
    """One data source. Experiment YAML files hold a list of these as plain mappings (see `docs/data.md`).

    Args:
        type: `coco`, `karpathy`, `csv`, `imagefolder` or `hub`.
        path: the source file(s) or folder: COCO captions JSON(s); a Karpathy JSON; a CSV; an imagefolder root;
            a Hub dataset name (or a local folder holding a downloaded/saved copy). A single string is accepted.
        name: source name used in `source` and as `image_id` prefix when mixing (default: `type`).
        image_root: folder(s) image paths are relative to; every image must resolve inside it. For COCO, one per
            captions JSON (or one for all). Default: the CSV's folder, the imagefolder root; required for
            COCO/Karpathy.
        instances: COCO instances JSON(s) giving boxes (`bbox` xywh → xyxy) and `box_labels` (category names).
        splits: keep only these source splits (e.g. `["train", "restval"]`); `None` keeps all.
        split: split name given to rows of sources without one (COCO default: inferred from the JSON file name,
            else `train`); for `hub`, the split to load (default `train`).
        max_images: cap on the number of images taken from this source (`mix_sources` samples them with its seed;
            `load_source` alone keeps the first ones).
        image_column: CSV/Hub column holding the image.
        caption_column: CSV/Hub/imagefolder column holding the caption (a string or a list of strings).
        id_column: optional column/key holding the image id (default: the file name stem, or the relative path
            without suffix when stems collide).
        boxes_frame: `stored` (boxes were drawn on the stored pixels: rotated along with EXIF-oriented files, the
            COCO convention) or `upright` (boxes already refer to the EXIF-transposed image).
        check_files: drop rows whose image file does not exist at load time (counted as `missing_image`).
        keep_uncaptioned: keep images that end up with no caption (default: drop them, counted).
        image_cache: `hub` only: folder where images stored as bytes are written as files.
    """

    type: str
    path: list[str] = field(default_factory=list)
    name: str | None = None
    image_root: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    splits: list[str] | None = None
    split: str | None = None
    max_images: int | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    id_column: str | None = None
    boxes_frame: str = "stored"
    check_files: bool = True
    keep_uncaptioned: bool = False
    image_cache: str | None = None

    def __post_init__(self) -> None:
        if self.type not in SOURCE_TYPES:
            raise ValueError(f"Unknown source type {self.type!r}; use one of {', '.join(SOURCE_TYPES)}.")
        self.path = _as_list(self.path)
        self.image_root = _as_list(self.image_root)
        self.instances = _as_list(self.instances)
        if isinstance(self.splits, str):
            self.splits = [self.splits]
        if not self.path:
            raise ValueError(f"Source of type {self.type!r} needs `path` (file, folder or Hub dataset name).")
        if self.name is None:
            self.name = self.type
        if not self.name or ":" in self.name:
            raise ValueError(f"Source name {self.name!r} must be non-empty and contain no ':' (used as id prefix).")
        if self.max_images is not None and self.max_images < 0:
            raise ValueError(f"max_images must be >= 0 or None, got {self.max_images}.")
        if self.boxes_frame not in BOX_FRAMES:
            raise ValueError(f"boxes_frame must be one of {BOX_FRAMES}, got {self.boxes_frame!r}.")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SourceSpec:
        """Build from a mapping (a YAML entry), rejecting unknown keys with the list of valid ones."""
        if isinstance(spec, SourceSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise TypeError(f"A source spec must be a mapping or SourceSpec, got {type(spec).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"Unknown source spec key(s) {unknown}; valid keys: {sorted(known)}.")
        return cls(**dict(spec))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _single(values: list[str], what: str, spec: SourceSpec) -> str:
    if len(values) != 1:
        raise ValueError(f"Source {spec.name!r} ({spec.type}) takes exactly one {what}, got {values}.")
    return values[0]


def _require_file(path: str | os.PathLike, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what} not found: {file}. Check the `path` of the source spec.")
    return file


def _require_root(spec: SourceSpec, count: int = 1) -> list[Path]:
    if not spec.image_root:
        raise ValueError(
            f"Source {spec.name!r} ({spec.type}) needs `image_root`: the folder its image paths are relative to."
        )
    roots = [Path(root).expanduser() for root in spec.image_root]
    if len(roots) == 1:
        roots = roots * count
    if len(roots) != count:
        raise ValueError(
            f"Source {spec.name!r}: give one image_root for all {count} files or one per file, got {len(roots)}."
        )
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"image_root {root} of source {spec.name!r} is not a folder.")
    return roots


# --------------------------------------------------------------------------------------------------------------------
# Loaders: each yields raw rows {id, file (relative), root, captions, split, boxes, box_labels, size}
# --------------------------------------------------------------------------------------------------------------------


def _infer_split(file: Path) -> str:
    stem = file.stem.lower()
    for name in ("train", "val", "test"):
        if name in stem:
            return name
    return "train"


def _raw_coco(spec: SourceSpec, stats: DataStats) -> list[dict[str, Any]]:
    files = [_require_file(path, "COCO captions JSON") for path in spec.path]
    roots = _require_root(spec, len(files))
    rows: list[dict[str, Any]] = []
    for file, root in zip(files, roots):
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"{file} is not a COCO captions JSON (needs 'images' and 'annotations').")
        captions: dict[Any, list[str]] = defaultdict(list)
        for annotation in data["annotations"]:
            captions[annotation["image_id"]].append(annotation.get("caption"))
        split = spec.split or _infer_split(file)
        for image in data["images"]:
            rows.append(
                {
                    "id": str(image["id"]),
                    "file": image["file_name"],
                    "root": root,
                    "captions": captions.get(image["id"], []),
                    "split": split,
                    "size": (image["width"], image["height"]) if "width" in image and "height" in image else None,
                    "boxes": [],
                    "box_labels": [],
                }
            )
    if spec.instances:
        by_id = {row["id"]: row for row in rows}
        for path in spec.instances:
            data = json.loads(_require_file(path, "COCO instances JSON").read_text(encoding="utf-8"))
            names = {category["id"]: category["name"] for category in data.get("categories", [])}
            for annotation in data.get("annotations", []):
                row = by_id.get(str(annotation["image_id"]))
                if row is None:
                    continue
                x, y, w, h = (float(v) for v in annotation["bbox"])
                row["boxes"].append([x, y, x + w, y + h])
                row["box_labels"].append(names.get(annotation["category_id"], str(annotation["category_id"])))
    return rows


def _raw_karpathy(spec: SourceSpec, stats: DataStats) -> list[dict[str, Any]]:
    file = _require_file(_single(spec.path, "Karpathy JSON", spec), "Karpathy-split JSON")
    (root,) = _require_root(spec)
    data = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{file} is not a Karpathy-split JSON (needs an 'images' list).")
    rows = []
    for image in data["images"]:
        relative = f"{image['filepath']}/{image['filename']}" if image.get("filepath") else image["filename"]
        captions = [
            sentence["raw"] if "raw" in sentence else " ".join(sentence.get("tokens", []))
            for sentence in image.get("sentences", [])
        ]
        rows.append(
            {
                "id": _karpathy_id(image),
                "file": relative,
                "root": root,
                "captions": captions,
                "split": image.get("split", spec.split or "train"),
                "size": None,
                "boxes": [],
                "box_labels": [],
            }
        )
    return rows


def _karpathy_id(image: Mapping[str, Any]) -> str:
    # COCO entries carry the COCO id (the same in 2014 and 2017); Flickr30k entries only the file name.
    if "cocoid" in image:
        return str(image["cocoid"])
    if "id" in image:
        return str(image["id"])
    return Path(image["filename"]).stem


def _ids_from_files(files: list[str]) -> list[str]:
    """File stems as ids, or relative paths without suffix if two stems collide."""
    stems = [Path(file).stem for file in files]
    if len(set(stems)) == len(stems):
        return stems
    logger.info("Image file stems are not unique; using relative paths without suffix as image ids.")
    return [Path(file).with_suffix("").as_posix() for file in files]


def _raw_csv(spec: SourceSpec, stats: DataStats) -> list[dict[str, Any]]:
    file = _require_file(_single(spec.path, "CSV", spec), "Captions CSV")
    (root,) = _require_root(spec) if spec.image_root else (file.parent,)
    grouped: dict[str, dict[str, Any]] = {}
    with open(file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for column in (spec.image_column, spec.caption_column):
            if column not in header:
                raise ValueError(
                    f"{file} has no column {column!r} (columns: {header}); set image_column/caption_column."
                )
        for row in reader:
            image = (row.get(spec.image_column) or "").strip()
            if not image:
                stats.add("missing_image", f"{file}: row without image")
                continue
            entry = grouped.setdefault(
                image,
                {
                    "id": row.get(spec.id_column) if spec.id_column else None,
                    "file": image,
                    "root": root,
                    "captions": [],
                    "split": row.get("split") or spec.split or "train",
                    "size": None,
                    "boxes": [],
                    "box_labels": [],
                },
            )
            entry["captions"].append(row.get(spec.caption_column))
    rows = list(grouped.values())
    if not spec.id_column:
        for row, image_id in zip(rows, _ids_from_files([row["file"] for row in rows])):
            row["id"] = image_id
    return rows


def _raw_imagefolder(spec: SourceSpec, stats: DataStats) -> list[dict[str, Any]]:
    folder = Path(_single(spec.path, "folder", spec)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"imagefolder {folder} is not a folder. Check the `path` of the source spec.")
    (root,) = _require_root(spec) if spec.image_root else (folder,)
    manifests: list[tuple[Path, str | None]] = []
    if (folder / "metadata.jsonl").is_file():
        manifests.append((folder / "metadata.jsonl", None))
    else:
        manifests += [(sub / "metadata.jsonl", sub.name) for sub in sorted(folder.iterdir()) if sub.is_dir()]
        manifests = [(file, split) for file, split in manifests if file.is_file()]
    if not manifests:
        raise FileNotFoundError(
            f"No metadata.jsonl in {folder} or its split subfolders; write one line per image: "
            '{"file_name": "a.jpg", "caption": "..."} (or "captions": [...]).'
        )
    grouped: dict[str, dict[str, Any]] = {}
    for manifest, split in manifests:
        base = manifest.parent.relative_to(folder)
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{manifest}:{number} is not valid JSON: {error}") from error
            if not isinstance(record, dict) or not record.get("file_name"):
                raise ValueError(f"{manifest}:{number} needs a 'file_name' key.")
            relative = (base / record["file_name"]).as_posix() if str(base) != "." else record["file_name"]
            entry = grouped.setdefault(
                relative,
                {
                    "id": str(record[spec.id_column]) if spec.id_column and spec.id_column in record else None,
                    "file": relative,
                    "root": root,
                    "captions": [],
                    "split": record.get("split") or split or spec.split or "train",
                    "size": None,
                    "boxes": [],
                    "box_labels": [],
                },
            )
            for key in ("captions", spec.caption_column, "text"):
                if key in record:
                    value = record[key]
                    entry["captions"] += list(value) if isinstance(value, list) else [value]
                    break
            boxes = record.get("boxes") or []
            labels = record.get("box_labels") or [""] * len(boxes)
            if len(labels) != len(boxes):
                raise ValueError(f"{manifest}:{number}: 'boxes' and 'box_labels' differ in length.")
            entry["boxes"] += [list(map(float, box)) for box in boxes]
            entry["box_labels"] += [str(label) for label in labels]
    rows = list(grouped.values())
    missing_ids = [row for row in rows if row["id"] is None]
    for row, image_id in zip(missing_ids, _ids_from_files([row["file"] for row in missing_ids])):
        row["id"] = image_id
    return rows


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """Whether Hugging Face downloads are disabled (`HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE`)."""
    if _truthy_env("HF_HUB_OFFLINE") or _truthy_env("HF_DATASETS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return False


def _raw_hub(spec: SourceSpec, stats: DataStats) -> list[dict[str, Any]]:
    name = _single(spec.path, "dataset name", spec)
    local = Path(name).expanduser()
    if not local.exists() and hub_offline():
        # Fail before importing or contacting anything: an offline run must not hang on retries.
        raise FileNotFoundError(
            f"Hub dataset {name!r} cannot be loaded: Hugging Face is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE "
            "is set) and no local copy was given. Go online, or download it first (e.g. `hf download "
            f"{name} --repo-type dataset --local-dir DIR`, or `datasets.load_dataset(...).save_to_disk(DIR)`) "
            "and set the source `path` to DIR."
        )
    if not spec.image_cache:
        raise ValueError(f"Hub source {spec.name!r} needs `image_cache`: a folder where its images are written.")
    import datasets

    load_split = spec.split or "train"
    if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
        dataset = loaded[load_split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        dataset = datasets.load_dataset(str(local) if local.exists() else name, split=load_split)
    for column in (spec.image_column, spec.caption_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"Hub dataset {name!r} has no column {column!r} (columns: {dataset.column_names}); "
                "set image_column/caption_column."
            )
    if isinstance(dataset.features[spec.image_column], datasets.Image):
        dataset = dataset.cast_column(spec.image_column, datasets.Image(decode=False))
    cache = Path(spec.image_cache).expanduser() / re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)
    cache.mkdir(parents=True, exist_ok=True)
    id_column = spec.id_column or next((c for c in ("image_id", "img_id", "id") if c in dataset.column_names), None)
    rows = []
    for index, record in enumerate(dataset):
        image_id = str(record[id_column]) if id_column else str(index)
        value = record[spec.image_column]
        file = _hub_image_file(value, cache, image_id, stats)
        if file is None:
            continue
        captions = record[spec.caption_column]
        rows.append(
            {
                "id": image_id,
                "file": file.name,
                "root": cache,
                "captions": list(captions) if isinstance(captions, (list, tuple)) else [captions],
                "split": str(record["split"]) if "split" in record and record["split"] else load_split,
                "size": None,
                "boxes": [],
                "box_labels": [],
            }
        )
    return rows


def _hub_image_file(value: Any, cache: Path, image_id: str, stats: DataStats) -> Path | None:
    """Write a Hub image cell ({bytes, path} or a path) into `cache`; return the file (atomic write)."""
    data = None
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data is None and value.get("path") and Path(value["path"]).is_file():
            data = Path(value["path"]).read_bytes()
    elif isinstance(value, str) and Path(value).is_file():
        data = Path(value).read_bytes()
    if not data:
        stats.add("missing_image", f"hub:{image_id}")
        return None
    try:
        with Image.open(io.BytesIO(data)) as probe:
            extension = (probe.format or "img").lower().replace("jpeg", "jpg")
    except (UnidentifiedImageError, OSError):
        stats.add("corrupt_image", f"hub:{image_id}")
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", image_id)
    target = cache / f"{safe}.{extension}"
    if not target.is_file() or target.stat().st_size != len(data):
        temporary = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
        temporary.write_bytes(data)
        os.replace(temporary, target)
    return target


_RAW_LOADERS = {
    "coco": _raw_coco,
    "karpathy": _raw_karpathy,
    "csv": _raw_csv,
    "imagefolder": _raw_imagefolder,
    "hub": _raw_hub,
}


# --------------------------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------------------------


def _finish_rows(raw: list[dict[str, Any]], spec: SourceSpec, stats: DataStats) -> list[dict[str, Any]]:
    """Split filter, path containment, existence, caption cleaning, box frame → schema rows."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    keep_splits = set(spec.splits) if spec.splits is not None else None
    for entry in raw:
        if keep_splits is not None and entry["split"] not in keep_splits:
            stats.add("split_filtered", None)
            continue
        file = resolve_inside(entry["root"], entry["file"])
        if file is None:
            logger.warning(
                "Rejected image path %r of source %r: it resolves outside the dataset root %s.",
                entry["file"],
                spec.name,
                entry["root"],
            )
            stats.add("outside_root", entry["file"])
            continue
        if spec.check_files and not file.is_file():
            logger.warning("Skipping image %s of source %r: file not found.", file, spec.name)
            stats.add("missing_image", file)
            continue
        captions = clean_captions(entry["captions"], stats, where=str(file))
        if not captions and not spec.keep_uncaptioned:
            stats.add("uncaptioned_image", file)
            continue
        image_id = str(entry["id"])
        if image_id in seen:
            previous = seen[image_id]
            if previous["image"] != str(file):
                raise ValueError(
                    f"Source {spec.name!r}: image id {image_id!r} names two files ({previous['image']} and {file}); "
                    "ids must be unique (set id_column, or split the source)."
                )
            previous["captions"] += captions
            continue
        boxes, labels = [], []
        if entry["boxes"]:
            boxes, labels = _boxes_for_image(
                file, entry["boxes"], entry["box_labels"], spec.boxes_frame, entry.get("size"), stats
            )
        row = {
            "image_id": image_id,
            "image": str(file),
            "captions": captions,
            "split": str(entry["split"]),
            "boxes": boxes,
            "box_labels": labels,
            "source": spec.name,
            "scene": "",
        }
        seen[image_id] = row
        rows.append(row)
    return rows


def _rows_to_dataset(rows: list[dict[str, Any]]):
    from datasets import Dataset

    columns = {name: [row[name] for row in rows] for name in COLUMNS}
    return Dataset.from_dict(columns, features=dataset_features())


def _cap(rows: list[dict[str, Any]], limit: int | None, seed: int | None, spec: SourceSpec, stats: DataStats):
    if limit is None or len(rows) <= limit:
        return rows
    stats.add("capped", spec.name, len(rows) - limit)
    if seed is None:
        return rows[:limit]
    chosen = sorted(random.Random(f"{seed}:{spec.name}").sample(range(len(rows)), limit))
    return [rows[index] for index in chosen]


def _load_rows(spec: SourceSpec, stats: DataStats) -> list[dict[str, Any]]:
    raw = _RAW_LOADERS[spec.type](spec, stats)
    rows = _finish_rows(raw, spec, stats)
    if raw and not rows:
        logger.warning("Source %r kept none of its %d images; see the skip counts.", spec.name, len(raw))
    logger.info(
        "Loaded %d images / %d captions from source %r.", len(rows), sum(len(r["captions"]) for r in rows), spec.name
    )
    return rows


def load_source(spec: SourceSpec | Mapping[str, Any], stats: DataStats | None = None, seed: int | None = None):
    """Load one source into the common schema (one row per image; see docs/internals.md §1).

    Args:
        spec: a `SourceSpec` or the equivalent mapping (a YAML entry).
        stats: where skips are counted (default: `DATA_STATS`).
        seed: with `max_images`, sample the kept images with this seed; `None` keeps the first ones.

    Returns:
        `datasets.Dataset` with columns `image_id, image, captions, split, boxes, box_labels, source, scene`.
        Ids are the source's own (not prefixed); `source` is the spec name.

    Raises:
        FileNotFoundError: missing annotation file/folder, or a Hub dataset while offline.
        ValueError: malformed annotations, unknown columns, conflicting ids.
    """
    spec = SourceSpec.from_dict(spec)
    stats = _stats(stats)
    rows = _cap(_load_rows(spec, stats), spec.max_images, seed, spec, stats)
    return _rows_to_dataset(rows)


# --------------------------------------------------------------------------------------------------------------------
# Mixing, clean selection
# --------------------------------------------------------------------------------------------------------------------


def _normalize_id(image_id: str) -> str:
    # "000000397133" (file stem) and 397133 (COCO/Karpathy id) are the same image.
    text = str(image_id).strip()
    return str(int(text)) if text.isdigit() else text


def load_exclusion_ids(path: str | os.PathLike, splits: Sequence[str] = ("val", "test")) -> set[str]:
    """Image ids to exclude for the "clean" selection, from a file.

    Accepts a Karpathy-split JSON (ids of its images in `splits`: `cocoid`, else the file stem as for
    Flickr30k), a JSON list of ids, or a text file with one id per line (`#` comments). Ids may be bare (`397133`,
    matched in every source) or prefixed (`coco:397133`, matched in that source only).
    """
    file = _require_file(path, "Exclusion list")
    if file.suffix.lower() == ".json":
        data = json.loads(file.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return {_karpathy_id(image) for image in data["images"] if image.get("split") in set(splits)}
        if isinstance(data, list):
            return {str(item) for item in data}
        raise ValueError(f"{file}: expected a Karpathy-split JSON ({{'images': [...]}}) or a JSON list of ids.")
    ids = set()
    for line in file.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(line)
    return ids


@dataclass
class MixSummary:
    """What `mix_sources` kept and dropped, per source, and which selection it used.

    Attributes:
        selection: `"clean"` (an exclusion list was applied) or `"faithful"` (the paper's selection, no exclusion).
        seed, val_fraction: the split settings.
        sources: per source name: `loaded`, `excluded`, `capped`, `kept`, `train`, `val`, `captions`.
        num_exclusion_ids: size of the exclusion list.
        excluded_examples: a few excluded (prefixed) ids.
        stats: the skips counted while loading.
    """

    selection: str
    seed: int
    val_fraction: float
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    num_exclusion_ids: int = 0
    excluded_examples: list[str] = field(default_factory=list)
    stats: DataStats = field(default_factory=DataStats)

    @property
    def totals(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for counts in self.sources.values():
            total.update(counts)
        return dict(total)

    def to_dict(self) -> dict[str, Any]:
        return {
            "selection": self.selection,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "sources": self.sources,
            "totals": self.totals,
            "num_exclusion_ids": self.num_exclusion_ids,
            "excluded_examples": self.excluded_examples,
            "skipped": self.stats.as_dict(),
        }

    def __str__(self) -> str:
        lines = [f"data mix ({self.selection} selection, seed {self.seed}, val fraction {self.val_fraction}):"]
        for name, counts in {**self.sources, "total": self.totals}.items():
            lines.append(
                f"  {name}: loaded {counts.get('loaded', 0)}, excluded {counts.get('excluded', 0)}, "
                f"capped {counts.get('capped', 0)} -> kept {counts.get('kept', 0)} "
                f"(train {counts.get('train', 0)}, val {counts.get('val', 0)}, captions {counts.get('captions', 0)})"
            )
        lines.append(self.stats.summary())
        return "\n".join(lines)


def mix_sources(
    specs: Sequence[SourceSpec | Mapping[str, Any]],
    seed: int = 0,
    val_fraction: float = 0.1,
    exclude_ids: Iterable[str] | None = None,
    exclude_file: str | os.PathLike | None = None,
    stats: DataStats | None = None,
):
    """Load several sources, cap each, drop excluded images, shuffle and split into train/val (METHOD §4).

    Order of operations per source: load (split filter, skips) → exclusion ("clean" selection) → seeded cap to
    `max_images`. Then all sources are concatenated, shuffled with `seed`, and the first `round(n * val_fraction)`
    images become `val`, the rest `train` (the source's own split is replaced). Ids become `<source name>:<id>`.

    Args:
        specs: source specs (or mappings); names must be unique.
        seed: seed of the caps and the shuffle; the result is a pure function of the inputs and the seed.
        val_fraction: share of images in `val`, in `[0, 1)`.
        exclude_ids: ids to drop (bare ids match in every source, `name:id` in that source; numeric ids match
            regardless of zero padding).
        exclude_file: a file of ids or a Karpathy JSON (its val/test images), see `load_exclusion_ids`.
        stats: where skips are counted (default: a fresh `DataStats`, returned in the summary).

    Returns:
        `(dataset, summary)`: the mixed `datasets.Dataset` and a `MixSummary`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    specs = [SourceSpec.from_dict(spec) for spec in specs]
    if not specs:
        raise ValueError("mix_sources needs at least one source spec.")
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Source names must be unique, got duplicates {duplicates}; set `name` on each spec.")
    excluded = {str(item) for item in (exclude_ids or [])}
    if exclude_file is not None:
        excluded |= load_exclusion_ids(exclude_file)
    bare = {_normalize_id(item) for item in excluded if ":" not in item or item.split(":", 1)[0] not in names}
    prefixed = {
        (item.split(":", 1)[0], _normalize_id(item.split(":", 1)[1]))
        for item in excluded
        if ":" in item and item.split(":", 1)[0] in names
    }
    stats = DataStats() if stats is None else stats
    summary = MixSummary(
        selection="clean" if excluded else "faithful",
        seed=seed,
        val_fraction=val_fraction,
        num_exclusion_ids=len(excluded),
        stats=stats,
    )
    mixed: list[dict[str, Any]] = []
    for spec in specs:
        rows = _load_rows(spec, stats)
        counts = {"loaded": len(rows)}
        kept = []
        for row in rows:
            key = _normalize_id(row["image_id"])
            if key in bare or (spec.name, key) in prefixed:
                stats.add("excluded", f"{spec.name}:{row['image_id']}")
                if len(summary.excluded_examples) < 20:
                    summary.excluded_examples.append(f"{spec.name}:{row['image_id']}")
                continue
            kept.append(row)
        counts["excluded"] = len(rows) - len(kept)
        capped = _cap(kept, spec.max_images, seed, spec, stats)
        counts["capped"] = len(kept) - len(capped)
        counts["kept"] = len(capped)
        counts["captions"] = sum(len(row["captions"]) for row in capped)
        for row in capped:
            row["image_id"] = f"{spec.name}:{row['image_id']}"
        summary.sources[spec.name] = counts
        mixed += capped
    order = list(range(len(mixed)))
    random.Random(seed).shuffle(order)
    num_val = int(round(len(mixed) * val_fraction))
    shuffled = []
    for position, index in enumerate(order):
        row = dict(mixed[index], split="val" if position < num_val else "train")
        summary.sources[row["source"]][row["split"]] = summary.sources[row["source"]].get(row["split"], 0) + 1
        shuffled.append(row)
    for counts in summary.sources.values():
        counts.setdefault("train", 0)
        counts.setdefault("val", 0)
    logger.info(
        "Mixed %d images from %d source(s) (%s selection, %d val).",
        len(shuffled),
        len(specs),
        summary.selection,
        num_val,
    )
    return _rows_to_dataset(shuffled), summary


# --------------------------------------------------------------------------------------------------------------------
# Validation and summaries
# --------------------------------------------------------------------------------------------------------------------


def summarize_dataset(dataset) -> dict[str, Any]:
    """Counts of a schema dataset: images, captions, per split and per source, images with boxes, boxes."""
    splits: Counter[str] = Counter(dataset["split"])
    sources: Counter[str] = Counter(dataset["source"])
    captions = dataset["captions"]
    boxes = dataset["boxes"]
    return {
        "images": len(dataset),
        "captions": sum(len(c) for c in captions),
        "splits": dict(sorted(splits.items())),
        "sources": dict(sorted(sources.items())),
        "images_with_boxes": sum(1 for b in boxes if b),
        "boxes": sum(len(b) for b in boxes),
        "uncaptioned_images": sum(1 for c in captions if not c),
    }


def format_summary(dataset) -> str:
    """One printable line per count of `summarize_dataset`."""
    counts = summarize_dataset(dataset)
    return (
        f"{counts['images']} images, {counts['captions']} captions, splits {counts['splits']}, "
        f"sources {counts['sources']}, {counts['images_with_boxes']} images with {counts['boxes']} boxes"
    )


def validate_dataset(dataset, check_images: bool = False, stats: DataStats | None = None) -> dict[str, Any]:
    """Check a dataset against the schema; optionally decode every image.

    Args:
        dataset: a `datasets.Dataset` from this module (or any producer of the schema, e.g. the synthetic set).
        check_images: decode every image with `load_image` and report the unusable ones (slow on big sets).
        stats: where image skips are counted (default: `DATA_STATS`).

    Returns:
        `summarize_dataset(dataset)`, plus `bad_images` (list of paths) when `check_images`.

    Raises:
        ValueError: a missing column, a duplicate id, a relative image path, boxes/labels length mismatch or a box
            that is not 4 increasing coordinates.
    """
    missing = [name for name in COLUMNS if name not in dataset.column_names]
    if missing:
        raise ValueError(f"Dataset lacks schema column(s) {missing}; see docs/internals.md §1.")
    ids = dataset["image_id"]
    duplicates = [image_id for image_id, count in Counter(ids).items() if count > 1]
    if duplicates:
        raise ValueError(f"Duplicate image ids {duplicates[:5]}; ids must be unique (prefix them by source).")
    for row in dataset.select_columns(["image_id", "image", "boxes", "box_labels"]):
        if not os.path.isabs(row["image"]):
            raise ValueError(f"Image path of {row['image_id']!r} is not absolute: {row['image']!r}.")
        if len(row["boxes"]) != len(row["box_labels"]):
            raise ValueError(
                f"Image {row['image_id']!r}: {len(row['boxes'])} boxes but {len(row['box_labels'])} labels."
            )
        for box in row["boxes"]:
            if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(f"Image {row['image_id']!r}: box {box} is not xyxy with x1 > x0 and y1 > y0.")
    result = summarize_dataset(dataset)
    if check_images:
        result["bad_images"] = [path for path in dataset["image"] if load_image(path, stats=stats) is None]
    return result


# --------------------------------------------------------------------------------------------------------------------
# Zero-shot classification folders
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ZeroShotSet:
    """A zero-shot classification set: image paths, integer labels and the prompt-ready class names."""

    images: list[str]
    labels: list[int]
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")
        bad = [label for label in self.labels if not 0 <= label < len(self.class_names)]
        if bad:
            raise ValueError(f"Labels {sorted(set(bad))[:5]} are outside 0..{len(self.class_names) - 1}.")

    def __len__(self) -> int:
        return len(self.images)


def load_zero_shot_folder(
    root: str | os.PathLike, name_column: str = "name", stats: DataStats | None = None
) -> ZeroShotSet:
    """Load a zero-shot classification set.

    Two layouts:
    - `labels.csv` (`image,label`; image relative to `root`) + `classes.csv` (`label` and `name_column`, default
      `name`, the prompt-ready class name; falls back to `folder`) — the Caltech subset in `../shared/data`.
    - one folder per class: `root/<class>/*.jpg`; classes in case-insensitive name order, names are the folder
      names with `_` as spaces.

    Missing files and paths outside `root` are skipped and counted.

    Args:
        root: the dataset folder.
        name_column: column of `classes.csv` used as class name.
        stats: where skips are counted (default: `DATA_STATS`).
    """
    stats = _stats(stats)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Zero-shot folder {root} does not exist.")
    labels_file, classes_file = root / "labels.csv", root / "classes.csv"
    if labels_file.is_file() and classes_file.is_file():
        with open(classes_file, newline="", encoding="utf-8-sig") as handle:
            classes = list(csv.DictReader(handle))
        if not classes or "label" not in classes[0]:
            raise ValueError(f"{classes_file} needs a 'label' column and one row per class.")
        column = name_column if name_column in classes[0] else "folder"
        if column not in classes[0]:
            raise ValueError(f"{classes_file} has neither a {name_column!r} nor a 'folder' column.")
        by_label = {int(row["label"]): clean_caption(row[column]) for row in classes}
        if sorted(by_label) != list(range(len(by_label))):
            raise ValueError(f"{classes_file}: labels must be 0..{len(by_label) - 1}, got {sorted(by_label)}.")
        class_names = [by_label[label] for label in range(len(by_label))]
        images, labels = [], []
        with open(labels_file, newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                file = resolve_inside(root, row["image"])
                if file is None:
                    logger.warning("Rejected %r in %s: outside %s.", row["image"], labels_file, root)
                    stats.add("outside_root", row["image"])
                    continue
                if not file.is_file():
                    stats.add("missing_image", file)
                    continue
                images.append(str(file))
                labels.append(int(row["label"]))
        return ZeroShotSet(images=images, labels=labels, class_names=class_names)
    folders = sorted((sub for sub in root.iterdir() if sub.is_dir()), key=lambda p: (p.name.lower(), p.name))
    if not folders:
        raise FileNotFoundError(
            f"{root} has neither labels.csv + classes.csv nor one sub-folder per class; see docs/data.md."
        )
    images, labels, class_names = [], [], []
    for folder in folders:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            continue
        for file in files:
            resolved = resolve_inside(root, file.relative_to(root))
            if resolved is None:
                stats.add("outside_root", file)
                continue
            images.append(str(resolved))
            labels.append(len(class_names))
        class_names.append(folder.name.replace("_", " "))
    return ZeroShotSet(images=images, labels=labels, class_names=class_names)


# --------------------------------------------------------------------------------------------------------------------
# Command line: inspect a list of sources
# --------------------------------------------------------------------------------------------------------------------


def read_source_specs(path: str | os.PathLike) -> list[SourceSpec]:
    """Read source specs from a YAML or JSON file: a list of specs, or a mapping with a `sources` list."""
    file = _require_file(path, "Source spec file")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, Mapping):
        data = data.get("sources")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{file} must hold a non-empty list of source specs (or a mapping with a `sources` list).")
    return [SourceSpec.from_dict(item) for item in data]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m training.data SOURCES.yaml`: load, mix and summarise sources; optionally decode every image."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.data", description=main.__doc__)
    parser.add_argument("sources", help="YAML/JSON file with a list of source specs (see docs/data.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--exclude-file", default=None, help="ids to drop (clean selection): id list or Karpathy JSON")
    parser.add_argument("--check-images", action="store_true", help="decode every image and count the bad ones")
    parser.add_argument("--summary-json", default=None, help="write the mix summary here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stats = DataStats()
    dataset, summary = mix_sources(
        read_source_specs(args.sources), args.seed, args.val_fraction, exclude_file=args.exclude_file, stats=stats
    )
    report = validate_dataset(dataset, check_images=args.check_images, stats=stats)
    print(format_summary(dataset))
    if args.check_images:
        print(f"{len(report['bad_images'])} of {len(dataset)} images could not be decoded (see the skips below).")
    print(summary)
    if args.summary_json:
        payload = {"dataset": {k: v for k, v in report.items() if k != "bad_images"}, "mix": summary.to_dict()}
        Path(args.summary_json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
