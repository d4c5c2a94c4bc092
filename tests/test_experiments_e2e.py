"""End to end, for real: `kava sweep` trains and evaluates the tiny config over 2 seeds in
subprocesses (`python -m kava train` / `python -m kava evaluate` on the offline evaluation
sets; the session's `tiny_sweep`), then `kava aggregate` writes the tables. Nothing is faked
and nothing is downloaded.
"""

import csv
import json

import yaml

from fixtures_sweep import DATASETS, OVERRIDES, SEEDS, sweep_argv
from kava.cli import main


def test_sweep_then_aggregate_on_the_tiny_config(tiny_sweep, capsys):
    exp = tiny_sweep
    argv = sweep_argv(exp)
    run = exp / "tiny"
    meta = yaml.safe_load((run / "run.yaml").read_text())
    assert meta["overrides"] == list(OVERRIDES) and meta["eval_args"] == ["--source", "offline", "--limit", "4"]
    assert meta["model"] == "tiny-llama" and meta["train_data"] == "gsm8k-train-equations"
    for s in SEEDS:
        d = run / f"seed_{s}"
        assert (d / "checkpoint-final" / "kava_config.yaml").is_file()
        log = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == list(range(1, 13))
        status = yaml.safe_load((d / "status.yaml").read_text())
        assert (status["train"], status["eval"], status["error"]) == ("done", "done", None)
        trained = yaml.safe_load((d / "checkpoint-final" / "kava_config.yaml").read_text())
        assert trained["seed"] == s and trained["train"]["max_steps"] == 12
        for ds in DATASETS:
            res = yaml.safe_load((d / f"results_{ds}.yaml").read_text())
            assert res["n"] == 4 and 0 <= res["accuracy"] <= 100 and res["forward_passes_mean"] >= 4
            assert res["source"] == "offline"
    # the two seeds trained differently (different data order and initialisation)
    logs = [(run / f"seed_{s}" / "train_log.jsonl").read_text() for s in SEEDS]
    assert logs[0] != logs[1]

    all_seeds = yaml.safe_load((run / "all_seeds_results.yaml").read_text())
    assert all_seeds["seeds"] == [1, 2] and [r["seed"] for r in all_seeds["datasets"]["gsm8k"]] == [1, 2]
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["n_seeds"] == 2 and summary["seeds_failed"] == []
    for ds in DATASETS:
        entry = summary["datasets"][ds]
        accs = [yaml.safe_load((run / f"seed_{s}" / f"results_{ds}.yaml").read_text())["accuracy"] for s in SEEDS]
        assert entry["n_seeds"] == 2
        assert abs(entry["accuracy_mean"] - sum(accs) / 2) < 1e-6
        assert abs(entry["accuracy_std"] - abs(accs[0] - accs[1]) / 2 ** 0.5) < 1e-6  # ddof=1 with two values
    assert (run / "summary.csv").read_text().splitlines()[0].startswith("dataset,accuracy_mean,accuracy_std")

    # Re-running the same sweep finds everything done and runs nothing.
    assert main(argv) == 0
    assert "already done (skipped)" in capsys.readouterr().out

    table = exp / "table.csv"
    assert main(["aggregate", "--experiments-dir", str(exp), "--output", str(table)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| run | model | train_data | gsm8k accuracy (%) |")
    for ext in ("csv", "tex", "md", "png"):
        assert (exp / f"table.{ext}").stat().st_size > 0
    rows = list(csv.reader(table.open()))
    assert rows[0] == ["run", "model", "train_data", "gsm8k accuracy (%)", "gsm8k forward passes",
                       "svamp accuracy (%)", "svamp forward passes", "n_seeds"]
    assert rows[1][:3] == ["tiny", "tiny-llama", "gsm8k-train-equations"] and rows[1][-1] == "2"
    assert " ± " in rows[1][3]
    assert (exp / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
