"""DCLIPProcessor: every image mode, EXIF orientation, box sanitising, region crops and long captions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_dclip import DCLIPProcessor, sanitize_boxes, to_rgb


def _exif_rotated(orientation: int = 6) -> Image.Image:
    """A 40x20 stored image whose EXIF says 'rotate' (upright it is 20x40)."""
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_every_image_mode_becomes_8_bit_rgb(mode):
    if mode == "I;16":
        image = Image.fromarray(np.full((12, 10), 40000, dtype=np.uint16))
    elif mode in ("I", "F"):
        image = Image.new(mode, (10, 12), 30000 if mode == "I" else 0.5)
    else:
        image = Image.new("RGB", (10, 12), (120, 60, 200)).convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (10, 12)
    if mode == "I;16":  # 40000/65535 of full scale, not clipped to white
        assert 150 <= np.asarray(rgb)[0, 0, 0] <= 160


def test_palette_image_with_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0)).convert("P")
    image.info["transparency"] = 0
    assert np.asarray(to_rgb(image))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    upright = to_rgb(_exif_rotated())
    assert upright.size == (20, 40)


def test_to_rgb_rejects_non_images():
    with pytest.raises(TypeError, match="PIL.Image"):
        to_rgb(np.zeros((3, 3)))


def test_sanitize_boxes_clips_and_drops_degenerate_boxes():
    boxes = [
        [-5, -5, 10, 10],  # clipped to [0, 0, 10, 10]
        [5, 5, 5, 9],  # zero width
        [8, 8, 2, 2],  # inverted
        [float("nan"), 0, 3, 3],  # NaN
        [30, 30, 40, 40],  # outside a 20x20 image
        [2, 3, 25, 19.5],  # clipped on the right
    ]
    clean, dropped = sanitize_boxes(boxes, 20, 20)
    assert dropped == 4
    np.testing.assert_allclose(clean, [[0, 0, 10, 10], [2, 3, 20, 19.5]])
    assert sanitize_boxes(None, 5, 5)[0].shape == (0, 4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        sanitize_boxes([[1, 2, 3]], 5, 5)


def test_regions_are_padded_with_a_mask_and_match_processed_crops(tiny_processor):
    image = Image.new("RGB", (60, 40), (10, 200, 10))
    out = tiny_processor(images=[image, image], boxes=[[[0, 0, 30, 20], [30, 20, 60, 40]], [[10, 10, 50, 30]]])
    assert out["pixel_values"].shape == (2, 3, 30, 30)
    assert out["region_pixel_values"].shape == (2, 2, 3, 30, 30)
    assert out["region_mask"].tolist() == [[True, True], [True, False]]
    crop = tiny_processor.image_processor(images=[image.crop((10, 10, 50, 30))], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out["region_pixel_values"][1, 0], crop[0])
    assert out["region_pixel_values"][1, 1].abs().sum() == 0


def test_image_without_valid_boxes_gets_the_whole_image_and_is_counted(tiny_processor):
    image = Image.new("RGB", (60, 40), (10, 20, 30))
    out = tiny_processor(images=[image], boxes=[[[70, 70, 80, 80], [5, 5, 1, 1]]])
    assert out["region_mask"].tolist() == [[True]]
    torch.testing.assert_close(out["region_pixel_values"][0, 0], out["pixel_values"][0])
    assert tiny_processor.stats["dropped_boxes"] == 2
    assert tiny_processor.stats["images_without_regions"] == 1


def test_policy_off_leaves_images_without_regions_as_padding(tiny_tokenizer, tiny_image_processor):
    processor = DCLIPProcessor(tiny_image_processor, tiny_tokenizer, whole_image_if_empty=False)
    image = Image.new("RGB", (60, 40))
    out = processor(images=[image, image], boxes=[[], [[0, 0, 10, 10]]])
    assert out["region_mask"].tolist() == [[False], [True]]


def test_boxes_refer_to_the_upright_image(tiny_processor):
    stored = _exif_rotated()  # upright: the red band is on top (orientation 6 = rotate 90° clockwise)
    upright = to_rgb(stored)
    crops = tiny_processor.crop_regions(stored, [[0, 0, 20, 10]])
    assert crops[0].size == (20, 10)
    assert np.asarray(crops[0]).mean(axis=(0, 1))[0] > 200
    assert np.asarray(upright.crop((0, 30, 20, 40))).mean(axis=(0, 1))[0] < 60


def test_long_caption_is_truncated_to_the_context_and_counted(tiny_processor):
    caption = " ".join(["word"] * 200)
    out = tiny_processor(text=[caption, "a red circle"])
    assert out["input_ids"].shape[1] == 77
    assert out["input_ids"][0, -1].item() == tiny_processor.tokenizer.eos_token_id
    assert tiny_processor.stats["truncated_captions"] == 1


def test_mismatched_boxes_and_images_raise(tiny_processor):
    image = Image.new("RGB", (10, 10))
    with pytest.raises(ValueError, match="2 images but 1 box lists"):
        tiny_processor(images=[image, image], boxes=[[]])
    with pytest.raises(ValueError, match="needs the `images`"):
        tiny_processor(text="a", boxes=[[]])
    with pytest.raises(ValueError, match="needs `images`, `text`"):
        tiny_processor()


def test_processor_save_load_round_trip(tmp_path, tiny_processor):
    tiny_processor.save_pretrained(tmp_path)
    loaded = DCLIPProcessor.from_pretrained(tmp_path)
    image = Image.new("RGB", (50, 40), (1, 2, 3))
    a = tiny_processor(images=[image], text=["a red circle"], boxes=[[[0, 0, 20, 20]]])
    b = loaded(images=[image], text=["a red circle"], boxes=[[[0, 0, 20, 20]]])
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert loaded.whole_image_if_empty is True
