"""Both training stages under transformers.Trainer on tiny random configs, with in-test datasets of §3 batch keys."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback

from modeling_dclip import DCLIPStudentModel, DCLIPTeacherModel
from tests.conftest import TINY_IMAGE_SIZE, tiny_clip_config
from training.args import StudentTrainingArguments, TeacherTrainingArguments, load_stage_config, parse_stage_args
from training.losses import info_nce, student_distillation_loss
from training.train_student import train_student
from training.train_teacher import train_teacher
from training.trainer import DCLIPStudentTrainer, apply_trainable_policy

VOCAB = 64
DIM = 32


def _clip_config():
    return tiny_clip_config(vocab_size=VOCAB, projection_dim=DIM)


class TeacherFeatures(Dataset):
    """Cached teacher samples (docs/internals.md §3) with fixed random features and partly padded masks."""

    def __init__(self, size: int, seed: int = 0, tokens: int = 5, regions: int = 3) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.token_embeds = torch.randn(size, tokens, DIM, generator=generator)
        self.text_embeds = torch.randn(size, DIM, generator=generator)
        self.region_embeds = torch.randn(size, regions, DIM, generator=generator)
        self.image_embeds = torch.randn(size, DIM, generator=generator)
        self.token_lengths = torch.randint(1, tokens + 1, (size,), generator=generator)
        self.region_lengths = torch.randint(1, regions + 1, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.text_embeds)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tokens, regions = self.token_embeds.shape[1], self.region_embeds.shape[1]
        return {
            "token_embeds": self.token_embeds[index],
            "token_mask": torch.arange(tokens) < self.token_lengths[index],
            "text_embeds": self.text_embeds[index],
            "region_embeds": self.region_embeds[index],
            "region_mask": torch.arange(regions) < self.region_lengths[index],
            "image_embeds": self.image_embeds[index],
            "image_index": torch.tensor(index),
        }


class StudentPairs(Dataset):
    """Student samples: an image, one of its captions drawn per epoch from (seed, epoch, index), and its targets."""

    def __init__(self, size: int, captions: int = 3, seed: int = 0, length: int = 7) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.epoch = 0
        self.pixel_values = torch.randn(size, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=generator)
        ids = torch.randint(1, VOCAB - 2, (size, captions, length), generator=generator)
        ids[..., 0] = VOCAB - 2  # start token
        ids[..., -1] = VOCAB - 1  # end token
        self.input_ids = ids
        self.teacher_embeds = torch.randn(size, captions, DIM, generator=generator)
        self.target_text_embeds = torch.randn(size, captions, DIM, generator=generator)
        self.captions = captions

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        draw = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + index)
        caption = int(torch.randint(self.captions, (1,), generator=draw))
        return {
            "pixel_values": self.pixel_values[index],
            "input_ids": self.input_ids[index, caption],
            "attention_mask": torch.ones_like(self.input_ids[index, caption]),
            "teacher_embeds": self.teacher_embeds[index, caption],
            "target_text_embeds": self.target_text_embeds[index, caption],
            "image_index": torch.tensor(index),
        }


def _teacher(seed: int = 0) -> DCLIPTeacherModel:
    torch.manual_seed(seed)
    return DCLIPTeacherModel.from_clip(
        DCLIPStudentModel(DCLIPStudentModel.config_class.from_clip_config(_clip_config()))
    )


def _student(seed: int = 0) -> DCLIPStudentModel:
    torch.manual_seed(seed)
    return DCLIPStudentModel(DCLIPStudentModel.config_class.from_clip_config(_clip_config()))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


QUIET = {"disable_tqdm": True, "report_to": "none", "save_strategy": "no", "logging_steps": 1}


def test_teacher_training_keeps_clip_bit_identical_moves_cross_attention_and_keeps_best(tmp_path):
    teacher = _teacher()
    before = _state(teacher)
    args = TeacherTrainingArguments(
        output_dir=str(tmp_path / "teacher"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        num_train_epochs=2,
        learning_rate=1e-3,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = train_teacher(teacher, args, TeacherFeatures(12, seed=1), TeacherFeatures(8, seed=2))
    after = _state(teacher)
    clip_names = [name for name in before if name.startswith("clip.")]
    cross_names = [name for name in before if name.startswith("cross_layers.")]
    assert clip_names and cross_names and len(clip_names) + len(cross_names) == len(before)
    assert all(torch.equal(before[name], after[name]) for name in clip_names)
    assert all(not torch.equal(before[name], after[name]) for name in cross_names if name.endswith("weight"))
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(eval_losses) == 2 and all(math.isfinite(loss) for loss in eval_losses)
    best_step = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1])
    best_loss = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e and e["step"] == best_step]
    assert best_loss == [min(eval_losses)]
    saved = DCLIPTeacherModel.from_pretrained(tmp_path / "teacher")
    assert all(torch.equal(saved.state_dict()[name], after[name]) for name in before)


def test_teacher_loss_equals_info_nce_of_teacher_embedding_against_frozen_text(tmp_path):
    teacher = _teacher()
    args = TeacherTrainingArguments(
        output_dir=str(tmp_path), eval_strategy="no", load_best_model_at_end=False, **QUIET
    )
    from training.trainer import DCLIPTeacherTrainer

    trainer = DCLIPTeacherTrainer(model=teacher, args=args, train_dataset=TeacherFeatures(4))
    batch = torch.utils.data.default_collate([TeacherFeatures(4)[i] for i in range(4)])
    loss = trainer.compute_loss(teacher, batch)
    features = {k: v for k, v in batch.items() if k != "image_index"}
    expected = info_nce(teacher(**features).teacher_embeds, batch["text_embeds"], temperature=0.05)
    assert torch.allclose(loss, expected, atol=1e-6)


def _expected_counts(config) -> dict[str, int]:
    # Count by hand from the config: hidden h, layers n, projection D.
    vision, text, dim = config.vision_config, config.text_config, config.projection_dim
    h, n = vision.hidden_size, vision.num_hidden_layers
    vision_attention = n * 4 * (h * h + h)
    visual_projection = h * dim
    th, tn, ti = text.hidden_size, text.num_hidden_layers, text.intermediate_size
    text_layer = 4 * (th * th + th) + 2 * (2 * th) + (th * ti + ti) + (ti * th + th)
    text_tower = text.vocab_size * th + text.max_position_embeddings * th + tn * text_layer + 2 * th
    text_projection = th * dim
    vh, vn, vi = h, n, vision.intermediate_size
    patches = (vision.image_size // vision.patch_size) ** 2
    vision_layer = 4 * (vh * vh + vh) + 2 * (2 * vh) + (vh * vi + vi) + (vi * vh + vh)
    vision_tower = (
        vh  # class embedding
        + 3 * vision.patch_size**2 * vh  # patch conv, no bias
        + (patches + 1) * vh  # positions
        + 2 * vh  # pre-layernorm
        + vn * vision_layer
        + 2 * vh  # post-layernorm
    )
    return {
        "paper_code": vision_attention + visual_projection + text_tower + text_projection,
        "frozen_text": vision_attention + visual_projection,
        "full": vision_tower + visual_projection + text_tower + text_projection,
    }


@pytest.mark.parametrize("policy", ["paper_code", "frozen_text", "full"])
def test_trainable_policy_has_exact_parameter_count(policy):
    student = _student()
    expected = _expected_counts(student.config)[policy]
    assert apply_trainable_policy(student, policy) == expected
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) == expected
    assert not student.logit_scale.requires_grad
    assert apply_trainable_policy(student, policy, train_logit_scale=True) == expected + 1


def test_trainable_policy_rejects_unknown_name():
    with pytest.raises(ValueError, match="paper_code"):
        apply_trainable_policy(_student(), "everything")


def test_student_training_moves_trainable_keeps_frozen_bit_identical_and_logs_terms(tmp_path):
    student = _student()
    before = _state(student)
    args = StudentTrainingArguments(
        output_dir=str(tmp_path / "student"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        learning_rate=1e-3,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = train_student(student, args, StudentPairs(16, seed=1), StudentPairs(8, seed=2))
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    after = _state(student)
    assert trainable and len(trainable) < len(after)
    for name in after:
        if name in trainable and name.endswith("weight"):
            assert not torch.equal(before[name], after[name]), name
        elif name not in trainable:
            assert torch.equal(before[name], after[name]), name
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert train_logs and all(
        {"loss_image_distill", "loss_text_distill", "loss_contrastive"} <= set(entry) for entry in train_logs
    )
    evaluation = [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1]
    assert {"eval_t2i_recall@1", "eval_i2t_recall@1", "eval_loss_contrastive"} <= set(evaluation)
    assert 0.0 <= evaluation["eval_t2i_recall@1"] <= 100.0
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["model_type"] == "clip"


def test_student_on_the_fly_targets_equal_cached_targets(tmp_path):
    teacher = _teacher(seed=3)
    student = _student(seed=0)
    samples = [TeacherFeatures(4, seed=5)[i] for i in range(4)]
    teacher_batch = torch.utils.data.default_collate(samples)
    pairs = torch.utils.data.default_collate([StudentPairs(4)[i] for i in range(4)])
    raw = {**{k: v for k, v in pairs.items() if k not in ("teacher_embeds", "target_text_embeds")}, **teacher_batch}
    raw["pixel_values"] = pairs["pixel_values"]
    on_the_fly = DCLIPStudentTrainer(
        model=student,
        args=StudentTrainingArguments(output_dir=str(tmp_path / "a"), targets="teacher", eval_strategy="no", **QUIET),
        teacher=teacher,
    )
    loss = on_the_fly.compute_loss(student, raw)
    with torch.no_grad():
        out = teacher(**{k: v for k, v in teacher_batch.items() if k != "image_index"})
    cached = {**pairs, "teacher_embeds": out.teacher_embeds, "target_text_embeds": out.text_embeds}
    from_cache = DCLIPStudentTrainer(
        model=student, args=StudentTrainingArguments(output_dir=str(tmp_path / "b"), eval_strategy="no", **QUIET)
    )
    assert torch.allclose(loss, from_cache.compute_loss(student, cached), atol=1e-6)
    outputs = student(**{k: pairs[k] for k in ("pixel_values", "input_ids", "attention_mask")})
    expected = student_distillation_loss(
        outputs.image_embeds, outputs.text_embeds, out.teacher_embeds, out.text_embeds
    ).loss
    assert torch.allclose(loss, expected, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_student_without_targets_or_teacher_raises_clear_error(tmp_path):
    student = _student()
    trainer = DCLIPStudentTrainer(
        model=student, args=StudentTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", **QUIET)
    )
    batch = torch.utils.data.default_collate([StudentPairs(2)[i] for i in range(2)])
    del batch["teacher_embeds"]
    with pytest.raises(ValueError, match="teacher-target cache"):
        trainer.compute_loss(student, batch)


class StopAt(TrainerCallback):
    """Simulates a killed run: stop right after optimizer step `step` (its checkpoint is written first)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def _resume_args(output_dir) -> StudentTrainingArguments:
    # 16 images, batch 4, accumulation 2: 2 optimizer steps per epoch, 4 in all; 2 epochs so the caption draw changes.
    return StudentTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        learning_rate=1e-3,
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        seed=7,
    )


