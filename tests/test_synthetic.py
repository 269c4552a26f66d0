"""The embedded synthetic data set: determinism, boxes, captions, hard negatives, schema, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import synthetic
from training.synthetic import (
    COLORS,
    COUNT_WORDS,
    OPPOSITE,
    PATTERNS,
    SHAPES,
    SyntheticConfig,
    build_synthetic,
    relation,
    write_bytes_atomic,
)

MICRO = dict(
    num_pretrain_scenes=6,
    num_pretrain_closeups=8,
    num_train=6,
    num_val=3,
    num_test=12,
    num_zero_shot=9,
)
WHITE = (245, 245, 245)
SCHEMA = {"image_id", "image", "captions", "split", "boxes", "box_labels", "source", "scene"}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_synthetic(tmp_path_factory.mktemp("syn"), SyntheticConfig(seed=3, **MICRO))


def _objects(row: dict) -> list[dict]:
    return json.loads(row["scene"])["objects"]


def test_same_seed_gives_identical_images_captions_and_boxes(tmp_path, micro):
    again = build_synthetic(tmp_path, SyntheticConfig(seed=3, **MICRO))
    assert again.root != micro.root  # generated anew in another folder
    for split in ("pretrain", "train", "val", "test"):
        first, second = micro.splits[split].to_list(), again.splits[split].to_list()
        assert [r["captions"] for r in first] == [r["captions"] for r in second]
        assert [r["boxes"] for r in first] == [r["boxes"] for r in second]
        for a, b in zip(first, second):
            assert Path(a["image"]).read_bytes() == Path(b["image"]).read_bytes()
    strip = [{k: v for k, v in t.items() if k != "image"} for t in json.loads(micro.hard_negatives_path.read_text())]
    assert strip == [
        {k: v for k, v in t.items() if k != "image"} for t in json.loads(again.hard_negatives_path.read_text())
    ]


def test_different_seed_gives_different_scenes(tmp_path, micro):
    other = build_synthetic(tmp_path, SyntheticConfig(seed=4, **MICRO))
    assert [r["captions"] for r in other.splits["test"]] != [r["captions"] for r in micro.splits["test"]]
    first = micro.splits["test"][0]["image"]
    assert Path(other.splits["test"][0]["image"]).read_bytes() != Path(first).read_bytes()


def test_split_content_does_not_depend_on_other_split_sizes(tmp_path, micro):
    bigger = build_synthetic(tmp_path, SyntheticConfig(seed=3, **{**MICRO, "num_train": 9, "num_pretrain_scenes": 2}))
    assert bigger.splits["test"]["captions"] == micro.splits["test"]["captions"]
    assert bigger.splits["train"]["captions"][:6] == micro.splits["train"]["captions"]


def test_rows_follow_the_dataset_schema(micro):
    for split, dataset in micro.splits.items():
        assert set(dataset.column_names) == SCHEMA
        for row in dataset:
            assert row["split"] == split and row["source"] == "synthetic"
            assert os.path.isabs(row["image"]) and Path(row["image"]).is_file()
            assert row["captions"] and all(isinstance(c, str) and c.strip() == c for c in row["captions"])
            assert len(row["boxes"]) == len(row["box_labels"])
            assert json.loads(row["scene"])
    ids = [r for d in micro.splits.values() for r in d["image_id"]]
    assert len(ids) == len(set(ids))
    assert len(micro.splits["pretrain"]) == MICRO["num_pretrain_scenes"] + MICRO["num_pretrain_closeups"]


def test_boxes_lie_inside_the_image_and_match_the_drawn_objects(micro):
    for row in micro.splits["test"].to_list() + micro.splits["train"].to_list():
        pixels = np.asarray(Image.open(row["image"]).convert("RGB"))
        height, width = pixels.shape[:2]
        objects = _objects(row)
        assert [o["box"] for o in objects] == row["boxes"]
        covered = np.zeros((height, width), dtype=bool)
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            covered[int(y0) : int(y1), int(x0) : int(x1)] = True
            # Naive reference: the object's pixels (its colour or the pattern's white) span its box.
            crop = pixels[int(y0) : int(y1), int(x0) : int(x1)]
            painted = np.all(crop == COLORS[obj["color"]], axis=-1) | np.all(crop == WHITE, axis=-1)
            rows, cols = np.nonzero(painted)
            assert rows.min() <= 1 and cols.min() <= 1
            assert rows.max() >= crop.shape[0] - 2 and cols.max() >= crop.shape[1] - 2
            assert np.all(crop == COLORS[obj["color"]], axis=-1).sum() >= 0.2 * crop.shape[0] * crop.shape[1]
        # No object colour anywhere outside the boxes.
        for color in COLORS.values():
            assert not np.any(np.all(pixels == color, axis=-1) & ~covered)


def test_test_captions_describe_every_object_and_the_true_relation(micro):
    for row in micro.splits["test"]:
        objects = _objects(row)
        relation_caption, list_caption = row["captions"]
        assert relation_caption.startswith(f"{COUNT_WORDS[len(objects)]} objects: ")
        ordered = sorted(objects, key=lambda o: (o["box"][0] + o["box"][2]) / 2)
        for obj in objects:
            assert f"{obj['color']} {obj['pattern']} {obj['shape']}" in list_caption
        positions = [list_caption.index(f"{o['color']} {o['pattern']} {o['shape']}") for o in ordered]
        assert positions == sorted(positions)
        described = {f"a {o['color']} {o['pattern']} {o['shape']}": o for o in objects}
        body = relation_caption.split(": ", 1)[1]
        for word in OPPOSITE:
            if f" {word} " in body:
                left, right = body.split(f" {word} ")
                assert relation(described[left], described[right]) == word
                break
        else:
            pytest.fail(f"no spatial word in {relation_caption!r}")


def test_distillation_captions_are_coarse_and_true(micro):
    for row in micro.splits["train"].to_list() + micro.splits["val"].to_list():
        objects = _objects(row)
        assert len(set(row["captions"])) == len(row["captions"])
        for caption in row["captions"]:
            words = caption.replace(",", "").replace(":", "").split()
            assert not set(words) & set(PATTERNS), caption  # patterns are only in the regions
            assert set(words) & set(SHAPES) <= {o["shape"] for o in objects}
            assert set(words) & set(COLORS) <= {o["color"] for o in objects}
            if "objects" in words:
                assert words[0] == COUNT_WORDS[len(objects)]


def test_full_distillation_captions_option_uses_full_detail(tmp_path):
    data = build_synthetic(tmp_path, SyntheticConfig(seed=3, **MICRO, distill_captions="full"))
    for row in data.splits["train"]:
        assert row["captions"] == json.loads(row["scene"])["full_captions"]


def test_hard_negatives_change_exactly_the_intended_attribute(micro):
    triples = json.loads(micro.hard_negatives_path.read_text())
    assert len(triples) == MICRO["num_test"]
    test_rows = {r["image_id"]: r for r in micro.splits["test"]}
    vocab = {"shape": set(SHAPES), "color": set(COLORS), "pattern": set(PATTERNS), "count": set(COUNT_WORDS.values())}
    for triple in triples:
        row = test_rows[triple["image_id"]]
        assert triple["image"] == row["image"] and triple["positive"] == row["captions"][0]
        present = {f"{o['color']} {o['pattern']} {o['shape']}" for o in _objects(row)}
        assert sorted(n["swap"] for n in triple["negatives"]) == sorted(synthetic.HARD_NEGATIVE_SWAPS)
        positive = triple["positive"].split()
        for negative in triple["negatives"]:
            words = negative["caption"].split()
            assert len(words) == len(positive)
            changed = [(p, n) for p, n in zip(positive, words) if p != n]
            assert len(changed) == 1, (triple["positive"], negative)
            old, new = changed[0]
            if negative["swap"] == "spatial":
                assert OPPOSITE[f"{old} of" if old in ("left", "right") else old].split()[0] == new
            else:
                assert {old, new} <= vocab[negative["swap"]]
            if negative["swap"] in ("shape", "color", "pattern"):
                body = negative["caption"].split(": ", 1)[1]
                named = [p for p in body.replace(" left of ", "|").replace(" right of ", "|").split("|")]
                named = [n for part in named for n in part.replace(" above ", "|").replace(" below ", "|").split("|")]
                assert any(name[2:] not in present for name in named)  # the swapped object is not in the scene


def test_zero_shot_sets_label_the_closeups_by_attribute(micro):
    for attribute, values in (("shape", SHAPES), ("color", tuple(COLORS)), ("pattern", PATTERNS)):
        paths, labels, names = micro.zero_shot(attribute)
        assert len(paths) == len(labels) == MICRO["num_zero_shot"]
        assert len(names) == len(values) and all(Path(p).is_file() for p in paths)
        assert all(0 <= label < len(values) for label in labels)
        assert all(f"/images/{values[label]}/" in path for path, label in zip(paths, labels))
    # The same close-up has consistent labels across the three sets (by its index in the file name).
    shapes = dict(zip((Path(p).name for p in micro.zero_shot("shape")[0]), micro.zero_shot("shape")[1]))
    colors = dict(zip((Path(p).name for p in micro.zero_shot("color")[0]), micro.zero_shot("color")[1]))
    assert shapes.keys() == colors.keys()


def test_closeup_crops_show_their_object_in_its_colour(micro):
    paths, labels, _ = micro.zero_shot("color")
    for path, label in zip(paths, labels):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        color = list(COLORS.values())[label]
        assert np.all(pixels == color, axis=-1).mean() > 0.1


def test_finished_folder_is_reused_without_rendering(tmp_path, monkeypatch):
    config = SyntheticConfig(seed=5, **MICRO)
    first = build_synthetic(tmp_path, config)

    def fail(*args, **kwargs):
        raise AssertionError("rendered again")

    monkeypatch.setattr(synthetic, "render_scene", fail)
    second = build_synthetic(tmp_path, config)
    assert second.root == first.root
    assert second.splits["test"].to_list() == first.splits["test"].to_list()


def test_killed_build_leaves_no_partial_png_and_rerun_completes(tmp_path, monkeypatch):
    config = SyntheticConfig(seed=6, **MICRO)
    calls = {"n": 0}
    real_save = Image.Image.save

    def save_then_die(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            fp.write(b"\x89PNG partial")
            raise KeyboardInterrupt("killed mid-write")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic(tmp_path, config)
    monkeypatch.setattr(Image.Image, "save", real_save)
    root = tmp_path / f"synthetic-{config.fingerprint()}"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) == 4  # the four images saved before the kill, nothing else
    assert not any(p.name.endswith(".tmp") for p in files) and not (root / "manifest.json").exists()
    for path in files:
        Image.open(path).load()  # complete PNGs only
    data = build_synthetic(tmp_path, config)
    assert (root / "manifest.json").is_file() and len(data.splits["test"]) == MICRO["num_test"]


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "a" / "file.bin"
    write_bytes_atomic(b"old", target)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_bytes_atomic(b"new", target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(distill_captions="medium"), "distill_captions"),
        (dict(min_objects=1), "min_objects"),
        (dict(min_objects=3, max_objects=2), "min_objects"),
        (dict(min_object_size=40), "object_size"),
        (dict(num_train=-1), "num_train"),
    ],
)
def test_invalid_settings_raise_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**kwargs)
