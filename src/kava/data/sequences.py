"""Teacher and student sequences, and their padded batches (docs/algorithm.md §1, §2).

Each piece is tokenised on its own and the ids are concatenated, so segment
boundaries are exact whatever the tokenizer does with spaces:

    Q = [bos] + question          C = " " + " ".join(steps)       (drop-last: steps[:-1])
    P = " The answer is:"          A = " 72" + [eos]

    teacher = Q + C + P + A                    CE on C, P, A
              (kava.shared_question: C + P + A over the student's Q, `continuation_batch`)
    student = Q + <bot> + <latent>×M + <eot> + P + A      CE on P, A
    direct  = Q + P + A                        CE on P, A (the No-CoT baseline)

With `prompt.teacher_delimiters` the teacher reads Q + <bot> + C + <eot> + P + A (CE on C,
<eot>, P, A; CoT-mode generation starts after Q + <bot>): when M = |C| every CoT token then
sits at the position of the latent slot that imitates it, and P at the student's P positions.
A small model trained from scratch reads by exact relative positions (docs/quality.md: moving
P two positions further makes a CoT-trained 0.6M model go from 100% to 0%).

Under a curriculum (kava.training.curriculum) a student example has its own number of
latents and keeps the CoT steps its stage has not replaced: Q + <bot> + <latent>×n +
<eot> + C_k + P + A, CE on C_k, P and A, with C_k = " " + " ".join(steps[k:]) tokenised
as one piece, as C is (C_0 = C).

The CODI position is the token whose next token is the answer's first digit or sign: the
last token of P, or — when A opens with whitespace-only tokens, as with tokenizers that
split " 72" into " " + "72" (Llama 3, Qwen2.5) — the last of those ([codi] shifts by one for
Llama and Qwen, [pccot] drops the space). It is found from the segment lengths and A's own
tokens, never by searching the text. `codi_position="prefix_end"` keeps the last token of P
whatever follows it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kava.config import PromptConfig
from kava.data.train_sets import ReasoningExample

IGNORE = -100
SPECIAL_TOKENS = ("<bot>", "<eot>", "<latent>")


@dataclass(frozen=True)
class SpecialIds:
    bot: int
    eot: int
    latent: int


@dataclass(eq=False)  # (tensors: compare fields with torch.equal)
class TeacherBatch:
    """The teacher's right-padded rows ([B, S] tensors, codi_index [B]): its sequence
    (`SequenceBuilder.teacher_batch`, also No-CoT's Q + P + A) or, with `continues_question`,
    its continuation C + P + A over the question the student reads (`continuation_batch`).

    labels: the CE targets (IGNORE elsewhere); position_ids: each token's position (the
    continuation's continue the question's real tokens); cot_mask: C; query_mask: P + A (the
    rows R-KV scores C with); codi_index: the CODI position of each row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cot_mask: torch.Tensor
    query_mask: torch.Tensor
    codi_index: torch.Tensor
    continues_question: bool = False

    def to(self, device) -> TeacherBatch:
        return _to(self, device)

    def token_count(self) -> torch.Tensor:
        """Real tokens, as a tensor on the batch's device (no host read)."""
        return self.attention_mask.sum()


@dataclass(eq=False)
class StudentBatch:
    """The student's rows (`SequenceBuilder.student_batch`): the left-padded question Q + <bot>
    (q_ids, q_mask [B, Q]) and the right-padded suffix <eot> (+ kept CoT) + P + A after the
    latents (suffix_ids, suffix_mask, suffix_labels [B, S]; suffix_codi_index [B], the CODI
    position inside the suffix); latent_mask [B, max M]: under a curriculum, 1 on each row's
    latents (None: every row has the config's M)."""

    q_ids: torch.Tensor
    q_mask: torch.Tensor
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor
    suffix_labels: torch.Tensor
    suffix_codi_index: torch.Tensor
    latent_mask: torch.Tensor | None = None

    def to(self, device) -> StudentBatch:
        return _to(self, device)

    def token_count(self) -> torch.Tensor:
        """The question's and the suffix's real tokens (not the latents), as a tensor on the device."""
        return self.q_mask.sum() + self.suffix_mask.sum()


def _to(batch, device):
    """A copy of a batch dataclass with its tensors on `device`."""
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), torch.Tensor)})


