"""Decoding the latents through the LM head (CODI Table 3): do they hold the intermediate results?

Each latent's final last-layer hidden state (after the final norm, as fed back to the next
slot) is decoded through the LM head; its top-k tokens are compared with the intermediate
results of the problem's chain of thought — the results of the CoT steps the teacher reads
(`steps[:-1]` with drop-last, docs/algorithm.md §1). A result is *found* when some latent's top-k holds a
token that is exactly that number. With many latents and few distinct numbers a result can be
found by chance, so the same count is made with the next problem's latents (`found_other`, as
the shuffled control pairs them): only `found` well above `found_other` says the latents hold
this problem's results. Decodable latents alone prove nothing (they can be read off without
being used): the causal controls of `kava.inference.latent_control` answer that.

A number the tokenizer writes in several tokens can never be one token of a top-k: such results
are counted in `multi_token` and left out of the share (with kava's word tokenizer and
`model.tiny.number_digits: 2`, every number below 100 is one token).
"""

from __future__ import annotations

import re

import torch

from kava.data.eval_sets import EvalExample
from kava.inference.generate import generate

_RESULT = re.compile(r"=\s*(-?\d+(?:\.\d+)?)\s*>>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def intermediate_results(steps) -> list[str]:
    """The result of each step: `<<a*b=c>>` -> c; a sentence -> its last number."""
    out = []
    for step in steps:
        m = _RESULT.search(step)
        nums = [m.group(1)] if m else _NUMBER.findall(step)[-1:]
        out += nums
    return out


@torch.no_grad()
def latent_decoding(model, builder, examples: list[EvalExample], k: int = 5, batch_size: int = 64) -> dict:
    """Share (%) of intermediate results found in some latent's top-k; see the module docstring.

    Returns found (%), found_other (% with the next problem's latents), n_results (single-token
    results checked), multi_token (left out), n_examples, k."""
    head = model.backbone.get_output_embeddings()
    examples = [ex for ex in examples if ex.steps]
    decoded: list[set[str]] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        gens = generate(model, builder, [ex.question for ex in batch], mode="latent", max_new_tokens=1,
                        return_latents=True)
        for gen in gens:
            h = gen.latent_hidden.to(model.device, dtype=head.weight.dtype)
            top = head(h).topk(min(k, head.weight.shape[0]), dim=-1).indices  # [M, k]
            decoded.append({builder.tok.decode([int(i)]).strip() for i in top.flatten().tolist()})
    found = other = total = multi = 0
    for i, ex in enumerate(examples):
        for r in intermediate_results(builder.cot_steps(ex.steps)):
            if len(builder.tok(r, add_special_tokens=False)["input_ids"]) != 1:
                multi += 1
                continue
            total += 1
            found += r in decoded[i]
            other += r in decoded[(i + 1) % len(examples)]
    share = (lambda x: 100.0 * x / total) if total else (lambda x: None)
    return {"found": share(found), "found_other": share(other), "n_results": total, "multi_token": multi,
            "n_examples": len(examples), "k": k}
