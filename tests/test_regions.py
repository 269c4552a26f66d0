"""Region sources and the resumable, fingerprinted region cache (fake detectors; one random YOLO; offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from PIL import Image

from training import extract_regions as extract_cli
from training.regions import (
    AnnotationRegionSource,
    GridRegionSource,
    StaleCacheError,
    WholeImageRegionSource,
    YoloRegionSource,
    batch_plan,
    default_region_cache_dir,
    extract_regions,
    load_region_cache,
    region_cache,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = [(64, 48), (40, 40), (50, 30), (33, 57), (48, 64), (60, 20), (25, 45)]


def make_images(folder, sizes=SIZES):
    paths = []
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(sizes):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def make_dataset(paths, boxes=None, labels=None):
    n = len(paths)
    return Dataset.from_dict(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "image": paths,
            "captions": [[f"caption {i}"] for i in range(n)],
            "split": ["train"] * n,
            "boxes": boxes or [[] for _ in range(n)],
            "box_labels": labels or [[] for _ in range(n)],
            "source": ["synthetic"] * n,
            "scene": [""] * n,
        }
    )


def raw_boxes(width, height):
    """Known detections: a clean box, an out-of-bounds one, a degenerate one, an inverted one, a NaN one."""
    return np.array(
        [
            [2, 3, 20, 18],
            [-10, -5, width + 30, height / 2],
            [5, 5, 5, 15],
            [30, 10, 10, 20],
            [np.nan, 0, 4, 4],
        ],
        dtype=np.float32,
    )


class FakeDetector:
    """Stands in for ultralytics' YOLO: records what it receives, returns `raw_boxes`, can fail after N images."""

    def __init__(self, fail_after=None, empty_ids=()):
        self.calls = 0
        self.images_seen = 0
        self.sizes = []
        self.settings = []
        self.fail_after = fail_after
        self.empty_sizes = set(empty_ids)

    def predict(self, images, **settings):
        self.calls += 1
        self.settings.append(settings)
        results = []
        for image in images:
            if self.fail_after is not None and self.images_seen >= self.fail_after:
                raise RuntimeError("simulated kill")
            self.images_seen += 1
            assert isinstance(image, Image.Image) and image.mode == "RGB"
            self.sizes.append(image.size)
            if image.size in self.empty_sizes:
                results.append({"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": []})
                continue
            boxes = raw_boxes(*image.size)
            results.append(
                {
                    "boxes": boxes,
                    "scores": np.linspace(0.9, 0.5, len(boxes)),
                    "labels": [0, 1, 2, 3, 4],
                    "names": {0: "cat"},
                }
            )
        return results


def naive_clean(width, height):
    """Reference: clip each box by hand, keep finite, ordered ones at least 1 px wide and tall after clipping."""
    kept, scores = [], []
    for box, score in zip(raw_boxes(width, height).tolist(), np.linspace(0.9, 0.5, 5).tolist()):
        x0, y0, x1, y1 = box
        if any(v != v for v in box) or x1 <= x0 or y1 <= y0:
            continue
        x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
        y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            kept.append([x0, y0, x1, y1])
            scores.append(score)
    return np.array(kept, dtype=np.float32), np.array(scores, dtype=np.float32)