@dataclass
class Encoded:
    q: list[int]
    c: list[int]
    p: list[int]
    a: list[int]
    codi_shift: int = 0  # whitespace-only tokens opening A that the CODI position steps over (answer_start)
    steps: tuple[str, ...] = ()  # the CoT steps C is made of (after drop-last), for a curriculum


class SequenceBuilder:
    def __init__(self, tokenizer, prompt: PromptConfig, special: SpecialIds, drop_last_step: bool = True,
                 codi_position: str = "answer_start"):
        self.tok = tokenizer
        self.prompt = prompt
        self.special = special
        self.drop_last_step = drop_last_step
        self.codi_position = codi_position
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.bos = self._bos_ids()
        self.p_ids = self._enc(" " + prompt.answer_prefix)

    def _enc(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _bos_ids(self) -> list[int]:
        bos = self.tok.bos_token_id
        if self.prompt.add_bos == "never" or bos is None:
            return []
        if self.prompt.add_bos == "always":
            return [bos]
        ids = self.tok("a", add_special_tokens=True)["input_ids"]
        return [bos] if ids and ids[0] == bos else []

    def question_ids(self, question: str) -> list[int]:
        return self.bos + self._enc(self.prompt.question_template.format(question=question.strip()))

    def cot_steps(self, steps) -> list[str]:
        steps = list(steps)
        return steps[:-1] if self.drop_last_step and steps else steps

    def cot_ids(self, steps) -> list[int]:
        """C for these steps: " " + the steps joined by spaces, tokenised as one piece ([] for none)."""
        return self._enc(" " + " ".join(steps)) if steps else []

    def encode(self, ex: ReasoningExample) -> Encoded:
        steps = tuple(self.cot_steps(ex.steps))
        a = self._enc(" " + ex.answer) + ([self.eos_id] if self.eos_id is not None else [])
        return Encoded(q=self.question_ids(ex.question), c=self.cot_ids(steps), p=list(self.p_ids), a=a,
                       codi_shift=self._codi_shift(a), steps=steps)

    def _codi_shift(self, a: list[int]) -> int:
        """0, or with codi_position 'answer_start' the number of whitespace-only tokens that open A."""
        if self.codi_position != "answer_start":
            return 0
        n = 0
        while n < len(a) - 1 and a[n] != self.eos_id and not self.tok.decode([a[n]]).strip():
            n += 1
        return n

    @property
    def delimiters(self) -> bool:
        return self.prompt.teacher_delimiters

    def cot_prompt_ids(self, question: str) -> list[int]:
        """What the teacher's chain of thought follows at inference: Q (+ <bot> with delimiters)."""
        return self.question_ids(question) + ([self.special.bot] if self.delimiters else [])

    def teacher_cot(self, e: Encoded) -> tuple[list[int], list[int], list[int]]:
        """(before C, C, after C) of the teacher sequence: ([<bot>], C, [<eot>]) with delimiters."""
        if self.delimiters:
            return [self.special.bot], e.c, [self.special.eot]
        return [], e.c, []

    def teacher_length(self, e: Encoded) -> int:
        return len(e.q) + len(e.c) + len(e.p) + len(e.a) + (2 if self.delimiters else 0)

    def student_length(self, e: Encoded, num_latents: int) -> int:
        return len(e.q) + 1 + num_latents + 1 + len(e.p) + len(e.a)

    # ----- batches -------------------------------------------------------------------------

    def teacher_batch(self, items: list[Encoded], with_cot: bool = True) -> TeacherBatch:
        """Right-padded Q + C + P + A (Q + <bot> + C + <eot> + P + A with delimiters; Q + P + A with
        with_cot=False): labels on C, P, A (or P, A); positions from 0 (padding: the row's last)."""
        return self._teacher_rows(items, with_cot, with_question=True)

    def continuation_batch(self, items: list[Encoded]) -> TeacherBatch:
        """The teacher's C + P + A (<bot> + C + <eot> + P + A with delimiters), right-padded, to
        run over the question's cache (`kava.shared_question`; the question is the student's
        `q_ids` without `<bot>`).

        The labels are those of `teacher_batch` after Q: the first is predicted by the question's
        last position, each other one by the token before it. position_ids continue the
        question's real tokens (padding: 0); cot_mask, query_mask and codi_index index the continuation.
        """
        return self._teacher_rows(items, with_cot=True, with_question=False)

    def _teacher_rows(self, items: list[Encoded], with_cot: bool, with_question: bool) -> TeacherBatch:
        """The teacher's sequence, with its question (`teacher_batch`) or without it, continuing
        the question's positions (`continuation_batch`); right-padded."""
        seqs, labels, cot, query, codi, pos = [], [], [], [], [], []
        for e in items:
            before, c, after = self.teacher_cot(e) if with_cot else ([], [], [])
            head = e.q if with_question else []
            ids = head + before + c + after + e.p + e.a
            seqs.append(ids)
            labels.append([IGNORE] * (len(head) + len(before)) + c + after + e.p + e.a)
            cot.append([0] * (len(head) + len(before)) + [1] * len(c) + [0] * (len(after) + len(e.p) + len(e.a)))
            n_pre = len(head) + len(before) + len(c) + len(after)
            query.append([0] * n_pre + [1] * (len(e.p) + len(e.a)))
            codi.append(n_pre + len(e.p) - 1 + e.codi_shift)
            start = len(e.q) - len(head)  # 0 with the question, else the question's length
            pos.append(list(range(start, start + len(ids))))
        width = max(map(len, seqs))

        def pad(rows, value):
            return torch.tensor([r + [value] * (width - len(r)) for r in rows])

        # a full sequence's padding repeats its last position (as kava.model.positions gives it)
        positions = pad(pos, 0) if not with_question else torch.tensor([r + [r[-1]] * (width - len(r)) for r in pos])
        return TeacherBatch(
            input_ids=pad(seqs, self.pad_id),
            attention_mask=pad([[1] * len(s) for s in seqs], 0),
            labels=pad(labels, IGNORE),
            position_ids=positions,
            cot_mask=pad(cot, 0).bool(),
            query_mask=pad(query, 0).bool(),
            codi_index=torch.tensor(codi),
            continues_question=not with_question,
        )

    def question_batch(self, questions: list[list[int]], add_bot: bool) -> dict[str, torch.Tensor]:
        """Left-padded question ids (+ <bot>), so latent blocks and answers line up."""
        rows = [q + ([self.special.bot] if add_bot else []) for q in questions]
        width = max(map(len, rows))
        return {
            "input_ids": torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows]),
            "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
        }

    def student_batch(self, items: list[Encoded], num_latents: list[int] | None = None,
                      cot: list[list[int]] | None = None) -> StudentBatch:
        """Left-padded Q + <bot>; right-padded suffix <eot> + P + A with labels on P and A.

        suffix_codi_index is the CODI position inside the suffix (the last P token, or with
        answer_start the token before the answer's first digit). A curriculum gives each
        example its number of latents (`latent_mask` [B, max]: 1 on the example's latents,
        which come first, 0 on padding after them) and the CoT ids it keeps (`cot`: the
        suffix is then <eot> + cot + P + A, labels on all but <eot>).
        """
        q = self.question_batch([e.q for e in items], add_bot=True)
        cot = cot if cot is not None else [[] for _ in items]
        suffixes = [[self.special.eot] + c + e.p + e.a for e, c in zip(items, cot, strict=True)]
        width = max(map(len, suffixes))
        ids = [s + [self.pad_id] * (width - len(s)) for s in suffixes]
        mask = [[1] * len(s) + [0] * (width - len(s)) for s in suffixes]
        labels = [[IGNORE] + s[1:] + [IGNORE] * (width - len(s)) for s in suffixes]
        latent_mask = None
        if num_latents is not None:
            k = max(num_latents)
            latent_mask = torch.tensor([[1] * n + [0] * (k - n) for n in num_latents], dtype=torch.long)
        return StudentBatch(
            q_ids=q["input_ids"],
            q_mask=q["attention_mask"],
            suffix_ids=torch.tensor(ids),
            suffix_mask=torch.tensor(mask),
            suffix_labels=torch.tensor(labels),
            suffix_codi_index=torch.tensor([len(c) + len(e.p) + e.codi_shift for e, c in zip(items, cot)]),
            latent_mask=latent_mask,
        )
