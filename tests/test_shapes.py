"""kava.model.shapes: the one builder of random models (the tiny models and the named shapes)."""

import pytest
import torch

from kava.errors import KavaError
from kava.model.shapes import build_random_model, shape_of
from kava.model.tiny import build_char_tokenizer

SMALL = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32)


@pytest.mark.parametrize("arch, cls", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_seeded_weights_leave_the_global_rng_alone(arch, cls):
    tok = build_char_tokenizer()
    torch.manual_seed(1)
    expected_next = torch.rand(1)
    torch.manual_seed(1)
    a = build_random_model(arch, tok, seed=3, **SMALL)
    assert torch.equal(torch.rand(1), expected_next)  # the global RNG did not move
    b = build_random_model(arch, tok, seed=3, **SMALL)
    c = build_random_model(arch, tok, seed=4, **SMALL)
    assert type(a).__name__ == cls
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    cfg = a.config
    assert cfg.vocab_size == len(tok) and cfg.tie_word_embeddings and cfg.pad_token_id == tok.pad_token_id
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()


def test_a_named_shape_and_a_tokenizer_too_large_for_it():
    tok = build_char_tokenizer()
    shape = shape_of("random:llama-3.2-1b")
    assert shape.pop("arch") == "llama" and shape["vocab_size"] == 128256
    with pytest.raises(KavaError, match=r"tokenizer \(106 tokens\) does not fit a vocabulary of 50"):
        build_random_model("llama", tok, **{**SMALL, "vocab_size": 50})
    with pytest.raises(KavaError, match="unknown model shape"):
        shape_of("random:gpt-5")
