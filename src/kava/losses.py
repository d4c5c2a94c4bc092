"""KaVa's losses (SPEC.md §5).

    L_KV   = mean over layers of ½·(ρ(sg[K̃_t] − K_s) + ρ(sg[Ṽ_t] − V_s))
             averaged over the M latent slots (missing teacher slots masked out), heads, dims;
             ρ ∈ {smooth-L1, L1, MSE}; optionally divided by the teacher's per-layer std.
    L_CODI = mean over layers of smooth-L1(h_s, sg[h_t]) / std(h_t), at the CODI position (the token whose next token is the answer's first digit or sign).
    L      = CE_student + CE_teacher + α₁·L_CODI + α₂·L_KV
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kava.compression import RKVSelection

KV_LOSSES = ("smooth_l1", "l1", "mse")


def _rho(diff_input: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "smooth_l1":
        return F.smooth_l1_loss(diff_input, target, reduction="none")
    if kind == "l1":
        return (diff_input - target).abs()
    if kind == "mse":
        return (diff_input - target) ** 2
    raise ValueError(f"unknown KV loss {kind!r}; choose one of {KV_LOSSES}")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, H, M, D], mask [B, H, M] -> mean over the unmasked slots' elements (0 if none)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    denom = m.sum() * x.shape[-1]
    return (x * m).sum() / denom.clamp(min=1)


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
) -> torch.Tensor:
    losses = []
    for (ks, vs), sel in zip(student_kv, teacher, strict=True):
        kt, vt, mask = sel.keys.detach().float(), sel.values.detach().float(), sel.slot_mask
        lk = _masked_mean(_rho(ks.float(), kt, kind), mask)
        lv = _masked_mean(_rho(vs.float(), vt, kind), mask)
        if layer_std:
            lk = lk / _masked_std(kt, mask)
            lv = lv / _masked_std(vt, mask)
        losses.append(0.5 * (lk + lv))
    return torch.stack(losses).mean()


def codi_loss(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor]) -> torch.Tensor:
    losses = []
    for hs, ht in zip(student_hidden, teacher_hidden, strict=True):
        ht = ht.detach().float()
        losses.append(F.smooth_l1_loss(hs.float(), ht) / ht.std().clamp(min=1e-6))
    return torch.stack(losses).mean()
