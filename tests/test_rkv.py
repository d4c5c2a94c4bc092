"""Tests of the R-KV compression (docs/algorithm.md §4) against a slow, loop-based reference."""

from __future__ import annotations

import math

import pytest
import torch

from kava.compression import (
    COMPRESSION_METHODS,
    RKVSelection,
    importance_from_attn,
    redundancy_scores,
    rkv_scores,
    rkv_select,
    select_from_scores,
)

# ---------------------------------------------------------------------------------------
# Inputs: left-padded batches laid out as  pad | Q | CoT | P+A
# ---------------------------------------------------------------------------------------

# (pad, question, cot, p+a) lengths per example; every row sums to S = 16.
LAYOUT = [(0, 3, 8, 5), (3, 2, 7, 4), (5, 4, 3, 4)]
SEQ = 16
HEAD_DIM = 8


def make_batch(seed, h_q, h_kv, layout=LAYOUT, seq=SEQ, dim=HEAD_DIM, dtype=torch.float32):
    """Random keys/values and a real causal+padding softmax attention map."""
    g = torch.Generator().manual_seed(seed)
    bsz = len(layout)
    keys = torch.randn(bsz, h_kv, seq, dim, generator=g)
    values = torch.randn(bsz, h_kv, seq, dim, generator=g)
    queries = torch.randn(bsz, h_q, seq, dim, generator=g)
    attn_mask = torch.zeros(bsz, seq, dtype=torch.bool)  # True = real token
    cot_mask = torch.zeros(bsz, seq, dtype=torch.bool)
    query_mask = torch.zeros(bsz, seq, dtype=torch.bool)
    for b, (pad, q_len, c_len, pa_len) in enumerate(layout):
        assert pad + q_len + c_len + pa_len == seq
        attn_mask[b, pad:] = True
        cot_mask[b, pad + q_len : pad + q_len + c_len] = True
        query_mask[b, pad + q_len + c_len :] = True
    # transformers' repeat_kv: kv head i serves query heads i*G .. i*G+G-1
    k_rep = keys.repeat_interleave(h_q // h_kv, dim=1)
    logits = queries @ k_rep.transpose(-1, -2) / math.sqrt(dim)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    allowed = causal[None, None] & attn_mask[:, None, None, :]
    logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    attn = torch.softmax(logits, dim=-1)
    return (
        keys.to(dtype),
        values.to(dtype),
        attn.to(dtype),
        cot_mask,
        query_mask,
        attn_mask,
    )


# ---------------------------------------------------------------------------------------
# Reference: plain Python loops, float64 via math
# ---------------------------------------------------------------------------------------


def ref_importance(attn, query_mask, h_kv):
    a = attn.double().tolist()
    qm = query_mask.tolist()
    bsz, h_q, s_q, seq = attn.shape
    group = h_q // h_kv
    out = [[[0.0] * seq for _ in range(h_kv)] for _ in range(bsz)]
    for b in range(bsz):
        rows = [i for i in range(s_q) if qm[b][i]]
        for kv in range(h_kv):
            heads = range(kv * group, (kv + 1) * group)
            for j in range(seq):
                if not rows:
                    continue
                total = 0.0
                for i in rows:
                    total += max(a[b][h][i][j] for h in heads)
                out[b][kv][j] = total / len(rows)
    return out


def _cos(u, v):
    dot = sum(x * y for x, y in zip(u, v))
    nu = math.sqrt(sum(x * x for x in u))
    nv = math.sqrt(sum(y * y for y in v))
    return dot / (nu * nv)


def ref_redundancy(keys, cot_mask):
    k = keys.double().tolist()
    cm = cot_mask.tolist()
    bsz, h_kv, seq, _ = keys.shape
    out = [[[0.0] * seq for _ in range(h_kv)] for _ in range(bsz)]
    for b in range(bsz):
        cot = [j for j in range(seq) if cm[b][j]]
        for h in range(h_kv):
            neg_mean = {}
            for j in cot:
                others = [i for i in cot if i != j]
                if others:
                    mean_cos = sum(_cos(k[b][h][j], k[b][h][i]) for i in others) / len(others)
                else:
                    mean_cos = 0.0
                neg_mean[j] = -mean_cos
            if not cot:
                continue
            z = sum(math.exp(v) for v in neg_mean.values())
            for j in cot:
                out[b][h][j] = math.exp(neg_mean[j]) / z
    return out


def ref_scores(imp, red, lam):
    return [
        [[lam * i + (1 - lam) * r for i, r in zip(ih, rh)] for ih, rh in zip(ib, rb)]
        for ib, rb in zip(imp, red)
    ]


def ref_topk_positions(scores, cot_mask, budget, margin=1e-5):
    """Per (b, h): the `budget` best CoT positions, sorted ascending."""
    cm = cot_mask.tolist()
    out = []
    for b, sb in enumerate(scores):
        row = []
        cot = [j for j in range(len(cm[b])) if cm[b][j]]
        for sh in sb:
            ranked = sorted(cot, key=lambda j: -sh[j])
            if len(ranked) > budget:
                # the test must not depend on float32 vs float64 near-ties
                assert sh[ranked[budget - 1]] - sh[ranked[budget]] > margin, "near tie"
            row.append(sorted(ranked[:budget]))
        out.append(row)
    return out


def check_selection(sel, keys, values, expected, budget):
    """`expected[b][h]` = list of selected positions (ascending)."""
    assert isinstance(sel, RKVSelection)
    bsz, h_kv, _, dim = keys.shape
    assert sel.keys.shape == (bsz, h_kv, budget, dim)
    assert sel.values.shape == (bsz, h_kv, budget, dim)
    assert sel.slot_mask.shape == (bsz, h_kv, budget) and sel.slot_mask.dtype == torch.bool
    assert sel.positions.shape == (bsz, h_kv, budget) and sel.positions.dtype == torch.long
    assert sel.keys.dtype == keys.dtype and sel.values.dtype == values.dtype
    for b in range(bsz):
        for h in range(h_kv):
            pos = expected[b][h]
            n = len(pos)
            assert sel.slot_mask[b, h].tolist() == [True] * n + [False] * (budget - n)
            assert sel.positions[b, h, :n].tolist() == pos
            assert sel.positions[b, h, n:].tolist() == [0] * (budget - n)
            assert torch.equal(sel.keys[b, h, :n], keys[b, h, pos])
            assert torch.equal(sel.values[b, h, :n], values[b, h, pos])
            assert not sel.keys[b, h, n:].any() and not sel.values[b, h, n:].any()


# ---------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("h_q,h_kv", [(4, 2), (2, 2), (4, 1)])
def test_importance_matches_reference(h_q, h_kv):
    keys, values, attn, cot, qm, _ = make_batch(0, h_q, h_kv)
    imp = importance_from_attn(attn, qm, h_kv)
    assert imp.shape == (len(LAYOUT), h_kv, SEQ) and imp.dtype == torch.float32
    ref = torch.tensor(ref_importance(attn, qm, h_kv), dtype=torch.float64)
    torch.testing.assert_close(imp.double(), ref, atol=1e-6, rtol=1e-5)


def test_importance_partial_rows_and_masked_rows():
    keys, values, attn, cot, qm, _ = make_batch(1, 4, 2)
    # Passing only some rows (the P+A rows of a common tail) gives the same importance.
    tail = 4  # every example's last 4 rows are P+A
    imp_rows = importance_from_attn(attn[:, :, -tail:], qm[:, -tail:], 2)
    qm_tail = torch.zeros_like(qm)
    qm_tail[:, -tail:] = True
    torch.testing.assert_close(imp_rows, importance_from_attn(attn, qm_tail, 2))
    # Rows outside query_mask contribute nothing, even NaN ones.
    poisoned = attn.clone()
    poisoned[~qm[:, None, :, None].expand_as(attn)] = float("nan")
    torch.testing.assert_close(importance_from_attn(poisoned, qm, 2), importance_from_attn(attn, qm, 2))
    # An example with no valid row gets zeros.
    qm0 = qm.clone()
    qm0[1] = False
    imp0 = importance_from_attn(attn, qm0, 2)
    assert not imp0[1].any()
    torch.testing.assert_close(imp0[0], importance_from_attn(attn, qm, 2)[0])


def test_importance_bad_heads():
    attn = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError):
        importance_from_attn(attn, torch.ones(1, 4, dtype=torch.bool), 2)


