"""Position ids and attention masks under left padding (docs/algorithm.md §2)."""

from __future__ import annotations

import torch

from kava.model.positions import extend_mask, position_ids_from_mask, positions_for_new
from kava.model.student import run_latents, student_forward
from kava.model.teacher import TargetSpec, teacher_forward


def _ref_positions(mask: torch.Tensor) -> torch.Tensor:
    """Loop reference: the number of real tokens strictly before each token (padding: 0)."""
    out = torch.zeros_like(mask, dtype=torch.long)
    for b in range(mask.shape[0]):
        seen = 0
        for j in range(mask.shape[1]):
            if mask[b, j]:
                out[b, j] = seen
                seen += 1
            else:
                out[b, j] = max(seen - 1, 0)
    return out


# ----- hand-written cases --------------------------------------------------------------


def test_position_ids_left_padding_hand_cases():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    assert torch.equal(position_ids_from_mask(mask), expected)
    # the first real token of every row is at position 0
    pos = position_ids_from_mask(mask)
    first_real = mask.argmax(dim=1)
    assert pos[torch.arange(3), first_real].tolist() == [0, 0, 0]


def test_position_ids_right_padding_and_bool_mask():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pos = position_ids_from_mask(mask)
    assert pos[0, :3].tolist() == [0, 1, 2]
    assert pos[1].tolist() == [0, 1, 2, 3, 4]
    assert pos.dtype == torch.long


def test_position_ids_left_pad_then_right_pad_suffix():
    # pad | 2 real question tokens | 2 latents | suffix with 1 real + 2 pad
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 0]])
    pos = position_ids_from_mask(mask)
    assert pos[0, 1:6].tolist() == [0, 1, 2, 3, 4]


def test_position_ids_random_masks_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b, s = 4, 12
        pads = torch.randint(0, s, (b,), generator=g)
        mask = (torch.arange(s)[None, :] >= pads[:, None]).long()
        assert torch.equal(position_ids_from_mask(mask), _ref_positions(mask))
        # arbitrary holes as well
        holes = (torch.rand(b, s, generator=g) > 0.3).long()
        real = _ref_positions(holes)
        got = position_ids_from_mask(holes)
        assert torch.equal(got[holes.bool()], real[holes.bool()])


def test_positions_for_new_hand_cases():
    # cache (4 tokens, 2 of them left padding in row 0) + 3 new tokens
    full = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    assert positions_for_new(full, 3).tolist() == [[2, 3, 4], [4, 5, 6]]
    assert positions_for_new(full, 1).tolist() == [[4], [6]]
    # right-padded new tokens: real new tokens continue the count
    full = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert positions_for_new(full, 2)[:, 0].tolist() == [2, 3]
    assert positions_for_new(full, 2)[1, 1].item() == 4


def test_extend_mask_hand_cases():
    mask = torch.tensor([[0, 1], [1, 1]])
    assert extend_mask(mask, 3).tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    new = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    out = extend_mask(mask, 2, new)
    assert out.tolist() == [[0, 1, 1, 0], [1, 1, 1, 1]]
    assert out.dtype == mask.dtype
    assert extend_mask(mask, 0).tolist() == mask.tolist()


# ----- what the model actually receives -------------------------------------------------


def _record(model, monkeypatch):
    calls = []
    orig = model.lm

    def lm(**kwargs):
        calls.append({k: kwargs.get(k) for k in ("position_ids", "attention_mask", "input_ids", "inputs_embeds")})
        return orig(**kwargs)

    monkeypatch.setattr(model, "lm", lm)
    return calls


def test_run_latents_and_student_positions(llama, examples, monkeypatch):
    model, _, builder = llama
    M, T = model.num_latents, model.num_iterations
    enc = [builder.encode(e) for e in examples]
    batch = builder.student_batch(enc)
    q_mask = batch.q_mask
    assert (q_mask == 0).any(), "the batch must be left padded"
    calls = _record(model, monkeypatch)
    with torch.no_grad():
        student_forward(model, batch)
    assert len(calls) == 1 + T + 1
    B, Lq = q_mask.shape
    for b in range(B):
        n = int(q_mask[b].sum())
        pad = Lq - n
        # pass 0: Q + <bot> + M latents; the first real token is at position 0
        p0 = calls[0]["position_ids"][b]
        assert p0[pad].item() == 0
        assert p0[pad:].tolist() == list(range(n + M))
        assert calls[0]["attention_mask"][b].tolist() == [0] * pad + [1] * (n + M)
        # every Jacobi iteration: the M latents right after the real question tokens
        for k in range(1, 1 + T):
            assert calls[k]["position_ids"][b].tolist() == list(range(n, n + M))
            assert calls[k]["attention_mask"][b].tolist() == [0] * pad + [1] * (n + M)
        # the suffix <eot> + P + A continues after the latents (its real tokens)
        s_len = int(batch.suffix_mask[b].sum())
        ps = calls[-1]["position_ids"][b]
        assert ps[:s_len].tolist() == list(range(n + M, n + M + s_len))
        am = calls[-1]["attention_mask"][b]
        assert am.tolist() == [0] * pad + [1] * (n + M) + batch.suffix_mask[b].tolist()


def test_teacher_positions_right_padding(llama, examples, monkeypatch):
    model, _, builder = llama
    tb = builder.teacher_batch([builder.encode(e) for e in examples])
    calls = _record(model, monkeypatch)
    with torch.no_grad():
        teacher_forward(model, tb, TargetSpec(budget=model.num_latents))
    assert len(calls) == 1
    for b in range(tb.input_ids.shape[0]):
        n = int(tb.attention_mask[b].sum())
        assert calls[0]["position_ids"][b, :n].tolist() == list(range(n))


def test_jacobi_positions_that_ignore_padding_change_the_latents(llama, examples, monkeypatch):
    """Control for the position tests: if the Jacobi passes used positions that count the left
    padding (cache length + arange, what a naive implementation does), the padded rows' latents
    would differ from the unpadded computation, while the unpadded row would not."""
    model, _, builder = llama
    batch = builder.student_batch([builder.encode(e) for e in examples])
    q_ids, q_mask = batch.q_ids, batch.q_mask
    B, Lq = q_ids.shape
    M = model.num_latents
    with torch.no_grad():
        good = run_latents(model, q_ids, q_mask, num_iterations=2)
        orig = model.lm

        def naive(**kwargs):
            if kwargs.get("past_key_values") is not None:
                kwargs["position_ids"] = torch.arange(Lq, Lq + M)[None].expand(B, -1)
            return orig(**kwargs)

        monkeypatch.setattr(model, "lm", naive)
        bad = run_latents(model, q_ids, q_mask, num_iterations=2)
    pads = (q_mask == 0).sum(1)
    for b in range(B):
        same = torch.allclose(good.hidden[b], bad.hidden[b], atol=1e-5)
        assert same == (pads[b].item() == 0), (b, pads[b].item())
