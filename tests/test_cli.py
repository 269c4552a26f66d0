"""The `dclip` command: help, version, unknown commands, and every subcommand's module exists with main(argv)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from training import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_version_prints_the_package_version(capsys):
    from modeling_dclip import __version__

    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"dclip {__version__}"


def test_unknown_command_fails_with_usage(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_has_a_main(command):
    module = importlib.import_module(cli.COMMANDS[command][0])
    assert callable(module.main)


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "training.cli", "version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.startswith("dclip ")


def test_user_errors_print_the_message_without_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DCLIP_DEBUG", raising=False)
    assert cli.main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "dclip run: error: Experiment file" in err and "does not exist" in err
    assert "Traceback" not in err
    monkeypatch.setenv("DCLIP_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["run", "--config", str(tmp_path / "missing.yaml")])