def test_fake_detector_boxes_are_sanitised_with_their_scores_and_labels(tmp_path):
    paths = make_images(tmp_path)
    detector = FakeDetector(empty_ids={SIZES[1]})
    source = YoloRegionSource(detector=detector, batch_size=3, mix_shapes=True, conf=0.3, classes=[0, 2])
    summary = extract_regions(make_dataset(paths), source, tmp_path / "cache", chunk_size=4, progress=False)
    table = load_region_cache(tmp_path / "cache")
    assert len(table) == len(SIZES)
    for index, (width, height) in enumerate(SIZES):
        regions = table[f"img{index}"]
        if (width, height) == SIZES[1]:
            assert len(regions) == 0  # recorded as "no detection", not dropped
            continue
        boxes, scores = naive_clean(width, height)
        np.testing.assert_allclose(regions.boxes, boxes)
        np.testing.assert_allclose(regions.scores, scores, rtol=1e-6)
        assert regions.labels == ["cat", "1"]  # class id 0 named by the detector, 1 unnamed
        assert table.sizes[f"img{index}"] == (width, height)
    assert summary.counts["no_detections"] == 1
    assert summary.counts["dropped_boxes"] == 3 * (len(SIZES) - 1)
    # batched: chunks of 4 and 3 images, 3 per predict call -> (3 + 1) + 3: 3 calls; settings are passed through.
    assert detector.calls == 3
    assert detector.settings[0]["conf"] == 0.3 and detector.settings[0]["classes"] == [0, 2]
    assert detector.settings[0]["iou"] == 0.7 and detector.settings[0]["imgsz"] == 640
    assert detector.settings[0]["max_det"] == 300


def test_batch_plan_groups_equal_sizes_and_mixes_others_only_when_asked():
    sizes = [(640, 480), (500, 375), (640, 480), (480, 640), (640, 480), (640, 480), (640, 480), (333, 500)]
    plan = batch_plan(sizes, 2, mix_shapes=False)
    assert sorted(i for batch in plan for i in batch) == list(range(len(sizes)))  # every image exactly once
    for batch in plan:
        assert len(batch) <= 2 and len({sizes[i] for i in batch}) == 1  # never a mixed batch on a CPU
    assert sum(len(batch) == 2 for batch in plan) == 2  # the five 640x480 images: two full batches + one single
    mixed = batch_plan(sizes, 3, mix_shapes=True)
    assert sorted(i for batch in mixed for i in batch) == list(range(len(sizes)))
    assert [len(batch) for batch in mixed] == [3, 3, 2]  # 640x480 batch of 3, then the leftovers mixed


def test_yolo_half_is_passed_as_ultralytics_quantize():
    detector = FakeDetector()
    YoloRegionSource(detector=detector, half=True)([Image.new("RGB", (30, 20))], [{}])
    assert detector.settings[0]["quantize"] == 16 and "half" not in detector.settings[0]


def test_exif_rotated_image_is_detected_upright(tmp_path):
    stored = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))  # stored 40x20, orientation 6 -> upright 20x40
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif)
    detector = FakeDetector()
    extract_regions(make_dataset([str(path)]), YoloRegionSource(detector=detector), tmp_path / "c", progress=False)
    assert detector.sizes == [(20, 40)]
    regions = load_region_cache(tmp_path / "c")["img0"]
    assert regions.boxes[:, 2].max() <= 20 and regions.boxes[:, 3].max() <= 40


def test_random_yolo_yaml_detector_records_no_detections(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", "unset-below")  # records the original value, restored after the test
    monkeypatch.delenv("YOLO_CONFIG_DIR")
    paths = make_images(tmp_path, [(64, 48), (48, 64)])
    source = YoloRegionSource(weights="yolov8n.yaml", imgsz=64, device="cpu", run_dir=tmp_path / "run")
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "run" / "ultralytics-config")
    summary = extract_regions(make_dataset(paths), source, tmp_path / "cache", progress=False)
    table = load_region_cache(tmp_path / "cache")
    assert [len(table[f"img{i}"]) for i in range(2)] == [0, 0]
    assert summary.counts["no_detections"] == 2
    assert source.describe()["weights"] == "random-init:yolov8n.yaml"
    # A local .pt file (here: the random detector saved offline) loads without any download, fingerprinted by hash.
    weights = tmp_path / "weights" / "random.pt"
    weights.parent.mkdir()
    source.detector.save(str(weights))
    from_file = YoloRegionSource(weights=str(weights), imgsz=64, device="cpu")
    assert from_file.describe()["weights"].startswith("sha256:")
    assert len(from_file([Image.new("RGB", (50, 40))], [{}])[0]) == 0


