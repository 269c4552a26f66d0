"""DCLIPProcessor: CLIP image processor + tokenizer + region crops from boxes, with robust image/box handling."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import BatchFeature, ProcessorMixin

logger = logging.getLogger(__name__)

BoxesLike = Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None


def to_rgb(image: Image.Image) -> Image.Image:
    """Return `image` upright (EXIF orientation applied) and in 8-bit RGB, whatever its mode.

    Handles L, LA, P (with or without transparency), RGBA, CMYK, YCbCr, 1-bit and 16/32-bit integer or float modes.
    Transparent pixels are composited on white, as a viewer would show them.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL.Image.Image, got {type(image).__name__}; open files with PIL.Image.open.")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's convert("L") clips 16-bit values at 255 (a white image): rescale to the full 8-bit range instead.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            peak = max(float(array.max(initial=0)), 1.0) if array.max(initial=0) > 1.0 else 1.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def sanitize_boxes(boxes: BoxesLike, width: int, height: int, min_size: float = 1.0) -> tuple[np.ndarray, int]:
    """Clip `xyxy` pixel boxes to the image and drop degenerate ones.

    Args:
        boxes: `[N, 4]` boxes `(x0, y0, x1, y1)` in pixels of the (EXIF-transposed) image; `None` means no boxes.
        width, height: image size in pixels.
        min_size: boxes narrower or shorter than this after clipping are dropped.

    Returns:
        `(clean_boxes [M, 4] float32, num_dropped)`. NaN/inf, inverted, zero-area and fully outside boxes are dropped.
    """
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float32), 0
    array = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float32), 0
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"Boxes must have shape [N, 4] as (x0, y0, x1, y1) pixels, got shape {array.shape}.")
    array = array.astype(np.float64)
    finite = np.isfinite(array).all(axis=1)
    ordered = (array[:, 2] > array[:, 0]) & (array[:, 3] > array[:, 1])
    clipped = array.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, height)
    with np.errstate(invalid="ignore"):
        big_enough = ((clipped[:, 2] - clipped[:, 0]) >= min_size) & ((clipped[:, 3] - clipped[:, 1]) >= min_size)
    keep = finite & ordered & big_enough
    return clipped[keep].astype(np.float32), int((~keep).sum())


class DCLIPProcessor(ProcessorMixin):
    r"""CLIP image processor and tokenizer, plus region crops for the DCLIP teacher.

    `processor(images=..., text=..., boxes=...)` returns `pixel_values`, `input_ids`/`attention_mask` (captions
    truncated to the model context, never an error) and, when `boxes` is given, `region_pixel_values [B, R, 3, H, W]`
    with `region_mask [B, R]`. Crops are cut from the upright RGB image and go through exactly the same CLIP
    preprocessing as full images. Degraded inputs are counted in `processor.stats` and logged.

    Args:
        image_processor (`CLIPImageProcessor`): CLIP image preprocessing.
        tokenizer (`CLIPTokenizer`): CLIP tokenizer.
        whole_image_if_empty (`bool`, *optional*, defaults to `True`):
            An image left without any valid box gets its whole image as the single region (DCLIP's default
            empty-region policy). With `False` its regions are all padding and the model's policy decides.
    """

    def __init__(self, image_processor=None, tokenizer=None, whole_image_if_empty: bool = True, **kwargs) -> None:
        self.whole_image_if_empty = whole_image_if_empty
        self.stats: Counter = Counter()
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def max_text_length(self) -> int:
        length = getattr(self.tokenizer, "model_max_length", 77)
        return 77 if length is None or length > 10_000 else int(length)

    def _tokenize(self, text: str | list[str], return_tensors: str | None) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a string or a list of strings.")
        max_length = self.max_text_length
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors=None)
        # A caption that filled the whole context was (almost surely) cut: count it, never fail deep in the model.
        truncated = sum(sum(mask) >= max_length for mask in encoded["attention_mask"])
        if truncated:
            self.stats["truncated_captions"] += truncated
            logger.info("Truncated %d caption(s) to %d tokens.", truncated, max_length)
        return BatchFeature(dict(encoded), tensor_type=return_tensors)

    def crop_regions(self, image: Image.Image, boxes: BoxesLike) -> list[Image.Image]:
        """Upright RGB crops of `image` for its valid `boxes` (the whole image when none is valid, by default)."""
        image = to_rgb(image)
        clean, dropped = sanitize_boxes(boxes, image.width, image.height)
        if dropped:
            self.stats["dropped_boxes"] += dropped
            logger.debug("Dropped %d invalid box(es) of a %dx%d image.", dropped, image.width, image.height)
        if len(clean) == 0:
            self.stats["images_without_regions"] += 1
            return [image] if self.whole_image_if_empty else []
        crops = []
        for x0, y0, x1, y1 in clean.tolist():
            left, top = math.floor(x0), math.floor(y0)
            right, bottom = max(math.ceil(x1), left + 1), max(math.ceil(y1), top + 1)
            crops.append(image.crop((left, top, right, bottom)))
        return crops

    def process_regions(self, images: Sequence[Image.Image], boxes: Sequence[BoxesLike]) -> BatchFeature:
        """Region crops of a batch: `region_pixel_values [B, R, 3, H, W]` and `region_mask [B, R]` (R = most crops)."""
        if len(images) != len(boxes):
            raise ValueError(
                f"Got {len(images)} images but {len(boxes)} box lists; pass one (possibly empty) per image."
            )
        per_image = [self.crop_regions(image, image_boxes) for image, image_boxes in zip(images, boxes)]
        counts = [len(crops) for crops in per_image]
        flat = [crop for crops in per_image for crop in crops]
        crop_size = self.image_processor.crop_size
        height, width = crop_size["height"], crop_size["width"]
        max_regions = max(counts, default=0)
        values = torch.zeros(len(images), max_regions, 3, height, width)
        mask = torch.zeros(len(images), max_regions, dtype=torch.bool)
        if flat:
            pixels = self.image_processor(images=flat, return_tensors="pt")["pixel_values"]
            offset = 0
            for row, count in enumerate(counts):
                values[row, :count] = pixels[offset : offset + count]
                mask[row, :count] = True
                offset += count
        return BatchFeature({"region_pixel_values": values, "region_mask": mask})

    def __call__(
        self,
        images: Image.Image | Sequence[Image.Image] | None = None,
        text: str | list[str] | None = None,
        boxes: Sequence[BoxesLike] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Preprocess images, captions and region boxes.

        Args:
            images: one PIL image or a list; any mode, EXIF orientation honoured.
            text: one caption or a list; truncated to the tokenizer's context length.
            boxes: one `[N, 4]` xyxy pixel box array per image (coordinates of the upright image); needs `images`.
            return_tensors: `"pt"` (default) or `None`.
        """
        if images is None and text is None:
            raise ValueError("DCLIPProcessor needs `images`, `text` or both.")
        data: dict = {}
        if text is not None:
            data.update(self._tokenize(text, return_tensors))
        if images is not None:
            image_list = [images] if isinstance(images, Image.Image) else list(images)
            rgb = [to_rgb(image) for image in image_list]
            data.update(self.image_processor(images=rgb, return_tensors=return_tensors))
            if boxes is not None:
                if isinstance(images, Image.Image):
                    boxes = [boxes]
                data.update(self.process_regions(rgb, boxes))
        elif boxes is not None:
            raise ValueError("`boxes` needs the `images` they refer to.")
        return BatchFeature(data, tensor_type=return_tensors)
