"""`dclip extract-regions`: detect (or collect) region boxes for a dataset and cache them.

Runs as `python -m training.extract_regions`, `dclip extract-regions` and `accelerate launch -m
training.extract_regions` (images are then split across processes). Arguments come from flags or from one JSON/YAML
file (`python -m training.extract_regions regions.yaml`). The work is done by [`training.regions.extract_regions`],
which the pipeline calls directly.

Example:
    python -m training.extract_regions --source_type csv --source_path data/captions.csv \
        --source yolo --weights weights/yolov8x.pt --output_dir runs/cache
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .regions import (
    REGION_SOURCES,
    build_region_source,
    default_region_cache_dir,
    extract_regions,
)

logger = logging.getLogger(__name__)


@dataclass
class RegionArguments:
    """Which regions to extract and how (YOLO defaults: the paper's predict settings)."""

    source: str = field(default="yolo", metadata={"help": f"Region source: one of {REGION_SOURCES}."})
    weights: str = field(
        default="yolov8x.pt",
        metadata={"help": "YOLO weights file (must exist locally; never downloaded) or a model .yaml (random init)."},
    )
    conf: float = field(default=0.25, metadata={"help": "YOLO confidence threshold (paper: 0.25)."})
    iou: float = field(default=0.7, metadata={"help": "YOLO NMS IoU threshold (paper: 0.7)."})
    imgsz: int = field(default=640, metadata={"help": "YOLO inference size (paper: 640)."})
    max_det: int = field(default=300, metadata={"help": "YOLO maximum detections per image (paper: 300)."})
    classes: list[int] | None = field(default=None, metadata={"help": "Keep only these class ids (default: all)."})
    device: str | None = field(default=None, metadata={"help": "YOLO device, e.g. cpu, 0 (default: ultralytics')."})
    half: bool = field(default=False, metadata={"help": "YOLO fp16 inference (GPU only)."})
    batch_size: int = field(default=16, metadata={"help": "Images per YOLO predict call."})
    mix_shapes: bool | None = field(
        default=None,
        metadata={
            "help": "Batch images of different sizes together (default: on a GPU only; a CPU runs them singly)."
        },
    )
    grid_size: int = field(default=3, metadata={"help": "Cells per side for the `grid` source."})
    min_box_size: float = field(default=1.0, metadata={"help": "Drop boxes thinner than this many pixels."})
    chunk_size: int = field(default=256, metadata={"help": "Images per cache shard (a kill loses at most one)."})


@dataclass
class RegionDataArguments:
    """The dataset (one `training.data` source) and where the cache goes."""

    source_type: str | None = field(
        default=None, metadata={"help": "training.data source type: coco, karpathy, csv, imagefolder or hub."}
    )
    source_path: list[str] | None = field(default=None, metadata={"help": "Source file(s) or folder."})
    image_root: list[str] | None = field(default=None, metadata={"help": "Folder(s) image paths are relative to."})
    instances: list[str] | None = field(default=None, metadata={"help": "COCO instances JSON(s) (boxes)."})
    splits: list[str] | None = field(default=None, metadata={"help": "Keep only these source splits."})
    max_images: int | None = field(default=None, metadata={"help": "Use at most this many images."})
    output_dir: str = field(
        default="runs/cache",
        metadata={"help": "Cache root: the cache goes to <output_dir>/regions-<source>-<fingerprint>."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Exact cache folder (overrides output_dir; other settings there -> error)."}
    )
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bar."})


def parse_args(argv: Sequence[str] | None = None) -> tuple[RegionArguments, RegionDataArguments]:
    """Parse flags, or a single `.json`/`.yaml` file holding the same names."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((RegionArguments, RegionDataArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    return tuple(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False))


def load_dataset_from_args(data_args: RegionDataArguments):
    """Load the dataset named by `data_args` with `training.data.load_source`."""
    from .data import load_source

    if not data_args.source_type or not data_args.source_path:
        raise ValueError(
            "extract-regions needs a dataset: pass --source_type (coco, karpathy, csv, imagefolder, hub) and "
            "--source_path (e.g. --source_type csv --source_path data/captions.csv)."
        )
    spec = {"type": data_args.source_type, "path": data_args.source_path, "max_images": data_args.max_images}
    for key in ("image_root", "instances", "splits"):
        if getattr(data_args, key):
            spec[key] = getattr(data_args, key)
    return load_source(spec)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `dclip extract-regions` / `python -m training.extract_regions`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    region_args, data_args = parse_args(argv)
    if region_args.source not in REGION_SOURCES:
        raise ValueError(f"--source must be one of {REGION_SOURCES}, got {region_args.source!r}.")
    # The source is built first: missing YOLO weights fail here, before the dataset is read or anything is written.
    settings = {k: v for k, v in vars(region_args).items() if k not in ("source", "min_box_size", "chunk_size")}
    settings["run_dir"] = data_args.output_dir
    source = build_region_source(region_args.source, **settings)
    dataset = load_dataset_from_args(data_args)
    cache_dir = (
        Path(data_args.cache_dir)
        if data_args.cache_dir
        else default_region_cache_dir(data_args.output_dir, source, region_args.min_box_size)
    )
    summary = extract_regions(
        dataset,
        source,
        cache_dir,
        chunk_size=region_args.chunk_size,
        min_box_size=region_args.min_box_size,
        progress=not data_args.no_progress,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        report = {"cache_dir": str(cache_dir), **summary.to_dict()}
        report.pop("failed_images")
        print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
