"""Zero-shot classification with any CLIP-compatible model, and the batched CLIP encoder the evaluation shares.

Prompts follow the DCLIP paper: `"a photo of a {c}"` for ImageNet (and sets without their own prompt),
`"a photo of a {c}, a type of object"` for CIFAR-10/100; CLIP's 80-template ImageNet ensemble is available as
`"imagenet80"` (class embedding = normalised mean of the normalised per-template embeddings, as in CLIP).
Metrics: top-1 / top-5 accuracy and mean per-class recall (top-1), in %; retention = model top-1 / base top-1.
Ties between a true class and other classes count against the model (the true class ranks after them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

logger = logging.getLogger(__name__)

PAPER_IMAGENET_TEMPLATES = ("a photo of a {c}",)
PAPER_CIFAR_TEMPLATES = ("a photo of a {c}, a type of object",)
# CLIP's ImageNet prompt ensemble (Radford et al. 2021, "Prompt_Engineering_for_ImageNet.ipynb"), 80 templates.
IMAGENET_80_TEMPLATES = tuple(
    template.replace("{}", "{c}")
    for template in (
        "a bad photo of a {}.",
        "a photo of many {}.",
        "a sculpture of a {}.",
        "a photo of the hard to see {}.",
        "a low resolution photo of the {}.",
        "a rendering of a {}.",
        "graffiti of a {}.",
        "a bad photo of the {}.",
        "a cropped photo of the {}.",
        "a tattoo of a {}.",
        "the embroidered {}.",
        "a photo of a hard to see {}.",
        "a bright photo of a {}.",
        "a photo of a clean {}.",
        "a photo of a dirty {}.",
        "a dark photo of the {}.",
        "a drawing of a {}.",
        "a photo of my {}.",
        "the plastic {}.",
        "a photo of the cool {}.",
        "a close-up photo of a {}.",
        "a black and white photo of the {}.",
        "a painting of the {}.",
        "a painting of a {}.",
        "a pixelated photo of the {}.",
        "a sculpture of the {}.",
        "a bright photo of the {}.",
        "a cropped photo of a {}.",
        "a plastic {}.",
        "a photo of the dirty {}.",
        "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.",
        "a photo of the {}.",
        "a good photo of the {}.",
        "a rendering of the {}.",
        "a {} in a video game.",
        "a photo of one {}.",
        "a doodle of a {}.",
        "a close-up photo of the {}.",
        "a photo of a {}.",
        "the origami {}.",
        "the {} in a video game.",
        "a sketch of a {}.",
        "a doodle of the {}.",
        "a origami {}.",
        "a low resolution photo of a {}.",
        "the toy {}.",
        "a rendition of the {}.",
        "a photo of the clean {}.",
        "a photo of a large {}.",
        "a rendition of a {}.",
        "a photo of a nice {}.",
        "a photo of a weird {}.",
        "a blurry photo of a {}.",
        "a cartoon {}.",
        "art of a {}.",
        "a sketch of the {}.",
        "a embroidered {}.",
        "a pixelated photo of a {}.",
        "itap of the {}.",
        "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.",
        "a plushie {}.",
        "a photo of the nice {}.",
        "a photo of the small {}.",
        "a photo of the weird {}.",
        "the cartoon {}.",
        "art of the {}.",
        "a drawing of the {}.",
        "a photo of the large {}.",
        "a black and white photo of a {}.",
        "the plushie {}.",
        "a dark photo of a {}.",
        "itap of a {}.",
        "graffiti of the {}.",
        "a toy {}.",
        "itap of my {}.",
        "a photo of a cool {}.",
        "a photo of a small {}.",
        "a tattoo of the {}.",
    )
)
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_IMAGENET_TEMPLATES,
    "imagenet": PAPER_IMAGENET_TEMPLATES,
    "cifar": PAPER_CIFAR_TEMPLATES,
    "imagenet80": IMAGENET_80_TEMPLATES,
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A named template set (`paper`, `imagenet`, `cifar`, `imagenet80`) or a list of `{c}` (or `{}`) templates."""
    if isinstance(templates, str) and "{}" in templates:
        templates = [templates]
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return TEMPLATE_SETS[templates]
        if "{c}" not in templates:
            raise ValueError(
                f"Unknown template set {templates!r}; use one of {sorted(TEMPLATE_SETS)} or a template with '{{c}}'."
            )
        return (templates,)
    out = tuple(template.replace("{}", "{c}") for template in templates)
    if not out or any("{c}" not in template for template in out):
        raise ValueError(f"Every prompt template needs a '{{c}}' placeholder for the class name; got {out!r}.")
    return out