@pytest.mark.parametrize("h_kv", [1, 2])
def test_redundancy_matches_reference(h_kv):
    keys, values, attn, cot, qm, _ = make_batch(2, 2 * h_kv, h_kv)
    red = redundancy_scores(keys, cot)
    assert red.shape == (len(LAYOUT), h_kv, SEQ) and red.dtype == torch.float32
    ref = torch.tensor(ref_redundancy(keys, cot), dtype=torch.float64)
    torch.testing.assert_close(red.double(), ref, atol=1e-6, rtol=1e-5)
    # non-CoT positions get 0; over each CoT it is a distribution
    assert not red[~cot[:, None, :].expand_as(red)].any()
    torch.testing.assert_close(red.sum(-1), torch.ones(len(LAYOUT), h_kv))


def test_redundancy_ignores_non_cot_keys_and_edge_cases():
    keys, values, attn, cot, qm, _ = make_batch(3, 2, 2)
    red = redundancy_scores(keys, cot)
    other = keys.clone()
    other[~cot[:, None, :, None].expand_as(keys)] = 100.0  # change padding / Q / P+A keys
    torch.testing.assert_close(redundancy_scores(other, cot), red)
    # one-token CoT: mean_cos = 0, so R = softmax([0]) = 1 at that position
    one = torch.zeros(1, SEQ, dtype=torch.bool)
    one[0, 5] = True
    r1 = redundancy_scores(keys[:1], one)
    expected = torch.zeros(1, 2, SEQ)
    expected[0, :, 5] = 1.0
    torch.testing.assert_close(r1, expected)
    # no CoT at all: zeros, no NaN
    r0 = redundancy_scores(keys[:1], torch.zeros(1, SEQ, dtype=torch.bool))
    assert not r0.any() and not r0.isnan().any()


