"""Hub-ready folders and uploads: the only code of the package that talks to the Hugging Face Hub.

`save_for_hub(model, processor, output_dir, card, plots=...)` writes a complete, self-describing folder (offline);
`push(folder, repo_id, ...)` uploads the allow-listed files of such a folder in one commit (optionally as a pull
request, optionally to a private repository). `dclip push` does both.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, get_token
from transformers import CLIPModel, CLIPProcessor

logger = logging.getLogger(__name__)

# Everything a DCLIP checkpoint needs on the Hub, and nothing else: no optimiser/scheduler/RNG state, no trainer
# checkpoints, no caches, no .env or token files, no pickled weights.
ALLOWED_FILES = frozenset(
    {
        "README.md",
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "processor_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "added_tokens.json",
        "configuration_dclip.py",
        "modeling_dclip.py",
        "processing_dclip.py",
    }
)
ALLOWED_PATTERNS = (
    re.compile(r"model-\d{5}-of-\d{5}\.safetensors"),
    re.compile(r"plots/[A-Za-z0-9][\w.-]*\.png"),
)
TEACHER_CODE_FILES = ("configuration_dclip.py", "modeling_dclip.py", "processing_dclip.py")
DEFAULT_COMMIT_MESSAGE = "Upload DCLIP model"
_PLOT_LINK = re.compile(r"\]\(plots/([^)\s]+)\)")


def is_allowed(relative_path: str) -> bool:
    """Whether a folder-relative POSIX path may be uploaded."""
    return relative_path in ALLOWED_FILES or any(p.fullmatch(relative_path) for p in ALLOWED_PATTERNS)


def select_upload_files(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Split a folder's files into `(allowed, skipped)` relative POSIX paths, both sorted.

    Symbolic links are always skipped: a link could smuggle a file from outside the folder (e.g. a token) into the
    upload under an allowed name.
    """
    root = Path(folder)
    allowed, skipped = [], []
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        relative = path.relative_to(root).as_posix()
        if not path.is_symlink() and path.is_file() and is_allowed(relative):
            allowed.append(relative)
        else:
            skipped.append(relative)
    return allowed, skipped


def model_kind(model: Any) -> str:
    """`"teacher"` for a `DCLIPTeacherModel`, `"student"` for any `CLIPModel` (a DCLIP student is one)."""
    from modeling_dclip import DCLIPTeacherModel

    if isinstance(model, DCLIPTeacherModel):
        return "teacher"
    if isinstance(model, CLIPModel):
        return "student"
    raise TypeError(
        f"save_for_hub expects a DCLIPTeacherModel or a CLIPModel/DCLIPStudentModel, got {type(model).__name__}."
    )


def _hub_processor(processor: Any, kind: str) -> Any:
    """The processor class users load: a stock `CLIPProcessor` for the student, `DCLIPProcessor` for the teacher."""
    from modeling_dclip import DCLIPProcessor

    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if image_processor is None or tokenizer is None:
        raise TypeError(
            f"processor must carry an image_processor and a tokenizer (a CLIPProcessor or DCLIPProcessor), got "
            f"{type(processor).__name__}."
        )
    # Copies: saving remote code writes `auto_map` into the components, which must not leak into the caller's objects
    # (or from a teacher's processor into a student folder that has no custom code).
    image_processor, tokenizer = copy.deepcopy(image_processor), copy.deepcopy(tokenizer)
    if kind == "student":
        if hasattr(image_processor, "auto_map"):
            del image_processor.auto_map
        tokenizer.init_kwargs.pop("auto_map", None)
        return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    # Exported as remote code next to the teacher, so `AutoProcessor.from_pretrained(..., trust_remote_code=True)`
    # returns the region-cropping processor (registering is idempotent and only affects saving).
    if getattr(DCLIPProcessor, "_auto_class", None) is None:
        DCLIPProcessor.register_for_auto_class("AutoProcessor")
    whole_image = getattr(processor, "whole_image_if_empty", True)
    return DCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer, whole_image_if_empty=whole_image)


def _card_kind(card: ModelCard) -> str | None:
    tags = card.data.get("tags") or []
    kinds = [kind for kind in ("student", "teacher") if f"dclip-{kind}" in tags]
    return kinds[0] if len(kinds) == 1 else None


