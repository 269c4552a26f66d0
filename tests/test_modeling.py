"""DCLIP teacher and student models: shapes, parameter counts, masks, freezing, save/load and stock-CLIP export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, CLIPConfig, CLIPModel

from modeling_dclip import (
    DCLIPStudentConfig,
    DCLIPStudentModel,
    DCLIPTeacherConfig,
    DCLIPTeacherModel,
    masked_attention_pool,
)
from tests.conftest import REPO_ROOT, tiny_clip_config


def _teacher(clip_config: CLIPConfig, **kwargs) -> DCLIPTeacherModel:
    torch.manual_seed(0)
    return DCLIPTeacherModel(DCLIPTeacherConfig(clip_config=clip_config.to_dict(), num_attention_heads=4, **kwargs))


def _features(batch=3, tokens=5, regions=4, dim=32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        token_embeds=torch.randn(batch, tokens, dim, generator=generator),
        token_mask=torch.ones(batch, tokens, dtype=torch.bool),
        region_embeds=torch.randn(batch, regions, dim, generator=generator),
        region_mask=torch.ones(batch, regions, dtype=torch.bool),
    )


@pytest.mark.parametrize(("dim", "expected"), [(512, 2_103_296), (768, 4_727_808)])
def test_trainable_block_has_the_papers_parameter_count_and_clip_is_frozen(dim, expected, tiny_tokenizer):
    config = tiny_clip_config(vocab_size=len(tiny_tokenizer), projection_dim=dim)
    model = DCLIPTeacherModel(DCLIPTeacherConfig(clip_config=config.to_dict()))  # paper: 8 heads, 1 layer
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    assert all(name.startswith("cross_layers.") for name in trainable)
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_teacher_raw_inputs_give_embeddings_of_clip_width(clip_config, tiny_tokenizer):
    model = _teacher(clip_config).eval()
    text = tiny_tokenizer(["a red circle", "two green triangles above a star"], padding=True, return_tensors="pt")
    out = model(
        **text,
        region_pixel_values=torch.randn(2, 3, 3, 30, 30),
        region_mask=torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool),
    )
    assert out.teacher_embeds.shape == (2, 32)
    assert out.text_embeds.shape == (2, 32)
    assert out.region_states.shape == (2, 3, 32)
    sentence = model.clip.get_text_features(**text).pooler_output
    torch.testing.assert_close(out.text_embeds, sentence)


def test_teacher_on_cached_features_equals_teacher_on_raw_inputs(clip_config, tiny_tokenizer):
    model = _teacher(clip_config).eval()
    text = tiny_tokenizer(["a red circle", "a cat"], padding=True, return_tensors="pt")
    crops = torch.randn(2, 2, 3, 30, 30)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    raw = model(**text, region_pixel_values=crops, region_mask=mask)
    feats = model.get_text_features(**text)
    cached = model(
        token_embeds=feats.token_embeds,
        token_mask=feats.token_mask,
        text_embeds=feats.text_embeds,
        region_embeds=model.get_region_features(crops, mask),
        region_mask=mask,
    )
    torch.testing.assert_close(raw.teacher_embeds, cached.teacher_embeds)


def test_token_features_drop_start_and_end_tokens(clip_config, tiny_tokenizer):
    model = _teacher(clip_config).eval()
    text = tiny_tokenizer(["a red circle", "a"], padding=True, return_tensors="pt")
    feats = model.get_text_features(**text)
    content = text["attention_mask"].sum(-1) - 2  # minus start and end tokens
    assert feats.token_mask.sum(-1).tolist() == content.tolist()
    assert feats.token_embeds.shape[1] == text["input_ids"].shape[1] - 1


def test_empty_caption_keeps_one_token_instead_of_nan(clip_config, tiny_tokenizer):
    model = _teacher(clip_config).eval()
    text = tiny_tokenizer(["", "a red circle"], padding=True, return_tensors="pt")
    out = model(**text, region_pixel_values=torch.randn(2, 1, 3, 30, 30))
    assert torch.isfinite(out.teacher_embeds).all()


def test_padded_regions_and_tokens_do_not_change_the_output(clip_config):
    model = _teacher(clip_config).eval()
    base = _features()
    padded = {
        "token_embeds": torch.cat([base["token_embeds"], torch.randn(3, 4, 32)], 1),
        "token_mask": torch.cat([base["token_mask"], torch.zeros(3, 4, dtype=torch.bool)], 1),
        "region_embeds": torch.cat([base["region_embeds"], torch.randn(3, 6, 32)], 1),
        "region_mask": torch.cat([base["region_mask"], torch.zeros(3, 6, dtype=torch.bool)], 1),
    }
    torch.testing.assert_close(model(**base).teacher_embeds, model(**padded).teacher_embeds, atol=1e-5, rtol=1e-5)


def test_reference_mode_without_masks_lets_padding_act_as_keys(clip_config):
    model = _teacher(clip_config, use_padding_masks=False).eval()
    base = _features()
    padded = dict(base)
    padded["region_embeds"] = torch.cat([base["region_embeds"], torch.zeros(3, 6, 32)], 1)
    padded["region_mask"] = torch.cat([base["region_mask"], torch.zeros(3, 6, dtype=torch.bool)], 1)
    assert not torch.allclose(model(**base).teacher_embeds, model(**padded).teacher_embeds, atol=1e-4)


def test_a_sample_does_not_depend_on_the_rest_of_the_batch(clip_config):
    model = _teacher(clip_config).eval()
    first = _features(seed=1)
    second = _features(seed=2)
    mixed = {key: torch.cat([first[key][:1], second[key][1:]]) for key in first}
    torch.testing.assert_close(model(**first).teacher_embeds[0], model(**mixed).teacher_embeds[0])


def test_cross_attention_matches_torch_multihead_attention_reference(clip_config):
    model = _teacher(clip_config).eval()
    layer = model.cross_layers[0]
    feats = _features(batch=2)
    feats["region_mask"][1, 2:] = False

    def reference(attention, query, key_value, key_mask):
        mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(
                torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
            )
            mha.in_proj_bias.copy_(torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]))
            mha.out_proj.load_state_dict(attention.out_proj.state_dict())
        return mha(query, key_value, key_value, key_padding_mask=~key_mask, need_weights=False)[0]

    text, regions = feats["token_embeds"], feats["region_embeds"] * feats["region_mask"].unsqueeze(-1)
    expected_text = layer.text_norm(text + reference(layer.text_to_region, text, regions, feats["region_mask"]))
    expected_regions = layer.region_norm(regions + reference(layer.region_to_text, regions, text, feats["token_mask"]))
    got_text, got_regions = layer(text, regions, feats["token_mask"], feats["region_mask"])
    torch.testing.assert_close(got_text, expected_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_regions, expected_regions, atol=1e-5, rtol=1e-5)


def test_attention_pool_matches_the_papers_formula():
    states = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    expected = []
    for row, row_mask in zip(states, mask):
        valid = row[row_mask]
        mean = valid.mean(0)
        scores = torch.stack([torch.nn.functional.cosine_similarity(x, mean, dim=0) for x in valid])
        weights = torch.softmax(scores / 2.0, dim=0)
        expected.append((weights[:, None] * valid).sum(0))
    torch.testing.assert_close(masked_attention_pool(states, mask, 2.0), torch.stack(expected))


def test_teacher_embedding_is_the_weighted_sum_of_both_pools(clip_config):
    model = _teacher(clip_config, text_fusion_weight=0.3).eval()
    out = model(**_features())
    torch.testing.assert_close(out.teacher_embeds, 0.3 * out.pooled_text + 0.7 * out.pooled_regions)


def test_gradients_reach_only_the_cross_attention_block(clip_config, tiny_tokenizer):
    model = _teacher(clip_config).train()
    text = tiny_tokenizer(["a red circle", "a cat"], padding=True, return_tensors="pt")
    out = model(**text, region_pixel_values=torch.randn(2, 2, 3, 30, 30))
    out.teacher_embeds.pow(2).sum().backward()
    for name, param in model.named_parameters():
        if name.startswith("cross_layers."):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    assert not model.clip.training, "the frozen backbone must stay in eval mode"


def test_width_mismatch_between_parts_raises_instead_of_zero_filling(clip_config):
    model = _teacher(clip_config).eval()
    feats = _features(dim=32)
    feats["region_embeds"] = torch.randn(3, 4, 48)
    with pytest.raises(ValueError, match="width 48.*projection_dim is 32"):
        model(**feats)


def test_empty_region_policy_whole_image_uses_the_whole_image_embedding(clip_config):
    model = _teacher(clip_config).eval()
    feats = _features(batch=2)
    feats["region_mask"][1] = False
    with pytest.raises(ValueError, match="have no regions"):
        model(**feats)
    image_embeds = torch.randn(2, 32)
    out = model(**feats, image_embeds=image_embeds)
    explicit = dict(feats)
    explicit["region_embeds"] = feats["region_embeds"].clone()
    explicit["region_embeds"][1, 0] = image_embeds[1]
    explicit["region_mask"] = feats["region_mask"].clone()
    explicit["region_mask"][1, 0] = True
    torch.testing.assert_close(out.teacher_embeds, model(**explicit).teacher_embeds)
    pixels = torch.randn(2, 3, 30, 30)
    from_pixels = model(**feats, pixel_values=pixels)
    from_embeds = model(**feats, image_embeds=model.get_image_features(pixels))
    torch.testing.assert_close(from_pixels.teacher_embeds, from_embeds.teacher_embeds)


def test_empty_region_policy_zero_vector_reproduces_the_reference_code(clip_config):
    model = _teacher(clip_config, empty_region_policy="zero_vector").eval()
    feats = _features(batch=1, regions=0)
    out = model(**feats)
    assert out.region_mask.tolist() == [[True]]
    assert torch.isfinite(out.teacher_embeds).all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_attention_heads", 5, "does not divide"),
        ("num_cross_layers", 0, "num_cross_layers"),
        ("pooling_scale", 0.0, "pooling_scale"),
        ("text_fusion_weight", 1.5, "text_fusion_weight"),
        ("empty_region_policy", "drop", "'drop'"),
    ],
)
def test_invalid_teacher_config_names_the_bad_value(field, value, message, clip_config):
    with pytest.raises(ValueError, match=message):
        DCLIPTeacherConfig(clip_config=clip_config.to_dict(), **{field: value})


def test_config_round_trip_and_auto_config(tmp_path, clip_config):
    config = DCLIPTeacherConfig(clip_config=clip_config.to_dict(), num_attention_heads=4, pooling_scale=3.0)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, DCLIPTeacherConfig)
    assert loaded.pooling_scale == 3.0 and loaded.clip_config.projection_dim == 32
    assert loaded.clip_config.vision_config.image_size == 30


def test_teacher_save_load_round_trip_is_exact(tmp_path, clip_config):
    model = _teacher(clip_config).eval()
    feats = _features()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"].endswith("DCLIPTeacherModel")
    assert (tmp_path / "modeling_dclip.py").is_file() and (tmp_path / "configuration_dclip.py").is_file()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DCLIPTeacherModel)
    assert (model(**feats).teacher_embeds - loaded(**feats).teacher_embeds).abs().max() <= 1e-5
    assert not any(p.requires_grad for p in loaded.clip.parameters())


def test_saved_teacher_loads_with_remote_code_in_a_fresh_process(tmp_path, clip_config, tiny_processor):
    model = _teacher(clip_config).eval()
    feats = _features()
    folder = tmp_path / "teacher"
    model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    torch.save({"feats": feats, "expected": model(**feats).teacher_embeds}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys, torch

        class HidePackage(importlib.abc.MetaPathFinder):  # a user who never installed dclip
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_dclip", "training", "hub_card"):
                    raise ImportError(name + " is hidden in this test")

        sys.meta_path.insert(0, HidePackage())
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "DCLIPProcessor", type(processor)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert not any(name.split(".")[0] == "modeling_dclip" for name in sys.modules)
        io = torch.load({str(tmp_path / "io.pt")!r})
        diff = (model(**io["feats"]).teacher_embeds - io["expected"]).abs().max().item()
        print(type(model).__name__, diff)
        assert diff <= 1e-5, diff
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("DCLIPTeacherModel")


def test_teacher_from_clip_copies_the_backbone(clip_config):
    torch.manual_seed(3)
    clip = CLIPModel(clip_config)
    teacher = DCLIPTeacherModel.from_clip(clip, num_attention_heads=4)
    for (name, a), (_, b) in zip(clip.state_dict().items(), teacher.clip.state_dict().items()):
        assert torch.equal(a, b), name


def _clip_inputs(tiny_tokenizer):
    text = tiny_tokenizer(["a red circle", "a cat on a laptop"], padding=True, return_tensors="pt")
    return dict(**text, pixel_values=torch.randn(2, 3, 30, 30))


def test_student_exports_as_a_stock_clip_with_identical_embeddings(tmp_path, clip_config, tiny_tokenizer):
    torch.manual_seed(4)
    clip = CLIPModel(clip_config).eval()
    student = DCLIPStudentModel.from_clip(clip).eval()
    inputs = _clip_inputs(tiny_tokenizer)
    torch.testing.assert_close(student(**inputs).logits_per_image, clip(**inputs).logits_per_image)
    student.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert "auto_map" not in config
    stock = CLIPModel.from_pretrained(tmp_path).eval()
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto) is CLIPModel
    for other in (stock, auto):
        out_a, out_b = student(**inputs), other(**inputs)
        assert (out_a.image_embeds - out_b.image_embeds).abs().max() <= 1e-5
        assert (out_a.text_embeds - out_b.text_embeds).abs().max() <= 1e-5
    reloaded = DCLIPStudentModel.from_clip(tmp_path).eval()
    assert isinstance(reloaded.config, DCLIPStudentConfig)
    assert (reloaded(**inputs).image_embeds - student(**inputs).image_embeds).abs().max() <= 1e-5


def test_student_loads_in_the_zero_shot_pipeline_without_remote_code(
    tmp_path, clip_config, tiny_tokenizer, tiny_image_processor
):
    from PIL import Image
    from transformers import CLIPProcessor, pipeline

    student = DCLIPStudentModel.from_clip(CLIPModel(clip_config)).eval()
    student.save_pretrained(tmp_path)
    CLIPProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer).save_pretrained(tmp_path)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path), device="cpu")
    image = Image.new("RGB", (40, 50), (200, 30, 30))
    scores = classifier(image, candidate_labels=["circle", "square", "star"])
    assert {s["label"] for s in scores} == {"circle", "square", "star"}
    assert abs(sum(s["score"] for s in scores) - 1.0) < 1e-4
    assert type(classifier.model) is CLIPModel


def test_student_supports_gradient_checkpointing(clip_config, tiny_tokenizer):
    student = DCLIPStudentModel.from_clip(CLIPModel(clip_config)).train()
    student.activation_checkpointing_enable()
    out = student(**_clip_inputs(tiny_tokenizer), return_loss=True)
    out.loss.backward()
    assert student.vision_model.encoder.gradient_checkpointing
    assert student.visual_projection.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_teacher_runs_in_half_precision(dtype, clip_config, tiny_tokenizer):
    model = _teacher(clip_config).to(dtype).eval()
    text = tiny_tokenizer(["a red circle", "a cat"], padding=True, return_tensors="pt")
    out = model(**text, region_pixel_values=torch.randn(2, 2, 3, 30, 30, dtype=dtype))
    assert out.teacher_embeds.dtype == dtype
    assert torch.isfinite(out.teacher_embeds.float()).all()


def test_sdpa_attention_backbone_loads_and_matches_eager(tmp_path, clip_config, tiny_tokenizer):
    model = _teacher(clip_config).eval()
    model.save_pretrained(tmp_path)
    text = tiny_tokenizer(["a red circle", "a cat"], padding=True, return_tensors="pt")
    crops = torch.randn(2, 2, 3, 30, 30)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        loaded = DCLIPTeacherModel.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert loaded.clip.config.text_config._attn_implementation == implementation
        outputs[implementation] = loaded(**text, region_pixel_values=crops).teacher_embeds
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], atol=1e-5, rtol=1e-4)


def test_package_is_importable_from_the_repo_root():
    assert (REPO_ROOT / "modeling_dclip" / "__init__.py").is_file()


def test_teacher_runs_under_bf16_autocast(clip_config, tiny_tokenizer):
    model = _teacher(clip_config).eval()
    text = tiny_tokenizer(["a red circle", "a cat"], padding=True, return_tensors="pt")
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(
            **text, region_pixel_values=torch.randn(2, 2, 3, 30, 30), region_mask=torch.tensor([[1, 1], [1, 0]])
        )
    assert torch.isfinite(out.teacher_embeds.float()).all()