def test_resume_after_kill_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    uninterrupted, full_data = _student(), StudentPairs(16, seed=4)
    train_student(uninterrupted, _resume_args(tmp_path / "full"), full_data)
    assert full_data.epoch == 1  # the trainer set the second epoch's caption draw

    killed = _student()
    train_student(killed, _resume_args(tmp_path / "killed"), StudentPairs(16, seed=4), callbacks=[StopAt(3)])
    assert (tmp_path / "killed" / "checkpoint-3").is_dir()
    resumed, resumed_data = _student(seed=123), StudentPairs(16, seed=4)  # weights must come from the checkpoint
    trainer = train_student(resumed, _resume_args(tmp_path / "killed"), resumed_data, resume_from_checkpoint="latest")
    assert trainer.state.global_step == 4 and resumed_data.epoch == 1
    reference = uninterrupted.state_dict()
    for name, tensor in resumed.state_dict().items():
        assert torch.allclose(tensor, reference[name], atol=1e-6, rtol=0), name
    # A resumed run that ignored the epoch's caption draw would differ: the draw really changes between epochs.
    data = StudentPairs(16, seed=4)
    first = [int(data[i]["input_ids"][1]) for i in range(16)]
    data.set_epoch(1)
    assert first != [int(data[i]["input_ids"][1]) for i in range(16)]


