"""Attention masks and position ids under left padding (docs/algorithm.md §2).

Every pass gives the model the 2D padding mask over *all* tokens seen so far (cache +
new tokens) and explicit position ids that follow the mask: position = number of real
tokens before this one. Padding therefore never shifts the positions of real tokens,
and a padded batch computes exactly what each example computes alone.
"""

from __future__ import annotations

import torch


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] 0/1 mask -> [B, S] positions (cumsum − 1; padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def positions_for_new(full_mask: torch.Tensor, num_new: int) -> torch.Tensor:
    """Position ids of the last `num_new` tokens given the mask over cache + new tokens."""
    return position_ids_from_mask(full_mask)[:, -num_new:]


def extend_mask(mask: torch.Tensor, num_new: int, new_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Append `num_new` real tokens (or the given [B, num_new] mask) to a [B, S] mask."""
    if new_mask is None:
        new_mask = torch.ones(mask.shape[0], num_new, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask, new_mask.to(mask.dtype)], dim=1)
