"""Two CPU processes (gloo, `accelerate launch --multi_gpu --num_processes 2`) equal one process holding the batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import REPO_ROOT
from training.args import StudentTrainingArguments
from training.losses import student_distillation_loss
from training.train_student import train_student
from training.trainer import apply_trainable_policy

# The launched script and this test build the same model, batch and split from these helpers.
HELPERS = textwrap.dedent(
    """
    import torch
    from torch.utils.data import Dataset

    from modeling_dclip import DCLIPStudentModel
    from tests.conftest import tiny_clip_config

    GLOBAL_BATCH = 8
    SPLIT = (5, 3)  # uneven per-rank batches: the gathered loss must not care


    def build_student():
        torch.manual_seed(0)
        config = DCLIPStudentModel.config_class.from_clip_config(tiny_clip_config(vocab_size=64, projection_dim=32))
        return DCLIPStudentModel(config)


    def global_batch():
        generator = torch.Generator().manual_seed(1)
        ids = torch.randint(1, 62, (GLOBAL_BATCH, 6), generator=generator)
        ids[:, 0], ids[:, -1] = 62, 63
        return {
            "pixel_values": torch.randn(GLOBAL_BATCH, 3, 30, 30, generator=generator),
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "teacher_embeds": torch.randn(GLOBAL_BATCH, 32, generator=generator),
            "target_text_embeds": torch.randn(GLOBAL_BATCH, 32, generator=generator),
            # Images 0 and 3 have two captions each, split across the two ranks.
            "image_index": torch.tensor([0, 1, 0, 2, 3, 4, 3, 5]),
        }


    class Pairs(Dataset):
        def __init__(self):
            self.batch = global_batch()

        def __len__(self):
            return GLOBAL_BATCH

        def __getitem__(self, index):
            return {key: value[index] for key, value in self.batch.items()}
    """
)

SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from accelerate import Accelerator

    from dist_helpers import SPLIT, Pairs, build_student, global_batch
    from training.args import StudentTrainingArguments
    from training.losses import student_distillation_loss
    from training.train_student import train_student
    from training.trainer import apply_trainable_policy

    out_dir = sys.argv[1]
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2, world

    # 1. The hybrid loss and its gradients on a DDP-wrapped student, each rank holding part of the global batch.
    student = build_student()
    apply_trainable_policy(student, "paper_code")
    model = accelerator.prepare(student)
    batch = global_batch()
    start = sum(SPLIT[:rank])
    local = {key: value[start : start + SPLIT[rank]] for key, value in batch.items()}
    outputs = model(pixel_values=local["pixel_values"], input_ids=local["input_ids"],
                    attention_mask=local["attention_mask"])
    result = student_distillation_loss(
        outputs.image_embeds, outputs.text_embeds, local["teacher_embeds"], local["target_text_embeds"],
        image_index=local["image_index"], same_image_positives=True,
    )
    accelerator.backward(result.loss)
    grads = {name: p.grad.detach().clone() for name, p in student.named_parameters() if p.grad is not None}
    if rank == 0:
        torch.save({"loss": result.loss.detach(), "terms": {k: v.detach() for k, v in result.terms().items()},
                    "grads": grads}, f"{out_dir}/loss_and_grads.pt")

    # 2. One optimizer step of the real student trainer (SGD, so the update is the averaged gradient).
    student = build_student()
    args = StudentTrainingArguments(
        output_dir=f"{out_dir}/trainer", per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=1,
        optim="sgd", learning_rate=1.0, weight_decay=0.0, eval_strategy="no", save_strategy="no",
        disable_tqdm=True, report_to="none", logging_steps=1,
    )
    trainer = train_student(student, args, Pairs())
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in student.state_dict().items()}, f"{out_dir}/after_step.pt")
        torch.save(trainer.state.log_history, f"{out_dir}/log_history.pt")
    """
)


def _reference_loss_and_grads():
    namespace: dict = {}
    exec(HELPERS, namespace)  # noqa: S102 - the same helper code the launched processes run
    student = namespace["build_student"]()
    apply_trainable_policy(student, "paper_code")
    batch = namespace["global_batch"]()
    outputs = student(
        pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    result = student_distillation_loss(
        outputs.image_embeds,
        outputs.text_embeds,
        batch["teacher_embeds"],
        batch["target_text_embeds"],
        image_index=batch["image_index"],
        same_image_positives=True,
    )
    result.loss.backward()
    grads = {name: p.grad for name, p in student.named_parameters() if p.grad is not None}
    return result, grads, namespace


@pytest.mark.slow
def test_two_processes_give_the_loss_and_gradients_of_one_process_with_the_global_batch(tmp_path):
    (tmp_path / "dist_helpers.py").write_text(HELPERS)
    (tmp_path / "dist_script.py").write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        # Without it each process sees no accelerator and stays a world of one; with it, gloo MULTI_CPU.
        "ACCELERATE_USE_CPU": "1",
    }
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command = [*launcher, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    completed = subprocess.run(
        [*command, str(tmp_path / "dist_script.py"), str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    reference, reference_grads, namespace = _reference_loss_and_grads()
    distributed = torch.load(tmp_path / "loss_and_grads.pt")
    assert torch.allclose(distributed["loss"], reference.loss.detach(), atol=1e-5)
    for name, value in reference.terms().items():
        assert torch.allclose(distributed["terms"][name], value.detach(), atol=1e-5), name
    assert set(distributed["grads"]) == set(reference_grads)
    for name, grad in reference_grads.items():
        assert torch.allclose(distributed["grads"][name], grad, atol=1e-5), name

    # The trainer step: 2 processes x 4 samples == 1 process x 8 samples.
    student = namespace["build_student"]()
    args = StudentTrainingArguments(
        output_dir=str(tmp_path / "single"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        weight_decay=0.0,
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
        logging_steps=1,
    )
    single = train_student(student, args, namespace["Pairs"]())
    after = torch.load(tmp_path / "after_step.pt")
    before = namespace["build_student"]().state_dict()
    moved = 0
    for name, tensor in student.state_dict().items():
        assert torch.allclose(after[name], tensor, atol=1e-5, rtol=0), name
        moved += int(not torch.equal(tensor, before[name]))
    assert moved > 0
    distributed_loss = [e["loss"] for e in torch.load(tmp_path / "log_history.pt") if "loss" in e]
    single_loss = [e["loss"] for e in single.state.log_history if "loss" in e]
    assert distributed_loss == pytest.approx(single_loss, abs=1e-5)
