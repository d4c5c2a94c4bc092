"""Synthetic multi-step arithmetic word problems in GSM8k-AUG's format (docs/algorithm.md §1).

An offline task that can be generated in any amount, for CPU-scale benchmarks: a tiny
model trained from scratch can solve it with a chain of thought, but hardly without one,
because the answer needs every step.

Each problem is a dict exactly like a GSM8k-AUG row::

    {"question": "Tom has 16 apples. He gives away 3 apples. Mia has 2 times as many
                  apples as Tom. How many apples does Mia have now?",
     "steps": ["<<16-3=13>>", "<<13*2=26>>"],
     "answer": "26"}

The rules, all checked by `verify_problem`:

- one step per operation (`num_steps` of them), written `<<a op b=c>>` with op in
  ``+ - * /``; every step after the first has the previous step's result as its left
  operand (the chain), and the last step's result is the answer;
- every number (the question's numbers, every operand, every result) is an integer in
  ``[1, max_value)``: no zero, negative or fractional value, division is exact,
  multiplication stays in range; multipliers and divisors are at least 2, and amounts
  that are added or taken away are at least 2 (so the plural in "2 apples" is right);
- the operations: ``add``, ``sub``, ``mul``, ``div`` (exact division: "splits them
  equally into 4 bags and keeps one bag") and ``bags``, a multiplication phrased with
  containers. As the first operation it reads "Tom has 3 bags with 5 apples in each."
  (``<<3*5=15>>``; the starting amount is then not stated); later it reads "Mia has 2
  bags with as many apples in each as Tom has." (``<<15*2=30>>``). Every step uses the
  previous result, so a "then he buys 2 bags of 4 apples each" step, which would need
  two equations, is not generated;
- some templates move the story to a new person ("Mia has 3 times as many apples as
  Tom."); the final question asks about whoever holds the running amount;
- pronouns replace a name only where no other person of the same gender was named in
  the sentence before.

Determinism: `generate_problems(n, cfg)` draws from ``random.Random(cfg.seed)`` and keeps
the first ``n`` distinct questions, so it is reproducible and ``generate_problems(n)`` is a
prefix of ``generate_problems(n + k)``. `generate_splits` draws each split from its own
stream (seeded by ``cfg.seed`` and the split's name) and removes questions already taken
by the test split, then by the validation split, so the test split depends only on the
config and ``n_test``.

The vocabulary (`synthetic_vocabulary`) is case-sensitive: "He" at the start of a sentence
and "he" after "Then" are two words, as a case-sensitive tokenizer sees them. Numbers are
not words: a tokenizer is expected to split them into digits.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

from kava.errors import KavaError
from kava.io import atomic_write_text

OPERATIONS = ("add", "sub", "mul", "div", "bags")
SPLITS = ("train", "validation", "test")

_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "bags": "*", "div": "/"}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
_STEP_RE = re.compile(r"<<(\d+)([+\-*/])(\d+)=(\d+)>>")

# -- the closed vocabulary ---------------------------------------------------------------
NAMES = {
    "m": ("Tom", "Sam", "Ben", "Max", "Leo", "Jack"),
    "f": ("Anna", "Mia", "Lily", "Emma", "Zoe", "Kate"),
}
PRONOUNS = {  # subject, possessive, object, reflexive
    "m": {"sub": "he", "his": "his", "him": "him", "himself": "himself"},
    "f": {"sub": "she", "his": "her", "him": "her", "himself": "herself"},
}
OBJECTS = ("apples", "pencils", "marbles", "stickers", "cookies", "coins", "cards", "shells", "books", "eggs")
RELATIVES = ("friend", "sister", "brother", "mom", "dad")
CONNECTORS = ("Then", "Next,", "After that,", "Later,")

# Placeholders: {sub} the current holder as subject (name or pronoun), {his} {him} {himself}
# the current holder's pronouns, {name} the current holder's name, {new} a new person who
# becomes the holder, {obj} the object, {rel} a relative, {a} {b} {c} numbers.
_INTRO = ("{name} has {a} {obj}.", "{name} starts with {a} {obj}.", "{name} collects {a} {obj}.")
_BAGS_INTRO = (
    "{name} has {b} bags with {c} {obj} in each.",
    "{name} buys {b} boxes of {c} {obj} each.",
    "{name} fills {b} bags with {c} {obj} each.",
)
_QUESTIONS = ("How many {obj} does {name} have now?", "How many {obj} does {name} have in the end?")


@dataclass(frozen=True)
class _Template:
    text: str
    switch: bool = False  # the sentence introduces {new}, who becomes the holder
    pronoun_lead: bool = False  # the holder is only referred to by pronouns ("His mom gives him")


_STEP_TEMPLATES: dict[str, tuple[_Template, ...]] = {
    "add": (
        _Template("{sub} buys {b} more {obj}."),
        _Template("{sub} finds {b} more {obj}."),
        _Template("{sub} gets {b} more {obj} from {his} {rel}."),
        _Template("{his} {rel} gives {him} {b} more {obj}.", pronoun_lead=True),
        _Template("{new} has {b} more {obj} than {name}.", switch=True),
    ),
    "sub": (
        _Template("{sub} gives away {b} {obj}."),
        _Template("{sub} loses {b} {obj}."),
        _Template("{sub} sells {b} {obj}."),
        _Template("{sub} gives {b} {obj} to {his} {rel}."),
        _Template("{new} has {b} fewer {obj} than {name}.", switch=True),
    ),
    "mul": (
        _Template("{sub} ends up with {b} times as many {obj} as before."),
        _Template("{new} has {b} times as many {obj} as {name}.", switch=True),
        _Template("{new} collects {b} times as many {obj} as {name} has.", switch=True),
    ),
    "bags": (
        _Template("{new} has {b} bags with as many {obj} in each as {name} has.", switch=True),
        _Template("{new} fills {b} boxes, each with as many {obj} as {name} has.", switch=True),
        _Template("{new} buys {b} bags, and each bag holds as many {obj} as {name} has.", switch=True),
    ),
    "div": (
        _Template("{sub} splits {his} {obj} equally into {b} bags and keeps one bag."),
        _Template("{sub} divides {his} {obj} into {b} equal groups and keeps one group."),
        _Template("{sub} shares {his} {obj} equally among {b} people, including {himself}."),
        _Template("{new} gets one share when {name} splits {his} {obj} equally among {b} people.", switch=True),
    ),
}


@dataclass
class SyntheticTaskConfig:
    """What `generate_problems` draws.

    num_steps: operations per problem (= CoT steps). max_value: every number in the
    problem lies in [1, max_value). operations: the kinds of steps to draw from (a subset
    of `OPERATIONS`). seed: the random seed.
    """

    num_steps: int = 4
    max_value: int = 100
    operations: tuple[str, ...] = OPERATIONS
    seed: int = 0

    def __post_init__(self) -> None:
        self.operations = tuple(self.operations)
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown or not self.operations:
            raise KavaError(f"synthetic task: operations must be a non-empty subset of {OPERATIONS}, got "
                            f"{self.operations}")
        if len(set(self.operations)) != len(self.operations):
            raise KavaError(f"synthetic task: operations repeat: {self.operations}")
        if self.num_steps < 1:
            raise KavaError(f"synthetic task: num_steps must be at least 1, got {self.num_steps}")
        if self.max_value < 10:
            raise KavaError(f"synthetic task: max_value must be at least 10, got {self.max_value}")


def task_config(section) -> SyntheticTaskConfig:
    """The generator's settings from a config's `data.synthetic` section (`kava.config.SyntheticDataConfig`)."""
    return SyntheticTaskConfig(num_steps=section.num_steps, max_value=section.max_value,
                               operations=tuple(section.operations), seed=section.seed)


# -- generation ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _divisors(x: int) -> tuple[int, ...]:
    return tuple(d for d in range(2, x // 2 + 1) if x % d == 0)


def _operands(op: str, x: int, cfg: SyntheticTaskConfig) -> range | tuple[int, ...]:
    """The right operands b for `x op b` that keep every number in [1, max_value)."""
    top = cfg.max_value - 1
    if op == "add":
        return range(2, top - x + 1)
    if op == "sub":
        return range(2, x)
    if op in ("mul", "bags"):
        return range(2, top // x + 1)
    return _divisors(x)


def _step(a: int, op: str, b: int) -> tuple[str, int]:
    c = _APPLY[_SYMBOL[op]](a, b)
    return f"<<{a}{_SYMBOL[op]}{b}={c}>>", c


def _sentence(text: str, connector: str | None) -> str:
    if connector:
        text = f"{connector} {text}"
    return text[0].upper() + text[1:]


def _draw_problem(cfg: SyntheticTaskConfig, rng: random.Random) -> dict | None:
    """One problem, or None where the chain got stuck (no operation fits the amount)."""
    gender = rng.choice("mf")
    name = rng.choice(NAMES[gender])
    used = {name}
    obj = rng.choice(OBJECTS)
    sentences: list[str] = []
    steps: list[str] = []
    ambiguous = False  # the last sentence named another person of the holder's gender

    if "bags" in cfg.operations and rng.random() < 1 / len(cfg.operations):
        b = rng.randint(2, (cfg.max_value - 1) // 2)
        c = rng.randint(2, (cfg.max_value - 1) // b)
        sentences.append(rng.choice(_BAGS_INTRO).format(name=name, b=b, c=c, obj=obj))
        step, x = _step(b, "mul", c)
        steps.append(step)
    else:
        x = rng.randint(2, cfg.max_value - 1)
        sentences.append(rng.choice(_INTRO).format(name=name, a=x, obj=obj))

    while len(steps) < cfg.num_steps:
        unused = [n for g in "mf" for n in NAMES[g] if n not in used]
        templates = {
            op: [t for t in _STEP_TEMPLATES[op] if (unused or not t.switch) and not (ambiguous and t.pronoun_lead)]
            for op in cfg.operations
        }
        feasible = [op for op, choices in templates.items() if choices and _operands(op, x, cfg)]
        if not feasible:
            return None
        op = rng.choice(feasible)
        b = rng.choice(_operands(op, x, cfg))
        template = rng.choice(templates[op])
        fill = dict(b=b, obj=obj, rel=rng.choice(RELATIVES), name=name, **PRONOUNS[gender])
        use_pronoun = not ambiguous and rng.random() < 0.4
        fill["sub"] = PRONOUNS[gender]["sub"] if use_pronoun else name
        connector = None
        if template.switch:
            new = rng.choice(unused)
            fill["new"] = new
            new_gender = "m" if new in NAMES["m"] else "f"
            ambiguous = new_gender == gender
            name, gender = new, new_gender
            used.add(new)
        else:
            ambiguous = False
            if rng.random() < 0.5:
                connector = rng.choice(CONNECTORS)
        sentences.append(_sentence(template.text.format(**fill), connector))
        step, x = _step(x, op, b)
        steps.append(step)

    sentences.append(rng.choice(_QUESTIONS).format(obj=obj, name=name))
    return {"question": " ".join(sentences), "steps": steps, "answer": str(x)}


def _generate(n: int, cfg: SyntheticTaskConfig, rng: random.Random, exclude: set[str]) -> list[dict]:
    problems: list[dict] = []
    seen = set(exclude)
    budget = 100 * n + 1000  # a config whose problem space is nearly exhausted fails loudly
    while len(problems) < n:
        if budget == 0:
            raise KavaError(
                f"synthetic task: could only draw {len(problems)} of {n} distinct problems with {cfg}; "
                "raise max_value, add operations or ask for fewer problems"
            )
        budget -= 1
        problem = _draw_problem(cfg, rng)
        if problem is None or problem["question"] in seen:
            continue
        seen.add(problem["question"])
        problems.append(problem)
    return problems


def generate_problems(n: int, cfg: SyntheticTaskConfig | None = None) -> list[dict]:
    """`n` distinct problems drawn from ``random.Random(cfg.seed)`` (see the module docstring)."""
    cfg = cfg or SyntheticTaskConfig()
    return _generate(n, cfg, random.Random(cfg.seed), set())


def generate_splits(cfg: SyntheticTaskConfig, n_train: int, n_val: int, n_test: int) -> dict[str, list[dict]]:
    """Disjoint ``train`` / ``validation`` / ``test`` lists, each reproducible.

    Each split has its own random stream (seeded by ``cfg.seed`` and the split's name); the
    test split is drawn first, then validation without the test questions, then train
    without either.
    """
    taken: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, n in (("test", n_test), ("validation", n_val), ("train", n_train)):
        splits[split] = _generate(n, cfg, random.Random(f"kava-synthetic:{cfg.seed}:{split}"), taken)
        taken.update(p["question"] for p in splits[split])
    return {split: splits[split] for split in SPLITS}


COT_FORMATS = ("equations", "results", "nl")

# `nl`: each step one sentence around its equation, as GSM8k-AUG-NL writes them ("Natalia sold
# 48/2 = 24 clips in May."): about 25 tokens a step with the word tokenizer (a space is a token),
# so the CoT after drop-last (3 of 4 steps) is ~80 tokens, over 3× the benchmark's M = 24.
_NL_STEPS = {
    "+": "Adding {b} more {obj} makes {a}+{b} = {c} {obj} in all.",
    "-": "Taking away {b} {obj} leaves {a}-{b} = {c} {obj} in all.",
    "*": "Multiplying {a} by {b} makes {a}*{b} = {c} {obj} in all.",
    "/": "Splitting {a} into {b} equal parts makes {a}/{b} = {c} {obj} in each.",
}


def problem_object(question: str) -> str:
    """The object a problem counts (every generated problem names exactly one of `OBJECTS`)."""
    found = [obj for obj in OBJECTS if re.search(rf"\b{obj}\b", question)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one of {OBJECTS} in the question, found {found}: {question!r}")
    return found[0]


def format_steps(steps, cot_format: str = "equations", question: str = "") -> list[str]:
    """The CoT steps as the teacher reads them: ``equations`` (``<<13*2=26>>``, GSM8k-AUG's
    format), ``results`` (``26``: each step's result only, one number token per step with
    `model.tiny.number_digits` large enough) or ``nl`` (a sentence around the equation,
    GSM8k-AUG-NL's style: ``Multiplying 13 by 2 makes 13*2 = 26 apples in all.``; needs the
    question, which names the object)."""
    if cot_format == "equations":
        return list(steps)
    if cot_format == "results":
        return [str(parse_step(step)[3]) for step in steps]
    if cot_format == "nl":
        obj = problem_object(question)
        out = []
        for step in steps:
            a, op, b, c = parse_step(step)
            out.append(_NL_STEPS[op].format(a=a, b=b, c=c, obj=obj))
        return out
    raise KavaError(f"synthetic task: unknown CoT format {cot_format!r}; choose one of {COT_FORMATS}")


def write_jsonl(problems: list[dict], path: str | os.PathLike) -> None:
    """Write one problem per line (atomically), the layout of a GSM8k-AUG JSONL export."""
    atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in problems))


def write_splits(splits: dict[str, list[dict]], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write each split to ``out_dir/<split>.jsonl``; returns the paths."""
    paths = {split: Path(out_dir) / f"{split}.jsonl" for split in splits}
    for split, problems in splits.items():
        write_jsonl(problems, paths[split])
    return paths


# -- checking ------------------------------------------------------------------------------


def parse_step(step: str) -> tuple[int, str, int, int]:
    """``"<<13*2=26>>"`` → ``(13, "*", 2, 26)``; a `ValueError` for anything else."""
    match = _STEP_RE.fullmatch(step)
    if match is None:
        raise ValueError(f"not a `<<a op b=c>>` step: {step!r}")
    a, op, b, c = match.groups()
    return int(a), op, int(b), int(c)


def verify_problem(problem: dict, cfg: SyntheticTaskConfig) -> None:
    """Raise `ValueError` unless the problem follows every rule in the module docstring."""
    steps = problem["steps"]
    if len(steps) != cfg.num_steps:
        raise ValueError(f"{len(steps)} steps, expected {cfg.num_steps}: {problem}")
    previous = None
    for step in steps:
        a, op, b, c = parse_step(step)
        if op == "/" and (b == 0 or a % b):
            raise ValueError(f"inexact division in {step}")
        if _APPLY[op](a, b) != c:
            raise ValueError(f"wrong result in {step}")
        if previous is not None and a != previous:
            raise ValueError(f"{step} does not use the previous result {previous}")
        if op in "*/" and b < 2:
            raise ValueError(f"multiplier or divisor below 2 in {step}")
        for v in (a, b, c):
            if not 1 <= v < cfg.max_value:
                raise ValueError(f"{v} in {step} is outside [1, {cfg.max_value})")
        previous = c
    if problem["answer"] != str(previous):
        raise ValueError(f"answer {problem['answer']!r} is not the last step's result {previous}")
    for number in re.findall(r"\d+", problem["question"]):
        if not 1 <= int(number) < cfg.max_value:
            raise ValueError(f"{number} in the question is outside [1, {cfg.max_value})")


# -- vocabulary ----------------------------------------------------------------------------


def _fillers() -> dict[str, set[str]]:
    names = {n for group in NAMES.values() for n in group}
    fillers = {key: {p[key] for p in PRONOUNS.values()} for key in ("his", "him", "himself")}
    fillers.update(
        sub=names | {p["sub"] for p in PRONOUNS.values()},
        name=names,
        new=names,
        obj=set(OBJECTS),
        rel=set(RELATIVES),
        a={"1"},
        b={"1"},
        c={"1"},
    )
    return fillers


def _words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text))


