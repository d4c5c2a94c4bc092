"""Tests for kava.model.word_tokenizer: the word-and-digit WordLevel tokenizer."""

import random

import pytest
from transformers import AutoTokenizer

from kava.data.synthetic import SyntheticTaskConfig, generate_problems, synthetic_vocabulary
from kava.errors import KavaError
from kava.model.word_tokenizer import build_word_tokenizer, pieces

LATENT_TOKENS = ["<bot>", "<eot>", "<latent>"]


@pytest.fixture(scope="module")
def words():
    return synthetic_vocabulary(SyntheticTaskConfig())


@pytest.fixture
def tok(words):
    return build_word_tokenizer(words)


def test_special_tokens_and_padding_side(tok):
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.padding_side == "left"
    # Nothing is added on encoding: the caller places <bos>/<eos>.
    assert tok("Tom has 3 apples.").input_ids == tok("Tom has 3 apples.", add_special_tokens=False).input_ids
    assert tok.encode("<bos>Tom<eos>") == [1, tok.convert_tokens_to_ids("Tom"), 2]


def test_vocabulary_is_small(tok, words):
    assert 100 <= len(tok) <= 200
    assert set(words) <= set(tok.get_vocab())
    for token in ["The", "answer", "is", ":", " ", "<", ">", "=", "+", "-", "*", "/", ".", "?", *"0123456789"]:
        assert token in tok.get_vocab(), token


def test_answer_prefix_round_trips(tok):
    ids = tok.encode("The answer is: 72")
    assert tok.convert_ids_to_tokens(ids) == ["The", " ", "answer", " ", "is", ":", " ", "7", "2"]
    assert tok.decode(ids) == "The answer is: 72"


def test_generated_text_round_trips_without_unk():
    for cfg in [SyntheticTaskConfig(), SyntheticTaskConfig(num_steps=6, max_value=1000, seed=1)]:
        tok = build_word_tokenizer(synthetic_vocabulary(cfg))
        for p in generate_problems(500, cfg):
            for text in [p["question"], " ".join(p["steps"]), *p["steps"], p["answer"],
                         f"The answer is: {p['answer']}"]:
                ids = tok.encode(text)
                assert tok.unk_token_id not in ids, text
                assert tok.decode(ids) == text


def test_digits_are_split(tok):
    assert tok.convert_ids_to_tokens(tok.encode("<<16-3=13>>")) == list("<<16-3=13>>")
    for n in [0, 7, 10, 99, 105, 123456789, -42]:
        ids = tok.encode(str(n))
        assert len(ids) == len(str(n))
        assert tok.decode(ids) == str(n)


def test_whitespace_is_kept(tok):
    text = "Tom  has\n3 apples.\tHow many?"
    assert tok.decode(tok.encode(text)) == text
    assert tok.convert_ids_to_tokens(tok.encode(" 72")) == [" ", "7", "2"]


def test_unknown_word_is_one_unk(tok):
    ids = tok.encode("Tom has 3 zebras.")
    assert ids.count(tok.unk_token_id) == 1
    assert tok.decode(ids) == "Tom has 3 <unk>."
    assert tok.decode(ids, skip_special_tokens=True) == "Tom has 3 ."
    assert tok.encode("tom") == [tok.unk_token_id]  # case-sensitive
    assert tok.encode("€") == [tok.unk_token_id]


def test_latent_special_tokens_added_later(tok):
    size = len(tok)
    tok.add_special_tokens({"additional_special_tokens": LATENT_TOKENS})
    ids = tok.convert_tokens_to_ids(LATENT_TOKENS)
    assert ids == [size, size + 1, size + 2]
    text = "How many?<bot><latent><latent><eot>The answer is: 5"
    encoded = tok.encode(text)
    assert encoded[4:8] == [ids[0], ids[2], ids[2], ids[1]]
    assert tok.decode(encoded) == text
    assert tok.decode(encoded, skip_special_tokens=True) == "How many?The answer is: 5"
    assert tok.convert_ids_to_tokens(tok.encode("<bo>")) == ["<", tok.unk_token, ">"]


def test_same_words_same_ids(words):
    shuffled = list(words)
    random.Random(0).shuffle(shuffled)
    a, b = build_word_tokenizer(words), build_word_tokenizer(shuffled + words[:5])
    assert a.get_vocab() == b.get_vocab()
    assert build_word_tokenizer(words[:10]).get_vocab() != a.get_vocab()


def test_words_with_punctuation_contribute_their_pieces():
    tok = build_word_tokenizer(["don't", "ice cream", "x2"])
    for piece in ["don", "'", "t", "ice", "cream", "x"]:
        assert piece in tok.get_vocab()
    assert tok.decode(tok.encode("don't ice cream x2")) == "don't ice cream x2"
    assert pieces("Tom's 12 ice-creams") == ["Tom", "'", "s", " ", "1", "2", " ", "ice", "-", "creams"]


def test_left_padding(tok):
    batch = tok(["Tom has 3", "The answer is: 72"], padding=True)
    assert batch.input_ids[0][:4] == [tok.pad_token_id] * 4
    assert batch.attention_mask[0] == [0] * 4 + [1] * 5


def test_save_and_load(tok, tmp_path):
    tok.add_special_tokens({"additional_special_tokens": LATENT_TOKENS})
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Mia has 40 cards.<bot><latent><eot>The answer is: 40 zebra"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(loaded.encode(text)) == tok.decode(tok.encode(text))
    assert loaded.padding_side == "left"
    assert [loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id] == [0, 1, 2, 3]


def test_bad_special_tokens():
    with pytest.raises(KavaError):
        build_word_tokenizer(["a"], special_tokens=("<pad>", "<bos>", "<eos>"))
    with pytest.raises(KavaError):
        build_word_tokenizer(["a"], special_tokens=("<pad>", "<pad>", "<eos>", "<unk>"))


def reference_chunks(text: str, n: int) -> list[str]:
    """Every maximal run of digits cut left to right into chunks of n; any other character one
    piece, runs of letters one piece."""
    out, i = [], 0
    while i < len(text):
        j = i + 1
        if text[i].isdigit():
            while j < len(text) and text[j].isdigit():
                j += 1
            out += [text[k : min(k + n, j)] for k in range(i, j, n)]
        else:
            if text[i].isalpha():
                while j < len(text) and text[j].isalpha():
                    j += 1
            out.append(text[i:j])
        i = j
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_number_digits_cuts_numbers_into_chunks(n):
    tok = build_word_tokenizer(["Tom", "has", "apples", "and"], number_digits=n)
    text = "Tom has 16 apples, 105 and 1234 and 7 and 1005."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id not in ids
    toks = tok.convert_ids_to_tokens(ids)
    assert toks == reference_chunks(text, n) == pieces(text, n)
    if n == 2:
        i = toks.index("10")
        assert toks[i : i + 2] == ["10", "5"] and "16" in toks and "05" in toks  # 105 -> 10 5, 1005 -> 10 05


def test_number_digits_out_of_range():
    with pytest.raises(KavaError, match="number_digits"):
        build_word_tokenizer(["Tom"], number_digits=4)


def test_brackets_are_one_token_each():
    tok = build_word_tokenizer(["Tom"], number_digits=2, brackets=True)
    text = "Tom <<16-3=13>> <<13*2=26>> < > <<"
    toks = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    assert toks == ["Tom", " ", "<<", "16", "-", "3", "=", "13", ">>", " ", "<<", "13", "*", "2", "=", "26", ">>",
                    " ", "<", " ", ">", " ", "<<"]
    assert tok.decode(tok(text)["input_ids"]) == text
    assert pieces(text, 2, brackets=True) == toks