def test_resume_latest_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_student(_student(), _resume_args(tmp_path), StudentPairs(8), resume_from_checkpoint="latest")


def test_arguments_parse_from_flags_yaml_only_and_config_with_overrides(tmp_path):
    flags = parse_stage_args("student", ["--output_dir", str(tmp_path), "--weight_text", "0.5"])
    assert flags[2].weight_text == 0.5 and flags[2].learning_rate == 1e-6
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        "clip_name_or_path: some/clip\nname: demo\nregions: {source: yolo}\n"
        "teacher:\n  learning_rate: 2.0e-5\n  num_train_epochs: 3\n"
        "student:\n  learning_rate: 1e-6\n  trainable_policy: frozen_text\n"
    )
    model_args, _, teacher_args = parse_stage_args("teacher", [str(experiment)])
    assert model_args.clip_name_or_path == "some/clip"
    assert teacher_args.learning_rate == 2e-5 and teacher_args.num_train_epochs == 3
    _, _, student_args = parse_stage_args("student", ["--config", str(experiment), "--trainable_policy", "full"])
    assert student_args.trainable_policy == "full" and student_args.learning_rate == 1e-6
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"temperature": 0.1, "output_dir": str(tmp_path)}))
    assert parse_stage_args("teacher", [str(flat)])[2].temperature == 0.1


