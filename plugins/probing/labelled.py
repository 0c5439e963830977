"""Labelled sets for probes: the shipped ones (plugins/probing/data, see its README) and users' files.

A set is sequence-level (one label per text) or token-level (one tag per word; the text a
model reads is the words joined by single spaces, and `capture.word_features` maps each word
to its sub-tokens). Everything here is read and checked before any weights load, so a
misspelt label field or a tag count that does not match the words is one line naming the
file, the line and the fix.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interpsuite.data import json_lines
from interpsuite.errors import ConfigError

DATA_DIR = Path(__file__).parent / "data"
LEVELS = ("sequence", "token")
LANGUAGES = ("en", "fr", "de", "es")

#: shipped task -> (file, level); language_id is built from the parallel sentences
SHIPPED: dict[str, tuple[str, str]] = {
    "sentiment": ("sentiment.jsonl", "sequence"),
    "pos": ("pos.jsonl", "token"),
    "subject_number": ("subject_number.jsonl", "sequence"),
    "tense": ("tense.jsonl", "sequence"),
    "truth": ("truth.jsonl", "sequence"),
    "language_id": ("parallel.jsonl", "sequence"),
}


@dataclass
class LabelledSet:
    """Texts with one label each (sequence) or words with one tag each (token).

    `groups[i]` is the split group of text i: texts of one group always land in the same
    train/validation/test split (translations of one sentence, for language identity).
    """

    name: str
    level: str
    texts: list[str]
    groups: list[int]
    labels: list[str] | None = None
    words: list[list[str]] | None = None
    tags: list[list[str]] | None = None
    source: str = ""

    @property
    def classes(self) -> list[str]:
        flat = self.labels if self.level == "sequence" else [t for row in self.tags or [] for t in row]
        return sorted(set(flat or []))

    def example_labels(self) -> list[str]:
        """One label per example: per text, or per word in reading order."""
        return list(self.labels or []) if self.level == "sequence" else [t for row in self.tags or [] for t in row]

    def limit(self, count: int | None) -> LabelledSet:
        if count is None or count >= len(self.texts):
            return self
        cut = {
            "texts": self.texts[:count],
            "groups": self.groups[:count],
            "labels": None if self.labels is None else self.labels[:count],
            "words": None if self.words is None else self.words[:count],
            "tags": None if self.tags is None else self.tags[:count],
        }
        return LabelledSet(self.name, self.level, source=self.source, **cut)


@dataclass
class FieldNames:
    """Which fields of a user's file hold what (the probing analyzers' `*_field` options)."""

    text: str = "text"
    label: str = "label"
    words: str = "words"
    tags: str = "tags"


def _rows(path: Path, encoding: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for each record of a .jsonl or .csv file."""
    if not path.is_file():
        raise ConfigError(f"labelled set {str(path)!r} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding)
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not valid {encoding} text; convert the file or set its encoding") from None
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict[str, Any]]] = []
    if suffix == ".jsonl":
        for where, record in json_lines(text, path.name):
            if not isinstance(record, dict):
                raise ConfigError(f"{where}: each line must be a JSON object with named fields")
            rows.append((where, record))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            rows.append((f"{path.name}:{reader.line_num}", dict(row)))
    else:
        raise ConfigError(f"labelled set {path.name!r}: unsupported file type; use .jsonl or .csv")
    if not rows:
        raise ConfigError(f"labelled set {path.name!r} has no records")
    return rows


def _field(where: str, record: dict[str, Any], name: str, option: str) -> Any:
    value = record.get(name)
    if value is None or value == "":
        fields = ", ".join(sorted(record)) or "(none)"
        raise ConfigError(f"{where}: no field {name!r} (fields: {fields}); set {option}=<field>")
    return value


