"""The built-in tiny models' names and their character tokenizer (nothing downloaded).

They exist for tests and smoke runs: a 4-layer Llama or Qwen2 with a ~100-entry
character vocabulary runs a full KaVa step in a fraction of a second on a CPU.
`TINY_MODELS` maps the names accepted by `model.name` in a config to architectures; the
model itself is built by `kava.model.shapes.build_random_model` with the shape of
`model.tiny` (`kava.model.load`).
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

TINY_MODELS = {"tiny-llama": "llama", "tiny-qwen2": "qwen2"}

_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Printable ASCII plus newline and a few characters common in math word problems.
_CHARS = sorted(set(string.printable) - set("\t\r\x0b\x0c")) + ["’", "−", "€", "£", "°", "½"]


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character, unknown characters map to <unk>."""
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + _CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )
    return tok
