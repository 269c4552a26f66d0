"""Region sources (YOLO, ground-truth annotations, grid, whole image) and the resumable, fingerprinted region cache.

The cache machinery here (`ShardedCache`, `run_sharded`) is shared by every cache of the pipeline
(`training/features.py` uses it too): each cache is a folder holding `meta.json` (the fingerprint of what produced it),
finished chunks as `shards/*.parquet|arrow` (each written atomically, so a kill loses at most the chunk in flight) and,
after a completed run, one merged file. A rerun skips every image a shard or the merged file already holds; a folder
whose fingerprint differs from the current settings raises instead of being reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from modeling_dclip import sanitize_boxes

logger = logging.getLogger(__name__)

REGION_SOURCES = ("yolo", "annotations", "grid", "whole")
REGIONS_FILE = "regions.parquet"
META_FILE = "meta.json"

# --------------------------------------------------------------------------------------------------------------------
# Small shared helpers
# --------------------------------------------------------------------------------------------------------------------


def fingerprint_of(description: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a JSON-serialisable description, independent of key order."""
    payload = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to `path` through a temporary file and `os.replace` (never a half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def default_image_loader() -> Callable[[str], Image.Image | None]:
    """The pipeline's one image loader, `training.data.load_image` (upright RGB, `None` + counted on failure)."""
    from .data import load_image

    return load_image


# --------------------------------------------------------------------------------------------------------------------
# Sharded, fingerprinted, atomic caches
# --------------------------------------------------------------------------------------------------------------------


class StaleCacheError(ValueError):
    """A cache folder was produced by different settings than the current ones."""


class ShardedCache:
    """A resumable cache folder: `meta.json` + atomically written shards + one merged file after a completed run.

    Rows are grouped by `image_id` (the unit of work): an image is done once any shard or the merged file holds it.

    Args:
        directory: the cache folder (created).
        kind: what the cache holds (`"regions"`, `"image_features"`, ...), recorded in `meta.json`.
        description: JSON-serialisable description of what produced the cache; its hash is the fingerprint.
        schema: Arrow schema of the rows (must have an `image_id` string column).
        file_format: `"parquet"` (compressed, read whole) or `"arrow"` (Arrow IPC, memory-mapped on read).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        kind: str,
        description: Mapping[str, Any],
        schema: pa.Schema,
        file_format: str = "parquet",
    ) -> None:
        if file_format not in ("parquet", "arrow"):
            raise ValueError(f"file_format must be 'parquet' or 'arrow', got {file_format!r}.")
        if "image_id" not in schema.names:
            raise ValueError(f"A cache schema needs an `image_id` column, got {schema.names}.")
        self.directory = Path(directory)
        self.kind = kind
        self.description = json.loads(json.dumps(dict(description), sort_keys=True, default=str))
        self.fingerprint = fingerprint_of({"kind": kind, **self.description})
        self.file_format = file_format
        self.schema = schema.with_metadata(
            {b"dclip_kind": kind.encode(), b"dclip_fingerprint": self.fingerprint.encode()}
        )

    @property
    def suffix(self) -> str:
        return ".parquet" if self.file_format == "parquet" else ".arrow"

    @property
    def merged_path(self) -> Path:
        return self.directory / f"{self.kind}{self.suffix}"

    @property
    def shard_dir(self) -> Path:
        return self.directory / "shards"

    @property
    def meta_path(self) -> Path:
        return self.directory / META_FILE

    def read_meta(self) -> dict | None:
        if not self.meta_path.is_file():
            return None
        with open(self.meta_path, encoding="utf-8") as handle:
            return json.load(handle)

    def check_fingerprint(self) -> None:
        """Raise `StaleCacheError` when the folder holds a cache made with other settings (or of another kind)."""
        meta = self.read_meta()
        if meta is None:
            return
        if meta.get("kind") != self.kind or meta.get("fingerprint") != self.fingerprint:
            old = meta.get("description", {})
            changed = sorted(
                key for key in set(old) | set(self.description) if old.get(key) != self.description.get(key)
            )
            raise StaleCacheError(
                f"The {meta.get('kind')} cache in {self.directory} was made with different settings "
                f"(fingerprint {str(meta.get('fingerprint'))[:12]} != {self.fingerprint[:12]} for {self.kind}; "
                f"changed: {changed}). It is not reused: delete the folder to recompute it there, or point the cache "
                "directory at a new folder (the pipeline names its cache folders by fingerprint, so it does this "
                "itself)."
            )

    def open(self, *, is_main_process: bool = True) -> None:
        """Create the folder and `meta.json` (main process) after checking the fingerprint."""
        self.check_fingerprint()
        if is_main_process:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            if self.read_meta() is None:
                atomic_write_json(self.meta_path, self._meta(complete=False))

    def _meta(self, *, complete: bool, **extra: Any) -> dict:
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "description": self.description,
            "format": self.file_format,
            "complete": complete,
            **extra,
        }

    def _files(self) -> list[Path]:
        files = [self.merged_path] if self.merged_path.is_file() else []
        if self.shard_dir.is_dir():
            files += sorted(p for p in self.shard_dir.iterdir() if p.suffix == self.suffix and p.name[0] != ".")
        return files

    def _read_file(self, path: Path, columns: Sequence[str] | None = None) -> pa.Table:
        if self.file_format == "parquet":
            table = pq.read_table(path, columns=list(columns) if columns else None)
        else:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
            if columns:
                table = table.select(list(columns))
        found = (table.schema.metadata or {}).get(b"dclip_fingerprint", b"").decode()
        if found != self.fingerprint:
            raise StaleCacheError(
                f"{path} carries fingerprint {found[:12] or '<none>'} but this {self.kind} cache expects "
                f"{self.fingerprint[:12]}: the folder mixes runs with different settings; delete {self.directory}."
            )
        return table

    def completed_ids(self) -> set[str]:
        """Image ids already held by the merged file or a finished shard."""
        done: set[str] = set()
        for path in self._files():
            done.update(self._read_file(path, ["image_id"]).column("image_id").to_pylist())
        return done

    def write_shard(self, columns: Mapping[str, Sequence], *, rank: int = 0) -> Path | None:
        """Atomically write one finished chunk of rows; returns its path (`None` for an empty chunk)."""
        table = pa.Table.from_pydict(dict(columns), schema=self.schema)
        if table.num_rows == 0:
            return None
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        path = self.shard_dir / f"part-r{rank:03d}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{self.suffix}"
        self._write_table(table, path)
        return path

    def _write_table(self, table: pa.Table, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            if self.file_format == "parquet":
                pq.write_table(table, tmp)
            else:
                with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _combined(self, files: Sequence[Path]) -> pa.Table:
        # An image's rows all come from one chunk; if two files hold it (a crash between merge and shard cleanup),
        # the first file's rows win.
        tables = [self._read_file(path) for path in files]
        if not tables:
            return self.schema.empty_table()
        if len(tables) == 1:
            return tables[0]
        table = pa.concat_tables(tables)
        owner: dict[str, int] = {}
        file_of_row = np.repeat(np.arange(len(tables)), [t.num_rows for t in tables])
        ids = table.column("image_id").to_pylist()
        keep = [row for row, key in enumerate(ids) if owner.setdefault(key, file_of_row[row]) == file_of_row[row]]
        return table if len(keep) == table.num_rows else table.take(pa.array(keep, type=pa.int64()))

    def merge(self, **summary: Any) -> Path:
        """Fold all shards into the merged file and mark the cache complete in `meta.json`."""
        files = self._files()
        if files == [self.merged_path]:
            table = self._read_file(self.merged_path, ["image_id"])  # nothing new: no rewrite of a large cache
        else:
            table = self._combined(files).replace_schema_metadata(self.schema.metadata)
            self._write_table(table, self.merged_path)
        for path in files:
            if path != self.merged_path:
                path.unlink(missing_ok=True)
        if self.shard_dir.is_dir():
            for stale in self.shard_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        num_images = len(set(table.column("image_id").to_pylist()))
        atomic_write_json(
            self.meta_path, self._meta(complete=True, num_images=num_images, num_rows=table.num_rows, **summary)
        )
        return self.merged_path

    def read(self) -> pa.Table:
        """Every row held (merged file and any unmerged shards of an interrupted run)."""
        self.check_fingerprint()
        return self._combined(self._files())

    @classmethod
    def from_folder(cls, directory: str | os.PathLike, *, kind: str, schema: pa.Schema) -> ShardedCache:
        """Open an existing cache folder for reading, with the description recorded in its `meta.json`."""
        meta_path = Path(directory) / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"No {kind} cache in {directory} (no {META_FILE}); build it first (see docs/regions_and_caches.md)."
            )
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        if meta.get("kind") != kind:
            raise ValueError(f"{directory} holds a {meta.get('kind')!r} cache, not a {kind!r} cache.")
        cache = cls(directory, kind=kind, description=meta["description"], schema=schema, file_format=meta["format"])
        if cache.fingerprint != meta["fingerprint"]:
            raise StaleCacheError(f"{meta_path} is inconsistent (its fingerprint does not match its description).")
        if not meta.get("complete"):
            logger.warning(
                "The %s cache in %s is incomplete (interrupted run); rerun its step to finish it.", kind, directory
            )
        return cache


@dataclass
class CacheRunSummary:
    """What one cache run did (also written to the cache's `meta.json`)."""

    total: int = 0
    skipped_cached: int = 0
    computed: int = 0
    counts: Counter = field(default_factory=Counter)
    failed_images: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["counts"] = dict(self.counts)
        data["failed_images"] = self.failed_images[:1000]
        return data


def _partial_state():
    from accelerate import PartialState
    from accelerate.utils import get_torch_accelerator_backend

    # Without cpu=True, `accelerate launch --multi_gpu --num_processes N` on a machine without an accelerator leaves
    # every process believing it is alone (DistributedType.NO), and each would redo all the work.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=use_cpu or get_torch_accelerator_backend()[0] is None)


def _gather(summary: CacheRunSummary) -> list[CacheRunSummary]:
    from accelerate.utils import gather_object

    return gather_object([summary])


def _summed(parts: Sequence[CacheRunSummary]) -> CacheRunSummary:
    total = CacheRunSummary(total=parts[0].total, skipped_cached=parts[0].skipped_cached)
    for part in parts:
        total.computed += part.computed
        total.counts.update(part.counts)
        total.failed_images.extend(part.failed_images)
        total.seconds = max(total.seconds, part.seconds)
    return total


def run_sharded(
    cache: ShardedCache,
    items: Sequence[Mapping[str, Any]],
    compute: Callable[[list[Mapping[str, Any]], CacheRunSummary], Mapping[str, Sequence]],
    *,
    chunk_size: int,
    description: str,
    progress: bool = True,
) -> CacheRunSummary:
    """Compute the cache rows of every item (one per image, with an `image_id`) not cached yet, chunk by chunk.

    Under `accelerate launch` the remaining items are split across processes; every process writes its own shards and
    the main process merges them. `compute(chunk, summary)` returns the row columns of a chunk (images it could not
    process are left out and recorded in `summary`).

    Args:
        cache: the target cache.
        items: dataset rows (dicts with at least `image_id`).
        compute: turns a chunk of items into row columns.
        chunk_size: images per shard: a kill loses at most one chunk per process.
        description: progress-bar label.
        progress: show a tqdm bar (images/s) on the main process.
    """
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    state = _partial_state()
    cache.open(is_main_process=state.is_main_process)
    state.wait_for_everyone()
    start = time.perf_counter()
    summary = CacheRunSummary(total=len(items))
    done = cache.completed_ids()
    todo = [item for item in items if item["image_id"] not in done]
    summary.skipped_cached = len(items) - len(todo)
    # Every process must split the same list: none may write a shard before all have read what is done.
    state.wait_for_everyone()
    if summary.skipped_cached:
        logger.info(
            "%s: %d/%d images already cached in %s.", description, summary.skipped_cached, len(items), cache.directory
        )
    with state.split_between_processes(todo) as mine:
        bar = tqdm(total=len(mine), desc=description, unit="img", disable=not (progress and state.is_main_process))
        for start_index in range(0, len(mine), chunk_size):
            chunk = list(mine[start_index : start_index + chunk_size])
            columns = compute(chunk, summary)
            cache.write_shard(columns, rank=state.process_index)
            summary.computed += len(chunk)
            bar.update(len(chunk))
        bar.close()
    summary.seconds = time.perf_counter() - start
    state.wait_for_everyone()
    if state.num_processes > 1:
        summary = _summed(_gather(summary))
    if state.is_main_process:
        cache.merge(last_run=summary.to_dict())
    state.wait_for_everyone()
    return summary


# --------------------------------------------------------------------------------------------------------------------
# Region sources
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Regions:
    """Boxes of one image: `boxes [N, 4]` xyxy pixels of the upright image, `scores [N]`, `labels` (N names)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]

    @classmethod
    def empty(cls) -> Regions:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [])

    def __len__(self) -> int:
        return len(self.boxes)


def sanitize_regions(regions: Regions, width: int, height: int, min_size: float = 1.0) -> tuple[Regions, int]:
    """Clip boxes to the image and drop degenerate ones (with their scores and labels); returns `(kept, dropped)`."""
    if len(regions) == 0:
        return Regions.empty(), 0
    boxes = np.asarray(regions.boxes, dtype=np.float64).reshape(-1, 4)
    # sanitize_boxes reports only survivors, so each box is checked alone to know which score/label goes with it.
    kept = [sanitize_boxes(box[None], width, height, min_size)[0] for box in boxes]
    keep = np.array([len(k) == 1 for k in kept], dtype=bool)
    clean = np.concatenate([k for k in kept if len(k)], axis=0) if keep.any() else np.zeros((0, 4), np.float32)
    scores = np.asarray(regions.scores, dtype=np.float32).reshape(-1)[keep]
    labels = [label for label, ok in zip(regions.labels, keep) if ok]
    return Regions(clean.astype(np.float32), scores, labels), int((~keep).sum())


class RegionSource:
    """Turns images (upright RGB PIL) and their dataset rows into raw `Regions` (sanitised by the caller)."""

    name: str = ""

    def describe(self) -> dict:
        """Everything that determines the boxes (hashed into the cache fingerprint)."""
        raise NotImplementedError

    def __call__(self, images: Sequence[Image.Image], rows: Sequence[Mapping[str, Any]]) -> list[Regions]:
        raise NotImplementedError


class WholeImageRegionSource(RegionSource):
    """One region per image: the full image."""

    name = "whole"

    def describe(self) -> dict:
        return {"source": self.name}

    def __call__(self, images, rows):
        return [
            Regions(np.array([[0, 0, im.width, im.height]], np.float32), np.ones(1, np.float32), ["image"])
            for im in images
        ]


class GridRegionSource(RegionSource):
    """`grid_size x grid_size` equal cells per image (row-major)."""

    name = "grid"

    def __init__(self, grid_size: int = 3) -> None:
        if not isinstance(grid_size, int) or grid_size < 1:
            raise ValueError(f"grid_size must be a positive int, got {grid_size!r}.")
        self.grid_size = grid_size

    def describe(self) -> dict:
        return {"source": self.name, "grid_size": self.grid_size}

    def __call__(self, images, rows):
        k = self.grid_size
        edges = np.linspace(0.0, 1.0, k + 1)
        y0, x0 = np.meshgrid(edges[:-1], edges[:-1], indexing="ij")
        y1, x1 = np.meshgrid(edges[1:], edges[1:], indexing="ij")
        unit = np.stack([x0, y0, x1, y1], axis=-1).reshape(-1, 4)
        out = []
        for im in images:
            boxes = (unit * np.array([im.width, im.height, im.width, im.height])).astype(np.float32)
            out.append(Regions(boxes, np.ones(k * k, np.float32), [f"cell_{i}" for i in range(k * k)]))
        return out


class AnnotationRegionSource(RegionSource):
    """The dataset's own ground-truth boxes (`boxes` / `box_labels` columns, upright-image pixels), score 1."""

    name = "annotations"

    def describe(self) -> dict:
        return {"source": self.name}

    def __call__(self, images, rows):
        out = []
        for row in rows:
            boxes = np.asarray(row.get("boxes") or [], dtype=np.float32).reshape(-1, 4)
            labels = [str(label) for label in (row.get("box_labels") or [])]
            if len(labels) != len(boxes):
                raise ValueError(
                    f"Image {row.get('image_id')!r} has {len(boxes)} boxes but {len(labels)} box_labels; the dataset "
                    "schema needs one label per box."
                )
            out.append(Regions(boxes, np.ones(len(boxes), np.float32), labels))
        return out


def resolve_yolo_weights(weights: str | os.PathLike) -> Path | str:
    """Return a local weights path (or a `*.yaml` model definition, which builds a random detector offline).

    Raises:
        FileNotFoundError: the `.pt` file is not there; ultralytics would try to download it, which this package never
            allows. The message says where to put it.
    """
    text = str(weights)
    if text.endswith((".yaml", ".yml")):
        return text
    candidates = [Path(text).expanduser()]
    if not candidates[0].is_absolute():
        env_dir = os.environ.get("DCLIP_YOLO_DIR")
        if env_dir:
            candidates.append(Path(env_dir).expanduser() / text)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    where = " or ".join(str(c.resolve()) for c in candidates)
    raise FileNotFoundError(
        f"YOLO weights {text!r} not found (looked at {where}). This package never downloads weights: download "
        f"{Path(text).name} once (e.g. https://github.com/ultralytics/assets/releases) on a machine with internet, "
        "copy it to that path (or into the folder named by DCLIP_YOLO_DIR), or pass --weights /path/to/yolov8x.pt."
    )


def _configure_ultralytics_dirs(run_dir: str | os.PathLike | None) -> None:
    # Ultralytics writes settings.json into its user config dir on first import; keep it inside the run folder.
    if "YOLO_CONFIG_DIR" not in os.environ:
        base = Path(run_dir) if run_dir is not None else Path.cwd()
        config_dir = base / "ultralytics-config"
        config_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        os.environ.setdefault("YOLO_OFFLINE", "1")


def _import_yolo(run_dir: str | os.PathLike | None) -> Any:
    """`ultralytics.YOLO`, imported without its global side effects on PIL."""
    _configure_ultralytics_dirs(run_dir)
    from PIL import Image

    pil_open = Image.open
    from ultralytics import YOLO

    # Importing ultralytics replaces PIL.Image.open process-wide with a wrapper that, on any unidentified image,
    # tries to pip-install pi-heif (a download) and raises ModuleNotFoundError offline. That would turn a corrupt
    # image anywhere in the run into a crash instead of a counted skip. We pass decoded images to YOLO, so it does
    # not need the wrapper.
    Image.open = pil_open
    return YOLO


class YoloRegionSource(RegionSource):
    """Ultralytics YOLO detections (the paper: YOLOv8x, conf 0.25, NMS IoU 0.7, imgsz 640, max_det 300, 80 classes).

    Args:
        weights: `.pt` file (must exist locally) or a `.yaml` model definition (random weights).
        conf, iou, imgsz, max_det, classes, device, half: ultralytics predict settings.
        batch_size: images per predict call.
        mix_shapes: batch images of different sizes together (default: only on a GPU; see [`batch_plan`]).
        detector: an already built detector (anything with ultralytics' `predict(images, **settings)`), e.g. a fake in
            tests; ultralytics is then not imported.
        detector_name: identifies an injected detector in the cache fingerprint.
        run_dir: where ultralytics may write its settings file when `YOLO_CONFIG_DIR` is unset.
    """

    name = "yolo"

    def __init__(
        self,
        *,
        weights: str | os.PathLike = "yolov8x.pt",
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        max_det: int = 300,
        classes: Sequence[int] | None = None,
        device: str | None = None,
        half: bool = False,
        batch_size: int = 16,
        mix_shapes: bool | None = None,
        detector: Any | None = None,
        detector_name: str | None = None,
        run_dir: str | os.PathLike | None = None,
    ) -> None:
        if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
            raise ValueError(f"conf and iou must lie in [0, 1], got conf={conf}, iou={iou}.")
        if batch_size < 1 or max_det < 1 or imgsz < 32:
            raise ValueError(f"Need batch_size >= 1, max_det >= 1, imgsz >= 32; got {batch_size}, {max_det}, {imgsz}.")
        self.settings = {
            "conf": float(conf),
            "iou": float(iou),
            "imgsz": int(imgsz),
            "max_det": int(max_det),
            "classes": sorted(int(c) for c in classes) if classes else None,
            "half": bool(half),
        }
        self.device = device
        self.batch_size = batch_size
        self.mix_shapes = mix_shapes
        if detector is not None:
            self.detector = detector
            self.weights_id = detector_name or type(detector).__qualname__
        else:
            resolved = resolve_yolo_weights(weights)  # fails here, before any image is touched
            self.weights_id = (
                f"sha256:{file_sha256(resolved)}" if isinstance(resolved, Path) else f"random-init:{resolved}"
            )
            self.detector = _import_yolo(run_dir)(str(resolved))

    def describe(self) -> dict:
        # device and batch size change speed, not boxes (up to float noise), so they stay out of the fingerprint.
        return {"source": self.name, "weights": self.weights_id, **self.settings}

    def __call__(self, images, rows):
        kwargs = {k: v for k, v in self.settings.items() if v is not None and k != "half"}
        if self.settings["half"]:
            kwargs["quantize"] = 16  # ultralytics 8.4 spelling of half=True (`half` is deprecated there)
        if self.device is not None:
            kwargs["device"] = self.device
        out: list[Regions | None] = [None] * len(images)
        for batch in batch_plan([image.size for image in images], self.batch_size, self._mix_shapes()):
            results = self.detector.predict([images[i] for i in batch], verbose=False, save=False, **kwargs)
            if len(results) != len(batch):
                raise RuntimeError(f"The detector returned {len(results)} results for {len(batch)} images.")
            for index, result in zip(batch, results):
                out[index] = _regions_from_result(result)
        return out

    def _mix_shapes(self) -> bool:
        if self.mix_shapes is not None:
            return self.mix_shapes
        import torch

        return torch.cuda.is_available() and str(self.device).lower() != "cpu"


def batch_plan(sizes: Sequence[tuple[int, int]], batch_size: int, mix_shapes: bool) -> list[list[int]]:
    """Group image indices into predict batches.

    Ultralytics letterboxes a batch of equal-sized images to a tight rectangle but a mixed batch to a full
    `imgsz x imgsz` square, which costs more than it saves on a CPU (benchmarks/bench_regions.py). So equal-sized
    images are batched together first; the rest are batched together only when `mix_shapes` (a GPU), else one by one.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    batches, leftovers = [], []
    for members in groups.values():
        full = len(members) - len(members) % batch_size if len(members) >= batch_size else 0
        batches += [members[i : i + batch_size] for i in range(0, full, batch_size)]
        rest = members[full:]
        if len(rest) > 1 and not mix_shapes:
            batches.append(rest)  # still one shape: a tight rectangle
        else:
            leftovers += rest
    if mix_shapes:
        leftovers.sort()
        batches += [leftovers[i : i + batch_size] for i in range(0, len(leftovers), batch_size)]
    else:
        batches += [[index] for index in leftovers]
    return batches


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def _regions_from_result(result: Any) -> Regions:
    """Accept an ultralytics `Results` or a mapping with `boxes`, `scores` and `labels` (names or class ids)."""
    if isinstance(result, Mapping):
        boxes, scores, labels, names = result["boxes"], result["scores"], result["labels"], result.get("names", {})
    else:
        boxes, scores, labels, names = result.boxes.xyxy, result.boxes.conf, result.boxes.cls, result.names
    boxes = _to_numpy(boxes).astype(np.float32).reshape(-1, 4)
    scores = _to_numpy(scores).astype(np.float32).reshape(-1)
    labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    names = names or {}
    labels = [label if isinstance(label, str) else str(names.get(int(label), int(label))) for label in labels]
    return Regions(boxes, scores, labels)


def build_region_source(source: str, **settings: Any) -> RegionSource:
    """Build a region source by name (`yolo`, `annotations`, `grid`, `whole`) from its settings.

    Settings that do not apply to the chosen source are ignored (one argument dataclass serves all sources).
    """
    if source == "yolo":
        keys = ("weights", "conf", "iou", "imgsz", "max_det", "classes", "device", "half", "batch_size", "mix_shapes")
        keys += ("detector", "detector_name", "run_dir")
        return YoloRegionSource(**{k: settings[k] for k in keys if k in settings})
    if source == "grid":
        return GridRegionSource(settings.get("grid_size", 3))
    if source == "annotations":
        return AnnotationRegionSource()
    if source == "whole":
        return WholeImageRegionSource()
    raise ValueError(f"Unknown region source {source!r}; choose one of {REGION_SOURCES}.")


# --------------------------------------------------------------------------------------------------------------------
# The region cache
# --------------------------------------------------------------------------------------------------------------------

REGION_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_boxes", pa.int32()),
        ("boxes", pa.list_(pa.float32())),  # flattened [N * 4] xyxy
        ("scores", pa.list_(pa.float32())),
        ("labels", pa.list_(pa.string())),
    ]
)


def region_cache(directory: str | os.PathLike, source: RegionSource, min_box_size: float = 1.0) -> ShardedCache:
    """The region cache of `source` in `directory` (not opened: nothing is written)."""
    return ShardedCache(
        directory,
        kind="regions",
        description={**source.describe(), "min_box_size": float(min_box_size)},
        schema=REGION_SCHEMA,
        file_format="parquet",
    )


def default_region_cache_dir(root: str | os.PathLike, source: RegionSource, min_box_size: float = 1.0) -> Path:
    """`root/regions-<source>-<fingerprint[:12]>`: changed settings land in a new folder instead of a stale one."""
    fingerprint = region_cache(root, source, min_box_size).fingerprint
    return Path(root) / f"regions-{source.name}-{fingerprint[:12]}"


def _dataset_items(dataset: Any) -> list[dict]:
    columns = ["image_id", "image", "boxes", "box_labels"]
    names = getattr(dataset, "column_names", None)
    if names is not None:
        present = [c for c in columns if c in names]
        data = dataset.select_columns(present).to_dict()
        return [dict(zip(present, values)) for values in zip(*(data[c] for c in present))]
    return [dict(row) for row in dataset]


def extract_regions(
    dataset: Any,
    source: RegionSource,
    cache_dir: str | os.PathLike,
    *,
    chunk_size: int = 256,
    min_box_size: float = 1.0,
    load_image: Callable[[str], Image.Image | None] | None = None,
    progress: bool = True,
) -> CacheRunSummary:
    """Compute (or finish) the region cache of `dataset` with `source` in `cache_dir`.

    Images are opened upright (EXIF-transposed RGB), boxes are sanitised (clipped, degenerate ones dropped), an image
    without any box is stored with `num_boxes = 0` ("no detection"), an unreadable image is skipped and counted.

    Args:
        dataset: rows with `image_id`, `image` (path) and, for the `annotations` source, `boxes`/`box_labels`.
        source: the region source.
        cache_dir: the cache folder; a folder made with other settings raises `StaleCacheError`.
        chunk_size: images per shard (a kill loses at most one chunk per process).
        min_box_size: boxes thinner than this (pixels, after clipping) are dropped.
        load_image: `path -> upright RGB PIL image or None`; defaults to `training.data.load_image`.
        progress: show a progress bar.

    Returns:
        The run summary (counts: `no_detections`, `dropped_boxes`, `failed_images`, `boxes`).
    """
    loader = load_image or default_image_loader()
    cache = region_cache(cache_dir, source, min_box_size)
    items = _dataset_items(dataset)
    seen: set[str] = set()
    for item in items:
        if item["image_id"] in seen:
            raise ValueError(
                f"Duplicate image_id {item['image_id']!r}: the region cache is keyed by unique image ids."
            )
        seen.add(item["image_id"])

    def compute(chunk: list[Mapping[str, Any]], summary: CacheRunSummary) -> dict[str, list]:
        loaded = [(item, loader(item["image"])) for item in chunk]
        for item, image in loaded:
            if image is None:
                summary.counts["failed_images"] += 1
                summary.failed_images.append(str(item["image"]))
        ok = [(item, image) for item, image in loaded if image is not None]
        raw = source([image for _, image in ok], [item for item, _ in ok]) if ok else []
        columns: dict[str, list] = {name: [] for name in REGION_SCHEMA.names}
        for (item, image), regions in zip(ok, raw):
            clean, dropped = sanitize_regions(regions, image.width, image.height, min_box_size)
            summary.counts["dropped_boxes"] += dropped
            summary.counts["boxes"] += len(clean)
            if len(clean) == 0:
                summary.counts["no_detections"] += 1
            columns["image_id"].append(item["image_id"])
            columns["width"].append(image.width)
            columns["height"].append(image.height)
            columns["num_boxes"].append(len(clean))
            columns["boxes"].append(clean.boxes.reshape(-1).tolist())
            columns["scores"].append(clean.scores.tolist())
            columns["labels"].append(clean.labels)
        return columns

    summary = run_sharded(
        cache, items, compute, chunk_size=chunk_size, description=f"regions ({source.name})", progress=progress
    )
    if summary.counts["failed_images"]:
        logger.warning("%d image(s) could not be read and have no regions.", summary.counts["failed_images"])
    if summary.counts["no_detections"]:
        logger.info("%d image(s) have no region (recorded as 'no detection').", summary.counts["no_detections"])
    return summary


@dataclass
class RegionTable:
    """A loaded region cache: `regions[image_id] -> Regions`, plus the cache fingerprint."""

    fingerprint: str
    regions: dict[str, Regions]
    sizes: dict[str, tuple[int, int]]

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.regions

    def __getitem__(self, image_id: str) -> Regions:
        return self.regions[image_id]

    def __len__(self) -> int:
        return len(self.regions)


def load_region_cache(cache_dir: str | os.PathLike) -> RegionTable:
    """Read a region cache folder written by [`extract_regions`]."""
    cache = ShardedCache.from_folder(cache_dir, kind="regions", schema=REGION_SCHEMA)
    data = cache.read().to_pydict()
    regions, sizes = {}, {}
    for image_id, width, height, boxes, scores, labels in zip(
        data["image_id"], data["width"], data["height"], data["boxes"], data["scores"], data["labels"]
    ):
        regions[image_id] = Regions(
            np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), list(labels)
        )
        sizes[image_id] = (width, height)
    return RegionTable(cache.fingerprint, regions, sizes)