def synthetic_vocabulary(cfg: SyntheticTaskConfig | None = None, cot_format: str = "equations") -> list[str]:
    """Every word the questions of `cfg` (and, with ``cot_format="nl"``, the CoT sentences)
    can contain, sorted, case-sensitive.

    A word is a maximal run of letters; numbers and punctuation are not words. A word that
    can start a sentence is listed capitalised as well as written in the templates.
    """
    cfg = cfg or SyntheticTaskConfig()
    fillers = _fillers()
    nl = set(_NL_STEPS.values()) if cot_format == "nl" else set()
    templates = list(_INTRO) + list(_QUESTIONS) + (list(_BAGS_INTRO) if "bags" in cfg.operations else [])
    templates += [t.text for op in cfg.operations for t in _STEP_TEMPLATES[op]] + sorted(nl)
    words = _words(" ".join(CONNECTORS))  # every config has a step template without a switch
    formatter = string.Formatter()
    for text in templates:
        parts = list(formatter.parse(text))
        for literal, placeholder, _, _ in parts:
            words |= _words(literal)
            if placeholder is not None:
                for filler in fillers[placeholder]:
                    words |= _words(filler)
        literal, placeholder = parts[0][0], parts[0][1]
        starts = _words(literal.split()[0]) if literal.strip() else fillers[placeholder]
        words |= {w[0].upper() + w[1:] for w in starts if w.isalpha()}
    return sorted(words)
