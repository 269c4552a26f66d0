"""DCLIP models: the cross-modal teacher over a frozen CLIP, and the student (a drop-in CLIP).

METHOD.md §2: `T' = LN_t(T + MHA(q=T, k=R, v=R))`, `R' = LN_r(R + MHA(q=R, k=T, v=T))`, both from the original inputs;
`Pool(X) = sum_k softmax(cos(x_k, mean(X)) / s)_k x_k`; `g = w * Pool(T') + (1 - w) * Pool(R')`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_dclip import DCLIPStudentConfig, DCLIPTeacherConfig


def _projected(output: torch.Tensor | ModelOutput) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling from get_*_features; 4.x returned the tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def masked_attention_pool(states: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """DCLIP's cosine-to-mean attention pooling over the valid positions of `states`.

    Args:
        states: `[B, N, D]` vectors to pool.
        mask: `[B, N]` bool, `True` where a position is real. Every row needs at least one `True`.
        scale: divisor of the cosine scores before the softmax (paper: 2.0).

    Returns:
        `[B, D]` pooled vectors.
    """
    weights = mask.to(states.dtype).unsqueeze(-1)
    mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    scores = F.cosine_similarity(states.float(), mean.float().unsqueeze(1), dim=-1) / scale
    scores = scores.masked_fill(~mask, float("-inf"))
    attention = torch.softmax(scores, dim=-1).to(states.dtype)
    return (attention.unsqueeze(-1) * states).sum(1)


class DCLIPCrossAttention(nn.Module):
    """Multi-head attention with separate query and key/value sequences and a key-padding mask (SDPA kernel)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, dim = query.shape
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(query)),
            self._heads(self.k_proj(key_value)),
            self._heads(self.v_proj(key_value)),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class DCLIPCrossModalLayer(nn.Module):
    """One bidirectional cross-attention layer: post-norm residual, no FFN, no position encoding."""

    def __init__(self, config: DCLIPTeacherConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.text_to_region = DCLIPCrossAttention(dim, config.num_attention_heads, config.attention_dropout)
        self.region_to_text = DCLIPCrossAttention(dim, config.num_attention_heads, config.attention_dropout)
        self.text_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.region_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(
        self,
        text_states: torch.Tensor,
        region_states: torch.Tensor,
        token_mask: torch.Tensor | None,
        region_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Both directions read the layer's *inputs* (computed in parallel, as in the paper).
        new_text = self.text_norm(text_states + self.text_to_region(text_states, region_states, region_mask))
        new_regions = self.region_norm(region_states + self.region_to_text(region_states, text_states, token_mask))
        return new_text, new_regions


@dataclass
class DCLIPTextFeatures(ModelOutput):
    """Frozen-CLIP caption features, as cached by the training pipeline.

    Args:
        token_embeds: `[B, L, D]` projected per-token states (start token dropped; the end token is masked out).
        token_mask: `[B, L]` bool, `True` for caption tokens.
        text_embeds: `[B, D]` CLIP sentence embedding (not normalised).
    """

    token_embeds: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


@dataclass
class DCLIPTeacherOutput(ModelOutput):
    """Output of [`DCLIPTeacherModel`].

    Args:
        teacher_embeds: `[B, D]` the teacher embedding `g(I, c)` (not normalised).
        text_embeds: `[B, D]` frozen CLIP sentence embedding of the caption, when known.
        pooled_text: `[B, D]` `Pool(T')`.
        pooled_regions: `[B, D]` `Pool(R')`.
        token_states: `[B, L, D]` `T'` after the last cross-modal layer.
        region_states: `[B, R, D]` `R'` after the last cross-modal layer.
        region_mask: `[B, R]` the region mask actually used (after the empty-region policy).
    """

    teacher_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    pooled_text: torch.Tensor | None = None
    pooled_regions: torch.Tensor | None = None
    token_states: torch.Tensor | None = None
    region_states: torch.Tensor | None = None
    region_mask: torch.Tensor | None = None


class DCLIPPreTrainedModel(PreTrainedModel):
    config_class = DCLIPTeacherConfig
    base_model_prefix = "dclip"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["CLIPEncoderLayer", "DCLIPCrossModalLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # CLIPModel is a PreTrainedModel child and initialises its own weights; only the cross-modal block is ours.
        if isinstance(module, DCLIPCrossAttention):
            for linear in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)
        elif isinstance(module, DCLIPCrossModalLayer):
            for norm in (module.text_norm, module.region_norm):
                nn.init.ones_(norm.weight)
                nn.init.zeros_(norm.bias)


class DCLIPTeacherModel(DCLIPPreTrainedModel):
    """The DCLIP cross-modal teacher: a frozen CLIP plus a trainable bidirectional cross-attention block.

    Inputs are either raw (caption `input_ids` and region crops `region_pixel_values`) or precomputed frozen-CLIP
    features (`token_embeds`, `region_embeds`, ...), so that a feature cache can skip every CLIP pass.
    """

    main_input_name = "input_ids"

    def __init__(self, config: DCLIPTeacherConfig) -> None:
        super().__init__(config)
        self.clip = CLIPModel(config.clip_config)
        self.cross_layers = nn.ModuleList([DCLIPCrossModalLayer(config) for _ in range(config.num_cross_layers)])
        self.post_init()
        self.freeze_backbone()

    def freeze_backbone(self) -> None:
        """Make every CLIP weight non-trainable (the teacher only ever trains its cross-modal block)."""
        self.clip.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # Weight loading re-creates parameters (requires_grad=True): restore the frozen backbone.
        if isinstance(model, tuple):
            model[0].freeze_backbone()
        else:
            model.freeze_backbone()
        return model

    @classmethod
    def from_clip(cls, clip: CLIPModel | str | os.PathLike, **config_kwargs) -> DCLIPTeacherModel:
        """Build a teacher around a (pretrained) CLIP: its weights are copied, the cross-modal block is fresh.

        Args:
            clip: a `CLIPModel` or a path / Hub id that `CLIPModel.from_pretrained` accepts.
            **config_kwargs: fields of [`DCLIPTeacherConfig`] (heads, layers, pooling, policies).
        """
        if not isinstance(clip, CLIPModel):
            clip = CLIPModel.from_pretrained(clip)
        config = DCLIPTeacherConfig(clip_config=clip.config.to_dict(), **config_kwargs)
        model = cls(config)
        model.clip.load_state_dict(clip.state_dict())
        return model.to(dtype=next(clip.parameters()).dtype)

    def train(self, mode: bool = True) -> DCLIPTeacherModel:
        super().train(mode)
        self.clip.eval()  # the backbone is frozen: never dropout/batch statistics from it
        return self

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    # ----- frozen-CLIP features (cacheable) -----

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP image embedding of whole images, `[B, D]`."""
        return _projected(self.clip.get_image_features(pixel_values=pixel_values))

    @torch.no_grad()
    def get_region_features(
        self, region_pixel_values: torch.Tensor, region_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Frozen CLIP embeddings of region crops, `[B, R, D]`; padded regions are zeros and are never encoded.

        Args:
            region_pixel_values: `[B, R, 3, H, W]` preprocessed crops.
            region_mask: `[B, R]`, nonzero where a crop is real. Defaults to all real.
        """
        if region_pixel_values.dim() != 5:
            raise ValueError(
                f"region_pixel_values must be [batch, regions, 3, H, W], got shape {tuple(region_pixel_values.shape)}."
            )
        batch, regions = region_pixel_values.shape[:2]
        if region_mask is None:
            region_mask = torch.ones(batch, regions, dtype=torch.bool, device=region_pixel_values.device)
        valid = region_mask.bool()
        if not valid.any():
            return torch.zeros(
                batch, regions, self.embed_dim, dtype=self.clip.dtype, device=region_pixel_values.device
            )
        features = self.get_image_features(region_pixel_values[valid].to(self.clip.dtype))
        # Allocated after the pass: under autocast the features come out in the autocast dtype, not the weights'.
        out = features.new_zeros(batch, regions, self.embed_dim)
        out[valid] = features
        return out

    @torch.no_grad()
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> DCLIPTextFeatures:
        """Token embeddings (start/end tokens dropped) and the sentence embedding of captions, from one text pass."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_model_output = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
        projected = self.clip.text_projection(text_model_output.last_hidden_state)
        text_embeds = self.clip.text_projection(text_model_output.pooler_output)
        # CLIP tokenizers pad on the right: the end token sits at the last attended position.
        mask = attention_mask.bool().clone()
        end_position = attention_mask.long().sum(-1) - 1
        rows = torch.arange(mask.shape[0], device=mask.device)
        mask[rows, end_position.clamp(min=0)] = False
        mask = mask[:, 1:]
        # An empty caption has no content token: keep its end token so the caption still has a key.
        empty = ~mask.any(-1)
        if empty.any():
            mask[rows[empty], (end_position[empty] - 1).clamp(min=0)] = True
        return DCLIPTextFeatures(token_embeds=projected[:, 1:], token_mask=mask, text_embeds=text_embeds)

    # ----- the cross-modal block -----

    def _apply_empty_region_policy(
        self,
        region_embeds: torch.Tensor,
        region_mask: torch.Tensor,
        image_embeds: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        empty = ~region_mask.any(-1)
        if not empty.any():
            return region_embeds, region_mask
        if region_embeds.shape[1] == 0:
            region_embeds = region_embeds.new_zeros(region_embeds.shape[0], 1, region_embeds.shape[2])
            region_mask = region_mask.new_zeros(region_mask.shape[0], 1)
        region_embeds, region_mask = region_embeds.clone(), region_mask.clone()
        region_mask[empty, 0] = True
        if self.config.empty_region_policy == "zero_vector":
            region_embeds[empty, 0] = 0
            return region_embeds, region_mask
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.get_image_features(pixel_values[empty])
        elif image_embeds is not None:
            image_embeds = image_embeds[empty]
        if image_embeds is None:
            raise ValueError(
                f"Samples {empty.nonzero().flatten().tolist()} have no regions and empty_region_policy='whole_image' "
                "needs the whole image: pass `pixel_values` or `image_embeds`, add the whole-image box as a region "
                "(DCLIPProcessor does this by default), or set empty_region_policy='zero_vector'."
            )
        region_embeds[empty, 0] = image_embeds.to(region_embeds.dtype)
        return region_embeds, region_mask

    def _check_width(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.shape[-1] != self.embed_dim:
            raise ValueError(
                f"{name} has width {tensor.shape[-1]} but this teacher's CLIP projection_dim is {self.embed_dim}. "
                "Every part of a DCLIP run must use the same CLIP checkpoint (e.g. ViT-B/16 gives 512, ViT-L/14 768); "
                "recompute the features with the teacher's CLIP."
            )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        region_pixel_values: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        token_embeds: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        region_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DCLIPTeacherOutput | tuple:
        """Compute the teacher embedding `g(I, c)` for image–caption pairs.

        Args:
            input_ids, attention_mask: tokenised captions (or pass `token_embeds`/`token_mask`/`text_embeds`).
            region_pixel_values: `[B, R, 3, H, W]` region crops (or pass `region_embeds`).
            region_mask: `[B, R]`, nonzero for real regions; defaults to all real.
            pixel_values: `[B, 3, H, W]` whole images, only used for images without regions (`whole_image` policy).
            token_embeds, token_mask, text_embeds: precomputed frozen-CLIP caption features.
            region_embeds: `[B, R, D]` precomputed frozen-CLIP region embeddings.
            image_embeds: `[B, D]` precomputed whole-image embeddings, for images without regions.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if token_embeds is None:
            if input_ids is None:
                raise ValueError(
                    "DCLIPTeacherModel needs the caption: pass `input_ids` (with `attention_mask`) or precomputed "
                    "`token_embeds` with `token_mask`."
                )
            text = self.get_text_features(input_ids, attention_mask)
            token_embeds, token_mask = text.token_embeds, text.token_mask
            text_embeds = text.text_embeds if text_embeds is None else text_embeds
        if region_embeds is None:
            if region_pixel_values is None:
                raise ValueError(
                    "DCLIPTeacherModel needs the image regions: pass `region_pixel_values` (with `region_mask`) or "
                    "precomputed `region_embeds`."
                )
            region_embeds = self.get_region_features(region_pixel_values, region_mask)
        for name, tensor in (("token_embeds", token_embeds), ("region_embeds", region_embeds)):
            if tensor.dim() != 3:
                raise ValueError(f"{name} must be [batch, length, D], got shape {tuple(tensor.shape)}.")
            self._check_width(name, tensor)
        for name, tensor in (("text_embeds", text_embeds), ("image_embeds", image_embeds)):
            if tensor is not None:
                self._check_width(name, tensor)
        if token_embeds.shape[0] != region_embeds.shape[0]:
            raise ValueError(
                f"Caption batch ({token_embeds.shape[0]}) and region batch ({region_embeds.shape[0]}) differ: "
                "the teacher scores image–caption *pairs*, one caption per image."
            )
        dtype = self.cross_layers[0].text_norm.weight.dtype
        token_embeds, region_embeds = token_embeds.to(dtype), region_embeds.to(dtype)
        token_mask = (
            torch.ones(token_embeds.shape[:2], dtype=torch.bool, device=token_embeds.device)
            if token_mask is None
            else token_mask.bool()
        )
        region_mask = (
            torch.ones(region_embeds.shape[:2], dtype=torch.bool, device=region_embeds.device)
            if region_mask is None
            else region_mask.bool()
        )
        if not token_mask.any(-1).all():
            raise ValueError(
                f"Captions {(~token_mask.any(-1)).nonzero().flatten().tolist()} have no valid token in token_mask; "
                "drop empty captions or compute features with `get_text_features`, which keeps the end token."
            )
        region_embeds, region_mask = self._apply_empty_region_policy(
            region_embeds, region_mask, image_embeds, pixel_values
        )
        # Padded positions are zeros in both modes; the reference code lets them act as keys (no masks).
        token_states = token_embeds * token_mask.unsqueeze(-1).to(dtype)
        region_states = region_embeds * region_mask.unsqueeze(-1).to(dtype)
        if self.config.use_padding_masks:
            attn_token_mask, attn_region_mask = token_mask, region_mask
        else:
            attn_token_mask = torch.ones_like(token_mask)
            attn_region_mask = torch.ones_like(region_mask)
        for layer in self.cross_layers:
            token_states, region_states = layer(
                token_states,
                region_states,
                attn_token_mask if self.config.use_padding_masks else None,
                attn_region_mask if self.config.use_padding_masks else None,
            )
        pooled_text = masked_attention_pool(token_states, attn_token_mask, self.config.pooling_scale)
        pooled_regions = masked_attention_pool(region_states, attn_region_mask, self.config.pooling_scale)
        weight = self.config.text_fusion_weight
        teacher_embeds = weight * pooled_text + (1.0 - weight) * pooled_regions
        output = DCLIPTeacherOutput(
            teacher_embeds=teacher_embeds,
            text_embeds=text_embeds,
            pooled_text=pooled_text,
            pooled_regions=pooled_regions,
            token_states=token_states,
            region_states=region_states,
            region_mask=region_mask,
        )
        return output if return_dict else output.to_tuple()


class DCLIPStudentModel(CLIPModel):
    """The DCLIP student: a CLIP dual encoder with CLIP's exact weight names.

    `save_pretrained` writes a stock CLIP checkpoint (`model_type: "clip"`, `architectures: ["CLIPModel"]`), so a
    distilled student loads in `CLIPModel`, `AutoModel` and `pipeline("zero-shot-image-classification")` without
    `trust_remote_code`.
    """

    config_class = DCLIPStudentConfig

    @classmethod
    def from_clip(cls, clip: CLIPModel | str | os.PathLike, **from_pretrained_kwargs) -> DCLIPStudentModel:
        """Initialise a student from a `CLIPModel` or from a path / Hub id of a CLIP checkpoint."""
        if isinstance(clip, CLIPModel):
            model = cls(DCLIPStudentConfig.from_clip_config(clip.config))
            model.load_state_dict(clip.state_dict())
            return model.to(dtype=next(clip.parameters()).dtype)
        config = DCLIPStudentConfig.from_clip_config(CLIPConfig.from_pretrained(clip))
        return cls.from_pretrained(clip, config=config, **from_pretrained_kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        config_path = os.path.join(save_directory, "config.json")
        clip_config = self.config.to_clip_config().to_dict()
        with open(config_path, encoding="utf-8") as handle:
            saved = json.load(handle)
        saved.update(model_type="clip", architectures=["CLIPModel"])
        saved.pop("auto_map", None)
        for key in ("text_config", "vision_config"):
            saved[key] = clip_config[key]
        tmp_path = config_path + ".tmp"
        with open(tmp_path, "w", encoding="utf-8") as handle:
            json.dump(saved, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp_path, config_path)
