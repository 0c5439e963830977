"""Tasks whose correctness a program can check: the labels of failure prediction.

A task is a list of completion prompts, each with the answer (or a few accepted answers)
that its continuation must start with. Shipped tasks (data/ beside this file, written by
this project; arithmetic and IOI are generated in code with a seed):

* `capitals`: "The capital of France is" -> " Paris" (110 countries);
* `elements`: "The chemical symbol for gold is" -> " Au" and "The chemical element with the
  symbol Au is" -> " gold" (50 elements, both directions);
* `years`: "The Berlin Wall fell in the year" -> " 1989" (52 well-known events);
* `arithmetic`: "17 + 25 =" -> " 42" (addition, subtraction and multiplication of small
  numbers, drawn with the seed);
* `ioi`: the clean prompts of the mechanistic family's IOI pairs (`mechanistic.pairs.ioi_pairs`)
  -> the indirect object, e.g. " Mary";
* `facts`: the causal-tracing facts (`mechanistic/data/factual.jsonl`, read with
  `mechanistic.pairs.read_facts`).

A user's task is a .jsonl file, one {"prompt": ..., "answer": ...} object per line (field
names configurable); `answer` is a string or a list of accepted strings. A line without a
usable prompt or answer is refused naming the line: a task with no checkable answer has no
label to learn.

The correctness rule (`is_correct`): the model's greedy continuation of the prompt (a few
tokens: the answer's length plus one, so a longer word or number is seen) is decoded, and
both it and each accepted answer are normalised: Unicode NFKC, accents removed, lower-cased,
whitespace collapsed, leading whitespace and quote/asterisk characters dropped. The answer is
correct when the normalised continuation starts with a normalised answer and the character
after it (if any) is not a letter or digit: " 42" does not accept " 420", " Paris" accepts
" Paris, the city of".

`prepare_prompt` moves a leading space onto the prompt when the tokenizer makes that space a
token of its own (SmolLM2 writes " 42" as " ", "4", "2"): the features are then read where the
model predicts the first real piece of the answer, not a space every prompt predicts.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from interpsuite.data import json_lines
from interpsuite.errors import ConfigError

DATA = Path(__file__).parent / "data"
#: shipped tasks, in the order they are reported
SHIPPED_TASKS: tuple[str, ...] = ("capitals", "elements", "years", "arithmetic", "ioi", "facts")
_FILES = {"capitals": "capitals.jsonl", "elements": "elements.jsonl", "years": "years.jsonl"}
_LEADING = " \t\n\"'`*“‘«"


@dataclass(frozen=True)
class TaskItem:
    """One prompt, the answers that count as correct, and its task's name."""

    prompt: str
    answers: tuple[str, ...]
    task: str


@dataclass
class TaskSet:
    name: str
    items: list[TaskItem]
    source: str

    def limit(self, n: int | None) -> TaskSet:
        return self if n is None else TaskSet(self.name, self.items[:n], self.source)


def normalise(text: str) -> str:
    """The form answers are compared in (see the module docstring)."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"\s+", " ", text.lower()).lstrip(_LEADING)


def is_correct(continuation: str, answers: Sequence[str]) -> bool:
    """Does the continuation start with one of the answers, ending at a word boundary?"""
    said = normalise(continuation)
    for answer in answers:
        want = normalise(answer).rstrip()
        if want and said.startswith(want):
            rest = said[len(want) :]
            if not rest or not rest[0].isalnum():
                return True
    return False


def prepare_prompt(tokenizer, prompt: str, answers: Sequence[str]) -> str:
    """The prompt with the answers' leading space appended when that space is a token of its own."""
    first = answers[0]
    if not first.startswith(" ") or not prompt or prompt.endswith(" "):
        return prompt
    ids = tokenizer(first, add_special_tokens=False)["input_ids"]
    if len(ids) > 1 and tokenizer.decode(ids[:1]).strip() == "":
        return prompt + " "
    return prompt


