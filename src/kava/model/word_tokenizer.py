"""A small word-and-digit tokenizer for models trained from scratch on a closed-vocabulary
task (the synthetic problems of `kava.data.synthetic`; SPEC.md §1).

`build_word_tokenizer(words)` builds, in code and without files or network, a
`transformers.PreTrainedTokenizerFast` over a `tokenizers` WordLevel model:

- Pre-tokenization cuts the text into pieces, each one of: a run of letters (a word),
  a single digit, a single whitespace character, or a single other character
  (punctuation or symbol). So ``"Tom has 16 apples."`` becomes
  ``Tom · ␣ · has · ␣ · 1 · 6 · ␣ · apples · .``. Every number is written digit by digit,
  so any number can be represented with the 10 digit tokens.
- Spaces are tokens of their own (``" "``, also ``"\\n"`` and ``"\\t"``), and the decoder
  concatenates the tokens, so decoding gives back exactly the text that was encoded,
  whenever every piece of it is in the vocabulary: ``decode(encode("The answer is: 72"))
  == "The answer is: 72"``. This is the simplest scheme that round-trips exactly; it costs
  about one token per space (a space-prefixed word variant, Metaspace-style, would
  shorten sequences but double the vocabulary and make the text's first word special).
  ``clean_up_tokenization_spaces`` is off, so decoding does not touch the spaces either.
- The vocabulary, in this order (which fixes the ids): the four special tokens (pad, bos,
  eos, unk: ids 0-3 with the defaults), the whitespace tokens, the digits ``0``-``9``, every
  ASCII punctuation character (``string.punctuation``, which covers the CoT format
  ``<<a*b=c>>`` and the answer prefix), the words of the fixed prompt piece
  ``The answer is:``, then the given words, sorted. Ids depend only on the set of words,
  not on their order. A given string that is not a single word (``"don't"``) contributes
  its pieces (``don``, ``'``, ``t``).
- Case-sensitive, no normalisation. A word that is not in the vocabulary becomes one
  ``<unk>`` token (the whole letter run, not one per character), as does any other
  character not in the vocabulary (``"é"`` or ``"€"``, a Unicode digit); decoding writes
  ``<unk>`` back, or nothing with ``skip_special_tokens=True``.
- No token is added on encoding (``add_special_tokens=True`` changes nothing), so the
  caller places ``<bos>``/``<eos>`` itself, and ``decode(encode(text)) == text``.
- ``padding_side`` is ``"left"`` (questions are left-padded, SPEC.md §2).
- Special tokens added later, e.g. ``tokenizer.add_special_tokens({"additional_special_tokens":
  ["<bot>", "<eot>", "<latent>"]})``, are matched in the text before pre-tokenization and
  encode as single ids (appended after the vocabulary).
"""

from __future__ import annotations

import re
import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kava.errors import KavaError

DEFAULT_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
WHITESPACE = (" ", "\n", "\t")
DIGITS = tuple(string.digits)
PUNCTUATION = tuple(string.punctuation)
PROMPT_PIECES = ("The answer is:",)

# One piece per match: a run of letters, one digit, one whitespace character, or one other
# character. Every character of any text is matched, so nothing is dropped. The same
# pattern (Oniguruma in `tokenizers`, `re` here) splits the given words.
PIECE_PATTERN = r"[^\W\d_]+|\d|\s|[^\w\s]|_"
_PIECE_RE = re.compile(PIECE_PATTERN)


def pieces(text: str) -> list[str]:
    """The pre-tokenization pieces of `text` (what the WordLevel model looks up)."""
    return _PIECE_RE.findall(text)


def build_word_tokenizer(
    words: list[str], special_tokens: tuple[str, str, str, str] = DEFAULT_SPECIAL_TOKENS
) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over `words` (see the module docstring).

    `special_tokens` are, in this order, the pad, bos, eos and unk tokens.
    """
    if len(special_tokens) != 4 or len(set(special_tokens)) != 4:
        raise KavaError(f"word tokenizer: special_tokens must be 4 distinct tokens (pad, bos, eos, unk), got {special_tokens}")
    pad, bos, eos, unk = special_tokens
    word_pieces = {p for w in [*PROMPT_PIECES, *words] for p in pieces(w) if not p.isspace()}
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *WHITESPACE, *DIGITS, *PUNCTUATION, *sorted(word_pieces)]:
        vocab.setdefault(token, len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
