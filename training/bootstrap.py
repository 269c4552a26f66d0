"""Pre-train a tiny base CLIP from scratch on the synthetic pre-training split (no pretrained CLIP exists offline).

The result is a plain `CLIPModel` + `CLIPProcessor` folder (its own byte-level BPE tokenizer trained on the captions),
so every later stage treats it exactly like `openai/clip-*`. The pre-training split mixes scenes with coarse captions
and object close-ups with attribute captions, so that the base knows shapes, colours and patterns *at crop scale*
(what DCLIP's region embeddings need) — `evaluate_zero_shot` checks it on held-out close-ups.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from .tokenizer import train_clip_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapConfig:
    """Architecture and optimisation of the tiny base CLIP.

    Args:
        image_size: model input side in pixels (the global view of a 128 px scene is downscaled to this).
        patch_size: ViT patch side.
        vision_width, vision_layers, vision_heads: vision transformer size.
        text_width, text_layers, text_heads: text transformer size.
        projection_dim: width `D` of the joint embedding space.
        vocab_size: tokenizer vocabulary (bytes and specials included).
        steps, batch_size, learning_rate, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay.
        seed: initialisation and batch-order seed.
    """

    image_size: int = 48
    patch_size: int = 8
    vision_width: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 64
    vocab_size: int = 700
    steps: int = 1200
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}.")
        for name, width, heads in (
            ("vision", self.vision_width, self.vision_heads),
            ("text", self.text_width, self.text_heads),
        ):
            if width % heads:
                raise ValueError(f"{name}_width {width} must be divisible by {name}_heads {heads}.")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"Need steps >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}.")


def build_clip_config(config: BootstrapConfig, vocab_size: int) -> CLIPConfig:
    """The tiny `CLIPConfig`; `vocab_size` must be `len(tokenizer)` (start/end tokens are its last two ids)."""
    return CLIPConfig(
        text_config=dict(
            hidden_size=config.text_width,
            intermediate_size=4 * config.text_width,
            num_attention_heads=config.text_heads,
            num_hidden_layers=config.text_layers,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        ),
        vision_config=dict(
            hidden_size=config.vision_width,
            intermediate_size=4 * config.vision_width,
            num_attention_heads=config.vision_heads,
            num_hidden_layers=config.vision_layers,
            image_size=config.image_size,
            patch_size=config.patch_size,
        ),
        projection_dim=config.projection_dim,
    )


def build_image_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP preprocessing at `image_size` (resize the short side, centre crop, CLIP mean/std)."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def encode_images(processor: CLIPProcessor, paths: Sequence[str], chunk: int = 512) -> torch.Tensor:
    """`[N, 3, S, S]` preprocessed pixels of the images at `paths` (RGB)."""
    out = []
    for start in range(0, len(paths), chunk):
        images = []
        for path in paths[start : start + chunk]:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        out.append(processor.image_processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(out) if out else torch.zeros(0)


def contrastive_loss(logits_per_text: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, with identical captions in the batch counted as positives of each other.

    Close-up captions repeat ("a red circle"); plain CLIP loss would push an image away from its own caption's twin.
    With all-distinct captions this equals transformers' CLIP loss (`image_text_contrastive_loss`).
    """
    targets = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = targets / targets.sum(-1, keepdim=True)
    text_loss = torch.sum(-targets * F.log_softmax(logits_per_text, dim=-1), dim=-1).mean()
    image_loss = torch.sum(-targets.T * F.log_softmax(logits_per_text.T, dim=-1), dim=-1).mean()
    return (text_loss + image_loss) / 2.0