def _word_list(where: str, value: Any, what: str) -> list[str]:
    """A list in .jsonl, a space-separated string in .csv."""
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"{where}: {what} must be a non-empty list of strings (or space-separated in a .csv)")
    if any(" " in item for item in items):
        raise ConfigError(f"{where}: {what} {items!r} contain spaces; give one entry per whitespace-free word")
    return items


def read_labelled(
    path: str | Path,
    level: str = "sequence",
    fields: FieldNames | None = None,
    *,
    name: str | None = None,
    encoding: str = "utf-8",
) -> LabelledSet:
    """A user's .jsonl/.csv: sequence (text + label field) or token (words + tags fields)."""
    if level not in LEVELS:
        raise ConfigError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    fields = fields or FieldNames()
    path = Path(path).expanduser()
    rows = _rows(path, encoding)
    texts, labels, words, tags = [], [], [], []
    for where, record in rows:
        if level == "sequence":
            text = _field(where, record, fields.text, "text_field")
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"{where}: field {fields.text!r} is {text!r}, not a text")
            texts.append(text)
            labels.append(str(_field(where, record, fields.label, "label_field")))
        else:
            row_words = _word_list(where, _field(where, record, fields.words, "words_field"), "words")
            row_tags = _word_list(where, _field(where, record, fields.tags, "tags_field"), "tags")
            if len(row_words) != len(row_tags):
                raise ConfigError(
                    f"{where}: {len(row_tags)} tags for {len(row_words)} words; give exactly one tag per word"
                )
            words.append(row_words)
            tags.append(row_tags)
            texts.append(" ".join(row_words))
    return LabelledSet(
        name=name or path.stem,
        level=level,
        texts=texts,
        groups=list(range(len(texts))),
        labels=labels if level == "sequence" else None,
        words=words if level == "token" else None,
        tags=tags if level == "token" else None,
        source=str(path),
    )


def read_parallel(path: str | Path, languages: tuple[str, ...] = LANGUAGES, encoding: str = "utf-8") -> list[dict]:
    """Rows of parallel sentences, each with every requested language (one line naming the gap)."""
    path = Path(path).expanduser()
    rows = []
    for where, record in _rows(path, encoding):
        missing = [lang for lang in languages if not isinstance(record.get(lang), str) or not record[lang].strip()]
        if missing:
            have = ", ".join(k for k in record if k != "id") or "(none)"
            raise ConfigError(
                f"{where}: no {', '.join(missing)} sentence (fields: {have}); give every language in "
                f"languages={list(languages)} on every line, or drop the missing language from `languages`"
            )
        rows.append({lang: record[lang] for lang in languages})
    return rows


def language_id_set(path: str | Path, languages: tuple[str, ...] = LANGUAGES) -> LabelledSet:
    """Every translation as an example labelled by its language, grouped by sentence."""
    rows = read_parallel(path, languages)
    texts, labels, groups = [], [], []
    for group, row in enumerate(rows):
        for lang in languages:
            texts.append(row[lang])
            labels.append(lang)
            groups.append(group)
    return LabelledSet("language_id", "sequence", texts, groups, labels=labels, source=str(path))


def load_task(task: str) -> LabelledSet:
    """A shipped task by name."""
    if task not in SHIPPED:
        raise ConfigError(f"unknown probing task {task!r}; shipped tasks: {', '.join(SHIPPED)} (or give path=<file>)")
    file, level = SHIPPED[task]
    if task == "language_id":
        return language_id_set(DATA_DIR / file)
    return read_labelled(DATA_DIR / file, level, name=task)


def labelled_sets(tasks: list[str], path: str | None, level: str, fields: FieldNames) -> list[LabelledSet]:
    """The shipped tasks named, then the user's file (if any)."""
    sets = [load_task(task) for task in tasks]
    if path:
        sets.append(read_labelled(path, level, fields))
    if not sets:
        raise ConfigError("no probing task: set tasks=[sentiment, ...] (shipped) or path=<your .jsonl/.csv>")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"probing tasks {names} repeat a name; rename your file or drop the duplicate task")
    return sets
