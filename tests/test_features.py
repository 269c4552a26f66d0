"""Frozen-CLIP feature caches, teacher-target caches and the stage datasets/collators (tiny random teacher)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from modeling_dclip import DCLIPProcessor, DCLIPTeacherConfig, DCLIPTeacherModel
from tests.conftest import tiny_clip_config
from training.features import (
    compute_image_features,
    compute_teacher_targets,
    compute_text_features,
    load_image_features,
    load_teacher_targets,
    load_text_features,
    module_fingerprint,
)
from training.regions import AnnotationRegionSource, StaleCacheError, extract_regions, load_region_cache
from training.stage_data import (
    STUDENT_KEYS,
    TEACHER_FEATURE_KEYS,
    TEACHER_RAW_KEYS,
    StudentDistillCollator,
    StudentDistillDataset,
    TeacherFeatureCollator,
    TeacherFeatureDataset,
    TeacherRawCollator,
    TeacherRawDataset,
    collate_teacher_features,
    draw_caption_index,
)

FP16 = dict(rtol=5e-3, atol=5e-3)
CAPTIONS = [
    ["a red circle left of a blue square", "a cat sitting on a laptop keyboard"],
    ["two green triangles above a yellow star"],
    ["a man riding a horse on a beach", "a plate of food", "a striped object"],
    ["a small large object", "food"],
    ["a dotted solid"],
]
BOXES = [
    [[2, 3, 20, 18], [10, 0, 40, 30], [0, 0, 64, 48]],
    [],  # no region: R = 0, the teacher's empty-region policy decides
    [[5, 5, 25, 30]],
    [[0, 0, 10, 10], [3, 3, 30, 40], [1, 2, 20, 22], [30, 1, 48, 20]],
    [[4, 4, 14, 14]],
]
SIZES = [(64, 48), (40, 40), (50, 36), (48, 64), (30, 30)]


def make_dataset(folder):
    rng = np.random.default_rng(0)
    paths = []
    for index, (width, height) in enumerate(SIZES):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    n = len(SIZES)
    return Dataset.from_dict(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "image": paths,
            "captions": CAPTIONS,
            "split": ["train"] * n,
            "boxes": BOXES,
            "box_labels": [["obj"] * len(b) for b in BOXES],
            "source": ["synthetic"] * n,
            "scene": [""] * n,
        }
    )


# Module-scoped: building the caches once keeps this file fast; tests that mutate build their own copies.
@pytest.fixture(scope="module")
def teacher(tiny_tokenizer):
    torch.manual_seed(0)
    config = DCLIPTeacherConfig(clip_config=tiny_clip_config(len(tiny_tokenizer)).to_dict(), num_attention_heads=4)
    return DCLIPTeacherModel(config).eval()


@pytest.fixture(scope="module")
def processor(tiny_tokenizer, tiny_image_processor):
    return DCLIPProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def caches(tmp_path_factory, dataset, teacher, processor):
    root = tmp_path_factory.mktemp("caches")
    extract_regions(dataset, AnnotationRegionSource(), root / "regions", progress=False)
    regions = load_region_cache(root / "regions")
    compute_image_features(
        dataset, regions, teacher, processor, root / "img", images_per_batch=2, crops_per_forward=3, progress=False
    )
    compute_text_features(dataset, teacher, processor, root / "txt", captions_per_forward=3, progress=False)
    return regions, load_image_features(root / "img"), load_text_features(root / "txt")


def open_image(path):
    with Image.open(path) as image:
        return image.convert("RGB")


def test_image_feature_cache_equals_direct_model_outputs(dataset, teacher, processor, caches):
    _, image_features, _ = caches
    for row in dataset:
        image = open_image(row["image"])
        region_embeds, image_embeds = image_features.get(row["image_id"])
        assert region_embeds.dtype == np.float16 and image_embeds.dtype == np.float16
        assert region_embeds.shape == (len(row["boxes"]), teacher.embed_dim)
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        np.testing.assert_allclose(image_embeds, teacher.get_image_features(pixels)[0].numpy(), **FP16)
        if row["boxes"]:
            crops = processor.process_regions([image], [row["boxes"]])
            direct = teacher.get_region_features(crops["region_pixel_values"], crops["region_mask"])[0]
            np.testing.assert_allclose(region_embeds, direct.numpy(), **FP16)


def test_text_feature_cache_stores_valid_tokens_only(dataset, teacher, processor, caches):
    _, _, text_features = caches
    assert len(text_features) == sum(len(c) for c in CAPTIONS)
    for row in dataset:
        encoded = processor(text=row["captions"], return_tensors="pt")
        direct = teacher.get_text_features(encoded["input_ids"], encoded["attention_mask"])
        for index, caption in enumerate(row["captions"]):
            tokens, text = text_features.get(row["image_id"], index)
            expected = direct.token_embeds[index][direct.token_mask[index]]
            assert tokens.shape == expected.shape and text_features.caption(row["image_id"], index) == caption
            np.testing.assert_allclose(tokens, expected.numpy(), **FP16)
            np.testing.assert_allclose(text, direct.text_embeds[index].numpy(), **FP16)


def test_teacher_target_cache_equals_teacher_on_cached_batch(tmp_path, dataset, teacher, caches):
    _, image_features, text_features = caches
    compute_teacher_targets(
        dataset, teacher, image_features, text_features, tmp_path / "targets", pairs_per_forward=4, progress=False
    )
    targets = load_teacher_targets(tmp_path / "targets")
    assert len(targets) == sum(len(c) for c in CAPTIONS)
    region_list, token_list = [], []
    keys = [(row["image_id"], i) for row in dataset for i in range(len(row["captions"]))]
    for image_id, index in keys:
        region_list.append(image_features.get(image_id))
        token_list.append(text_features.get(image_id, index))
    # Naive reference: one pair at a time, unpadded, straight from the cached arrays.
    for (image_id, index), (regions, image), (tokens, text) in zip(keys, region_list, token_list):
        with torch.no_grad():
            expected = teacher(
                token_embeds=torch.from_numpy(tokens.astype(np.float32))[None],
                text_embeds=torch.from_numpy(text.astype(np.float32))[None],
                region_embeds=torch.from_numpy(regions.astype(np.float32)).reshape(1, -1, teacher.embed_dim),
                image_embeds=torch.from_numpy(image.astype(np.float32))[None],
            ).teacher_embeds[0]
        np.testing.assert_allclose(targets.get(image_id, index), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_collator_padding_gives_the_same_teacher_output_as_unpadded_samples(dataset, teacher, caches):
    _, image_features, text_features = caches
    ds = TeacherFeatureDataset(dataset, image_features, text_features, seed=3)
    samples = [ds[i] for i in range(len(ds))]
    batch = TeacherFeatureCollator()(samples)
    assert set(batch) == {*TEACHER_FEATURE_KEYS, "image_index"}
    assert batch["region_embeds"].shape[1] == max(len(b) for b in BOXES)
    assert batch["token_mask"].sum(-1).tolist() == [s["token_embeds"].shape[0] for s in samples]
    assert not batch["region_mask"][1].any()  # the image without regions stays empty; the model's policy decides
    with torch.no_grad():
        batched = teacher(**{k: v for k, v in batch.items() if k != "image_index"}).teacher_embeds
        for row, sample in enumerate(samples):
            single = collate_teacher_features([sample])
            single.pop("image_index")
            alone = teacher(**single).teacher_embeds[0]
            torch.testing.assert_close(batched[row], alone, rtol=1e-5, atol=1e-5)


def test_caption_draw_changes_with_epoch_and_is_reproducible(dataset, caches):
    _, image_features, text_features = caches
    ds = TeacherFeatureDataset(dataset, image_features, text_features, seed=7)
    twin = TeacherFeatureDataset(dataset, image_features, text_features, seed=7)
    draws = {}
    for epoch in range(12):
        ds.set_epoch(epoch)
        twin.set_epoch(epoch)
        draws[epoch] = [ds._draw(i)[2] for i in range(len(ds))]
        assert draws[epoch] == [twin._draw(i)[2] for i in range(len(twin))]
        for i in range(len(ds)):
            expected = text_features.get(f"img{i}", draws[epoch][i])[0]
            np.testing.assert_array_equal(ds[i]["token_embeds"].numpy(), expected)
    assert len({tuple(d) for d in draws.values()}) > 1  # the draw changes with the epoch
    assert {draws[e][2] for e in draws} == {0, 1, 2}  # every caption of the 3-caption image comes up
    other_seed = [draw_caption_index(8, 0, i, 3) for i in range(50)]
    assert other_seed != [draw_caption_index(7, 0, i, 3) for i in range(50)]
    counts = np.bincount([draw_caption_index(0, e, 0, 4) for e in range(4000)], minlength=4)
    assert counts.min() > 900  # uniform over the captions


def test_raw_teacher_batch_matches_the_cached_path(dataset, teacher, processor, caches):
    regions, image_features, text_features = caches
    raw = TeacherRawDataset(dataset, regions, seed=3, load_image=open_image)
    cached = TeacherFeatureDataset(dataset, image_features, text_features, seed=3)
    batch = TeacherRawCollator(processor)([raw[i] for i in range(len(raw))])
    assert set(batch) == {*TEACHER_RAW_KEYS, "image_index"}
    assert batch["region_pixel_values"].shape[:2] == batch["region_mask"].shape
    assert batch["region_mask"].sum(-1).tolist() == [len(b) for b in BOXES]
    cached_batch = TeacherFeatureCollator()([cached[i] for i in range(len(cached))])
    assert torch.equal(batch["image_index"], cached_batch["image_index"])
    with torch.no_grad():
        from_raw = teacher(**{k: v for k, v in batch.items() if k != "image_index"}).teacher_embeds
        from_cache = teacher(**{k: v for k, v in cached_batch.items() if k != "image_index"}).teacher_embeds
    torch.testing.assert_close(from_raw, from_cache, rtol=1e-2, atol=1e-2)


def test_student_batch_has_the_student_keys_and_cached_targets(tmp_path, dataset, teacher, processor, caches):
    _, image_features, text_features = caches
    compute_teacher_targets(dataset, teacher, image_features, text_features, tmp_path / "targets", progress=False)
    targets = load_teacher_targets(tmp_path / "targets")
    ds = StudentDistillDataset(
        dataset, targets, text_features, processor.image_processor, seed=1, load_image=open_image
    )
    ds.set_epoch(2)
    samples = [ds[i] for i in range(len(ds))]
    batch = StudentDistillCollator(processor.tokenizer)(samples)
    assert set(batch) == {*STUDENT_KEYS, "image_index"}
    assert batch["pixel_values"].shape == (len(ds), 3, 30, 30)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    for i in range(len(ds)):
        caption_index = draw_caption_index(1, 2, i, len(CAPTIONS[i]))
        np.testing.assert_array_equal(batch["teacher_embeds"][i].numpy(), targets.get(f"img{i}", caption_index))
        text = text_features.get(f"img{i}", caption_index)[1].astype(np.float32)
        np.testing.assert_array_equal(batch["target_text_embeds"][i].numpy(), text)
        expected_ids = processor.tokenizer(CAPTIONS[i][caption_index])["input_ids"]
        assert batch["input_ids"][i][: len(expected_ids)].tolist() == expected_ids
    pixels = processor.image_processor(images=open_image(dataset[0]["image"]), return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"][0], pixels["pixel_values"][0])


def test_unreadable_image_is_skipped_counted_and_dropped_by_collators(tmp_path, teacher, processor):
    dataset = make_dataset(tmp_path)
    extract_regions(dataset, AnnotationRegionSource(), tmp_path / "regions", progress=False)
    regions = load_region_cache(tmp_path / "regions")
    broken = dataset[2]["image"]
    with open(broken, "wb"):
        pass  # now a zero-byte file
    summary = compute_image_features(dataset, regions, teacher, processor, tmp_path / "img", progress=False)
    assert summary.counts["failed_images"] == 1 and summary.failed_images == [broken]
    image_features = load_image_features(tmp_path / "img")
    assert "img2" not in image_features and len(image_features) == 4
    raw = TeacherRawDataset(dataset, regions, seed=0)
    collator = TeacherRawCollator(processor)
    batch = collator([raw[i] for i in range(len(raw))])
    assert raw[2] is None and collator.stats["failed_images"] == 1 and batch["image_index"].tolist() == [0, 1, 3, 4]


def test_feature_caches_resume_after_a_kill_and_reject_another_clip(tmp_path, dataset, teacher, processor):
    teacher = copy.deepcopy(teacher)
    extract_regions(dataset, AnnotationRegionSource(), tmp_path / "regions", progress=False)
    regions = load_region_cache(tmp_path / "regions")
    loaded = []

    def failing_loader(path):
        if len(loaded) == 3:
            raise RuntimeError("simulated kill")
        loaded.append(path)
        return open_image(path)

    with pytest.raises(RuntimeError, match="simulated kill"):
        compute_image_features(
            dataset, regions, teacher, processor, tmp_path / "img", chunk_size=2, load_image=failing_loader
        )
    loaded.clear()
    summary = compute_image_features(
        dataset, regions, teacher, processor, tmp_path / "img", chunk_size=2, load_image=open_image
    )
    assert summary.skipped_cached == 2 and summary.computed == 3
    compute_image_features(dataset, regions, teacher, processor, tmp_path / "ref", load_image=open_image)
    resumed, reference = load_image_features(tmp_path / "img"), load_image_features(tmp_path / "ref")
    assert len(resumed._regions.chunks) == 3  # one record batch per merged shard, read without combining
    for i in range(len(dataset)):
        for got, want in zip(resumed.get(f"img{i}"), reference.get(f"img{i}")):
            np.testing.assert_array_equal(got, want)

    with torch.no_grad():
        teacher.clip.visual_projection.weight.mul_(1.01)  # another CLIP checkpoint
    with pytest.raises(StaleCacheError, match="changed: \\['clip'\\]"):
        compute_image_features(dataset, regions, teacher, processor, tmp_path / "img", progress=False)


def test_checkpoint_fingerprints_survive_save_and_reload_and_change_with_weights(tmp_path, teacher):
    teacher.save_pretrained(tmp_path / "teacher")
    reloaded = DCLIPTeacherModel.from_pretrained(tmp_path / "teacher")
    assert module_fingerprint(reloaded, reloaded.config) == module_fingerprint(teacher, teacher.config)
    assert module_fingerprint(reloaded.clip, reloaded.config.clip_config) == module_fingerprint(
        teacher.clip, teacher.config.clip_config
    )
    with torch.no_grad():
        reloaded.cross_layers[0].text_norm.bias.add_(1e-3)  # a trained teacher: same CLIP, new targets
    assert module_fingerprint(reloaded, reloaded.config) != module_fingerprint(teacher, teacher.config)
    assert module_fingerprint(reloaded.clip, reloaded.config.clip_config) == module_fingerprint(
        teacher.clip, teacher.config.clip_config
    )


def test_pixel_cache_gives_the_student_the_same_inputs_without_decoding(tmp_path, dataset, teacher, processor, caches):
    from training.features import compute_pixel_cache, load_pixel_cache

    _, image_features, text_features = caches
    compute_teacher_targets(dataset, teacher, image_features, text_features, tmp_path / "targets", progress=False)
    targets = load_teacher_targets(tmp_path / "targets")
    summary = compute_pixel_cache(dataset, processor.image_processor, tmp_path / "pixels", progress=False)
    assert summary.to_dict()["counts"]["images"] == len(dataset)
    pixels = load_pixel_cache(tmp_path / "pixels")
    decoded = StudentDistillDataset(dataset, targets, text_features, processor.image_processor, load_image=open_image)

    def must_not_decode(path):
        raise AssertionError(f"decoded {path} although it is in the pixel cache")

    cached = StudentDistillDataset(
        dataset, targets, text_features, processor.image_processor, load_image=must_not_decode, pixels=pixels
    )
    for index in range(len(decoded)):
        expected, got = decoded[index], cached[index]
        torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], atol=2e-3, rtol=1e-3)
        assert got["caption"] == expected["caption"]


def test_pixel_cache_of_other_preprocessing_is_rejected(tmp_path, dataset, teacher, processor, caches):
    from transformers import CLIPImageProcessor

    from training.features import compute_pixel_cache, load_pixel_cache

    _, image_features, text_features = caches
    compute_teacher_targets(dataset, teacher, image_features, text_features, tmp_path / "targets", progress=False)
    other = CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 20, "width": 20})
    compute_pixel_cache(dataset, other, tmp_path / "pixels", progress=False)
    with pytest.raises(StaleCacheError, match="other preprocessing"):
        StudentDistillDataset(
            dataset,
            load_teacher_targets(tmp_path / "targets"),
            text_features,
            processor.image_processor,
            pixels=load_pixel_cache(tmp_path / "pixels"),
        )