@torch.no_grad()
def zero_shot_accuracy(
    model: CLIPModel,
    processor: CLIPProcessor,
    pixel_values: torch.Tensor,
    labels: Sequence[int],
    class_names: Sequence[str],
    template: str = "a {}",
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy (%) of classifying `pixel_values` by the nearest prompt `template.format(name)`."""
    model.eval()
    text = processor.tokenizer([template.format(name) for name in class_names], padding=True, return_tensors="pt")
    text_embeds = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
    correct = 0
    for start in range(0, len(pixel_values), batch_size):
        images = model.get_image_features(pixel_values=pixel_values[start : start + batch_size]).pooler_output
        predictions = (F.normalize(images, dim=-1) @ text_embeds.T).argmax(-1)
        correct += int((predictions == torch.as_tensor(labels[start : start + batch_size])).sum())
    return 100.0 * correct / max(len(labels), 1)


def bootstrap_clip(
    rows: Sequence[dict],
    output_dir: str | os.PathLike,
    config: BootstrapConfig | None = None,
    *,
    zero_shot_sets: dict[str, tuple[list[str], list[int], list[str]]] | None = None,
    zero_shot_template: str = "a {}",
    tokenizer: CLIPTokenizer | None = None,
    progress: bool = True,
) -> dict:
    """Train a tiny CLIP (and its tokenizer) on `rows` and save it as a stock `CLIPModel` + `CLIPProcessor` folder.

    Args:
        rows: dataset rows with `image` (path) and `captions` (the synthetic `pretrain` split, or any schema rows).
        output_dir: folder to write; replaced atomically (a killed run leaves no half-written model).
        config: sizes and optimisation; defaults to `BootstrapConfig()`.
        zero_shot_sets: `{name: (image paths, labels, class names)}` checked after training.
        zero_shot_template: prompt for the class names.
        tokenizer: a ready CLIP tokenizer; by default one is trained on the rows' captions (`train_clip_tokenizer`,
            whose BPE tie-breaking is not reproducible run to run: pass a tokenizer for bit-identical runs).
        progress: show a tqdm bar.

    Returns:
        Metrics: `{"zero_shot": {name: top-1 %}, "final_loss": float, "seconds": float, "steps": int, ...}`, also
        written to `output_dir/bootstrap_metrics.json`.
    """
    config = config or BootstrapConfig()
    rows = [row for row in rows if row["captions"]]
    if not rows:
        raise ValueError("bootstrap_clip needs rows with at least one caption; got none.")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    all_captions = [caption for row in rows for caption in row["captions"]]
    if tokenizer is None:
        tokenizer = train_clip_tokenizer(all_captions, vocab_size=config.vocab_size)
    processor = CLIPProcessor(image_processor=build_image_processor(config.image_size), tokenizer=tokenizer)
    model = CLIPModel(build_clip_config(config, vocab_size=len(tokenizer)))

    pixels = encode_images(processor, [row["image"] for row in rows])
    unique = sorted(set(all_captions))
    caption_index = {caption: i for i, caption in enumerate(unique)}
    encoded = tokenizer(unique, padding=True, truncation=True, max_length=77, return_tensors="pt")
    per_image = [torch.tensor([caption_index[c] for c in row["captions"]]) for row in rows]
    counts = torch.tensor([len(ids) for ids in per_image])
    padded = torch.nn.utils.rnn.pad_sequence(per_image, batch_first=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batch_size = min(config.batch_size, len(rows))
    model.train()
    order = torch.randperm(len(rows), generator=generator)
    cursor, loss_value = 0, float("nan")
    bar = tqdm(range(config.steps), desc="bootstrap base CLIP", disable=not progress, mininterval=2.0)
    for _step in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(rows), generator=generator), 0
        index = order[cursor : cursor + batch_size]
        cursor += batch_size
        pick = (torch.rand(len(index), generator=generator) * counts[index]).long()
        caption_ids = padded[index, pick]
        output = model(
            input_ids=encoded["input_ids"][caption_ids],
            attention_mask=encoded["attention_mask"][caption_ids],
            pixel_values=pixels[index],
        )
        loss = contrastive_loss(output.logits_per_text, caption_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        loss_value = float(loss.detach())
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    model.eval()

    metrics: dict = {
        "steps": config.steps,
        "final_loss": loss_value,
        "train_images": len(rows),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": dataclasses.asdict(config),
        "zero_shot": {},
    }
    for name, (paths, labels, class_names) in (zero_shot_sets or {}).items():
        metrics["zero_shot"][name] = zero_shot_accuracy(
            model, processor, encode_images(processor, paths), labels, class_names, zero_shot_template
        )
    metrics["seconds"] = time.perf_counter() - started
    save_model_atomic(model, processor, output_dir, metrics)
    logger.info("Base CLIP saved to %s: zero-shot %s", output_dir, metrics["zero_shot"])
    return metrics


def save_model_atomic(
    model: CLIPModel, processor: CLIPProcessor, output_dir: str | os.PathLike, metrics: dict
) -> None:
    """Save into a sibling temp folder, then swap it in, so `output_dir` is always complete or absent."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
        (tmp_dir / "bootstrap_metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp_dir, output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m training.bootstrap --data-dir DIR --output-dir DIR [--seed N] [--steps N] ...`."""
    from .synthetic import SyntheticConfig, build_synthetic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="cache folder of the synthetic data (built if missing)")
    parser.add_argument("--output-dir", required=True, help="where the base CLIP folder is written")
    parser.add_argument("--data-seed", type=int, default=0)
    for field in dataclasses.fields(BootstrapConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    data = build_synthetic(args.data_dir, SyntheticConfig(seed=args.data_seed))
    config = BootstrapConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BootstrapConfig)})
    metrics = bootstrap_clip(
        data.splits["pretrain"].to_list(),
        args.output_dir,
        config,
        zero_shot_sets={name: data.zero_shot(name) for name in data.zero_shot_dirs},
        zero_shot_template=data.zero_shot_template,
    )
    print(json.dumps({k: metrics[k] for k in ("zero_shot", "final_loss", "seconds", "parameters")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