def test_rkv_scores():
    imp = torch.rand(2, 2, 5)
    red = torch.rand(2, 2, 5)
    torch.testing.assert_close(rkv_scores(imp, red, 0.1), 0.1 * imp + 0.9 * red)
    torch.testing.assert_close(rkv_scores(imp, red, 1.0), imp)
    torch.testing.assert_close(rkv_scores(imp, red, 0.0), red)
    with pytest.raises(ValueError):
        rkv_scores(imp, red, 1.5)


# ---------------------------------------------------------------------------------------
# Selection vs reference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("h_q,h_kv", [(4, 2), (2, 2)])
@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("budget", [5, 7, 3, 20])
def test_rkv_select_matches_reference(h_q, h_kv, lam, budget):
    # budget 5: example 2 (CoT of 3) has unused slots; 7 == CoT of example 1;
    # 3 == CoT of example 2; 20 > S.
    keys, values, attn, cot, qm, _ = make_batch(10, h_q, h_kv)
    sel = rkv_select(keys, values, attn, cot, qm, budget, lam=lam)
    imp = ref_importance(attn, qm, h_kv)
    red = ref_redundancy(keys, cot)
    expected = ref_topk_positions(ref_scores(imp, red, lam), cot, budget)
    check_selection(sel, keys, values, expected, budget)
    # CoT shorter than the budget: all of it, in order
    for b, (pad, q_len, c_len, _) in enumerate(LAYOUT):
        if c_len <= budget:
            for h in range(h_kv):
                assert expected[b][h] == list(range(pad + q_len, pad + q_len + c_len))


