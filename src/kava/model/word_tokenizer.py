"""A small word-and-digit tokenizer for models trained from scratch on a closed-vocabulary
task (the synthetic problems of `kava.data.synthetic`; docs/algorithm.md §1).

`build_word_tokenizer(words)` builds, in code and without files or network, a
`transformers.PreTrainedTokenizerFast` over a `tokenizers` WordLevel model:

- Pre-tokenization cuts the text into pieces, each one of: a run of letters (a word),
  a chunk of up to `number_digits` digits (default 1), a single whitespace character, or a
  single other character (punctuation or symbol). So ``"Tom has 16 apples."`` becomes
  ``Tom · ␣ · has · ␣ · 1 · 6 · ␣ · apples · .``; with ``number_digits=2`` it is
  ``Tom · ␣ · has · ␣ · 16 · ␣ · apples · .``. Numbers are cut left to right into chunks
  (``1234`` → ``12 · 34``, ``105`` → ``10 · 5``), as Llama 3's tokenizer cuts them into chunks
  of up to 3 digits, and every chunk of 1 to `number_digits` digits is in the vocabulary, so
  any number can be written.
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
  ``<<a*b=c>>`` and the answer prefix), the digit chunks of 2 to `number_digits` digits
  (``00`` … ``99``, in order), ``<<`` and ``>>`` with ``brackets=True`` (then each is one piece,
  as in Llama 3's tokenizer), the words of the fixed prompt piece
  ``The answer is:``, then the given words, sorted. Ids depend only on the set of words,
  not on their order. A given string that is not a single word (``"don't"``) contributes
  its pieces (``don``, ``'``, ``t``).
- Case-sensitive, no normalisation. A word that is not in the vocabulary becomes one
  ``<unk>`` token (the whole letter run, not one per character), as does any other
  character not in the vocabulary (``"é"`` or ``"€"``, a Unicode digit); decoding writes
  ``<unk>`` back, or nothing with ``skip_special_tokens=True``.
- No token is added on encoding (``add_special_tokens=True`` changes nothing), so the
  caller places ``<bos>``/``<eos>`` itself, and ``decode(encode(text)) == text``.
- ``padding_side`` is ``"left"`` (questions are left-padded, docs/algorithm.md §2).
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

# One piece per match: a run of letters, a chunk of up to N digits, one whitespace character,
# or one other character. Every character of any text is matched, so nothing is dropped. The
# same pattern (Oniguruma in `tokenizers`, `re` here) splits the given words.
MAX_NUMBER_DIGITS = 3


BRACKETS = ("<<", ">>")  # the CoT's equation brackets: one token each in Llama 3's and Qwen2.5's tokenizers


def piece_pattern(number_digits: int = 1, brackets: bool = False) -> str:
    if not 1 <= number_digits <= MAX_NUMBER_DIGITS:
        raise KavaError(f"word tokenizer: number_digits must be 1 to {MAX_NUMBER_DIGITS}, got {number_digits}")
    digits = r"\d" if number_digits == 1 else rf"\d{{1,{number_digits}}}"
    return ("<<|>>|" if brackets else "") + rf"[^\W\d_]+|{digits}|\s|[^\w\s]|_"


PIECE_PATTERN = piece_pattern(1)


def pieces(text: str, number_digits: int = 1, brackets: bool = False) -> list[str]:
    """The pre-tokenization pieces of `text` (what the WordLevel model looks up)."""
    return re.findall(piece_pattern(number_digits, brackets), text)


def digit_chunks(number_digits: int) -> list[str]:
    """Every chunk of 2 to `number_digits` digits, in order (the single digits are listed apart)."""
    out: list[str] = []
    for n in range(2, number_digits + 1):
        out += [str(i).zfill(n) for i in range(10**n)]
    return out


def build_word_tokenizer(
    words: list[str], special_tokens: tuple[str, str, str, str] = DEFAULT_SPECIAL_TOKENS, number_digits: int = 1,
    brackets: bool = False,
) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over `words` (see the module docstring).

    `special_tokens` are, in this order, the pad, bos, eos and unk tokens; `number_digits`
    the longest digit chunk that is one token; `brackets`: `<<` and `>>` are one token each.
    """
    pattern = piece_pattern(number_digits, brackets)
    if len(special_tokens) != 4 or len(set(special_tokens)) != 4:
        raise KavaError(f"word tokenizer: special_tokens must be 4 distinct tokens (pad, bos, eos, unk), got "
                        f"{special_tokens}")
    pad, bos, eos, unk = special_tokens
    word_pieces = {p for w in [*PROMPT_PIECES, *words] for p in pieces(w) if not p.isspace()}
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *WHITESPACE, *DIGITS, *PUNCTUATION, *digit_chunks(number_digits),
                  *(BRACKETS if brackets else ()), *sorted(word_pieces)]:
        vocab.setdefault(token, len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
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
