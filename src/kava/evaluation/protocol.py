"""Evaluation protocols: how an accuracy was decoded, and the rule that two are never mixed.

Results files record `protocol`: `{"decoding": "greedy"}`, or `{"decoding": "sampling",
"temperature", "top_p", "top_k", "samples", "seed"}` (kava.inference.sampling). Greedy and
sampled accuracies of one model differ widely (CODI on Llama-1B: 55.6 greedy, 13.3 sampled with
top-p 0.9 as the CoLaR line reports it), so a table column or a comparison holds one protocol.
"""

from __future__ import annotations

from collections.abc import Iterable

from kava.errors import KavaError

GREEDY = {"decoding": "greedy"}


def protocol_name(protocol: dict | None) -> str:
    """One line: 'greedy', or 'sampling (temperature 1, top-p 0.9, top-k off)'. The number of
    samples and the seed are not part of it: they estimate the same thing. A result without a
    protocol predates sampled evaluation and was greedy."""
    if not isinstance(protocol, dict) or protocol.get("decoding", "greedy") == "greedy":
        return "greedy"
    k = protocol.get("top_k") or 0
    return (f"sampling (temperature {protocol.get('temperature'):g}, top-p {protocol.get('top_p'):g}, "
            f"top-k {k if k else 'off'})")


def one_protocol(entries: Iterable[tuple[str, str]], what: str) -> str:
    """The protocol name shared by `entries` ((where, protocol name) pairs: one column or one
    comparison); a one-line KavaError naming two of them when they differ."""
    seen: dict[str, str] = {}
    for where, name in entries:
        seen.setdefault(name, where)
    if len(seen) > 1:
        (a, wa), (b, wb) = list(seen.items())[:2]
        raise KavaError(f"{what} mixes two evaluation protocols, {a} ({wa}) and {b} ({wb}); keep greedy and "
                        "sampled results apart (another experiments folder, or evaluate again with one protocol)")
    return next(iter(seen), "greedy")
