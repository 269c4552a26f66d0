"""DCLIP models for transformers: the cross-modal teacher, the student (a drop-in CLIP) and the processor.

Importing this package registers the classes with `AutoConfig`, `AutoModel` and `AutoProcessor`, and marks the
teacher for `trust_remote_code` export (its `save_pretrained` writes `auto_map` and copies this code).
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_dclip import EMPTY_REGION_POLICIES, DCLIPStudentConfig, DCLIPTeacherConfig
from .modeling_dclip import (
    DCLIPCrossAttention,
    DCLIPCrossModalLayer,
    DCLIPStudentModel,
    DCLIPTeacherModel,
    DCLIPTeacherOutput,
    DCLIPTextFeatures,
    masked_attention_pool,
)
from .processing_dclip import DCLIPProcessor, sanitize_boxes, to_rgb

__version__ = "0.1.0"

AutoConfig.register("dclip_teacher", DCLIPTeacherConfig, exist_ok=True)
AutoConfig.register("dclip_student", DCLIPStudentConfig, exist_ok=True)
AutoModel.register(DCLIPTeacherConfig, DCLIPTeacherModel, exist_ok=True)
AutoModel.register(DCLIPStudentConfig, DCLIPStudentModel, exist_ok=True)
AutoProcessor.register(DCLIPTeacherConfig, DCLIPProcessor, exist_ok=True)
DCLIPTeacherConfig.register_for_auto_class()
DCLIPTeacherModel.register_for_auto_class("AutoModel")
DCLIPProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "EMPTY_REGION_POLICIES",
    "DCLIPCrossAttention",
    "DCLIPCrossModalLayer",
    "DCLIPProcessor",
    "DCLIPStudentConfig",
    "DCLIPStudentModel",
    "DCLIPTeacherConfig",
    "DCLIPTeacherModel",
    "DCLIPTeacherOutput",
    "DCLIPTextFeatures",
    "masked_attention_pool",
    "sanitize_boxes",
    "to_rgb",
]