def test_missing_yolo_weights_fail_before_any_work(tmp_path):
    missing = tmp_path / "weights" / "yolov8x.pt"
    with pytest.raises(FileNotFoundError, match="yolov8x.pt") as error:
        YoloRegionSource(weights=str(missing))
    assert str(missing) in str(error.value) and "never downloads" in str(error.value)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("image,caption\nimg0.png,a caption\n")
    with pytest.raises(FileNotFoundError, match=str(missing)):
        extract_cli.main(
            ["--source_type", "csv", "--source_path", str(csv_path), "--weights", str(missing)]
            + ["--output_dir", str(tmp_path / "out")]
        )
    assert not (tmp_path / "out").exists()


def test_killed_run_resumes_without_recomputing_finished_images(tmp_path):
    paths = make_images(tmp_path)
    dataset = make_dataset(paths)
    first = FakeDetector(fail_after=5)
    with pytest.raises(RuntimeError, match="simulated kill"):
        extract_regions(
            dataset, YoloRegionSource(detector=first, batch_size=1), tmp_path / "c", chunk_size=2, progress=False
        )
    cache = region_cache(tmp_path / "c", YoloRegionSource(detector=FakeDetector(), batch_size=1))
    assert cache.completed_ids() == {"img0", "img1", "img2", "img3"}  # two finished chunks; the third was lost
    assert not json.loads(cache.meta_path.read_text())["complete"]
    assert not list(cache.shard_dir.glob(".*.tmp"))  # no half-written file is left behind

    second = FakeDetector()
    summary = extract_regions(
        dataset, YoloRegionSource(detector=second, batch_size=1), tmp_path / "c", chunk_size=2, progress=False
    )
    assert second.images_seen == 3 and summary.skipped_cached == 4
    assert json.loads(cache.meta_path.read_text())["complete"]
    assert list(cache.shard_dir.iterdir()) == []  # merged into one file

    reference = tmp_path / "reference"
    extract_regions(dataset, YoloRegionSource(detector=FakeDetector()), reference, progress=False)
    resumed, expected = load_region_cache(tmp_path / "c"), load_region_cache(reference)
    assert sorted(resumed.regions) == sorted(expected.regions)
    for image_id in expected.regions:
        np.testing.assert_array_equal(resumed[image_id].boxes, expected[image_id].boxes)
    merged = pq.read_table(cache.merged_path)
    assert merged.num_rows == len(SIZES)
    assert merged.schema.metadata[b"dclip_fingerprint"].decode() == cache.fingerprint

    third = FakeDetector()  # a complete cache: nothing left to do, and the merged file is not rewritten
    written = cache.merged_path.stat().st_mtime_ns
    extract_regions(dataset, YoloRegionSource(detector=third), tmp_path / "c", chunk_size=2, progress=False)
    assert third.calls == 0 and cache.merged_path.stat().st_mtime_ns == written


def test_changed_settings_are_detected_not_silently_reused(tmp_path):
    paths = make_images(tmp_path, SIZES[:2])
    dataset = make_dataset(paths)
    extract_regions(dataset, YoloRegionSource(detector=FakeDetector(), conf=0.25), tmp_path / "c", progress=False)
    with pytest.raises(StaleCacheError, match=r"changed: \['conf'\]"):
        extract_regions(dataset, YoloRegionSource(detector=FakeDetector(), conf=0.5), tmp_path / "c", progress=False)
    with pytest.raises(StaleCacheError):
        extract_regions(dataset, GridRegionSource(2), tmp_path / "c", progress=False)
    # The default, fingerprint-named folders keep both results apart instead.
    first = default_region_cache_dir(tmp_path, YoloRegionSource(detector=FakeDetector(), conf=0.25))
    second = default_region_cache_dir(tmp_path, YoloRegionSource(detector=FakeDetector(), conf=0.5))
    assert first != second and first.name.startswith("regions-yolo-")