@pytest.mark.parametrize("method,lam", [("attention", 1.0), ("redundancy", 0.0), ("rkv", 0.1)])
def test_methods_match_reference(method, lam):
    keys, values, attn, cot, qm, _ = make_batch(11, 4, 2)
    budget = 4
    # `lam` passed to rkv_select is ignored by attention / redundancy
    sel = rkv_select(keys, values, attn, cot, qm, budget, lam=0.5 if method != "rkv" else lam, method=method)
    ref = ref_scores(ref_importance(attn, qm, 2), ref_redundancy(keys, cot), lam)
    check_selection(sel, keys, values, ref_topk_positions(ref, cot, budget), budget)


def test_select_from_scores_matches_rkv_select():
    keys, values, attn, cot, qm, _ = make_batch(12, 4, 2)
    scores = rkv_scores(importance_from_attn(attn, qm, 2), redundancy_scores(keys, cot), 0.1)
    a = select_from_scores(keys, values, scores, cot, 5, "rkv")
    b = rkv_select(keys, values, attn, cot, qm, 5)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("budget", [2, 3, 7, 20])
def test_crop_keeps_last_cot_tokens(budget):
    keys, values, attn, cot, qm, _ = make_batch(13, 4, 2)
    sel = rkv_select(keys, values, None, cot, None, budget, method="crop")
    expected = []
    for b in range(len(LAYOUT)):
        pos = [j for j in range(SEQ) if cot[b, j]][-budget:]
        expected.append([pos, pos])
    check_selection(sel, keys, values, expected, budget)


@pytest.mark.parametrize("budget", [3, 5])
def test_random_selection(budget):
    keys, values, attn, cot, qm, _ = make_batch(14, 4, 2)
    run = lambda seed: rkv_select(  # noqa: E731
        keys, values, None, cot, None, budget, method="random",
        generator=torch.Generator().manual_seed(seed),
    )
    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        assert torch.equal(x, y)  # reproducible
    assert not torch.equal(a.positions, c.positions)  # and actually random
    expected = []
    for bi in range(len(LAYOUT)):
        cot_pos = [j for j in range(SEQ) if cot[bi, j]]
        row = []
        for h in range(2):
            n = min(budget, len(cot_pos))
            pos = a.positions[bi, h, :n].tolist()
            assert all(p in cot_pos for p in pos)
            assert pos == sorted(set(pos)) and len(pos) == n  # sorted, distinct
            if len(cot_pos) <= budget:
                assert pos == cot_pos
            row.append(pos)
        expected.append(row)
    check_selection(a, keys, values, expected, budget)


def test_random_is_uniform():
    layout = [(2, 2, 10, 2)] * 2000
    keys, values, attn, cot, qm, _ = make_batch(15, 1, 1, layout=layout)
    sel = rkv_select(keys, values, None, cot, None, 3, method="random",
                     generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sel.positions.flatten(), minlength=SEQ).double()
    freq = counts[4:14] / len(layout)
    assert counts[:4].sum() == 0 and counts[14:].sum() == 0
    torch.testing.assert_close(freq, torch.full_like(freq, 0.3), atol=0.05, rtol=0)


def test_unknown_method():
    keys, values, attn, cot, qm, _ = make_batch(16, 2, 2)
    with pytest.raises(ValueError, match="rkv, attention, redundancy, crop, random"):
        rkv_select(keys, values, attn, cot, qm, 4, method="snapkv")
    with pytest.raises(ValueError, match="valid methods"):
        select_from_scores(keys, values, None, cot, 4, method="h2o")
    assert COMPRESSION_METHODS == ("rkv", "attention", "redundancy", "crop", "random")


def test_missing_inputs_and_bad_budget():
    keys, values, attn, cot, qm, _ = make_batch(17, 2, 2)
    with pytest.raises(ValueError):
        rkv_select(keys, values, None, cot, qm, 4, method="attention")
    with pytest.raises(ValueError):
        rkv_select(keys, values, attn, cot, qm, 0)
    # redundancy-only needs neither attn nor importance
    rkv_select(keys, values, None, cot, None, 4, method="redundancy")


