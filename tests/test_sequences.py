"""Teacher and student sequences and their padded batches (docs/algorithm.md §1, §2), with the char tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors

from kava.config import PromptConfig
from kava.data.sequences import IGNORE, SPECIAL_TOKENS, SequenceBuilder, SpecialIds
from kava.data.train_sets import ReasoningExample
from kava.model.tiny import build_char_tokenizer

EX = ReasoningExample("Tom has 3 apples.", ("<<3+4=7>>", "<<7*2=14>>", "<<14-18=-4>>"), "-4")
EX_LONG = ReasoningExample("Ann has twelve pens and buys more pens.", ("<<12+8=20>>", "<<20*5=100>>"), "100")
EX_ONE_STEP = ReasoningExample("Sum?", ("<<1+1=2>>",), "2")


def make_builder(add_bos="auto", drop_last=True, tokenizer_adds_bos=False, template="{question}",
                 codi_position="answer_start"):
    tok = build_char_tokenizer()
    if tokenizer_adds_bos:
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)]
        )
    tok.add_tokens(list(SPECIAL_TOKENS), special_tokens=True)
    special = SpecialIds(*(tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS))
    prompt = PromptConfig(add_bos=add_bos, question_template=template)
    return tok, SequenceBuilder(tok, prompt, special, drop_last_step=drop_last, codi_position=codi_position)


def dec(tok, ids):
    return tok.decode(list(ids))


# ----- segments ---------------------------------------------------------------------------


def test_encode_segments_drop_last():
    tok, b = make_builder()
    e = b.encode(EX)
    assert dec(tok, e.q) == "Tom has 3 apples."
    assert dec(tok, e.c) == " <<3+4=7>> <<7*2=14>>"  # the last step (stating the answer) is dropped
    assert dec(tok, e.p) == " The answer is:"
    assert e.a[-1] == tok.eos_token_id
    assert dec(tok, e.a[:-1]) == " -4"  # negative answer kept, with its sign
    assert tok.convert_ids_to_tokens(e.a[:-1]) == [" ", "-", "4"]
    assert b.teacher_length(e) == len(e.q) + len(e.c) + len(e.p) + len(e.a)
    assert b.student_length(e, 6) == len(e.q) + 1 + 6 + 1 + len(e.p) + len(e.a)


def test_encode_keep_all_steps():
    tok, b = make_builder(drop_last=False)
    e = b.encode(EX)
    assert dec(tok, e.c) == " <<3+4=7>> <<7*2=14>> <<14-18=-4>>"
    assert b.cot_steps(EX.steps) == list(EX.steps)


def test_drop_last_with_one_step_gives_empty_cot():
    tok, b = make_builder()
    e = b.encode(EX_ONE_STEP)
    assert e.c == []
    tb = b.teacher_batch([e])
    assert not tb.cot_mask.any()
    assert dec(tok, tb.input_ids[0]) == "Sum? The answer is: 2<eos>"
    assert b.cot_steps([]) == []


def test_question_template():
    tok, b = make_builder(template="Q: {question}\nA:")
    assert dec(tok, b.encode(EX).q) == "Q: Tom has 3 apples.\nA:"


# ----- BOS handling -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "add_bos, tokenizer_adds_bos, expect_bos",
    [
        ("auto", False, False),  # the char tokenizer adds no BOS by itself
        ("auto", True, True),
        ("always", False, True),
        ("always", True, True),
        ("never", False, False),
        ("never", True, False),
    ],
)
def test_bos_handling(add_bos, tokenizer_adds_bos, expect_bos):
    tok, b = make_builder(add_bos=add_bos, tokenizer_adds_bos=tokenizer_adds_bos)
    e = b.encode(EX)
    bos = tok.bos_token_id
    assert (e.q[0] == bos) == expect_bos
    assert e.q.count(bos) == (1 if expect_bos else 0)  # never doubled
    assert dec(tok, [i for i in e.q if i != bos]) == "Tom has 3 apples."
    # the other segments never carry special tokens from the tokenizer's template
    assert bos not in e.c + e.p + e.a
    assert dec(tok, e.p) == " The answer is:"
    tb = b.teacher_batch([e])
    assert (tb.input_ids[0, 0].item() == bos) == expect_bos


# ----- teacher batch ----------------------------------------------------------------------------


def test_teacher_batch_layout():
    tok, b = make_builder()
    encs = [b.encode(EX), b.encode(EX_LONG)]
    tb = b.teacher_batch(encs)
    S = max(b.teacher_length(e) for e in encs)
    for key in ("input_ids", "attention_mask", "labels", "cot_mask", "query_mask"):
        assert getattr(tb, key).shape == (2, S), key
    assert tb.cot_mask.dtype == torch.bool and tb.query_mask.dtype == torch.bool
    for row, e in enumerate(encs):
        nq, nc, np_, na = len(e.q), len(e.c), len(e.p), len(e.a)
        n = nq + nc + np_ + na
        ids = tb.input_ids[row]
        # right padding
        assert tb.attention_mask[row].tolist() == [1] * n + [0] * (S - n)
        assert (ids[n:] == tok.pad_token_id).all()
        assert ids[:n].tolist() == e.q + e.c + e.p + e.a
        # labels: C, P, A only
        labels = tb.labels[row]
        assert (labels[:nq] == IGNORE).all()
        assert labels[nq:n].tolist() == e.c + e.p + e.a
        assert (labels[n:] == IGNORE).all()
        # CoT and query (P + A) masks
        assert dec(tok, ids[tb.cot_mask[row]]) == dec(tok, e.c)
        assert tb.cot_mask[row].nonzero().flatten().tolist() == list(range(nq, nq + nc))
        assert tb.query_mask[row].nonzero().flatten().tolist() == list(range(nq + nc, n))
        assert dec(tok, ids[tb.query_mask[row]]) == dec(tok, e.p + e.a)
        # CODI index (default answer_start): the char tokenizer writes " -4" as " ", "-", "4", so
        # the position whose next token is the answer's sign or first digit is the space after P
        ci = tb.codi_index[row].item()
        assert dec(tok, ids[: ci + 1]).endswith(" The answer is: ")
        assert dec(tok, ids[ci : ci + 1]) == " "
        assert ids[ci + 1].item() == e.a[1] and dec(tok, e.a[1:2]) in ("-", "1")
    assert dec(tok, tb.input_ids[0][tb.attention_mask[0].bool()]) == (
        "Tom has 3 apples. <<3+4=7>> <<7*2=14>> The answer is: -4<eos>"
    )


def test_teacher_batch_without_cot():
    tok, b = make_builder()
    encs = [b.encode(EX), b.encode(EX_LONG)]
    tb = b.teacher_batch(encs, with_cot=False)
    assert not tb.cot_mask.any()
    row = tb.input_ids[0][tb.attention_mask[0].bool()]
    assert dec(tok, row) == "Tom has 3 apples. The answer is: -4<eos>"
    lab = tb.labels[0]
    assert dec(tok, lab[lab != IGNORE]) == " The answer is: -4<eos>"
    ci = tb.codi_index[0].item()
    assert dec(tok, tb.input_ids[0, : ci + 1]) == "Tom has 3 apples. The answer is: "


def test_codi_index_prefix_end_keeps_the_last_token_of_p():
    tok, b = make_builder(codi_position="prefix_end")
    encs = [b.encode(EX), b.encode(EX_LONG)]
    tb, sb = b.teacher_batch(encs), b.student_batch(encs)
    for row, e in enumerate(encs):
        ci = tb.codi_index[row].item()
        assert dec(tok, tb.input_ids[row, : ci + 1]).endswith(" The answer is:")
        assert tb.input_ids[row, ci + 1].item() == e.a[0]
        si = sb.suffix_codi_index[row].item()
        assert dec(tok, sb.suffix_ids[row, 1 : si + 1]) == " The answer is:"


# ----- student batch ----------------------------------------------------------------------------


def test_student_batch_layout():
    tok, b = make_builder()
    encs = [b.encode(EX), b.encode(EX_LONG)]
    sb = b.student_batch(encs)
    bot, eot = b.special.bot, b.special.eot
    Lq = max(len(e.q) for e in encs) + 1
    assert sb.q_ids.shape == sb.q_mask.shape == (2, Lq)
    for row, e in enumerate(encs):
        nq = len(e.q) + 1
        # left-padded Q + <bot>
        assert sb.q_mask[row].tolist() == [0] * (Lq - nq) + [1] * nq
        assert sb.q_ids[row, Lq - nq :].tolist() == e.q + [bot]
        assert (sb.q_ids[row, : Lq - nq] == tok.pad_token_id).all()
        assert sb.q_ids[row, -1].item() == bot
        # right-padded <eot> + P + A, labels on P and A only
        suffix = [eot] + e.p + e.a
        ns = len(suffix)
        W = sb.suffix_ids.shape[1]
        assert sb.suffix_ids[row, :ns].tolist() == suffix
        assert sb.suffix_mask[row].tolist() == [1] * ns + [0] * (W - ns)
        labels = sb.suffix_labels[row]
        assert labels[0].item() == IGNORE
        assert labels[1:ns].tolist() == e.p + e.a
        assert (labels[ns:] == IGNORE).all()
        assert dec(tok, labels[labels != IGNORE]) == dec(tok, e.p + e.a)
        # CODI index inside the suffix: the space after P, whose next token is the sign or first digit
        ci = sb.suffix_codi_index[row].item()
        assert dec(tok, sb.suffix_ids[row, 1 : ci + 1]) == " The answer is: "
        assert sb.suffix_ids[row, ci + 1].item() == e.a[1]
    assert dec(tok, sb.suffix_ids[0][sb.suffix_mask[0].bool()]) == "<eot> The answer is: -4<eos>"
    assert dec(tok, sb.suffix_ids[1][sb.suffix_mask[1].bool()]) == "<eot> The answer is: 100<eos>"


def test_question_batch_left_pads():
    tok, b = make_builder()
    qb = b.question_batch([[10, 11, 12], [13]], add_bot=False)
    assert qb["input_ids"].tolist() == [[10, 11, 12], [tok.pad_token_id] * 2 + [13]]
    assert qb["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    qb = b.question_batch([[10, 11, 12], [13]], add_bot=True)
    assert qb["input_ids"][:, -1].tolist() == [b.special.bot] * 2


def test_negative_answer_labels_keep_the_sign():
    tok, b = make_builder()
    e = b.encode(EX)
    tb = b.teacher_batch([e])
    lab = tb.labels[0]
    assert dec(tok, lab[lab != IGNORE]).endswith(" The answer is: -4<eos>")
    assert tok.convert_tokens_to_ids("-") in e.a


def make_delimited_builder():
    tok = build_char_tokenizer()
    tok.add_tokens(list(SPECIAL_TOKENS), special_tokens=True)
    special = SpecialIds(*(tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS))
    return tok, SequenceBuilder(tok, PromptConfig(teacher_delimiters=True), special)


def test_teacher_delimiters_layout():
    tok, b = make_delimited_builder()
    encs = [b.encode(EX), b.encode(EX_LONG)]
    tb = b.teacher_batch(encs)
    bot, eot = b.special.bot, b.special.eot
    for row, e in enumerate(encs):
        nq, nc, np_, na = len(e.q), len(e.c), len(e.p), len(e.a)
        n = nq + 1 + nc + 1 + np_ + na
        assert b.teacher_length(e) == n
        ids = tb.input_ids[row]
        assert ids[:n].tolist() == e.q + [bot] + e.c + [eot] + e.p + e.a
        labels = tb.labels[row]
        # <bot> is given (the CoT prompt ends with it); <eot>, which ends the CoT, is trained
        assert (labels[: nq + 1] == IGNORE).all() and labels[nq + 1 : n].tolist() == e.c + [eot] + e.p + e.a
        assert tb.cot_mask[row].nonzero().flatten().tolist() == list(range(nq + 1, nq + 1 + nc))
        assert tb.query_mask[row].nonzero().flatten().tolist() == list(range(n - np_ - na, n))
        ci = tb.codi_index[row].item()
        assert dec(tok, ids[: ci + 1]).endswith(" The answer is: ") and ids[ci + 1].item() == e.a[1]
    # the No-CoT sequence has no delimiters
    direct = b.teacher_batch(encs, with_cot=False)
    assert bot not in direct.input_ids[0].tolist() and eot not in direct.input_ids[0].tolist()
    assert b.cot_prompt_ids(EX.question) == b.question_ids(EX.question) + [bot]


def test_teacher_delimiters_align_the_teacher_with_the_student_when_m_is_the_cot_length():
    """With M = |C|: the student's latent slot j has the position of the teacher's CoT token j, and the
    student's <eot> + P + A the positions of the teacher's (position ids follow the masks)."""
    from kava.model.positions import extend_mask, position_ids_from_mask

    tok, b = make_delimited_builder()
    encs = [b.encode(EX), b.encode(EX_LONG)]
    tb, sb = b.teacher_batch(encs), b.student_batch(encs)
    t_pos = position_ids_from_mask(tb.attention_mask)
    for row, e in enumerate(encs):
        M = len(e.c)
        mask = extend_mask(extend_mask(sb.q_mask[row : row + 1], M), sb.suffix_ids.shape[1],
                           sb.suffix_mask[row : row + 1])
        s_pos = position_ids_from_mask(mask)[0]
        Lq = sb.q_mask.shape[1]
        latent_pos = s_pos[Lq : Lq + M]
        assert latent_pos.tolist() == t_pos[row][tb.cot_mask[row]].tolist()
        ns = 1 + len(e.p) + len(e.a)
        nq = len(e.q)
        assert s_pos[Lq + M : Lq + M + ns].tolist() == t_pos[row, nq + 1 + M : nq + 1 + M + ns].tolist()


def test_teacher_and_continuation_batches_say_which_they_are():
    """The continuation is a field (not the absence of a tensor): the full sequence's positions
    are those kava.model.positions gives its mask (padding too), the continuation's continue Q."""
    from kava.model.positions import position_ids_from_mask

    _tok, b = make_builder()
    encs = [b.encode(EX), b.encode(EX_LONG)]
    full, cont = b.teacher_batch(encs), b.continuation_batch(encs)
    assert full.continues_question is False and cont.continues_question is True
    assert cont.to("cpu").continues_question and not full.to("cpu").continues_question
    assert torch.equal(full.position_ids, position_ids_from_mask(full.attention_mask))
    assert (full.attention_mask == 0).any(), "a padded row is needed to check the padding's positions"
    for row, e in enumerate(encs):
        nq, n = len(e.q), int(cont.attention_mask[row].sum())
        assert cont.position_ids[row, :n].tolist() == list(range(nq, nq + n))
        assert cont.position_ids[row, n:].eq(0).all()
        # the continuation is the full sequence after Q: same tokens, labels and CoT / query / CODI rows
        real = full.attention_mask[row].bool()
        assert cont.input_ids[row, :n].tolist() == full.input_ids[row][real].tolist()[nq:]
        assert cont.labels[row, :n].tolist() == full.labels[row][real].tolist()[nq:]
        assert cont.cot_mask[row, :n].tolist() == full.cot_mask[row][real].tolist()[nq:]
        assert cont.query_mask[row, :n].tolist() == full.query_mask[row][real].tolist()[nq:]
        assert int(cont.codi_index[row]) == int(full.codi_index[row]) - nq


def test_batches_move_every_tensor_and_count_their_tokens():
    _tok, b = make_builder()
    encs = [b.encode(EX), b.encode(EX_LONG)]
    tb, sb = b.teacher_batch(encs), b.student_batch(encs, num_latents=[2, 3])
    moved = sb.to("meta")
    assert all(getattr(moved, n).device.type == "meta" for n in vars(sb) if isinstance(getattr(sb, n), torch.Tensor))
    assert sb.latent_mask is not None and b.student_batch(encs).latent_mask is None
    assert int(tb.token_count()) == sum(b.teacher_length(e) for e in encs)
    assert int(sb.token_count()) == sum(b.student_length(e, 0) for e in encs)  # Q + <bot>, <eot> + P + A
