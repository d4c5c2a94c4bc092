"""Functions a screen long: no function or method in src/kava is longer than MAX_LINES lines
(from its `def` line, decorators excluded, to its last line, docstring included), so a reader
sees each one whole (issue 22: `_train` was 190 lines of setup, loop and checkpointing)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "kava"
MAX_LINES = 100


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (n lines)` for every function under `root` longer than `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_in_src_is_longer_than_100_lines():
    assert list(SRC.rglob("*.py")), "no source found"
    assert long_functions(SRC) == [], f"split these functions (at most {MAX_LINES} lines each)"


def test_long_functions_finds_a_long_one_and_nested_ones(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(100))
    (tmp_path / "m.py").write_text(
        f"def short():\n    return 1\n\n\ndef long():\n{body}\n\n\nclass C:\n    def method(self):\n"
        + "\n".join(f"        y{i} = {i}" for i in range(100)) + "\n"
    )
    assert long_functions(tmp_path) == [f"{tmp_path.name}/m.py:5 long (101 lines)",
                                        f"{tmp_path.name}/m.py:109 method (101 lines)"]
    assert long_functions(tmp_path, limit=101) == []
