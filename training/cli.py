"""The `dclip` command: one entry point, one subcommand per pipeline step (each a module with `main(argv=None)`)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

# subcommand -> (module with main(argv), one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "extract-regions": ("training.extract_regions", "detect/collect region boxes for a dataset and cache them"),
    "train-teacher": ("training.train_teacher", "train the cross-modal teacher (stage 1)"),
    "train-student": ("training.train_student", "distil the student CLIP from the teacher (stage 2)"),
    "evaluate": ("training.evaluate", "retrieval, hard-negative and zero-shot evaluation of one or more models"),
    "run": ("training.pipeline", "the whole pipeline from an experiment YAML, resumable"),
    "study": ("training.study", "repeat the demo experiment over seeds and report paired differences"),
    "card": ("hub_card.card", "render the model card of a trained run"),
    "push": ("hub_card.push", "upload a Hub-ready folder to the Hugging Face Hub"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS) + 2
    lines = ["usage: dclip <command> [options]", "", "commands:"]
    lines.append(f"  {'version'.ljust(width)}print the package version")
    lines += [f"  {name.ljust(width)}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `dclip <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command in ("version", "--version"):
        from modeling_dclip import __version__

        print(f"dclip {__version__}")
        return 0
    if command not in COMMANDS:
        print(f"dclip: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[command]
    module = importlib.import_module(module_name)
    try:
        result = module.main(rest)
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        # A user error (bad file, bad setting): its message names the value and the fix; the traceback is noise.
        if os.environ.get("DCLIP_DEBUG"):
            raise
        print(f"dclip {command}: error: {error}\n(set DCLIP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
