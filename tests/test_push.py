"""Hub folders and uploads: exact allow-listed contents, stock-CLIP and remote-code loading, runnable card snippets,
and `push` against a mocked `HfApi` (no network)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi, constants
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

from hub_card.card import build_card, usage_snippet
from hub_card.push import ALLOWED_FILES, is_allowed, push, save_for_hub, select_upload_files
from modeling_dclip import DCLIPProcessor, DCLIPStudentModel, DCLIPTeacherModel
from tests.conftest import REPO_ROOT, TINY_IMAGE_SIZE, tiny_clip_config

push_module = importlib.import_module("hub_card.push")
STUDENT_REPO = "dclip-test/dclip-student-tiny"
TEACHER_REPO = "dclip-test/dclip-teacher-tiny"
RESULTS = {"models": {"base": {"coco_5k": {"t2i_recall@1": 10.0}}, "dclip": {"coco_5k": {"t2i_recall@1": 12.0}}}}
STUDENT_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "plots/recall_at_k.png",
}
TEACHER_FILES = (STUDENT_FILES - {"plots/recall_at_k.png"}) | {
    "configuration_dclip.py",
    "modeling_dclip.py",
    "processing_dclip.py",
}


def photo(seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (41, 37, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module")
def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )


@pytest.fixture(scope="module")
def base_clip(tiny_tokenizer) -> CLIPModel:
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config(vocab_size=len(tiny_tokenizer))).eval()
    model.config._name_or_path = "/home/someone/runs/base-clip"  # as after from_pretrained(<local folder>)
    return model


@pytest.fixture(scope="module")
def plot_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plots") / "recall_at_k.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path


@pytest.fixture(scope="module")
def student(base_clip) -> DCLIPStudentModel:
    model = DCLIPStudentModel.from_clip(base_clip)
    with torch.no_grad():  # a "distilled" student differs from its base
        model.visual_projection.weight.add_(0.01)
    return model.eval()


@pytest.fixture(scope="module")
def student_folder(student, tiny_tokenizer, image_processor, plot_file, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hub") / "student"
    card = build_card(kind="student", repo_id=STUDENT_REPO, results=RESULTS, plots=[plot_file])
    processor = DCLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer)  # converted to CLIPProcessor
    save_for_hub(student, processor, folder, card, plots=[plot_file])
    return folder


@pytest.fixture(scope="module")
def teacher(base_clip) -> DCLIPTeacherModel:
    torch.manual_seed(1)
    return DCLIPTeacherModel.from_clip(base_clip, num_attention_heads=4).eval()


@pytest.fixture(scope="module")
def teacher_folder(teacher, tiny_tokenizer, image_processor, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hub") / "teacher"
    card = build_card(kind="teacher", repo_id=TEACHER_REPO, results=RESULTS)
    save_for_hub(teacher, CLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer), folder, card)
    return folder


def files_of(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------------ folders


def test_student_folder_holds_exactly_the_allow_listed_files(student_folder):
    assert files_of(student_folder) == STUDENT_FILES
    assert select_upload_files(student_folder) == (sorted(STUDENT_FILES), [])
    config = json.loads((student_folder / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        assert "auto_map" not in (student_folder / name).read_text(), name  # no custom code anywhere


def test_folders_do_not_publish_local_paths(teacher, student_folder, teacher_folder):
    assert teacher.config.clip_config._name_or_path == "/home/someone/runs/base-clip"  # what save_pretrained writes
    for folder in (student_folder, teacher_folder):
        for path in folder.glob("*.json"):
            assert "/home/someone" not in path.read_text(), path.name


def test_teacher_folder_holds_weights_code_and_auto_map(teacher_folder):
    assert files_of(teacher_folder) == TEACHER_FILES
    config = json.loads((teacher_folder / "config.json").read_text())
    assert config["model_type"] == "dclip_teacher"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_dclip.DCLIPTeacherConfig",
        "AutoModel": "modeling_dclip.DCLIPTeacherModel",
    }
    processor_config = json.loads((teacher_folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_dclip.DCLIPProcessor"}
    # The shipped code is the package's code, byte for byte.
    for name in ("configuration_dclip.py", "modeling_dclip.py", "processing_dclip.py"):
        assert (teacher_folder / name).read_bytes() == (REPO_ROOT / "modeling_dclip" / name).read_bytes()


def test_student_folder_loads_in_stock_clip_with_identical_embeddings(student, student_folder, tiny_tokenizer):
    loaded = CLIPModel.from_pretrained(student_folder).eval()
    assert type(loaded) is CLIPModel
    processor = CLIPProcessor.from_pretrained(student_folder)
    inputs = processor(
        text=["a red circle", "a cat on a laptop"],
        images=[photo(0), photo(1)],
        return_tensors="pt",
        padding=True,
        truncation=True,
    )
    assert (
        inputs["input_ids"].tolist()
        == tiny_tokenizer(["a red circle", "a cat on a laptop"], padding=True)["input_ids"]
    )
    with torch.no_grad():
        expected, got = student(**inputs), loaded(**inputs)
    torch.testing.assert_close(got.image_embeds, expected.image_embeds, rtol=0, atol=0)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, rtol=0, atol=0)


def test_student_card_snippet_runs_against_the_saved_folder(student_folder, tmp_path, monkeypatch, capsys):
    readme = (student_folder / "README.md").read_text(encoding="utf-8")
    snippet = usage_snippet(readme)
    assert STUDENT_REPO in snippet and "trust_remote_code" not in snippet
    monkeypatch.chdir(tmp_path)
    photo(3).save(tmp_path / "example.jpg")
    exec(compile(snippet.replace(STUDENT_REPO, str(student_folder)), "card_snippet", "exec"), {})
    out = capsys.readouterr().out
    assert "best caption:" in out and "probabilities:" in out
    assert "'label': 'dog'" in out  # the zero-shot pipeline ran on the folder


def test_teacher_folder_loads_with_remote_code_in_a_fresh_offline_process(teacher, teacher_folder, tmp_path):
    # Reference outputs of the in-process teacher on the card's own example inputs.
    photo(4).save(tmp_path / "example.jpg")
    image = Image.open(tmp_path / "example.jpg").convert("RGB")  # as the snippet reads it (JPEG is lossy)
    processor = DCLIPProcessor.from_pretrained(teacher_folder)
    boxes = [[0, 0, image.width // 2, image.height // 2], [image.width // 4, 0, image.width, image.height]]
    with torch.no_grad():
        expected = teacher(**processor(images=[image], text=["a dog running on the beach"], boxes=[boxes]))
    snippet = usage_snippet((teacher_folder / "README.md").read_text(encoding="utf-8"))
    script = textwrap.dedent(
        """
        import sys
        sys.modules["modeling_dclip"] = None  # the editable install would make the package importable anywhere
        try:
            import modeling_dclip
        except ImportError:
            pass
        else:
            raise SystemExit("modeling_dclip is importable: the remote-code check would prove nothing")
        """
    )
    script += snippet.replace(TEACHER_REPO, str(teacher_folder))
    script += textwrap.dedent(
        """
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
        torch.save(outputs.teacher_embeds, "teacher_embeds.pt")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(tmp_path).resolve() != REPO_ROOT and REPO_ROOT not in Path(tmp_path).resolve().parents
    got = torch.load(tmp_path / "teacher_embeds.pt")
    torch.testing.assert_close(got, expected.teacher_embeds, rtol=1e-5, atol=1e-6)


