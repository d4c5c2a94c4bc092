"""`kava demo`'s quality stage: `kava bench quality --only no_cot,kava` at the demo's budget
(here a tiny one), with the latent controls in its table."""

from __future__ import annotations

import argparse

from kava.cli import main
from kava.demo import _quality_stage
from test_bench_quality import TINY_OVERRIDES


def test_quality_stage_trains_no_cot_and_kava_from_one_base(tmp_path):
    args = argparse.Namespace(quality_base_steps=2, quality_steps=2, quality_test_size=6)
    summary = _quality_stage(tmp_path / "quality", args, extra=tuple(TINY_OVERRIDES), jobs=1)
    assert set(summary["methods"]) == {"base", "no_cot", "kava"}
    assert "| No-CoT |" in summary["table"] and "latent reliance (points)" in summary["table"]
    assert "shuffled.reliance" in summary["methods"]["kava"]["controls"]
    assert (tmp_path / "quality" / "base" / "backbone" / "config.json").is_file()


def test_demo_refuses_a_bad_quality_budget(capsys):
    assert main(["demo", "--output-dir", "/nonexistent/x", "--quality", "--quality-steps", "0"]) == 2
    assert "--quality-steps" in capsys.readouterr().err
