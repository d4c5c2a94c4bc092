"""Each method is defined once (kava.methods.METHODS): the shipped configs of a method hold its
settings, and `kava bench quality` builds its runs from them."""

from __future__ import annotations

import pytest

from kava.bench import quality
from kava.config import config_to_dict, load_config, parse_overrides, shipped_configs
from kava.methods import METHODS


def method_of(config_name: str) -> str:
    """A shipped config's method: its name's prefix (`codi_llama1b_aug`), else KaVa."""
    prefix = config_name.split("_")[0]
    return prefix if prefix in METHODS else "kava"


def _changes(name: str, overrides: tuple[str, ...], base: tuple[str, ...] = ()) -> dict:
    """{key: (the config's value, the override's)} for each key the overrides change (both over `base`)."""
    before = config_to_dict(load_config(name, list(base)))
    after = config_to_dict(load_config(name, [*base, *overrides]))

    def at(d, dotted):
        for part in dotted.split("."):
            d = d[part]
        return d

    return {key: (at(before, key), at(after, key)) for key, _ in parse_overrides(list(overrides))
            if at(before, key) != at(after, key)}


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_each_shipped_config_holds_its_methods_settings(name):
    method = method_of(name)
    assert _changes(name, METHODS[method]) == {}, f"{name} ({method}) differs from kava.methods.METHODS[{method!r}]"
    if method == "kava":  # and a KaVa config is none of the others: its latents are distilled from the KV cache
        cfg = load_config(name)
        assert cfg.train.method == "kava" and cfg.kava.alpha_kv > 0 and cfg.latent.num_iterations > 0


def test_the_methods_with_a_shipped_config_are_checked():
    assert {method_of(n) for n in shipped_configs()} >= {"kava", "codi", "coconut", "icot"}


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"kava"}))
def test_every_method_but_kava_changes_the_benchmark_config(method):
    """A mapping that changes nothing would pass the check above for any config."""
    base = ("curriculum.steps_per_stage=10",)  # (a curriculum needs its stage length, which the benchmark sets)
    assert _changes("synthetic_tiny", METHODS[method], base), f"{method}'s settings are synthetic_tiny's already"


@pytest.mark.parametrize("method", sorted(set(METHODS) & set(quality.ALL_RUNS)))
def test_each_benchmark_run_of_a_method_starts_from_its_settings(method):
    run = quality.ALL_RUNS[method]
    assert run.overrides[: len(METHODS[method])] == METHODS[method]
    # what it adds are the benchmark's own settings, none of which the method sets
    added = {k for k, _ in parse_overrides(list(run.overrides[len(METHODS[method]):]))}
    assert not added & {k for k, _ in parse_overrides(list(METHODS[method]))}