def test_arguments_reject_unknown_stage_keys_and_bad_choices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student:\n  weight_imgae: 2.0\n")
    with pytest.raises(ValueError, match="weight_imgae"):
        load_stage_config(bad, "student")
    with pytest.raises(ValueError, match="trainable_policy"):
        StudentTrainingArguments(output_dir=str(tmp_path), trainable_policy="everything")
    with pytest.raises(ValueError, match="temperature"):
        TeacherTrainingArguments(output_dir=str(tmp_path), temperature=0.0)


def test_default_arguments_are_the_papers_hyper_parameters(tmp_path):
    teacher = TeacherTrainingArguments(output_dir=str(tmp_path))
    assert (teacher.learning_rate, teacher.weight_decay, teacher.per_device_train_batch_size) == (1e-5, 0.0, 32)
    assert (teacher.num_train_epochs, teacher.seed, teacher.temperature) == (5, 42, 0.05)
    assert teacher.lr_scheduler_type == "constant" and teacher.metric_for_best_model == "eval_loss"
    assert teacher.load_best_model_at_end and not teacher.remove_unused_columns
    student = StudentTrainingArguments(output_dir=str(tmp_path))
    assert (student.learning_rate, student.weight_decay, student.max_grad_norm) == (1e-6, 0.01, 0.5)
    assert (student.per_device_train_batch_size, student.gradient_accumulation_steps) == (32, 4)
    assert (student.num_train_epochs, student.trainable_policy, student.temperature) == (2, "paper_code", 0.05)
    assert (student.weight_image, student.weight_text, student.weight_contrastive) == (1, 1, 1)


