"""Datasets: common-schema loaders on the shared COCO/Caltech data, bad inputs, EXIF boxes, mixing, zero-shot sets."""

from __future__ import annotations

import csv
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from training.data import (
    COLUMNS,
    DataStats,
    SourceSpec,
    boxes_to_upright,
    clean_caption,
    load_exclusion_ids,
    load_image,
    load_source,
    load_zero_shot_folder,
    mix_sources,
    summarize_dataset,
    validate_dataset,
)

# ------------------------------------------------------------------------------------------------ shared-data specs


@pytest.fixture(scope="module")
def coco_dir(shared_data) -> Path:
    return shared_data / "coco_mini_captions"


def coco_spec(coco_dir: Path, instances: bool = False, **extra) -> dict:
    annotations = coco_dir / "annotations"
    spec = {
        "type": "coco",
        "path": [str(annotations / "captions_train2017.json"), str(annotations / "captions_val2017.json")],
        "image_root": [str(coco_dir / "images" / "train2017"), str(coco_dir / "images" / "val2017")],
    }
    if instances:
        original = annotations / "coco_mini_original"
        spec["instances"] = [str(original / "instances_train2017.json"), str(original / "instances_val2017.json")]
    return {**spec, **extra}


def csv_spec(coco_dir: Path, **extra) -> dict:
    return {"type": "csv", "path": str(coco_dir / "captions.csv"), "image_root": str(coco_dir / "images"), **extra}


def karpathy_spec(coco_dir: Path, **extra) -> dict:
    return {
        "type": "karpathy",
        "path": str(coco_dir / "annotations" / "dataset_coco_mini_karpathy_style.json"),
        "image_root": str(coco_dir / "images"),
        **extra,
    }


@pytest.fixture(scope="module")
def coco_dataset(coco_dir):
    return load_source(coco_spec(coco_dir, instances=True), stats=DataStats())


def raw_coco_captions(coco_dir: Path) -> dict[int, list[str]]:
    """Naive reference: every raw caption of the two COCO JSONs by image id."""
    by_id: dict[int, list[str]] = {}
    for name in ("captions_train2017.json", "captions_val2017.json"):
        data = json.loads((coco_dir / "annotations" / name).read_text())
        for image in data["images"]:
            by_id.setdefault(image["id"], [])
        for annotation in data["annotations"]:
            by_id[annotation["image_id"]].append(annotation["caption"])
    return by_id


# ------------------------------------------------------------------------------------------------ real COCO data


def test_coco_json_loads_239_images_1195_captions_in_schema(coco_dataset, coco_dir):
    assert coco_dataset.column_names == list(COLUMNS)
    counts = summarize_dataset(coco_dataset)
    assert counts["images"] == 239 and counts["captions"] == 1195
    assert counts["splits"] == {"train": 80, "val": 159}
    reference = raw_coco_captions(coco_dir)
    for row in coco_dataset:
        assert row["captions"] == [" ".join(c.split()) for c in reference[int(row["image_id"])]]
        assert os.path.isabs(row["image"]) and Path(row["image"]).is_file()
        assert row["source"] == "coco" and row["scene"] == ""


