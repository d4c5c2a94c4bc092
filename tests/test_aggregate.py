import csv

import pytest
import yaml

from kava.errors import KavaError
from kava.experiments.aggregate import aggregate, find_runs, write_run_summary


def _results(acc, fwd, n=100):
    return {
        "accuracy": acc,
        "n": n,
        "correct": round(acc * n / 100),
        "forward_passes_mean": fwd,
        "forward_passes_std": 1.5,
        "generated_tokens_mean": 12.0,
        "seconds": 3.0,
        "predictions": [{"id": 0, "pred": "4"}],  # non-scalar: not copied to all_seeds_results
    }


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj))


@pytest.fixture
def tree(tmp_path):
    exp = tmp_path / "experiments"
    # Run 1: with run.yaml; gsm8k acc 50/52/54, fwd 10/11/12; svamp 60/61/62, fwd 8.
    run = exp / "kava_llama"
    _write(run / "run.yaml", {"run_name": "kava_llama", "config": "configs/kava_llama.yaml",
                              "model": "meta-llama/Llama-3.2-1B", "train_data": "gsm8k-aug",
                              "seeds": [42, 43, 44], "datasets": ["gsm8k", "svamp"]})
    for seed, g, f, s in [(42, 50, 10, 60), (43, 52, 11, 61), (44, 54, 12, 62)]:
        _write(run / f"seed_{seed}" / "results_gsm8k.yaml", _results(g, f))
        _write(run / f"seed_{seed}" / "results_svamp.yaml", _results(s, 8.0))
        _write(run / f"seed_{seed}" / "status.yaml", {"seed": seed, "train": "done", "eval": "done", "error": None})
    # Run 2: no run.yaml; gsm8k 40/42/44 fwd 20; svamp 30/31 (+ a corrupt file for seed 44).
    run = exp / "codi"
    for seed, g, s, sf in [(42, 40, 30, 5.0), (43, 42, 31, 6.0)]:
        _write(run / f"seed_{seed}" / "results_gsm8k.yaml", _results(g, 20.0))
        _write(run / f"seed_{seed}" / "results_svamp.yaml", _results(s, sf))
    _write(run / "seed_44" / "results_gsm8k.yaml", _results(44, 20.0))
    (run / "seed_44" / "results_svamp.yaml").write_text("accuracy: [unclosed\n  : : bad")
    # A run that has started but has no results yet, and an unrelated folder.
    (exp / "pending_run" / "seed_1").mkdir(parents=True)
    (exp / "notes").mkdir()
    return exp


HEADER = ["run", "model", "train_data", "gsm8k accuracy (%)", "gsm8k forward passes",
          "svamp accuracy (%)", "svamp forward passes", "n_seeds"]
ROW_CODI = ["codi", "?", "?", "42.0 ± 2.0", "20.0", "30.5 ± 0.7 (n=2)", "5.5", "3"]
ROW_KAVA = ["kava_llama", "meta-llama/Llama-3.2-1B", "gsm8k-aug", "52.0 ± 2.0", "11.0", "61.0 ± 1.0", "8.0", "3"]


