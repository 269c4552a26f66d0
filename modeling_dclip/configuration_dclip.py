"""Configurations of the DCLIP teacher and student (architecture only; training knobs live in `training/args.py`)."""

from __future__ import annotations

from typing import Any

from transformers import CLIPConfig, PretrainedConfig

EMPTY_REGION_POLICIES = ("whole_image", "zero_vector")


class DCLIPTeacherConfig(PretrainedConfig):
    r"""Configuration of [`DCLIPTeacherModel`]: a frozen CLIP plus the bidirectional cross-modal block of DCLIP.

    Args:
        clip_config (`dict` or `CLIPConfig`, *optional*):
            Configuration of the frozen CLIP backbone. Its `projection_dim` is the width `D` of every embedding the
            cross-modal block sees.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of each of the two multi-head attentions (text→regions and regions→text). Must divide `D`.
        num_cross_layers (`int`, *optional*, defaults to 1):
            Stacked cross-attention layers. The paper uses one.
        pooling_scale (`float`, *optional*, defaults to 2.0):
            Divisor of the cosine scores in the attention pooling: `softmax(cos(x_k, mean(x)) / pooling_scale)`.
        text_fusion_weight (`float`, *optional*, defaults to 0.5):
            Weight of the pooled text side in `g = w * Pool(T') + (1 - w) * Pool(R')`.
        use_padding_masks (`bool`, *optional*, defaults to `True`):
            Mask padded regions/tokens as attention keys and in pooling. `False` reproduces the reference code, where
            padded zeros take part in attention and pooling.
        empty_region_policy (`str`, *optional*, defaults to `"whole_image"`):
            What an image without regions contributes: `"whole_image"` (the full image embedding as its one region) or
            `"zero_vector"` (the reference code's single zero vector).
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the cross-attention weights during training.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the two post-norm LayerNorms.
    """

    model_type = "dclip_teacher"
    sub_configs = {"clip_config": CLIPConfig}

    def __init__(
        self,
        clip_config: dict | CLIPConfig | None = None,
        num_attention_heads: int = 8,
        num_cross_layers: int = 1,
        pooling_scale: float = 2.0,
        text_fusion_weight: float = 0.5,
        use_padding_masks: bool = True,
        empty_region_policy: str = "whole_image",
        attention_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        if clip_config is None:
            clip_config = CLIPConfig()
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**clip_config)
        elif not isinstance(clip_config, CLIPConfig):
            raise TypeError(
                f"clip_config must be a dict or a CLIPConfig, got {type(clip_config).__name__}. "
                "Pass `CLIPConfig.from_pretrained(<clip id>)` or its `to_dict()`."
            )
        self.clip_config = clip_config
        self.num_attention_heads = num_attention_heads
        self.num_cross_layers = num_cross_layers
        self.pooling_scale = pooling_scale
        self.text_fusion_weight = text_fusion_weight
        self.use_padding_masks = use_padding_masks
        self.empty_region_policy = empty_region_policy
        self.attention_dropout = attention_dropout
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)
        self.validate_dclip()

    @property
    def embed_dim(self) -> int:
        """Width `D` of CLIP's joint embedding space, the width of the cross-modal block."""
        return self.clip_config.projection_dim

    def validate_dclip(self) -> None:
        """Raise `ValueError` naming the first invalid field and how to fix it."""
        dim = self.embed_dim
        if not isinstance(self.num_attention_heads, int) or self.num_attention_heads < 1:
            raise ValueError(f"num_attention_heads must be a positive int, got {self.num_attention_heads!r}.")
        if dim % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} does not divide the CLIP projection_dim {dim}; "
                "choose a head count that divides it (the paper uses 8)."
            )
        if not isinstance(self.num_cross_layers, int) or self.num_cross_layers < 1:
            raise ValueError(f"num_cross_layers must be an int >= 1, got {self.num_cross_layers!r}.")
        if not self.pooling_scale > 0:
            raise ValueError(f"pooling_scale must be > 0, got {self.pooling_scale!r} (the paper uses 2.0).")
        if not 0.0 <= self.text_fusion_weight <= 1.0:
            raise ValueError(f"text_fusion_weight must lie in [0, 1], got {self.text_fusion_weight!r}.")
        if self.empty_region_policy not in EMPTY_REGION_POLICIES:
            raise ValueError(
                f"empty_region_policy must be one of {EMPTY_REGION_POLICIES}, got {self.empty_region_policy!r}."
            )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must lie in [0, 1), got {self.attention_dropout!r}.")


class DCLIPStudentConfig(CLIPConfig):
    r"""Configuration of [`DCLIPStudentModel`]: exactly a `CLIPConfig` (the student *is* a CLIP).

    A saved student writes `model_type: "clip"` so that it loads in stock `CLIPModel` and pipelines; this class exists
    so that `AutoModel` can build the student directly and so that its type is visible in code.
    """

    model_type = "dclip_student"

    @classmethod
    def from_clip_config(cls, clip_config: CLIPConfig) -> DCLIPStudentConfig:
        """Build a student config with exactly the architecture of `clip_config`."""
        if not isinstance(clip_config, CLIPConfig):
            raise TypeError(f"Expected a CLIPConfig, got {type(clip_config).__name__}.")
        fields = clip_config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            fields.pop(key, None)
        return cls(**fields)

    def to_clip_config(self) -> CLIPConfig:
        """The equivalent stock `CLIPConfig` (what a saved student writes to disk)."""
        fields = self.to_dict()
        for key in ("model_type", "auto_map", "transformers_version"):
            fields.pop(key, None)
        fields["architectures"] = ["CLIPModel"]
        return CLIPConfig(**fields)