def test_save_for_hub_refuses_mismatched_cards_missing_plots_and_non_empty_folders(
    student, teacher, tiny_tokenizer, image_processor, plot_file, tmp_path
):
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer)
    student_card = build_card(kind="student", repo_id=STUDENT_REPO, plots=[plot_file])
    with pytest.raises(ValueError, match="kind='teacher'"):
        save_for_hub(teacher, processor, tmp_path / "a", student_card, plots=[plot_file])
    with pytest.raises(ValueError, match="recall_at_k.png"):
        save_for_hub(student, processor, tmp_path / "b", student_card)
    with pytest.raises(FileNotFoundError, match="png"):
        save_for_hub(student, processor, tmp_path / "c", student_card, plots=[tmp_path / "nope.png"])
    (tmp_path / "my plot.png").write_bytes(plot_file.read_bytes())
    with pytest.raises(ValueError, match="would not be uploaded"):
        save_for_hub(student, processor, tmp_path / "c", student_card, plots=[plot_file, tmp_path / "my plot.png"])
    with pytest.raises(TypeError, match="CLIPModel"):
        save_for_hub(torch.nn.Linear(2, 2), processor, tmp_path / "d", student_card)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        save_for_hub(student, processor, tmp_path / "e", student_card, plots=[plot_file])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ push


@pytest.fixture
def cluttered_folder(student_folder, tmp_path) -> Path:
    """A copy of the student folder next to everything that must never be uploaded."""
    folder = tmp_path / "upload"
    folder.mkdir()
    for name in STUDENT_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((student_folder / name).read_bytes())
    secret = tmp_path / "secret_token"
    secret.write_text("hf_secret")
    junk = {
        "optimizer.pt": b"x",
        "scheduler.pt": b"x",
        "rng_state.pth": b"x",
        "training_args.bin": b"x",
        "pytorch_model.bin": b"x",
        ".env": b"HF_TOKEN=hf_secret",
        "token": b"hf_secret",
        "checkpoint-10/model.safetensors": b"x",
        "cache/features.arrow": b"x",
        ".cache/huggingface/upload.lock": b"x",
        "plots/../notes.txt": b"x",
        "runs/events.out.tfevents": b"x",
    }
    for name, content in junk.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    (folder / "vocab.json").symlink_to(secret)  # allowed name, but a link: never followed
    return folder


