"""Sampled decoding, the second evaluation protocol of the field (greedy is the first and the default).

CODI, PCCoT, KaVa and SIM-CoT decode greedily; the CoLaR / ReGuLaR line samples (top-p 0.9,
temperature 1.0) and reports the mean over sampled decodings. `Sampling` turns a step's logits
into a token as `transformers`' `generate(do_sample=True)` does — its own warpers, in its order:
`TemperatureLogitsWarper` (when T ≠ 1), `TopKLogitsWarper` (when k > 0), `TopPLogitsWarper` (when
p < 1), then a draw from the softmax — with one difference on purpose: the draw.

Each example gets its own random stream, seeded by (seed, sample index, the example's key), and
a token is picked by inverse CDF from one uniform draw of that stream: the first token whose
cumulative probability exceeds u. An example's draws therefore do not depend on the other
examples of its batch, the batch size or the order of the batches; the same seed gives the same
predictions. (`torch.multinomial` over a batch would tie every row's draws to the batch.) Only
generated tokens are drawn: latent passes are deterministic, so in latent mode the latents are
the greedy run's and only the answer tokens after `<eot>` + P are sampled.

A protocol, as results files record it: `{"decoding": "greedy"}` or `Sampling.protocol(samples)`;
`kava.evaluation.protocol` names them and keeps two out of one column (`kava aggregate`, `kava compare`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from kava.errors import KavaError


@dataclass(frozen=True)
class Sampling:
    """temperature > 0; top_p in (0, 1] (1: off); top_k ≥ 0 (0: off); seed: the streams' seed."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        def bad(name, value, want):
            raise KavaError(f"{name} must be {want}, got {value!r}")

        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                bad(name, v, "a number")
        if not self.temperature > 0 or self.temperature == float("inf"):
            bad("temperature", self.temperature, "> 0 (and finite) when sampling")
        if not 0 < self.top_p <= 1:
            bad("top_p", self.top_p, "in (0, 1]")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", self.top_k, "an integer >= 0 (0: off)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            bad("seed", self.seed, "an integer")

    def warpers(self) -> LogitsProcessorList:
        """transformers' logits warpers for these settings, in the order `generate` applies them."""
        out = LogitsProcessorList()
        if self.temperature != 1.0:
            out.append(TemperatureLogitsWarper(float(self.temperature)))
        if self.top_k:
            out.append(TopKLogitsWarper(top_k=self.top_k))
        if self.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=float(self.top_p)))
        return out

    def protocol(self, samples: int) -> dict:
        return {"decoding": "sampling", "temperature": float(self.temperature), "top_p": float(self.top_p),
                "top_k": self.top_k, "samples": samples, "seed": self.seed}

    def stream_seed(self, sample: int, key: int) -> int:
        """The seed of the stream of example `key` in sampled decoding number `sample`."""
        return ((self.seed * 1_000_003 + sample) * 10_000_019 + key) % (2**63 - 1)


def example_key(example_id: str) -> int:
    """A stable integer for an example id (the same in every process, unlike `hash`)."""
    return zlib.crc32(str(example_id).encode("utf-8"))


class Sampler:
    """Picks the next token of each running example: `sampler(logits, rows)`, where `rows` are the
    examples' positions in the original batch (finished examples leave the batch)."""

    def __init__(self, sampling: Sampling, keys: list[int], sample: int = 0):
        self.warpers = sampling.warpers()
        self.streams = [torch.Generator().manual_seed(sampling.stream_seed(sample, k)) for k in keys]

    def __call__(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        probs = torch.softmax(self.warpers(None, logits.float()), dim=-1).double()
        u = torch.cat([torch.rand(1, generator=self.streams[b], dtype=torch.float64) for b in rows])
        cdf = probs.cumsum(-1)
        x = (u.to(probs.device) * cdf[:, -1]).unsqueeze(-1)
        return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def sampling_from(sampling: bool, temperature: float | None = None, top_p: float | None = None,
                  top_k: int | None = None, seed: int | None = None) -> Sampling | None:
    """The `Sampling` of the user's options (None: greedy). A sampling option without
    `sampling` is an error rather than silently greedy."""
    given = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("seed", seed))
             if v is not None}
    if not sampling:
        if given:
            raise KavaError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to sampled decoding: turn "
                            "sampling on (--sampling, sampling=True); greedy decoding is the default")
        return None
    return Sampling(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": 0, **given})
