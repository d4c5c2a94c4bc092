import math

import pytest
import yaml

from kava.errors import KavaError
from kava.experiments.compare import compare_runs, format_comparison


def _make_run(root, name, per_dataset):
    """per_dataset: {dataset: [acc for seed 0, 1, ...]}"""
    run = root / name
    for ds, accs in per_dataset.items():
        for seed, acc in enumerate(accs):
            d = run / f"seed_{seed}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"results_{ds}.yaml").write_text(yaml.safe_dump({"accuracy": acc, "forward_passes_mean": 5.0}))
    return run


def _t_cdf_4(t):
    """CDF of Student's t with 4 degrees of freedom (closed form)."""
    x = t / math.sqrt(4 + t * t)
    return 0.5 + 0.75 * x - 0.25 * x**3


def test_clearly_separated_runs_are_significant_by_both_rules(tmp_path):
    a = _make_run(tmp_path, "a", {"gsm8k": [60, 61, 62], "svamp": [70, 70, 71]})
    b = _make_run(tmp_path, "b", {"gsm8k": [50, 51, 52], "multiarith": [90]})
    rows = compare_runs(a, b)
    assert [r["dataset"] for r in rows] == ["gsm8k"]  # only the common dataset
    r = rows[0]
    assert (r["a_mean"], r["a_std"], r["a_n"]) == (61.0, 1.0, 3)
    assert (r["b_mean"], r["b_std"], r["b_n"]) == (51.0, 1.0, 3)
    assert r["diff"] == 10.0
    # 61 - 2 > 51 + 2
    assert r["two_std_rule"] == "A better" and r["two_std_significant"] is True
    # Welch: t = 10 / sqrt(1/3 + 1/3) = sqrt(150); df = 4 (equal variances and sizes)
    assert r["t"] == pytest.approx(math.sqrt(150))
    assert r["df"] == pytest.approx(4.0)
    assert r["p"] == pytest.approx(2 * (1 - _t_cdf_4(math.sqrt(150))), rel=1e-6)
    assert r["p"] < 0.001 and r["welch_significant"] is True
    assert r["verdict"].startswith("A better: significant by the 2-std rule and Welch's t-test")

    # Same comparison the other way round says B.
    r = compare_runs(b, a)[0]
    assert r["two_std_rule"] == "B better" and r["t"] == pytest.approx(-math.sqrt(150))
    assert r["verdict"].startswith("B better")


def test_overlapping_runs_are_not_significant(tmp_path):
    a = _make_run(tmp_path, "a", {"gsm8k": [50, 55, 60]})
    b = _make_run(tmp_path, "b", {"gsm8k": [52, 53, 54]})
    r = compare_runs(a, b)[0]
    assert r["diff"] == 2.0
    assert r["two_std_rule"] == "overlap" and r["two_std_significant"] is False
    # t = 2 / sqrt(25/3 + 1/3) = 2 / sqrt(26/3)
    assert r["t"] == pytest.approx(2 / math.sqrt(26 / 3))
    assert r["p"] > 0.05 and r["welch_significant"] is False
    assert r["verdict"].startswith("no significant difference")


def test_single_seed_gives_no_p_value(tmp_path):
    a = _make_run(tmp_path, "a", {"gsm8k": [70]})
    b = _make_run(tmp_path, "b", {"gsm8k": [50, 51, 52]})
    r = compare_runs(a, b)[0]
    assert r["p"] is None and r["t"] is None
    assert "run A has 1 seed" in r["welch_note"]
    assert r["two_std_rule"] == "n/a"
    assert r["verdict"].startswith("inconclusive")


def test_zero_variance(tmp_path):
    a = _make_run(tmp_path, "a", {"gsm8k": [60, 60]})
    b = _make_run(tmp_path, "b", {"gsm8k": [50, 50]})
    r = compare_runs(a, b)[0]
    assert r["p"] is None and "zero variance" in r["welch_note"]
    assert r["two_std_rule"] == "A better"
    assert r["verdict"].startswith("A better by the 2-std rule")


def test_format_comparison(tmp_path):
    a = _make_run(tmp_path, "kava", {"gsm8k": [60, 61, 62], "svamp": [70]})
    b = _make_run(tmp_path, "codi", {"gsm8k": [50, 51, 52], "svamp": [60, 61]})
    text = format_comparison(compare_runs(a, b))
    lines = text.splitlines()
    assert lines[0] == "A = kava" and lines[1] == "B = codi"
    assert lines[3].split() == ["dataset", "A", "acc", "(n)", "B", "acc", "(n)", "A-B", "2-std", "rule",
                                "Welch", "t", "p"]
    gsm = next(ln for ln in lines if ln.startswith("gsm8k "))
    assert "61.00 ± 1.00 (3)" in gsm and "51.00 ± 1.00 (3)" in gsm and "+10.00" in gsm and "12.247" in gsm
    assert any(ln.startswith("gsm8k: A better") for ln in lines)
    assert any(ln.startswith("svamp: inconclusive") for ln in lines)


def test_errors(tmp_path):
    a = _make_run(tmp_path, "a", {"gsm8k": [60, 61]})
    with pytest.raises(KavaError, match="not found"):
        compare_runs(a, tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(KavaError, match="not a run directory"):
        compare_runs(tmp_path / "plain", a)
    (tmp_path / "empty" / "seed_1").mkdir(parents=True)
    with pytest.raises(KavaError, match="no results found"):
        compare_runs(a, tmp_path / "empty")
    c = _make_run(tmp_path, "c", {"svamp": [60, 61]})
    with pytest.raises(KavaError, match="no dataset in common"):
        compare_runs(a, c)