def test_allow_list_admits_weights_shards_and_plots_only():
    assert {"model-00001-of-00002.safetensors", "plots/recall_at_k.png"} == {
        name
        for name in (
            "model-00001-of-00002.safetensors",
            "plots/recall_at_k.png",
            "plots/../x.png",
            "plots/a.jpg",
            "checkpoint-1/model.safetensors",
            "optimizer.pt",
            ".env",
            "sub/README.md",
        )
        if is_allowed(name)
    }
    assert all(is_allowed(name) for name in ALLOWED_FILES)


def test_push_creates_repo_and_uploads_only_allow_listed_files(cluttered_folder):
    api = mock.create_autospec(HfApi, instance=True)
    push(
        cluttered_folder,
        STUDENT_REPO,
        private=True,
        create_pr=True,
        token="hf_test",
        commit_message="Add DCLIP",
        api=api,
    )
    api.create_repo.assert_called_once_with(
        STUDENT_REPO, token="hf_test", private=True, repo_type="model", exist_ok=True
    )
    api.create_commit.assert_called_once()
    assert [c[0] for c in api.mock_calls] == ["create_repo", "create_commit"]
    args, kwargs = api.create_commit.call_args
    assert args[0] == STUDENT_REPO
    assert kwargs["create_pr"] is True and kwargs["commit_message"] == "Add DCLIP" and kwargs["token"] == "hf_test"
    operations = args[1]
    assert {op.path_in_repo for op in operations} == STUDENT_FILES
    for op in operations:
        assert Path(op.path_or_fileobj) == cluttered_folder / op.path_in_repo


def test_push_defaults_to_public_direct_commit_with_the_login_token(student_folder, tmp_path, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("hf_from_login\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    api = mock.create_autospec(HfApi, instance=True)
    push(student_folder, STUDENT_REPO, api=api)
    api.create_repo.assert_called_once_with(
        STUDENT_REPO, token="hf_from_login", private=False, repo_type="model", exist_ok=True
    )
    assert api.create_commit.call_args.kwargs["create_pr"] is False


def test_push_without_a_token_fails_before_any_hub_call(student_folder, tmp_path, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_here"))
    api = mock.create_autospec(HfApi, instance=True)
    with pytest.raises(ValueError, match="hf auth login"):
        push(student_folder, STUDENT_REPO, api=api)
    assert api.mock_calls == []


def test_push_rejects_incomplete_folders_and_bad_repo_ids(student_folder, tmp_path):
    api = mock.create_autospec(HfApi, instance=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push(tmp_path / "missing", STUDENT_REPO, token="hf_test", api=api)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "README.md").write_text("---\n---\n")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        push(tmp_path / "half", STUDENT_REPO, token="hf_test", api=api)
    with pytest.raises(ValueError, match="org/name"):
        push(student_folder, "no-namespace", token="hf_test", api=api)
    assert api.mock_calls == []


def test_push_cli_exports_a_checkpoint_and_dry_runs(
    student, tiny_tokenizer, image_processor, plot_file, tmp_path, capsys
):
    checkpoint = tmp_path / "checkpoint"
    student.save_pretrained(checkpoint)
    CLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer).save_pretrained(checkpoint)
    (checkpoint / "optimizer.pt").write_bytes(b"x")  # trainer leftovers must not follow the model
    results = tmp_path / "eval" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps(RESULTS))
    (results.parent / plot_file.name).write_bytes(plot_file.read_bytes())
    folder = tmp_path / "hub"
    argv = [
        "--folder",
        str(folder),
        "--repo_id",
        STUDENT_REPO,
        "--model_dir",
        str(checkpoint),
        "--results",
        str(results),
        "--dry_run",
    ]
    assert push_module.main(argv) == 0
    assert files_of(folder) == STUDENT_FILES
    out = capsys.readouterr().out
    assert "7 file(s)" in out and "plots/recall_at_k.png" in out
    card_text = (folder / "README.md").read_text(encoding="utf-8")
    assert "| t2i_recall@1 | 10.00 | 12.00 | +20.0 % |" in card_text
    with pytest.raises(ValueError, match="teacher"):
        push_module.main([*argv, "--kind", "teacher", "--overwrite"])
    # An existing folder dry-runs as is; a missing one is an error, not "0 files".
    assert push_module.main(["--folder", str(folder), "--repo_id", STUDENT_REPO, "--dry_run"]) == 0
    assert "7 file(s)" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_module.main(["--folder", str(tmp_path / "nope"), "--repo_id", STUDENT_REPO, "--dry_run"])
    # A checkpoint saved without its processor gets a clear error naming the fix.
    bare = tmp_path / "bare"
    student.save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="--processor_dir"):
        push_module.load_checkpoint(bare)
    model, processor, kind = push_module.load_checkpoint(bare, "student", processor_dir=checkpoint)
    assert kind == "student" and isinstance(processor, CLIPProcessor)