def test_paper_experiment_files_hold_methods_hyper_parameters():
    expected_clip = {"paper_vitb16": "openai/clip-vit-base-patch16", "paper_vitl14": "openai/clip-vit-large-patch14"}
    for name, clip in expected_clip.items():
        path = f"training/configs/experiments/{name}.yaml"
        model_args, _, teacher = parse_stage_args("teacher", [path])
        assert model_args.clip_name_or_path == clip
        assert (model_args.cross_attention_heads, model_args.cross_layers) == (8, 1)
        assert (teacher.learning_rate, teacher.weight_decay, teacher.per_device_train_batch_size) == (1e-5, 0.0, 32)
        assert (teacher.seed, teacher.temperature, teacher.lr_scheduler_type) == (42, 0.05, "constant")
        assert teacher.num_train_epochs == (5 if name == "paper_vitb16" else 4)
        _, _, student = parse_stage_args("student", [path])
        assert (student.learning_rate, student.weight_decay, student.max_grad_norm) == (1e-6, 0.01, 0.5)
        assert (student.per_device_train_batch_size, student.gradient_accumulation_steps) == (32, 4)
        assert (student.num_train_epochs, student.trainable_policy) == (2, "paper_code")
        assert (student.weight_image, student.weight_text, student.weight_contrastive) == (1.0, 1.0, 1.0)


def test_command_line_stages_run_from_saved_dataset_and_caches(tmp_path, tiny_tokenizer, tiny_image_processor):
    import numpy as np
    from datasets import Dataset as HFDataset
    from PIL import Image
    from transformers import CLIPProcessor

    from modeling_dclip import DCLIPProcessor
    from training.cli import main as dclip
    from training.features import (
        compute_image_features,
        compute_teacher_targets,
        compute_text_features,
        load_image_features,
        load_text_features,
    )
    from training.regions import AnnotationRegionSource, extract_regions, load_region_cache

    torch.manual_seed(0)
    clip_dir = tmp_path / "clip"
    base = DCLIPStudentModel(DCLIPStudentModel.config_class.from_clip_config(tiny_clip_config(len(tiny_tokenizer))))
    base.save_pretrained(clip_dir)
    CLIPProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer).save_pretrained(clip_dir)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(8):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    rows = {
        "image_id": [f"img{i}" for i in range(8)],
        "image": paths,
        "captions": [["a red circle", "a blue square"], ["a cat on a laptop"]] * 4,
        "split": ["train"] * 6 + ["val"] * 2,
        "boxes": [[[2, 3, 20, 18], [10, 0, 38, 30]]] * 8,
        "box_labels": [["obj", "obj"]] * 8,
        "source": ["synthetic"] * 8,
        "scene": [""] * 8,
    }
    dataset = HFDataset.from_dict(rows)
    dataset.save_to_disk(str(tmp_path / "dataset"))
    teacher = DCLIPTeacherModel.from_clip(clip_dir)
    processor = DCLIPProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer)
    extract_regions(dataset, AnnotationRegionSource(), tmp_path / "regions", progress=False)
    regions = load_region_cache(tmp_path / "regions")
    compute_image_features(dataset, regions, teacher, processor, tmp_path / "img", progress=False)
    compute_text_features(dataset, teacher, processor, tmp_path / "txt", progress=False)

    common = ["--clip_name_or_path", str(clip_dir), "--dataset_dir", str(tmp_path / "dataset")]
    common += ["--text_features_dir", str(tmp_path / "txt"), "--per_device_train_batch_size", "3"]
    common += ["--num_train_epochs", "1", "--disable_tqdm", "true", "--report_to", "none"]
    teacher_dir = tmp_path / "teacher"
    assert (
        dclip(
            ["train-teacher", *common, "--image_features_dir", str(tmp_path / "img"), "--output_dir", str(teacher_dir)]
        )
        == 0
    )
    trained = DCLIPTeacherModel.from_pretrained(teacher_dir)
    compute_teacher_targets(
        dataset,
        trained,
        load_image_features(tmp_path / "img"),
        load_text_features(tmp_path / "txt"),
        tmp_path / "targets",
        progress=False,
    )
    student_dir = tmp_path / "student"
    student_flags = ["--teacher_targets_dir", str(tmp_path / "targets"), "--output_dir", str(student_dir)]
    assert dclip(["train-student", *common, *student_flags, "--gradient_accumulation_steps", "1"]) == 0
    student = DCLIPStudentModel.from_pretrained(student_dir)
    assert not torch.equal(student.visual_projection.weight, base.visual_projection.weight)
    assert torch.equal(
        student.vision_model.embeddings.patch_embedding.weight, base.vision_model.embeddings.patch_embedding.weight
    )
