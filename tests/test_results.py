"""kava.evaluation.results: the one naming rule of kava evaluate's result files, for writer and readers."""

import re
from pathlib import Path

from kava.evaluation.results import dataset_key, predictions_file, results_file, results_files


def test_dataset_keys():
    assert [dataset_key(n) for n in ("gsm8k", "gsm8k-hard", "synthetic-test")] == ["gsm8k", "gsm8k-hard",
                                                                                   "synthetic-test"]
    assert dataset_key("/data/my set (v2).jsonl") == "my_set_v2_"
    assert dataset_key("runs/eval.jsonl") == dataset_key("eval.jsonl") == "eval"
    assert dataset_key("?.jsonl") == "_" and dataset_key("") == "dataset"


def test_files_and_their_listing(tmp_path):
    assert results_file(tmp_path, "/x/eval.jsonl") == tmp_path / "results_eval.yaml"
    assert predictions_file(tmp_path, "gsm8k") == tmp_path / "predictions_gsm8k.jsonl"
    for name in ("results_gsm8k.yaml", "results_svamp.yml", "results_.yaml", "predictions_gsm8k.jsonl", "notes.yaml"):
        (tmp_path / name).write_text("accuracy: 1\n")
    (tmp_path / "results_dir.yaml").mkdir()
    assert results_files(tmp_path) == [("gsm8k", tmp_path / "results_gsm8k.yaml"),
                                       ("svamp", tmp_path / "results_svamp.yml")]


def test_no_other_module_spells_the_file_names():
    """The writer (evaluation/cli) and the readers (experiments/sweep, experiments/aggregate, hub,
    bench/faults) name the files through this module only."""
    # a path built in code: f"results_{...}", dir / "results_eval.yaml", glob("results_*.yaml")
    spelling = re.compile(r"""(?:f["']|/ ["'])(?:results|predictions)_|["'](?:results|predictions)_\*""")
    src = Path(__file__).parents[1] / "src" / "kava"
    spelled = [f"{p.relative_to(src).as_posix()}: {m.group()}" for p in sorted(src.rglob("*.py"))
               if p.name != "results.py" for m in spelling.finditer(p.read_text(encoding="utf-8"))]
    assert spelled == [], spelled