# ---------------------------------------------------------------------------------------
# Precomputed importance, dtypes, padding, gradients
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rkv", "attention"])
def test_precomputed_importance_equals_attn_path(method):
    keys, values, attn, cot, qm, _ = make_batch(20, 4, 2)
    imp = importance_from_attn(attn, qm, 2)
    a = rkv_select(keys, values, attn, cot, qm, 5, method=method)
    b = rkv_select(keys, values, None, cot, None, 5, method=method, importance=imp)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_bf16_inputs():
    keys, values, attn, cot, qm, _ = make_batch(21, 4, 2, dtype=torch.bfloat16)
    sel = rkv_select(keys, values, attn, cot, qm, 5)
    assert sel.keys.dtype == torch.bfloat16 and sel.values.dtype == torch.bfloat16
    # scores are float32 computations of the (exactly upcast) bf16 inputs
    assert importance_from_attn(attn, qm, 2).dtype == torch.float32
    assert redundancy_scores(keys, cot).dtype == torch.float32
    ref = rkv_select(keys.float(), values.float(), attn.float(), cot, qm, 5)
    assert torch.equal(sel.positions, ref.positions)
    assert torch.equal(sel.slot_mask, ref.slot_mask)
    assert torch.equal(sel.keys.float(), ref.keys)
    expected = ref_topk_positions(
        ref_scores(ref_importance(attn, qm, 2), ref_redundancy(keys, cot), 0.1), cot, 5
    )
    check_selection(sel, keys, values, expected, 5)


@pytest.mark.parametrize("method", ["rkv", "attention", "redundancy", "crop", "random"])
def test_padding_and_non_cot_never_selected(method):
    keys, values, attn, cot, qm, attn_mask = make_batch(22, 4, 2)
    attn = attn.clone()
    attn[1, :, :, 0] = 1e6  # a padding column of example 1 gets huge attention
    attn[:, :, :, -1] = 1e6  # the last (P+A) column of every example
    keys = keys.clone()
    keys[1, :, 0] = -keys[1, :, 3:].sum(1)  # a padding key unlike every other key
    budget = 8
    sel = rkv_select(keys, values, attn, cot, qm, budget, method=method,
                     generator=torch.Generator().manual_seed(3))
    for b in range(len(LAYOUT)):
        n_cot = int(cot[b].sum())
        for h in range(2):
            used = sel.positions[b, h][sel.slot_mask[b, h]]
            assert len(used) == min(n_cot, budget)
            assert cot[b, used].all()
    # also when scores are passed directly with huge values outside the CoT
    scores = torch.rand(len(LAYOUT), 2, SEQ)
    scores[~cot[:, None, :].expand_as(scores)] = 1e9
    sel = select_from_scores(keys, values, scores, cot, 4)
    used = sel.positions[sel.slot_mask]
    b_idx = torch.arange(len(LAYOUT))[:, None, None].expand_as(sel.positions)[sel.slot_mask]
    assert cot[b_idx, used].all()


def test_no_cot_example_has_no_slots():
    keys, values, attn, cot, qm, _ = make_batch(23, 2, 2)
    cot = cot.clone()
    cot[0] = False
    for method in COMPRESSION_METHODS:
        sel = rkv_select(keys, values, attn, cot, qm, 4, method=method,
                         generator=torch.Generator().manual_seed(0))
        assert not sel.slot_mask[0].any()
        assert not sel.keys[0].any() and not sel.positions[0].any()
        assert sel.slot_mask[1:].any()


def test_outputs_are_detached():
    keys, values, attn, cot, qm, _ = make_batch(24, 4, 2)
    keys.requires_grad_(True)
    values.requires_grad_(True)
    attn.requires_grad_(True)
    sel = rkv_select(keys, values, attn, cot, qm, 5)
    assert not any(t.requires_grad for t in sel)
    with torch.no_grad():
        sel2 = rkv_select(keys, values, attn, cot, qm, 5)
    assert torch.equal(sel.keys, sel2.keys)