def _drop_local_paths(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict):
        changed = False
        out = {}
        for key, item in value.items():
            if key in ("_name_or_path", "name_or_path") and isinstance(item, str) and os.path.isabs(item):
                changed = True
                continue
            out[key], item_changed = _drop_local_paths(item)
            changed |= item_changed
        return out, changed
    if isinstance(value, list):
        items = [_drop_local_paths(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    return value, False


def scrub_local_paths(folder: str | os.PathLike) -> list[str]:
    """Remove `_name_or_path` entries that hold absolute local paths from the folder's JSON configs.

    A model built from a local CLIP (e.g. `clip_config._name_or_path: /home/me/runs/...`) would otherwise publish the
    training machine's paths; the value only records where the weights were loaded from and is not needed to load.

    Returns:
        The JSON files that were rewritten.
    """
    rewritten = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        clean, changed = _drop_local_paths(data)
        if changed:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, path)
            rewritten.append(path.name)
    return rewritten


def _check_teacher_folder(folder: Path) -> None:
    missing = [name for name in TEACHER_CODE_FILES if not (folder / name).is_file()]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    auto_map = config.get("auto_map") or {}
    if missing or not {"AutoConfig", "AutoModel"} <= set(auto_map):
        raise ValueError(
            f"The teacher folder {str(folder)!r} lacks its remote code (missing {missing}, auto_map {auto_map}). "
            "Import the model class from `modeling_dclip` (its package registers DCLIPTeacherModel for AutoModel) "
            "before saving."
        )


def save_for_hub(
    model: Any,
    processor: Any,
    output_dir: str | os.PathLike,
    card: ModelCard,
    plots: Sequence[str | os.PathLike] = (),
    *,
    overwrite: bool = False,
) -> list[str]:
    """Write a complete Hub-ready folder for a DCLIP student or teacher (offline).

    The folder holds the weights (safetensors only), `config.json`, the processor and tokenizer files, the remote code
    for a teacher (`configuration_dclip.py`, `modeling_dclip.py`, `processing_dclip.py` and `auto_map` entries), the
    card as `README.md` and the plots under `plots/`.

    Args:
        model: a `DCLIPTeacherModel`, or a `DCLIPStudentModel`/`CLIPModel` (saved as a stock CLIP checkpoint).
        processor: a `CLIPProcessor` or `DCLIPProcessor`; its image processor and tokenizer are saved as the
            processor users should load (`CLIPProcessor` for the student, `DCLIPProcessor` for the teacher).
        output_dir: the folder to write; it must be empty or absent unless `overwrite=True`.
        card: the model card from `hub_card.card.build_card` (its kind must match the model's).
        plots: PNG files to copy to `plots/<file name>`; every plot the card links to must be among them.
        overwrite: replace the allow-listed files of an existing folder (other files are left alone, never uploaded).

    Returns:
        The folder's files that `push` will upload (relative POSIX paths, sorted).
    """
    kind = model_kind(model)
    card_kind = _card_kind(card)
    if card_kind != kind:
        raise ValueError(
            f"The card is for a {card_kind or 'unknown'} checkpoint but the model is a DCLIP {kind}; build the card "
            f"with build_card(kind={kind!r}, ...)."
        )
    plot_paths = [Path(p) for p in plots]
    for path in plot_paths:
        if path.suffix.lower() != ".png" or not path.is_file():
            raise FileNotFoundError(f"Plot {str(path)!r} is not an existing .png file.")
        if not is_allowed(f"plots/{path.name}"):
            raise ValueError(
                f"Plot file name {path.name!r} would not be uploaded; use letters, digits, '.', '_', '-'."
            )
    names = [path.name for path in plot_paths]
    if len(set(names)) != len(names):
        raise ValueError(f"Plots must have distinct file names (they all go to plots/), got {names}.")
    linked = set(_PLOT_LINK.findall(card.text))
    missing_plots = sorted(linked - {p.name for p in plot_paths})
    if missing_plots:
        raise ValueError(f"The card links to plots {missing_plots} that were not passed in `plots`.")

    folder = Path(output_dir)
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise ValueError(f"output_dir {str(folder)!r} is not empty; choose a new folder or pass overwrite=True.")
        for relative in select_upload_files(folder)[0]:
            (folder / relative).unlink()
    folder.mkdir(parents=True, exist_ok=True)

    model.save_pretrained(folder)
    _hub_processor(processor, kind).save_pretrained(folder)
    scrub_local_paths(folder)
    if kind == "teacher":
        _check_teacher_folder(folder)
    card.save(folder / "README.md")
    if plot_paths:
        (folder / "plots").mkdir(exist_ok=True)
        for path in plot_paths:
            shutil.copyfile(path, folder / "plots" / path.name)

    allowed, skipped = select_upload_files(folder)
    pickled = [name for name in skipped if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    if pickled:
        raise ValueError(
            f"save_pretrained wrote pickled weights {pickled}; the Hub folder must hold safetensors only."
        )
    if skipped:
        logger.warning(
            "%d file(s) in %s are not on the upload allow-list and will not be pushed: %s",
            len(skipped),
            folder,
            skipped,
        )
    return allowed


def check_hub_folder(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """`select_upload_files` of a complete Hub folder (README card, config and safetensors weights).

    Raises:
        FileNotFoundError: the folder is missing or incomplete.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Hub folder {str(root)!r} does not exist; write it with save_for_hub first.")
    files, skipped = select_upload_files(root)
    missing = [name for name in ("README.md", "config.json") if name not in files]
    if not any(name.endswith(".safetensors") for name in files):
        missing.append("*.safetensors")
    if missing:
        raise FileNotFoundError(
            f"{str(root)!r} is not a complete Hub folder (missing {missing}); build it with "
            "hub_card.push.save_for_hub or `dclip push --model_dir ...`."
        )
    return files, skipped


def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    revision: str | None = None,
    api: HfApi | None = None,
) -> CommitInfo:
    """Upload the allow-listed files of a Hub-ready folder to `repo_id` in one commit.

    Args:
        folder: a folder written by `save_for_hub` (needs `README.md`, `config.json` and safetensors weights).
        repo_id: `org/name` of the model repository; created when missing.
        private: create the repository as private (an existing repository keeps its visibility).
        create_pr: open a pull request instead of committing to the branch.
        token: a Hub token; defaults to the usual `huggingface_hub` login (`HF_TOKEN` or `hf auth login`).
        commit_message: the commit (or pull request) title.
        revision: the branch to commit to (default: the repository's default branch).
        api: an `HfApi` to use (tests pass a mock); defaults to `HfApi()`.

    Returns:
        The `CommitInfo` of the commit (its `pr_url` is set when `create_pr=True`).

    Raises:
        FileNotFoundError: `folder` is missing or is not a complete Hub folder.
        ValueError: no token is available (before anything is sent).
    """
    root = Path(folder)
    files, skipped = check_hub_folder(root)
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}.")
    token = token or get_token()
    if not token:
        raise ValueError(
            "No Hugging Face token found: run `hf auth login` (or set the HF_TOKEN environment variable), or pass "
            "token=... / --token. Nothing was uploaded."
        )
    if skipped:
        logger.warning("Not uploading %d file(s) outside the allow-list: %s", len(skipped), skipped)
    api = api or HfApi()
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(root / name)) for name in files]
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message,
        token=token,
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
    )
    logger.info("Uploaded %d file(s) to %s%s", len(files), repo_id, " as a pull request" if create_pr else "")
    return info


# --------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dclip push",
        description="Build a Hub-ready folder from a trained checkpoint (--model_dir) and/or upload a folder.",
    )
    parser.add_argument(
        "--folder", required=True, help="the Hub-ready folder to upload (written first with --model_dir)"
    )
    parser.add_argument("--repo_id", required=True, help="target repository, e.g. my-org/dclip-vit-b16")
    parser.add_argument("--model_dir", help="a saved student or teacher checkpoint (with its processor) to export")
    parser.add_argument("--kind", choices=("student", "teacher"), help="checkpoint kind (default: from its config)")
    parser.add_argument("--processor_dir", help="folder of the saved processor (default: --model_dir)")
    parser.add_argument("--results", help="results.json of `dclip evaluate` for the card")
    parser.add_argument("--config", help="the run's experiment YAML / arguments JSON for the card")
    parser.add_argument("--plots", nargs="*", default=None, help="PNG plots (default: *.png beside --results)")
    parser.add_argument("--model_key", help="name of this checkpoint in results.json")
    parser.add_argument("--base_key", help="name of the base model in results.json")
    parser.add_argument("--base_model", help="Hub id of the base CLIP for the card metadata")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing --folder")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--token", help="Hub token (default: `hf auth login` / HF_TOKEN)")
    parser.add_argument("--commit_message", default=DEFAULT_COMMIT_MESSAGE)
    parser.add_argument("--dry_run", action="store_true", help="build the folder and list the files; upload nothing")
    return parser


def load_checkpoint(
    model_dir: str | os.PathLike, kind: str | None = None, processor_dir: str | os.PathLike | None = None
) -> tuple[Any, Any, str]:
    """Load a saved DCLIP checkpoint and its processor: `(model, processor, kind)`.

    Args:
        model_dir: a folder a training stage saved (a student writes `model_type: clip`, a teacher `dclip_teacher`).
        kind: the expected kind; a mismatch raises `ValueError`.
        processor_dir: where the processor was saved (default: `model_dir`).
    """
    from transformers import AutoConfig, AutoProcessor

    # Importing modeling_dclip registers the DCLIP classes with the Auto* factories.
    from modeling_dclip import DCLIPStudentModel, DCLIPTeacherModel

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.json; pass the folder a training stage saved.")
    model_type = AutoConfig.from_pretrained(path).model_type
    kinds = {"dclip_teacher": "teacher", "clip": "student", "dclip_student": "student"}
    if model_type not in kinds:
        raise ValueError(f"{str(path)!r} holds a {model_type!r} model, not a DCLIP student (clip) or teacher.")
    detected = kinds[model_type]
    if kind is not None and kind != detected:
        raise ValueError(f"--kind {kind} does not match the checkpoint in {str(path)!r} (model_type {model_type!r}).")
    if detected == "teacher":
        model = DCLIPTeacherModel.from_pretrained(path)
    else:
        model = DCLIPStudentModel.from_clip(CLIPModel.from_pretrained(path))
    processor_path = Path(processor_dir) if processor_dir is not None else path
    try:
        processor = AutoProcessor.from_pretrained(processor_path)
    except (OSError, ValueError, TypeError) as error:
        processor = error
    if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
        raise FileNotFoundError(
            f"No CLIP/DCLIP processor (image processor + tokenizer) could be loaded from {str(processor_path)!r} "
            f"({processor}); save the processor next to the checkpoint or pass its folder as --processor_dir."
        )
    return model, processor, detected


def main(argv: Sequence[str] | None = None) -> int:
    """`dclip push`: export a checkpoint to a Hub-ready folder (with its card) and upload it."""
    from hub_card.card import build_card, default_plots, load_results, load_run_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.model_dir:
        model, processor, kind = load_checkpoint(args.model_dir, args.kind, args.processor_dir)
        plots = [Path(p) for p in (args.plots if args.plots is not None else default_plots(args.results))]
        card = build_card(
            kind=kind,
            repo_id=args.repo_id,
            run_args=load_run_args(args.config) if args.config else None,
            results=load_results(args.results) if args.results else None,
            model_key=args.model_key,
            base_key=args.base_key,
            base_model=args.base_model,
            plots=plots,
            license=args.license,
        )
        files = save_for_hub(model, processor, args.folder, card, plots=plots, overwrite=args.overwrite)
    else:
        files = check_hub_folder(args.folder)[0]
    if args.dry_run:
        print(f"Dry run: {len(files)} file(s) in {args.folder} would be uploaded to {args.repo_id}:")
        print("\n".join(f"  {name}" for name in files))
        return 0
    info = push(
        args.folder,
        args.repo_id,
        private=args.private,
        create_pr=args.create_pr,
        token=args.token,
        commit_message=args.commit_message,
    )
    print(f"Pushed {len(files)} file(s) to {args.repo_id}: {getattr(info, 'pr_url', None) or info.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
