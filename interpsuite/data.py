"""Inputs: inline texts, files (.txt one per line, .jsonl, .csv) or a registered dataset."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Dataset:
    """A named input set contributed by a plugin (`interpsuite_datasets` hook)."""

    name: str
    description: str
    load: Callable[[], list[str]]


@dataclass
class DataConfig:
    """The `data` config group. Exactly one of texts / path / dataset is used."""

    texts: list[str] | None = None
    path: str | None = None
    dataset: str | None = None
    text_field: str = "text"
    #: .jsonl/.csv: an optional per-text field some analyzers read (e.g. an attribution target)
    target_field: str = "target"
    limit: int | None = None
    max_length: int | None = 128


@dataclass
class Inputs:
    texts: list[str]
    source: str
    #: per-text side information aligned with `texts`, e.g. extra["targets"] (None where absent)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.texts)


def _read_txt(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if isinstance(record, str):
            texts.append(record)
        elif isinstance(record, dict) and text_field in record:
            texts.append(str(record[text_field]))
        else:
            raise ConfigError(
                f"{path}:{number}: no field {text_field!r}; set data.text_field=<field> to the text field"
            )
    return texts


def _read_csv(path: Path, text_field: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            raise ConfigError(
                f"{path}: no column {text_field!r} (columns: {reader.fieldnames}); set data.text_field=<column>"
            )
        return [row[text_field] for row in reader]


READERS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv"}


def read_targets(path: Path, text_field: str, target_field: str) -> list[str | None] | None:
    """The per-text `target_field` of a .jsonl/.csv file (None where a record lacks it), or
    None when no record has it. Aligned with `read_file` before blank texts are dropped."""
    if path.suffix.lower() == ".jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        targets = [r.get(target_field) if isinstance(r, dict) else None for r in records]
    elif path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if target_field not in (reader.fieldnames or []):
                return None
            targets = [row[target_field] or None for row in reader]
    else:
        return None
    if all(t is None for t in targets):
        return None
    return [None if t is None else str(t) for t in targets]


def read_file(path: str | Path, text_field: str = "text") -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path {str(path)!r} does not exist or is not a file")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"data.path {path.name!r}: unsupported file type; use .txt, .jsonl or .csv")
    if kind == "txt":
        return _read_txt(path)
    if kind == "jsonl":
        return _read_jsonl(path, text_field)
    return _read_csv(path, text_field)


def load_inputs(cfg: DataConfig, datasets: dict[str, Any]) -> Inputs:
    """Read the configured inputs; an empty set is a ConfigError (before any weights load)."""
    given = [k for k in ("texts", "path", "dataset") if getattr(cfg, k) not in (None, [], "")]
    if len(given) > 1:
        raise ConfigError(f"data: give one of texts / path / dataset, not {' and '.join(given)}")
    if cfg.texts:
        texts, source = [str(t) for t in cfg.texts], "inline"
    elif cfg.path:
        texts, source = read_file(cfg.path, cfg.text_field), str(cfg.path)
    elif cfg.dataset:
        if cfg.dataset not in datasets:
            known = ", ".join(sorted(datasets)) or "(none)"
            raise ConfigError(f"unknown dataset {cfg.dataset!r}; registered datasets: {known}")
        texts, source = list(datasets[cfg.dataset].obj.load()), f"dataset:{cfg.dataset}"
    else:
        raise ConfigError("no inputs: set data.texts=[...], data.path=<file> or data.dataset=<name>")
    targets = read_targets(Path(cfg.path).expanduser(), cfg.text_field, cfg.target_field) if cfg.path else None
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if cfg.limit is not None:
        keep = keep[: cfg.limit]
    if not keep:
        raise ConfigError(f"the input set from {source} is empty; give at least one non-empty text")
    inputs = Inputs([texts[i] for i in keep], source)
    if targets is not None:
        inputs.extra["targets"] = [targets[i] for i in keep]
    return inputs


def as_data_config(data: DataConfig | dict | Sequence[str] | str | None) -> DataConfig:
    """Python-API convenience: a list of texts, a file path, or a dict of DataConfig fields."""
    if data is None:
        return DataConfig()
    if isinstance(data, DataConfig):
        return data
    if isinstance(data, str):
        return DataConfig(path=data)
    if isinstance(data, dict):
        unknown = set(data) - set(DataConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"data: unknown keys {sorted(unknown)}; known: {sorted(DataConfig.__dataclass_fields__)}")
        return DataConfig(**data)
    return DataConfig(texts=[str(t) for t in data])