def _embedding(output: Any) -> torch.Tensor:
    # transformers 5.x returns a BaseModelOutputWithPooling whose pooler_output is the projected embedding.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPEncoder:
    """Batched, normalised CLIP image/text embeddings from any model with `get_image_features`/`get_text_features`.

    Under an `accelerate.Accelerator` with several processes, every call splits its inputs across the processes and
    gathers the embeddings back in input order on every process.

    Args:
        model: a `CLIPModel`-compatible model (e.g. `CLIPModel`, `DCLIPStudentModel`).
        processor: a `CLIPProcessor`-like object with `.tokenizer` and `.image_processor`.
        batch_size: images or captions per forward pass.
        accelerator: optional `accelerate.Accelerator` (device and process split); default: the model's device.
        progress: show tqdm progress bars (main process only).
        load_image: `path -> PIL.Image | None`; default `training.data.load_image` (failures skipped and counted).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        batch_size: int = 64,
        accelerator: Any = None,
        progress: bool = False,
        load_image: Callable[[str], Image.Image | None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        self.model = model.eval()
        self.tokenizer = getattr(processor, "tokenizer", None)
        self.image_processor = getattr(processor, "image_processor", None)
        if self.tokenizer is None or self.image_processor is None:
            raise TypeError(
                "processor must have .tokenizer and .image_processor (a CLIPProcessor); "
                f"got {type(processor).__name__}."
            )
        self.batch_size = batch_size
        self.accelerator = accelerator
        self.progress = progress
        if load_image is None:
            from .data import load_image as data_load_image

            load_image = data_load_image
        self._load_image = load_image
        self.failed_images: list[str] = []

    @property
    def device(self) -> torch.device:
        if self.accelerator is not None:
            return self.accelerator.device
        return next(self.model.parameters()).device

    def _shard(self, n: int) -> tuple[int, int, int]:
        processes = 1 if self.accelerator is None else self.accelerator.num_processes
        rank = 0 if self.accelerator is None else self.accelerator.process_index
        per = -(-n // processes)
        return min(rank * per, n), min((rank + 1) * per, n), per

    def _gather(self, local: torch.Tensor, n: int, per: int) -> torch.Tensor:
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return local
        padded = (
            F.pad(local, (0, 0, 0, per - local.shape[0])) if local.ndim == 2 else F.pad(local, (0, per - len(local)))
        )
        gathered = self.accelerator.gather(padded.to(self.device).contiguous()).cpu()
        return gathered[:n]

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        main = self.accelerator is None or self.accelerator.is_main_process
        return tqdm(total=total, desc=desc, disable=not (self.progress and main), leave=False)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], desc: str = "texts") -> torch.Tensor:
        """L2-normalised text embeddings `[len(texts), D]` (float32, CPU), truncated to the context length."""
        texts = list(texts)
        start, stop, per = self._shard(len(texts))
        chunks = []
        with self._bar(stop - start, desc) as bar:
            for i in range(start, stop, self.batch_size):
                batch = texts[i : min(i + self.batch_size, stop)]
                tokens = self.tokenizer(batch, padding=True, truncation=True, return_tensors="pt").to(self.device)
                features = _embedding(
                    self.model.get_text_features(
                        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                    )
                )
                chunks.append(F.normalize(features.float(), dim=-1).cpu())
                bar.update(len(batch))
        width = self._width()
        local = torch.cat(chunks) if chunks else torch.zeros(0, width)
        return self._gather(local, len(texts), per)

    def _width(self) -> int:
        config = getattr(self.model, "config", None)
        return int(getattr(config, "projection_dim", 0) or 0)

    @torch.no_grad()
    def encode_images(
        self, images: Sequence[str | Image.Image], desc: str = "images"
    ) -> tuple[torch.Tensor, np.ndarray]:
        """L2-normalised image embeddings `[len(images), D]` and a boolean mask of the images that loaded.

        Rows of images that failed to load are zeros; their paths are appended to `failed_images`.
        """
        images = list(images)
        start, stop, per = self._shard(len(images))
        rows: list[torch.Tensor] = []
        ok = np.zeros(stop - start, dtype=bool)
        width = self._width()
        with self._bar(stop - start, desc) as bar:
            for i in range(start, stop, self.batch_size):
                batch_items = images[i : min(i + self.batch_size, stop)]
                pil, keep = [], []
                for offset, item in enumerate(batch_items):
                    image = item if isinstance(item, Image.Image) else self._load_image(item)
                    if image is None:
                        self.failed_images.append(str(item))
                        logger.warning("Skipping image that failed to load: %s", item)
                        continue
                    pil.append(image.convert("RGB") if image.mode != "RGB" else image)
                    keep.append(offset)
                block = torch.zeros(len(batch_items), width) if width else None
                if pil:
                    pixels = self.image_processor(images=pil, return_tensors="pt")["pixel_values"]
                    features = _embedding(self.model.get_image_features(pixel_values=pixels.to(self.device)))
                    features = F.normalize(features.float(), dim=-1).cpu()
                    if block is None:
                        width = features.shape[1]
                        block = torch.zeros(len(batch_items), width)
                    block[keep] = features
                    ok[[i - start + k for k in keep]] = True
                rows.append(block if block is not None else torch.zeros(len(batch_items), 0))
                bar.update(len(batch_items))
        local = torch.cat(rows) if rows else torch.zeros(0, width)
        local_ok = torch.from_numpy(ok)
        embeds = self._gather(local, len(images), per)
        mask = self._gather(local_ok.to(torch.uint8), len(images), per).bool().numpy()
        return embeds, mask


def class_embeddings(encoder: CLIPEncoder, class_names: Sequence[str], templates: str | Sequence[str]) -> torch.Tensor:
    """One normalised text embedding per class: the normalised mean over the prompt templates (CLIP's ensembling)."""
    templates = resolve_templates(templates)
    prompts = [template.format(c=name) for name in class_names for template in templates]
    embeds = encoder.encode_texts(prompts, desc="class prompts").view(len(class_names), len(templates), -1)
    return F.normalize(embeds.mean(dim=1), dim=-1)


def zero_shot_metrics(
    image_embeds: torch.Tensor, class_embeds: torch.Tensor, labels: Sequence[int], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy and mean per-class recall (%) from embeddings.

    Args:
        image_embeds: `[n, D]` image embeddings (normalised here).
        class_embeds: `[C, D]` class embeddings.
        labels: `[n]` true class index per image.
        ks: top-k cut-offs (clipped to the number of classes).

    Returns:
        `top{k}` for each k, `mean_per_class_recall`, `n_images`, `n_classes`.
    """
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if image_embeds.shape[0] != labels_t.shape[0]:
        raise ValueError(f"{image_embeds.shape[0]} image embeddings but {labels_t.shape[0]} labels.")
    if image_embeds.shape[0] == 0:
        raise ValueError("No images to classify (all failed to load or the set is empty).")
    n_classes = class_embeds.shape[0]
    if int(labels_t.min()) < 0 or int(labels_t.max()) >= n_classes:
        raise ValueError(
            f"labels must be in [0, {n_classes}); got range [{int(labels_t.min())}, {int(labels_t.max())}]."
        )
    scores = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(class_embeds.float(), dim=-1).T
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("Zero-shot scores contain NaN/inf; check the model's embeddings.")
    true = scores.gather(1, labels_t[:, None])
    # Pessimistic rank: every other class scoring at least as high as the true one ranks before it.
    rank = (scores >= true).sum(1)
    out = {f"top{k}": float(100.0 * (rank <= k).float().mean()) for k in ks}
    per_class = [float((rank[labels_t == c] == 1).float().mean()) for c in labels_t.unique().tolist()]
    out["mean_per_class_recall"] = float(100.0 * np.mean(per_class))
    out["n_images"] = float(image_embeds.shape[0])
    out["n_classes"] = float(n_classes)
    return out


def zero_shot_classify(
    model: Any,
    processor: Any,
    images: Sequence[str | Image.Image],
    labels: Sequence[int],
    class_names: Sequence[str],
    templates: str | Sequence[str] = "paper",
    *,
    batch_size: int = 64,
    encoder: CLIPEncoder | None = None,
) -> dict[str, float]:
    """Zero-shot classification of `images` among `class_names` with a CLIP-compatible model.

    Args:
        model: `CLIPModel`-compatible model (ignored when `encoder` is given).
        processor: its `CLIPProcessor` (ignored when `encoder` is given).
        images: image paths or PIL images; those that fail to load are skipped and counted (`n_failed`).
        labels: class index per image.
        class_names: prompt-ready class names.
        templates: a named template set or a list of `{c}` templates (see `TEMPLATE_SETS`).
        batch_size: forward-pass batch size.
        encoder: a ready `CLIPEncoder` (e.g. one under accelerate).

    Returns:
        `top1`, `top5`, `mean_per_class_recall` (%), `n_images`, `n_classes`, `n_failed`.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    encoder = encoder or CLIPEncoder(model, processor, batch_size=batch_size)
    image_embeds, ok = encoder.encode_images(images)
    classes = class_embeddings(encoder, class_names, templates)
    out = zero_shot_metrics(image_embeds[torch.from_numpy(ok)], classes, np.asarray(labels)[ok])
    out["n_failed"] = float((~ok).sum())
    return out


def retention(model_top1: float, base_top1: float) -> float | None:
    """Zero-shot retention `model_top1 / base_top1` (a ratio; 1.0 = all of the base's accuracy kept).

    Returns `None` when the base accuracy is 0 (undefined).
    """
    return None if not base_top1 else float(model_top1) / float(base_top1)
