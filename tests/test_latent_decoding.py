"""Decoding latents through the LM head (kava.evaluation.latent_decoding) against a slow reference."""

from __future__ import annotations

import torch

from kava.data.eval_sets import EvalExample
from kava.evaluation.latent_decoding import intermediate_results, latent_decoding
from kava.model.student import run_latents


def test_intermediate_results():
    assert intermediate_results(["<<3+4=7>>", "<<7*2=14>>", "<<14-18=-4>>"]) == ["7", "14", "-4"]
    assert intermediate_results(["Tom buys 3 more, so he has 7.", "Then 7 * 2 = 14"]) == ["7", "14"]
    assert intermediate_results(["no number here"]) == []


def test_latent_decoding_equals_a_loop_over_slots(llama):
    model, tok, builder = llama
    # char tokenizer: only one-digit results are one token
    examples = [EvalExample("a", "Tom has 3 apples and buys 4.", 14.0, "14",
                            steps=("<<3+4=7>>", "<<7*2=14>>", "<<14+1=15>>")),
                EvalExample("b", "Ann has 5 pens; she loses 2.", 6.0, "6", steps=("<<5-2=3>>", "<<3*2=6>>")),
                EvalExample("c", "No CoT here.", 1.0, "1")]
    res = latent_decoding(model, builder, examples, k=5)
    found = total = multi = 0
    head = model.backbone.get_output_embeddings()
    sets = []
    for ex in examples[:2]:
        q = builder.question_batch([builder.question_ids(ex.question)], add_bot=True)
        with torch.no_grad():
            h = run_latents(model, q["input_ids"], q["attention_mask"]).hidden[0]
        decoded = set()
        for slot in range(h.shape[0]):
            logits = head(h[slot])
            for i in torch.argsort(logits, descending=True)[:5].tolist():
                decoded.add(tok.decode([i]).strip())
        sets.append(decoded)
        for r in intermediate_results(ex.steps[:-1]):
            if len(r) > 1:
                multi += 1
            else:
                total += 1
                found += r in decoded
    assert (res["n_results"], res["multi_token"]) == (total, multi) == (2, 1)
    assert res["found"] == 100.0 * found / total
    # found_other: each problem's results against the next problem's latents (b's against a's)
    other = sum(r in sets[(i + 1) % 2] for i, ex in enumerate(examples[:2]) for r in intermediate_results(ex.steps[:-1])
                if len(r) == 1)
    assert res["found_other"] == 100.0 * other / total
