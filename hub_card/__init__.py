"""Model cards and Hub publishing for DCLIP checkpoints.

`hub_card.card` renders cards offline; `hub_card.push` writes Hub-ready folders and is the only module that talks to
the Hugging Face Hub (`from hub_card.push import push`; the name `hub_card.push` stays the module).
"""

from .card import build_card, eval_results_for, load_results, load_run_args, resolve_model_names, usage_snippet
from .push import ALLOWED_FILES, is_allowed, save_for_hub, select_upload_files

__all__ = [
    "ALLOWED_FILES",
    "build_card",
    "eval_results_for",
    "is_allowed",
    "load_results",
    "load_run_args",
    "resolve_model_names",
    "save_for_hub",
    "select_upload_files",
    "usage_snippet",
]