def test_coco_instances_give_xyxy_boxes_with_category_names_for_159_images(coco_dataset, coco_dir):
    counts = summarize_dataset(coco_dataset)
    assert counts["images_with_boxes"] == 159
    data = json.loads((coco_dir / "annotations" / "coco_mini_original" / "instances_val2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    image_id = data["annotations"][0]["image_id"]
    expected = [
        (
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
            names[a["category_id"]],
        )
        for a in data["annotations"]
        if a["image_id"] == image_id
    ]
    row = coco_dataset[coco_dataset["image_id"].index(str(image_id))]
    assert len(row["boxes"]) == len(expected)
    for box, label, (ref_box, ref_label) in zip(row["boxes"], row["box_labels"], expected):
        np.testing.assert_allclose(box, ref_box, atol=1e-3)
        assert label == ref_label
    validate_dataset(coco_dataset)


def test_csv_gives_same_images_and_captions_as_coco_json(coco_dir):
    dataset = load_source(csv_spec(coco_dir), stats=DataStats())
    assert len(dataset) == 239 and sum(len(c) for c in dataset["captions"]) == 1195
    reference = raw_coco_captions(coco_dir)
    # CSV ids are the file stems ("000000397133"), COCO ids the numbers.
    loaded = {int(row["image_id"]): row["captions"] for row in dataset}
    assert loaded == {key: [" ".join(c.split()) for c in value] for key, value in reference.items()}


def test_karpathy_json_keeps_its_train_val_test_splits_and_filters_them(coco_dir):
    dataset = load_source(karpathy_spec(coco_dir), stats=DataStats())
    assert len(dataset) == 239 and sum(len(c) for c in dataset["captions"]) == 1195
    assert summarize_dataset(dataset)["splits"] == {"test": 80, "train": 80, "val": 79}
    stats = DataStats()
    test_only = load_source(karpathy_spec(coco_dir, splits=["test"]), stats=stats)
    assert len(test_only) == 80 and set(test_only["split"]) == {"test"} and stats["split_filtered"] == 159


def test_grayscale_coco_image_decodes_to_rgb(coco_dir):
    path = coco_dir / "images" / "val2017" / "000000431848.jpg"
    with Image.open(path) as raw:
        assert raw.mode == "L"
        gray = np.asarray(raw)
    image = load_image(path, stats=DataStats())
    assert image.mode == "RGB" and image.size == (gray.shape[1], gray.shape[0])
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[..., 0], gray)
    np.testing.assert_array_equal(pixels[..., 2], gray)


def test_newline_and_space_padded_captions_come_out_clean(coco_dataset, coco_dir):
    raw = [c for captions in raw_coco_captions(coco_dir).values() for c in captions]
    assert sum(c != c.strip() for c in raw) == 160 and any("\n" in c for c in raw)
    captions = [c for row in coco_dataset["captions"] for c in row]
    assert all(c == " ".join(c.split()) and c for c in captions)
    assert "Two pizza pies sitting atop a stove getting ready to be cut ." in captions
    assert clean_caption("  a\tcat \n\n on a  mat \r\n") == "a cat on a mat"


# ------------------------------------------------------------------------------------------------ zero-shot sets


def test_caltech_csv_layout_gives_20_classes_of_20_images_with_prompt_names(shared_data):
    root = shared_data / "caltech101_subset20"
    zero_shot = load_zero_shot_folder(root, stats=DataStats())
    assert len(zero_shot) == 400 and len(zero_shot.class_names) == 20
    assert np.bincount(zero_shot.labels).tolist() == [20] * 20
    assert "motorbike" in zero_shot.class_names and "stop sign" in zero_shot.class_names
    assert "Motorbikes" not in zero_shot.class_names
    with open(root / "classes.csv", newline="") as handle:
        folders = {int(r["label"]): r["folder"] for r in csv.DictReader(handle)}
    for path, label in zip(zero_shot.images, zero_shot.labels):
        assert Path(path).parent.name == folders[label] and Path(path).is_file()


def test_folder_per_class_layout_matches_the_csv_labels(shared_data):
    root = shared_data / "caltech101_subset20"
    by_folder = load_zero_shot_folder(root / "images", stats=DataStats())
    by_csv = load_zero_shot_folder(root, stats=DataStats())
    assert by_folder.images == by_csv.images and by_folder.labels == by_csv.labels
    assert by_folder.class_names[9] == "Motorbikes" and by_folder.class_names[16] == "stop sign"


# ------------------------------------------------------------------------------------------------ bad image files


def write_jpeg(path: Path, size=(64, 48), seed=0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_truncated_jpeg_is_skipped_and_counted_not_returned_half_grey(tmp_path):
    full = write_jpeg(tmp_path / "full.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full[: len(full) * 2 // 3])
    stats = DataStats()
    assert load_image(tmp_path / "full.jpg", stats=stats) is not None
    assert load_image(truncated, stats=stats) is None
    assert stats["truncated_image"] == 1 and stats.examples["truncated_image"] == [str(truncated)]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_zero_byte_missing_and_corrupt_files_give_none_and_are_counted(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(b"\x00\x01not an image at all" * 10)
    header_only = write_jpeg(tmp_path / "header.jpg").read_bytes()[:200]
    (tmp_path / "header.jpg").write_bytes(header_only)
    stats = DataStats()
    assert load_image(tmp_path / "empty.jpg", stats=stats) is None
    assert load_image(tmp_path / "absent.jpg", stats=stats) is None
    assert load_image(tmp_path / "garbage.jpg", stats=stats) is None
    assert load_image(tmp_path / "header.jpg", stats=stats) is None
    assert stats["empty_file"] == 1 and stats["missing_image"] == 1
    assert stats["corrupt_image"] + stats["truncated_image"] == 2
    assert str(tmp_path / "absent.jpg") in stats.examples["missing_image"]
    assert "empty_file: 1" in stats.summary()


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    image = load_image(path, stats=DataStats())
    assert image.mode == "RGB" and image.size == (32, 24)
    np.testing.assert_allclose(np.asarray(image).reshape(-1, 3).mean(0), [255, 0, 0], atol=12)


def test_16_bit_png_is_rescaled_to_8_bit_rgb_not_saturated(tmp_path):
    path = tmp_path / "deep.png"
    ramp = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (10, 1))
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    pixels = np.asarray(load_image(path, stats=DataStats()))
    assert pixels.shape == (10, 40, 3)
    np.testing.assert_allclose(pixels[0, :, 1].astype(float), ramp[0] / 65535 * 255, atol=1)


# ------------------------------------------------------------------------------------------------ EXIF orientation

STORED_BOX = [10, 5, 25, 15]  # xyxy on the stored 60x40 pixels


def write_oriented_png(path: Path, orientation: int) -> Path:
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    x0, y0, x1, y1 = STORED_BOX
    pixels[y0:y1, x0:x1] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return path


def white_bbox(image: Image.Image) -> list[float]:
    """Naive reference: the bounding box of the white pixels of the upright image."""
    ys, xs = np.nonzero(np.asarray(image)[..., 0] > 128)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_drawn_on_stored_pixels_follow_the_exif_transposed_image(tmp_path, orientation):
    root = tmp_path / "folder"
    root.mkdir()
    write_oriented_png(root / "img.png", orientation)
    record = {"file_name": "img.png", "caption": "a white box", "boxes": [STORED_BOX], "box_labels": ["box"]}
    (root / "metadata.jsonl").write_text(json.dumps(record) + "\n")
    stats = DataStats()
    row = load_source({"type": "imagefolder", "path": str(root)}, stats=stats)[0]
    image = load_image(row["image"], stats=stats)
    assert row["boxes"] == [white_bbox(image)] and row["box_labels"] == ["box"]
    assert stats["rotated_boxes"] == (orientation != 1)
    np.testing.assert_allclose(boxes_to_upright([STORED_BOX], 60, 40, orientation)[0], white_bbox(image))


def test_coco_instances_on_an_exif_rotated_image_refer_to_the_upright_image(tmp_path):
    write_oriented_png(tmp_path / "rot.png", 6)
    image = {"id": 7, "file_name": "rot.png", "width": 60, "height": 40}
    x0, y0, x1, y1 = STORED_BOX
    (tmp_path / "captions.json").write_text(
        json.dumps({"images": [image], "annotations": [{"id": 1, "image_id": 7, "caption": " a box\n"}]})
    )
    instances = {
        "images": [image],
        "categories": [{"id": 3, "name": "square"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [x0, y0, x1 - x0, y1 - y0]}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    spec = {
        "type": "coco",
        "path": str(tmp_path / "captions.json"),
        "image_root": str(tmp_path),
        "instances": str(tmp_path / "instances.json"),
    }
    row = load_source(spec, stats=DataStats())[0]
    upright = load_image(row["image"], stats=DataStats())
    assert upright.size == (40, 60)
    assert row["boxes"] == [white_bbox(upright)] and row["box_labels"] == ["square"] and row["captions"] == ["a box"]


def test_boxes_declared_upright_are_not_rotated_again(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    write_oriented_png(root / "img.png", 6)
    upright = load_image(root / "img.png", stats=DataStats())
    record = {"file_name": "img.png", "caption": "x", "boxes": [white_bbox(upright)]}
    (root / "metadata.jsonl").write_text(json.dumps(record))
    row = load_source({"type": "imagefolder", "path": str(root), "boxes_frame": "upright"}, stats=DataStats())[0]
    assert row["boxes"] == [white_bbox(upright)] and row["box_labels"] == [""]


# ------------------------------------------------------------------------------------------------ manifests


@pytest.fixture
def escaping_tree(tmp_path) -> Path:
    """root/ with one good image, plus an image outside root reachable by ../, absolute path and a symlink."""
    root = tmp_path / "root"
    root.mkdir()
    write_jpeg(root / "good.jpg")
    outside = write_jpeg(tmp_path / "secret.jpg", seed=1)
    (root / "link.jpg").symlink_to(outside)
    return root


ESCAPES = ["../secret.jpg", "{tmp}/secret.jpg", "link.jpg", "sub/../../secret.jpg"]


def test_csv_rows_escaping_the_root_are_rejected_and_counted(escaping_tree):
    rows = [("good.jpg", "a good image"), ("missing.jpg", "not there")]
    rows += [(escape.format(tmp=escaping_tree.parent), "escape") for escape in ESCAPES]
    with open(escaping_tree / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    stats = DataStats()
    dataset = load_source({"type": "csv", "path": str(escaping_tree / "captions.csv")}, stats=stats)
    assert dataset["image_id"] == ["good"] and dataset["captions"] == [["a good image"]]
    assert stats["outside_root"] == 4 and stats["missing_image"] == 1
    assert "../secret.jpg" in stats.examples["outside_root"]
    assert load_image("../secret.jpg", root=escaping_tree, stats=stats) is None
    assert load_image("good.jpg", root=escaping_tree, stats=stats) is not None
    assert stats["outside_root"] == 5


def test_metadata_jsonl_rows_escaping_the_root_are_rejected_and_counted(escaping_tree):
    lines = [{"file_name": "good.jpg", "captions": ["one", "  ", "two\n"]}]
    lines += [{"file_name": escape.format(tmp=escaping_tree.parent), "caption": "x"} for escape in ESCAPES]
    (escaping_tree / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    stats = DataStats()
    dataset = load_source({"type": "imagefolder", "path": str(escaping_tree)}, stats=stats)
    assert dataset["captions"] == [["one", "two"]] and stats["empty_caption"] == 1
    assert stats["outside_root"] == 4


def test_empty_captions_are_dropped_and_uncaptioned_images_skipped(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        write_jpeg(tmp_path / name)
    (tmp_path / "c.csv").write_text('image,caption\na.jpg,"  hello\n world "\na.jpg,\nb.jpg,"   "\n')
    stats = DataStats()
    dataset = load_source({"type": "csv", "path": str(tmp_path / "c.csv")}, stats=stats)
    assert dataset["captions"] == [["hello world"]]
    assert stats["empty_caption"] == 2 and stats["uncaptioned_image"] == 1
    kept = load_source({"type": "csv", "path": str(tmp_path / "c.csv"), "keep_uncaptioned": True}, stats=stats)
    assert kept["captions"] == [["hello world"], []]


# ------------------------------------------------------------------------------------------------ hub sources


def test_hub_source_fails_fast_with_a_clear_message_when_offline(tmp_path, monkeypatch):
    import datasets

    def no_network(*args, **kwargs):
        raise AssertionError("load_dataset must not be called offline")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="offline") as error:
        load_source({"type": "hub", "path": "someone/flickr30k", "image_cache": str(tmp_path)})
    assert time.perf_counter() - start < 1.0
    assert "download it first" in str(error.value) and "someone/flickr30k" in str(error.value)


def test_hub_source_from_a_local_saved_copy_writes_images_to_the_cache(tmp_path):
    import datasets

    write_jpeg(tmp_path / "x.jpg")
    Image.new("L", (8, 6), 90).save(tmp_path / "y.png")
    saved = datasets.Dataset.from_dict(
        {
            "image": [str(tmp_path / "x.jpg"), str(tmp_path / "y.png")],
            "caption": [["a  dog", "a cat"], ["\n"]],
            "img_id": ["id/1", "2"],
        }
    ).cast_column("image", datasets.Image())
    saved.save_to_disk(str(tmp_path / "saved"))
    spec = {"type": "hub", "path": str(tmp_path / "saved"), "name": "flickr", "image_cache": str(tmp_path / "cache")}
    stats = DataStats()
    dataset = load_source(spec, stats=stats)
    assert dataset["image_id"] == ["id/1"] and dataset["captions"] == [["a dog", "a cat"]]
    assert stats["uncaptioned_image"] == 1
    cached = Path(dataset[0]["image"])
    assert cached.parent == (tmp_path / "cache" / "flickr").resolve() and cached.suffix == ".jpg"
    assert cached.read_bytes() == (tmp_path / "x.jpg").read_bytes()


# ------------------------------------------------------------------------------------------------ mixing


def test_mix_caps_each_source_prefixes_ids_and_splits_90_10(coco_dir):
    specs = [csv_spec(coco_dir, name="csv", max_images=100), karpathy_spec(coco_dir, name="kp", splits=["train"])]
    dataset, summary = mix_sources(specs, seed=3)
    assert summary.selection == "faithful"
    assert summary.sources["csv"]["kept"] == 100 and summary.sources["csv"]["capped"] == 139
    assert summary.sources["kp"]["kept"] == 80
    assert len(dataset) == 180 and dataset["split"].count("val") == 18
    assert len(set(dataset["image_id"])) == 180
    assert {i.split(":")[0] for i in dataset["image_id"]} == {"csv", "kp"}
    assert all(row_id.startswith(source + ":") for row_id, source in zip(dataset["image_id"], dataset["source"]))
    validate_dataset(dataset)


def test_mix_is_a_deterministic_function_of_the_seed(coco_dir):
    specs = [csv_spec(coco_dir, max_images=50), karpathy_spec(coco_dir, max_images=60)]
    first, _ = mix_sources(specs, seed=11)
    again, _ = mix_sources(specs, seed=11)
    other, _ = mix_sources(specs, seed=12)
    assert first["image_id"] == again["image_id"] and first["split"] == again["split"]
    assert first["image_id"] != other["image_id"]
    assert set(first["image_id"]) != set(other["image_id"])  # the caps sample different images too


def test_clean_selection_drops_karpathy_val_and_test_images_from_every_source(coco_dir, tmp_path):
    karpathy_file = coco_dir / "annotations" / "dataset_coco_mini_karpathy_style.json"
    excluded = load_exclusion_ids(karpathy_file)
    assert len(excluded) == 159
    dataset, summary = mix_sources([coco_spec(coco_dir), csv_spec(coco_dir)], seed=0, exclude_file=karpathy_file)
    assert summary.selection == "clean" and summary.num_exclusion_ids == 159
    assert summary.sources["coco"]["excluded"] == 159 and summary.sources["csv"]["excluded"] == 159
    assert len(dataset) == 160 and summary.totals["kept"] == 160
    assert not {int(i.split(":")[1]) for i in dataset["image_id"]} & {int(i) for i in excluded}
    assert "clean selection" in str(summary) and summary.to_dict()["totals"]["excluded"] == 318
    # A prefixed id only excludes from its own source.
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# leaked\ncoco:397133\n")
    _, only_coco = mix_sources([coco_spec(coco_dir), csv_spec(coco_dir)], seed=0, exclude_file=ids_file)
    assert only_coco.sources["coco"]["excluded"] == 1 and only_coco.sources["csv"]["excluded"] == 0


# ------------------------------------------------------------------------------------------------ specs, validation


def test_source_spec_rejects_unknown_keys_and_types_and_parses_from_yaml_like_dicts():
    with pytest.raises(ValueError, match="max_image"):
        SourceSpec.from_dict({"type": "csv", "path": "a.csv", "max_image": 3})
    with pytest.raises(ValueError, match="Unknown source type"):
        SourceSpec.from_dict({"type": "tsv", "path": "a.tsv"})
    spec = SourceSpec.from_dict({"type": "coco", "path": "c.json", "image_root": "imgs", "splits": "train"})
    assert spec.path == ["c.json"] and spec.image_root == ["imgs"] and spec.splits == ["train"] and spec.name == "coco"
    from transformers import HfArgumentParser

    (parsed,) = HfArgumentParser(SourceSpec).parse_args_into_dataclasses(["--type", "csv", "--path", "a.csv"])
    assert parsed.path == ["a.csv"]


def test_missing_annotation_file_and_image_root_raise_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        load_source({"type": "csv", "path": str(tmp_path / "nope.csv")})
    (tmp_path / "k.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="image_root"):
        load_source({"type": "karpathy", "path": str(tmp_path / "k.json")})


def test_validate_dataset_rejects_duplicate_ids_and_bad_boxes_and_finds_bad_images(tmp_path):
    import datasets

    from training.data import dataset_features

    write_jpeg(tmp_path / "ok.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"")
    row = {"captions": ["c"], "split": "train", "box_labels": ["x"], "source": "t", "scene": ""}

    def build(rows):
        return datasets.Dataset.from_list([{**row, **r} for r in rows], features=dataset_features())

    good = build(
        [
            {"image_id": "a", "image": str(tmp_path / "ok.jpg"), "boxes": [[0, 0, 2, 2]]},
            {"image_id": "b", "image": str(tmp_path / "bad.jpg"), "boxes": [[0, 0, 2, 2]]},
        ]
    )
    stats = DataStats()
    assert validate_dataset(good, check_images=True, stats=stats)["bad_images"] == [str(tmp_path / "bad.jpg")]
    with pytest.raises(ValueError, match="Duplicate"):
        validate_dataset(build([{"image_id": "a", "image": "/x", "boxes": []}] * 2))
    with pytest.raises(ValueError, match="xyxy"):
        validate_dataset(build([{"image_id": "a", "image": "/x", "boxes": [[3, 0, 2, 2]]}]))


def test_data_stats_survive_pickling_for_dataloader_workers():
    stats = DataStats()
    stats.add("missing_image", "/a.jpg", 2)
    copy = pickle.loads(pickle.dumps(stats))
    copy.add("missing_image", "/b.jpg")
    stats.update(copy)
    assert stats["missing_image"] == 5 and stats.examples["missing_image"][:2] == ["/a.jpg", "/a.jpg"]


def test_command_line_summarises_a_yaml_list_of_sources(coco_dir, tmp_path, capsys):
    import yaml

    from training.data import main

    specs = [csv_spec(coco_dir, max_images=30), karpathy_spec(coco_dir, splits=["train"], max_images=20)]
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump({"sources": specs}))
    assert main([str(tmp_path / "sources.yaml"), "--seed", "1", "--summary-json", str(tmp_path / "s.json")]) == 0
    assert "50 images, 250 captions" in capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["mix"]["totals"]["kept"] == 50 and summary["dataset"]["splits"] == {"train": 45, "val": 5}
