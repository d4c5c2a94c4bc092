"""The command line as a user meets it: start-up without torch, help on every option."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kava.cli import build_parser

ROOT = Path(__file__).parent.parent
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets")

# Runs argv through kava.cli.main in a fresh interpreter and prints which heavy modules it imported.
_PROBE = """
import json, sys
from kava.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}), file=sys.stderr)
"""


def _probe(argv: list[str]) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)], capture_output=True,
                          text=True, env=env, timeout=120)
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    return result, proc.stdout + proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "--bogus"], ["bench", "speed", "--help"], ["evaluate"]],
                         ids=["help", "bad-argument", "bench-help", "missing-argument"])
def test_help_and_argument_errors_do_not_import_torch(argv):
    """`kava --help` and an argument error take well under a second because building the
    parser imports neither torch nor transformers (their import alone takes seconds)."""
    result, out = _probe(argv)
    assert result["heavy"] == [], f"kava {' '.join(argv)} imported {result['heavy']}"
    assert result["code"] == (0 if "--help" in argv else 2), out


def _subparsers(parser, prefix="kava"):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    missing = []
    for name, sub in [("kava", parser), *_subparsers(parser)]:
        for action in sub._actions:
            if action.__class__.__name__ in ("_HelpAction", "_SubParsersAction"):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"