def test_grid_whole_and_annotation_sources_match_naive_boxes(tmp_path):
    paths = make_images(tmp_path, [(60, 30), (31, 47)])
    boxes = [[[1, 2, 30, 20], [50, 5, 90, 25]], [[0, 0, 0, 10]]]
    dataset = make_dataset(paths, boxes=boxes, labels=[["dog", "cat"], ["bad"]])
    extract_regions(dataset, GridRegionSource(3), tmp_path / "grid", progress=False)
    extract_regions(dataset, WholeImageRegionSource(), tmp_path / "whole", progress=False)
    extract_regions(dataset, AnnotationRegionSource(), tmp_path / "ann", progress=False)
    grid, whole, ann = (load_region_cache(tmp_path / name) for name in ("grid", "whole", "ann"))
    for index, (width, height) in enumerate([(60, 30), (31, 47)]):
        cells = [
            [c * width / 3, r * height / 3, (c + 1) * width / 3, (r + 1) * height / 3]
            for r in range(3)
            for c in range(3)
        ]
        np.testing.assert_allclose(grid[f"img{index}"].boxes, cells, rtol=1e-6)
        np.testing.assert_allclose(whole[f"img{index}"].boxes, [[0, 0, width, height]])
    np.testing.assert_allclose(ann["img0"].boxes, [[1, 2, 30, 20], [50, 5, 60, 25]])
    assert ann["img0"].labels == ["dog", "cat"]
    assert len(ann["img1"]) == 0  # its only box is degenerate


def test_unreadable_image_is_skipped_and_counted(tmp_path):
    paths = make_images(tmp_path, SIZES[:2])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    summary = extract_regions(
        make_dataset([*paths, str(broken)]), WholeImageRegionSource(), tmp_path / "c", progress=False
    )
    assert summary.counts["failed_images"] == 1 and summary.failed_images == [str(broken)]
    assert sorted(load_region_cache(tmp_path / "c").regions) == ["img0", "img1"]


def test_cli_extracts_grid_regions_from_a_csv_dataset(tmp_path, capsys):
    images = tmp_path / "data"
    images.mkdir()
    make_images(images, SIZES[:3])
    csv_path = images / "captions.csv"
    csv_path.write_text("image,caption\n" + "".join(f"img{i}.png,caption {i}\n" for i in range(3)))
    argv = ["--source_type", "csv", "--source_path", str(csv_path), "--source", "grid", "--grid_size", "2"]
    argv += ["--output_dir", str(tmp_path / "out"), "--no_progress"]
    assert extract_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["computed"] == 3 and os.path.basename(report["cache_dir"]).startswith("regions-grid-")
    table = load_region_cache(report["cache_dir"])
    assert len(table) == 3 and all(len(table[key]) == 4 for key in table.regions)


@pytest.mark.slow
def test_accelerate_launch_splits_images_across_two_processes_and_merges(tmp_path):
    images = tmp_path / "data"
    images.mkdir()
    make_images(images, SIZES[:6])
    csv_path = images / "captions.csv"
    csv_path.write_text("image,caption\n" + "".join(f"img{i}.png,caption {i}\n" for i in range(6)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
    ]
    argv = ["-m", "training.extract_regions", "--source_type", "csv", "--source_path", str(csv_path)]
    argv += ["--source", "grid", "--cache_dir", str(tmp_path / "cache"), "--chunk_size", "1", "--no_progress"]
    completed = subprocess.run([*launcher, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["complete"] and meta["num_images"] == 6
    assert meta["last_run"]["computed"] == 6 and meta["last_run"]["counts"]["boxes"] == 6 * 9  # summed over ranks
    assert json.loads(completed.stdout)["computed"] == 6  # printed once, by the main process
    assert list((tmp_path / "cache" / "shards").iterdir()) == []
    table = load_region_cache(tmp_path / "cache")
    assert sorted(table.regions) == [f"img{i}" for i in range(6)]


def test_building_a_yolo_source_leaves_pil_image_open_untouched(tmp_path):
    from PIL import Image

    from training.data import load_image
    from training.regions import YoloRegionSource

    before = Image.open
    YoloRegionSource(weights="yolov8n.yaml", run_dir=tmp_path)
    assert Image.open is before
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert load_image(broken) is None  # a counted skip, not ultralytics' pi-heif install attempt