def _answers(value, where: str, field: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise ConfigError(
            f"{where}: field {field!r} is {value!r}, not a checkable answer; give a non-empty string "
            f"(or a list of them) the continuation must start with, or delete the line"
        )
    return tuple(values)


def read_task_file(path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer") -> TaskSet:
    """A user's task: a .jsonl file of {prompt, answer} objects (see the module docstring)."""
    path = Path(path).expanduser()
    if path.suffix != ".jsonl":
        raise ConfigError(f"failure task file {path}: expected a .jsonl file of {{{prompt_field!r}, {answer_field!r}}}")
    if not path.is_file():
        raise ConfigError(f"failure task file {path} does not exist; give a .jsonl file of prompts with answers")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"failure task file {path} is not valid utf-8; save it as utf-8") from None
    items = []
    for where, record in json_lines(text, path.name):
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: expected a JSON object with {prompt_field!r} and {answer_field!r}")
        prompt = record.get(prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where}: field {prompt_field!r} is {prompt!r}, not a prompt; fix or delete the line")
        if answer_field not in record:
            raise ConfigError(
                f"{where}: no field {answer_field!r}, so the answer cannot be checked; add the expected "
                f"continuation (or set answer_field to the field that holds it)"
            )
        items.append(TaskItem(prompt, _answers(record[answer_field], where, answer_field), path.stem))
    if not items:
        raise ConfigError(f"failure task file {path} holds no prompts; one {{prompt, answer}} object per line")
    return TaskSet(path.stem, items, str(path))


def _shipped_file(name: str) -> TaskSet:
    path = DATA / _FILES[name]
    items = [
        TaskItem(record["prompt"], _answers(record["answer"], where, "answer"), name)
        for where, record in json_lines(path.read_text(encoding="utf-8"), path.name)
    ]
    return TaskSet(name, items, f"shipped:{path.name}")


def arithmetic_task(n: int = 120, seed: int = 0) -> TaskSet:
    """`n` distinct "a op b =" prompts: a + b and a - b (a >= b) with 1 <= a, b <= 50, a x b up to 12 x 12."""
    rng = random.Random(seed)
    seen: set[str] = set()
    items = []
    while len(items) < n:
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            value = a * b
        else:
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            if op == "-" and b > a:
                a, b = b, a
            value = a + b if op == "+" else a - b
        prompt = f"{a} {op} {b} ="
        if prompt not in seen:
            seen.add(prompt)
            items.append(TaskItem(prompt, (f" {value}",), "arithmetic"))
        if len(seen) >= 3000:  # far above any sensible n; no infinite loop
            break
    return TaskSet("arithmetic", items, f"generated:arithmetic(seed={seed})")


def ioi_task(n: int = 100, seed: int = 0) -> TaskSet:
    from ..mechanistic.pairs import ioi_pairs

    pairs = ioi_pairs(n, seed)
    items = [TaskItem(pair.clean, (pair.answer,), "ioi") for pair in pairs]
    return TaskSet("ioi", items, f"generated:mechanistic.pairs.ioi_pairs(seed={seed})")


def _facts_task() -> TaskSet:
    from ..mechanistic.pairs import FACTUAL_FILE, read_facts

    items = [TaskItem(fact["prompt"], (fact["answer"],), "facts") for fact in read_facts()]
    return TaskSet("facts", items, f"shipped:mechanistic/data/{FACTUAL_FILE.name}")


@dataclass
class TaskOptions:
    """Which tasks, and how many prompts of the generated ones."""

    tasks: Sequence[str] = SHIPPED_TASKS
    path: str | None = None
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    n_arithmetic: int = 120
    n_ioi: int = 100
    max_per_task: int | None = None
    seed: int = 0


def load_tasks(options: TaskOptions, what: str = "failure_prediction") -> list[TaskSet]:
    """Every configured task, each checked (a bad name or file is one line naming the fix)."""
    unknown = [name for name in options.tasks if name not in SHIPPED_TASKS]
    if unknown:
        raise ConfigError(
            f"{what}.tasks: unknown task(s) {unknown}; shipped tasks with checkable answers: "
            f"{', '.join(SHIPPED_TASKS)} (or give your own .jsonl as path)"
        )
    if len(set(options.tasks)) != len(list(options.tasks)):
        raise ConfigError(f"{what}.tasks: {list(options.tasks)} names a task twice; list each once")
    if not options.tasks and not options.path:
        raise ConfigError(f"{what}: no tasks; set tasks (e.g. [capitals, arithmetic]) or path to your .jsonl")
    for key in ("n_arithmetic", "n_ioi"):
        if getattr(options, key) < 1:
            raise ConfigError(f"{what}.{key} must be >= 1, got {getattr(options, key)}")
    if options.max_per_task is not None and options.max_per_task < 1:
        raise ConfigError(f"{what}.max_per_task must be >= 1 or null, got {options.max_per_task}")
    sets = []
    for name in options.tasks:
        if name in _FILES:
            sets.append(_shipped_file(name))
        elif name == "arithmetic":
            sets.append(arithmetic_task(options.n_arithmetic, options.seed))
        elif name == "ioi":
            sets.append(ioi_task(options.n_ioi, options.seed))
        else:
            sets.append(_facts_task())
    if options.path:
        try:
            user = read_task_file(options.path, options.prompt_field, options.answer_field)
        except ConfigError as err:
            raise ConfigError(f"{what}.path: {err}") from None
        if user.name in SHIPPED_TASKS:
            renamed = f"file_{user.name}"
            user = TaskSet(renamed, [TaskItem(i.prompt, i.answers, renamed) for i in user.items], user.source)
        sets.append(user)
    return [task.limit(options.max_per_task) for task in sets]


def task_file_lines(items: Sequence[TaskItem]) -> str:
    """Items written back as a .jsonl task file (what `read_task_file` reads)."""
    return "".join(json.dumps({"prompt": i.prompt, "answer": list(i.answers)}) + "\n" for i in items)
