"""KaVa's losses (docs/algorithm.md §5).

    L_KV   reduction "paper": 1/(2M)·(Σ ρ(sg[K̃_t] − K_s) + Σ ρ(sg[Ṽ_t] − V_s)), the sums over the
             layers, key/value heads, head dims and valid slots, divided by the number of valid slots
             (M when the CoT fills them; averaged over the batch): a sum over layers, heads and dims,
             a mean over slots — the paper's formula as relayed.
           reduction "mean": mean over layers of ½·(ρ(K) + ρ(V)) averaged over the valid slots,
             heads and dims (kava before 0.3): L·H·d times smaller than "paper" at equal errors.
           ρ ∈ {smooth-L1, L1, MSE}; optionally each layer divided by the teacher's per-layer std.
    L_CODI = mean over layers of smooth-L1(h_s, sg[h_t]) / std(h_t), at the CODI position (the
             token whose next token is the answer's first digit or sign);
             `kava.codi_layer_std: false`: the mean smooth-L1 over all layers / one std of all of h_t.
    L      = CE_student + CE_teacher + α₁·L_CODI + α₂·L_KV
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kava.compression import RKVSelection

KV_LOSSES = ("smooth_l1", "l1", "mse")
KV_REDUCTIONS = ("paper", "mean")


def _rho(diff_input: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "smooth_l1":
        return F.smooth_l1_loss(diff_input, target, reduction="none")
    if kind == "l1":
        return (diff_input - target).abs()
    if kind == "mse":
        return (diff_input - target) ** 2
    raise ValueError(f"unknown KV loss {kind!r}; choose one of {KV_LOSSES}")


def _masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, H, M, D], mask [B, H, M] -> the sum over the unmasked slots' elements."""
    return (x * mask.unsqueeze(-1).to(x.dtype)).sum()


def _masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    sel = x[mask]  # [N, D]
    if sel.numel() < 2:
        return torch.ones((), dtype=x.dtype, device=x.device)
    return sel.float().std().clamp(min=1e-6).to(x.dtype)


def kv_loss(
    student_kv: list[tuple[torch.Tensor, torch.Tensor]],
    teacher: list[RKVSelection],
    kind: str = "smooth_l1",
    layer_std: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """The KV distillation loss between the student's latent keys/values and the teacher's
    R-KV selections (one pair per layer, each [B, H_kv, M, d]); see the module docstring."""
    if reduction not in KV_REDUCTIONS:
        raise ValueError(f"unknown KV loss reduction {reduction!r}; choose one of {KV_REDUCTIONS}")
    sums, counts = [], []
    for (ks, vs), sel in zip(student_kv, teacher, strict=True):
        kt, vt, mask = sel.keys.detach().float(), sel.values.detach().float(), sel.slot_mask
        lk = _masked_sum(_rho(ks.float(), kt, kind), mask)
        lv = _masked_sum(_rho(vs.float(), vt, kind), mask)
        if layer_std:
            lk = lk / _masked_std(kt, mask)
            lv = lv / _masked_std(vt, mask)
        sums.append(0.5 * (lk + lv))
        counts.append(mask.sum())
    if reduction == "mean":  # each layer: a mean over its valid (slot, head, dim) elements; then over layers
        dim = student_kv[0][0].shape[-1]
        return torch.stack([s / (c * dim).clamp(min=1) for s, c in zip(sums, counts)]).mean()
    # paper: the sum over layers, heads and dims, per valid slot (valid (layer, head, slot) triples / (L·H))
    heads = student_kv[0][0].shape[1]
    slots = torch.stack(counts).sum().float() / (len(counts) * heads)
    return torch.stack(sums).sum() / slots.clamp(min=1)


def codi_loss(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor],
              layer_std: bool = True) -> torch.Tensor:
    """layer_std: each layer's smooth-L1 divided by that layer's teacher std, then the mean over
    layers [codi][pccot: use_layerwise_std]; False: the mean smooth-L1 over all layers divided
    by one std of all the teacher's entries [pccot: use_layerwise_std=False]."""
    if not layer_std:
        hs = torch.stack([h.float() for h in student_hidden])
        ht = torch.stack([h.detach().float() for h in teacher_hidden])
        return F.smooth_l1_loss(hs, ht) / ht.std().clamp(min=1e-6)
    losses = []
    for hs, ht in zip(student_hidden, teacher_hidden, strict=True):
        ht = ht.detach().float()
        losses.append(F.smooth_l1_loss(hs.float(), ht) / ht.std().clamp(min=1e-6))
    return torch.stack(losses).mean()
