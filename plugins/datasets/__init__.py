"""Built-in named input sets (`data.dataset=<name>`), shipped as a plugin like any other."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from interpsuite.data import Dataset
from interpsuite.hookspecs import hookimpl

HERE = Path(__file__).parent

IOI_NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Anna", "James", "Kate", "David"]
IOI_TEMPLATES = [
    "When {a} and {b} went to the store, {b} gave a drink to",
    "When {a} and {b} went to the park, {b} gave a ball to",
    "After {a} and {b} went to the office, {b} handed a letter to",
    "While {a} and {b} were at the party, {b} passed a plate to",
    "Then, {a} and {b} had a long day at school. {b} gave a pencil to",
]


def english_sentences() -> list[str]:
    return [line for line in (HERE / "english.txt").read_text().splitlines() if line.strip()]


def ioi_prompts(n: int = 100, seed: int = 0) -> list[str]:
    """Indirect-object prompts (template x ordered name pair); the answer is name `a`."""
    pairs = list(itertools.permutations(IOI_NAMES, 2))
    combos = [(t, a, b) for t in IOI_TEMPLATES for a, b in pairs]
    random.Random(seed).shuffle(combos)
    return [t.format(a=a, b=b) for t, a, b in combos[:n]]


@hookimpl
def interpsuite_datasets():
    return [
        Dataset("english", "short plain-English sentences written for interpsuite", english_sentences),
        Dataset("ioi", "100 indirect-object-identification prompts from templates x names", ioi_prompts),
    ]
