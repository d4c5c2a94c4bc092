import math

import pytest

from kava.errors import KavaError
from kava.experiments.stats import format_mean_std, sort_datasets, summarize, summarize_seeds


def test_summarize_hand_computed():
    s = summarize([50, 52, 54])
    assert s == {"mean": 52.0, "std": 2.0, "n": 3}
    # [1, 2, 3, 4]: mean 2.5, squared deviations 2.25+0.25+0.25+2.25 = 5, / (n-1)=3
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert s["n"] == 4


def test_summarize_single_value_has_zero_std():
    assert summarize([56.5]) == {"mean": 56.5, "std": 0.0, "n": 1}


def test_summarize_rejects_empty_and_non_numbers():
    with pytest.raises(KavaError, match="empty"):
        summarize([])
    with pytest.raises(KavaError):
        summarize([1.0, float("nan")])
    with pytest.raises(KavaError):
        summarize([1.0, "2"])
    with pytest.raises(KavaError):
        summarize([True, 1.0])


def test_format_mean_std():
    assert format_mean_std(56.512, 0.31) == "56.5 ± 0.3"
    assert format_mean_std(52, 2) == "52.0 ± 2.0"
    assert format_mean_std(56.512, 0.314, digits=2) == "56.51 ± 0.31"
    assert format_mean_std(1.0, None) == "1.0"
    assert format_mean_std(None, None) == "-"
    assert format_mean_std(-0.01, 0.0) == "0.0 ± 0.0"


def test_summarize_seeds():
    per_seed = {
        43: {"svamp": {"accuracy": 70.0}, "gsm8k": {"accuracy": 52.0, "forward_passes_mean": 10.0}},
        42: {"gsm8k": {"accuracy": 50.0, "forward_passes_mean": 8.0}},
        44: {"gsm8k": {"accuracy": 54.0, "forward_passes_mean": 12.0}, "svamp": {"accuracy": 72.0}},
    }
    out = summarize_seeds(per_seed)
    assert list(out) == ["gsm8k", "svamp"]
    g = out["gsm8k"]
    assert g["accuracy_mean"] == 52.0 and g["accuracy_std"] == 2.0
    assert g["forward_passes_mean"] == 10.0 and g["forward_passes_std"] == 2.0
    assert g["n_seeds"] == 3 and g["seeds"] == [42, 43, 44]
    s = out["svamp"]
    assert s["accuracy_mean"] == 71.0 and s["accuracy_std"] == pytest.approx(math.sqrt(2))
    assert s["forward_passes_mean"] is None and s["forward_passes_std"] is None
    assert s["n_seeds"] == 2 and s["seeds"] == [43, 44]


def test_dataset_order_follows_paper():
    got = sort_datasets(["zzz", "svamp", "gsm8k-hard", "aaa", "gsm8k"])
    assert got == ["gsm8k", "gsm8k-hard", "svamp", "aaa", "zzz"]