def test_aggregate_tables(tree, tmp_path, capsys):
    out = tmp_path / "tables" / "table.csv"
    res = aggregate(tree, out)
    err = capsys.readouterr().err
    corrupt = tree / "codi" / "seed_44" / "results_svamp.yaml"
    assert f"warning: skipping results file {corrupt}" in err
    assert "pending_run has no results yet" in err
    assert res["runs_without_results"] == ["pending_run"]
    assert [r["run_name"] for r in res["runs"]] == ["codi", "kava_llama"]
    assert res["datasets"] == ["gsm8k", "svamp"]
    assert len(res["warnings"]) == 1

    # CSV, cell by cell.
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [HEADER, ROW_CODI, ROW_KAVA]

    # Markdown.
    md = (tmp_path / "tables" / "table.md").read_text(encoding="utf-8").splitlines()
    assert md[0] == "| " + " | ".join(HEADER) + " |"
    assert md[1] == "| --- | --- | --- | --: | --: | --: | --: | --: |"
    assert md[2] == "| codi | ? | ? | 42.0 ± 2.0 | 20.0 | 30.5 ± 0.7 (n=2) | 5.5 | 3 |"
    assert md[3] == "| kava_llama | meta-llama/Llama-3.2-1B | gsm8k-aug | 52.0 ± 2.0 | 11.0 | 61.0 ± 1.0 | 8.0 | 3 |"
    assert len(md) == 4
    assert res["markdown"].splitlines() == md

    # LaTeX (booktabs, escaped underscores, $\pm$).
    tex = (tmp_path / "tables" / "table.tex").read_text(encoding="utf-8").splitlines()
    body = [ln for ln in tex if not ln.startswith("%")]
    assert body == [
        r"\begin{tabular}{lllrrrrr}",
        r"\toprule",
        r"Run & Model & Train data & \multicolumn{2}{c}{gsm8k} & \multicolumn{2}{c}{svamp} & Seeds \\",
        r"\cmidrule(lr){4-5} \cmidrule(lr){6-7}",
        r" &  &  & Acc. (\%) & FP & Acc. (\%) & FP &  \\",
        r"\midrule",
        r"codi & ? & ? & 42.0 $\pm$ 2.0 & 20.0 & 30.5 $\pm$ 0.7 (n=2) & 5.5 & 3 \\",
        r"kava\_llama & meta-llama/Llama-3.2-1B & gsm8k-aug & 52.0 $\pm$ 2.0 & 11.0 & 61.0 $\pm$ 1.0 & 8.0 & 3 \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]
    assert "±" not in "\n".join(tex)

    png = (tmp_path / "tables" / "table.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["outputs"]["png"] == str(tmp_path / "tables" / "table.png")


def test_per_run_summaries(tree, capsys):
    aggregate(tree)  # default output: experiments/table.csv
    assert (tree / "table.csv").is_file() and (tree / "table.tex").is_file()

    summary = yaml.safe_load((tree / "codi" / "summary.yaml").read_text())
    assert summary["run_name"] == "codi"
    assert summary["model"] == "?" and summary["train_data"] == "?"
    assert summary["n_seeds"] == 3 and summary["seeds"] == [42, 43, 44]
    svamp = summary["datasets"]["svamp"]
    assert svamp["accuracy_mean"] == 30.5
    assert svamp["accuracy_std"] == pytest.approx(0.707107)
    assert svamp["forward_passes_mean"] == 5.5
    assert svamp["n_seeds"] == 2 and svamp["seeds"] == [42, 43]

    kava = yaml.safe_load((tree / "kava_llama" / "summary.yaml").read_text())
    assert kava["model"] == "meta-llama/Llama-3.2-1B"
    assert kava["seeds_requested"] == [42, 43, 44] and kava["seeds_failed"] == []
    assert kava["datasets"]["gsm8k"] == {
        "accuracy_mean": 52.0, "accuracy_std": 2.0, "forward_passes_mean": 11.0, "forward_passes_std": 1.0,
        "n_seeds": 3, "seeds": [42, 43, 44], "protocol": "greedy",
    }

    with open(tree / "kava_llama" / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["dataset", "accuracy_mean", "accuracy_std", "accuracy", "forward_passes_mean", "forward_passes_std",
         "n_seeds", "seeds"],
        ["gsm8k", "52.0", "2.0", "52.0 ± 2.0", "11.0", "1.0", "3", "42 43 44"],
        ["svamp", "61.0", "1.0", "61.0 ± 1.0", "8.0", "0.0", "3", "42 43 44"],
    ]

    everything = yaml.safe_load((tree / "codi" / "all_seeds_results.yaml").read_text())
    assert everything["seeds"] == [42, 43, 44]
    assert [r["seed"] for r in everything["datasets"]["gsm8k"]] == [42, 43, 44]
    assert [r["accuracy"] for r in everything["datasets"]["svamp"]] == [30, 31]
    first = everything["datasets"]["gsm8k"][0]
    assert first["n"] == 100 and first["forward_passes_mean"] == 20.0 and "predictions" not in first
    assert everything["skipped_files"][0]["path"].endswith("results_svamp.yaml")

    pending = yaml.safe_load((tree / "pending_run" / "summary.yaml").read_text())
    assert pending["n_seeds"] == 0 and pending["datasets"] == {}


def test_invalid_results_are_skipped(tmp_path, capsys):
    run = tmp_path / "exp" / "r"
    _write(run / "seed_1" / "results_gsm8k.yaml", _results(50, 1.0))
    _write(run / "seed_2" / "results_gsm8k.yaml", ["not", "a", "mapping"])
    _write(run / "seed_3" / "results_gsm8k.yaml", {"accuracy": "high"})
    _write(run / "seed_4" / "results_gsm8k.yaml", {"accuracy": 0.9e3})
    (run / "seed_5").mkdir()
    (run / "seed_5" / "results_gsm8k.yaml").write_bytes(b"\xff\xfe\x00garbage")
    res = aggregate(tmp_path / "exp")
    err = capsys.readouterr().err
    for seed in (2, 3, 4, 5):
        assert str(run / f"seed_{seed}" / "results_gsm8k.yaml") in err
    assert res["runs"][0]["datasets"]["gsm8k"]["n_seeds"] == 1
    assert res["runs"][0]["n_seeds"] == 1


def test_no_results_and_missing_dir(tmp_path):
    with pytest.raises(KavaError, match="not found"):
        aggregate(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KavaError, match=r"no results found under .*empty; run `kava sweep` first"):
        aggregate(tmp_path / "empty")
    (tmp_path / "empty" / "r" / "seed_1").mkdir(parents=True)
    with pytest.raises(KavaError, match="no results found"):
        aggregate(tmp_path / "empty")


def test_nested_runs_and_run_dir_itself(tmp_path):
    _write(tmp_path / "exp" / "ablations" / "t2" / "seed_0" / "results_gsm8k.yaml", _results(40, 5.0))
    _write(tmp_path / "exp" / "main" / "seed_0" / "results_gsm8k.yaml", _results(50, 5.0))
    assert [n for n, _ in find_runs(tmp_path / "exp")] == ["ablations/t2", "main"]
    res = aggregate(tmp_path / "exp" / "main", tmp_path / "out" / "t")
    assert [r["run_name"] for r in res["runs"]] == ["main"]
    assert (tmp_path / "out" / "t.csv").is_file() and (tmp_path / "out" / "t.md").is_file()


def test_write_run_summary_empty_run(tmp_path):
    (tmp_path / "r" / "seed_3").mkdir(parents=True)
    s = write_run_summary(tmp_path / "r")
    assert s["n_seeds"] == 0 and s["seeds"] == []
    assert (tmp_path / "r" / "summary.csv").read_text().startswith("dataset,")
    with pytest.raises(KavaError):
        write_run_summary(tmp_path / "missing")
