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
