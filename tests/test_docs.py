"""The docs cannot rot: every config key is documented; the README's commands parse."""

import re
from pathlib import Path

from pydantic import BaseModel

from kava.config import KavaConfig

ROOT = Path(__file__).parent.parent


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _keys(ann, prefix + name + ".")
        else:
            yield prefix + name


def test_every_config_key_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [k for k in _keys(KavaConfig) if f"`{k}`" not in text]
    assert not missing, f"document these keys in docs/configuration.md: {missing}"


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(((?:docs|configs)/[^)]+)\)", text):
        assert (ROOT / link).exists(), link


def test_nothing_cites_a_file_outside_the_repository():
    """docs/algorithm.md is the reference for the algorithm; no code, doc, test or config points
    to the specification file the project was started from (it is not in the repository)."""
    outside = "SPEC" + ".md"
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("src", "docs", "tests", "examples"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".txt")]
    cited = [str(p.relative_to(ROOT)) for p in files if outside in p.read_text(encoding="utf-8", errors="replace")]
    assert not cited, f"{outside} is cited in {cited}; cite docs/algorithm.md"
