"""CLI polish: --version, the program name it was called by, and help text on every option."""
import argparse
import subprocess
import sys

import pytest

import harness
from harness.cli import build_parser, main, prog_name


def _parsers(parser: argparse.ArgumentParser, path: str = ""):
    yield path or "(top)", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}".strip())


def test_every_option_and_argument_has_help():
    missing = [f"{where}: {action.dest}" for where, parser in _parsers(build_parser())
               for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert missing == []


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().endswith(harness.__version__)


def test_prog_is_the_name_it_was_called_by():
    assert prog_name("/usr/local/bin/moe-harness") == "moe-harness"
    assert prog_name("/repo/harness/__main__.py") == "python -m harness"
    done = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m harness")
