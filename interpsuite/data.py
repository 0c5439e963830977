"""Inputs: inline texts, files (.txt one per line, .jsonl, .csv) or a registered dataset."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .settings import coerce_dataclass, constrained
from .windows import WindowedInputs, WindowSpec


@dataclass(frozen=True)
class Dataset:
    """A named input set contributed by a plugin (`interpsuite_datasets` hook)."""

    name: str
    description: str
    load: Callable[[], list[str]]


@dataclass
class WindowConfig:
    """`data.window`, used by `data.long_documents: window` (docs/scale.md)."""

    #: content tokens per window (null: data.max_length)
    length: int | None = constrained(None, min=2, example=512)
    #: tokens between window starts (null: half the length)
    stride: int | None = constrained(None, min=1, example=256)


@dataclass
class DataConfig:
    """The `data` config group. Exactly one of texts / path / dataset is used."""

    texts: list[str] | None = None
    path: str | None = None
    dataset: str | None = None
    text_field: str = "text"
    #: .jsonl/.csv: an optional per-text field some analyzers read (e.g. an attribution target)
    target_field: str = "target"
    limit: int | None = constrained(None, min=1, example=100)
    max_length: int | None = constrained(128, min=1, example=128)
    #: text encoding of data.path (utf-8 also accepts a byte-order mark)
    encoding: str = constrained("utf-8", example="latin-1")
    #: texts longer than max_length tokens: warn (truncate, and say how many) or error
    truncation: str = constrained("warn", choices=("warn", "error"))
    #: texts longer than max_length: truncate (as `truncation` says), window (overlapping windows,
    #: analyzers combine their outputs: docs/scale.md) or error (refuse, like truncation=error)
    long_documents: str = constrained("truncate", choices=("truncate", "window", "error"))
    window: WindowConfig = field(default_factory=WindowConfig)
    #: a .txt file's texts: line (one per line), file (the whole file is one document), auto (line for
    #: data.path=<file>.txt, file for the .txt files of data.path=<directory>)
    text_unit: str = constrained("auto", choices=("auto", "line", "file"))


def validate_data_config(cfg: DataConfig) -> DataConfig:
    """Types and ranges of every data key (one ConfigError naming the key), and a known encoding."""
    cfg = coerce_dataclass(DataConfig, cfg, "data")
    try:
        codecs.lookup(cfg.encoding)
    except LookupError:
        raise ConfigError(f"data.encoding: unknown encoding {cfg.encoding!r}; e.g. data.encoding=latin-1") from None
    if cfg.long_documents == "window":
        window_spec(cfg).check()
    return cfg


def window_spec(cfg: DataConfig) -> WindowSpec:
    """The window of `data.long_documents: window`: data.window.length (else data.max_length) tokens,
    a new window every data.window.stride (else half a window) tokens."""
    length = cfg.window.length if cfg.window.length is not None else cfg.max_length
    if length is None:
        raise ConfigError(
            "data.long_documents=window needs a window length: set data.window.length=<tokens> or data.max_length"
        )
    stride = cfg.window.stride if cfg.window.stride is not None else max(1, length // 2)
    return WindowSpec(length, stride)


@dataclass
class Inputs:
    texts: list[str]
    source: str
    #: per-text side information aligned with `texts`, e.g. extra["targets"] (None where absent)
    extra: dict[str, Any] = field(default_factory=dict)
    #: data.long_documents=window: the texts are windows (TokenWindow) of these documents
    windows: WindowedInputs | None = None

    @property
    def count(self) -> int:
        return len(self.texts)


@dataclass
class Record:
    """One input read from a file: the text, its optional target, where it came from."""

    text: str
    target: str | None
    where: str


@dataclass(frozen=True)
class FileOptions:
    """How messages about an input file name the option that set it and the options that fix it:
    `data.path` / `data.text_field` / `data.encoding` for run inputs, an analyzer's own options
    (`anomaly_detection.normal_path`, ...) for files an analyzer reads. `encoding` None: the
    reader has no encoding option, and the fix is to save the file as UTF-8."""

    path: str = "data.path"
    text_field: str = "data.text_field"
    encoding: str | None = "data.encoding"


RUN_INPUTS = FileOptions()


def _read_text(path: Path, encoding: str, options: FileOptions = RUN_INPUTS) -> str:
    """The file's text; bytes that are not `encoding` get a message naming the fix."""
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    raw = path.read_bytes()
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        fix = (
            f"set {options.encoding}=<the file's encoding>, e.g. {options.encoding}=latin-1"
            if options.encoding
            else "save it as UTF-8"
        )
        raise ConfigError(
            f"{options.path} {path.name!r} is not valid {encoding} (byte 0x{raw[err.start]:02x} on line {line}); {fix}"
        ) from None


def json_lines(text: str, name: str) -> list[tuple[str, Any]]:
    """(where, record) for every non-blank line of a JSON Lines text; a bad line is one error
    naming `name:line`. Every .jsonl reader (inputs, labelled sets, prompt pairs) parses here."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            records.append((where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err.msg})") from None
    return records


def _read_txt(path: Path, encoding: str, options: FileOptions, whole: bool = False) -> list[Record]:
    text = _read_text(path, encoding, options)
    if whole:  # the file is one document
        return [Record(text, None, path.name)] if text.strip() else []
    lines = text.splitlines()
    return [Record(line, None, f"{path.name}:{n}") for n, line in enumerate(lines, start=1) if line.strip()]


def _read_jsonl(path: Path, text_field: str, target_field: str, encoding: str, options: FileOptions) -> list[Record]:
    records = []
    for where, record in json_lines(_read_text(path, encoding, options), path.name):
        if isinstance(record, str):
            text, target = record, None
        elif isinstance(record, dict) and text_field in record:
            text, target = record[text_field], record.get(target_field)
        else:
            raise ConfigError(f"{where}: no field {text_field!r}; set {options.text_field}=<field> to the text field")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: field {text_field!r} is {text!r}, not a text; fix or delete the line")
        records.append(Record(text, None if target is None else str(target), where))
    return records


def _read_csv(path: Path, text_field: str, target_field: str, encoding: str, options: FileOptions) -> list[Record]:
    reader = csv.DictReader(io.StringIO(_read_text(path, encoding, options), newline=""))
    if reader.fieldnames is None or text_field not in reader.fieldnames:
        raise ConfigError(
            f"{path.name}: no column {text_field!r} (columns: {reader.fieldnames}); set {options.text_field}=<column>"
        )
    records = []
    for row in reader:
        where = f"{path.name}:{reader.line_num}"
        text = row.get(text_field)
        if text is None or not text.strip():
            raise ConfigError(f"{where}: empty {text_field!r} cell; fill it or delete the row")
        records.append(Record(text, row.get(target_field) or None, where))
    return records


READERS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv"}


def read_records(
    path: str | Path,
    text_field: str = "text",
    target_field: str = "target",
    encoding: str = "utf-8",
    options: FileOptions = RUN_INPUTS,
    text_unit: str = "auto",
) -> list[Record]:
    """Every text of a .txt / .jsonl / .csv file (or of every such file in a directory) with its
    target (blank .txt lines are skipped; an empty text in a .jsonl/.csv record is an error
    naming the line). Every reader of users' text files (run inputs, an analyzer's normal or OOD
    sets) reads here, so every one names `file:line` and the option to fix in the same way."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_directory(path, text_field, target_field, encoding, options, text_unit)
    if not path.is_file():
        raise ConfigError(f"{options.path} {str(path)!r} does not exist or is not a file")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{options.path} {path.name!r}: unsupported file type; use .txt, .jsonl or .csv")
    if kind == "txt":
        return _read_txt(path, encoding, options, whole=text_unit == "file")
    if kind == "jsonl":
        return _read_jsonl(path, text_field, target_field, encoding, options)
    return _read_csv(path, text_field, target_field, encoding, options)


def _read_directory(
    folder: Path, text_field: str, target_field: str, encoding: str, options: FileOptions, text_unit: str
) -> list[Record]:
    """Every readable file under `folder` (sorted by path; hidden entries and links that leave the
    folder are skipped, so a name on disk never reads outside it). A .txt file is one document
    unless text_unit=line."""
    root = folder.resolve()
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in READERS:
            continue
        try:
            resolved = path.resolve()
        except OSError:
            continue
        if not resolved.is_file() or not resolved.is_relative_to(root):
            continue
        files.append(path)
    if not files:
        raise ConfigError(
            f"{options.path} {str(folder)!r} has no .txt, .jsonl or .csv files; put the documents there or "
            f"point {options.path} at a file"
        )
    whole = text_unit != "line"
    records = []
    for path in files:
        kind = READERS[path.suffix.lower()]
        if kind == "txt":
            found = _read_txt(path, encoding, options, whole=whole)
        elif kind == "jsonl":
            found = _read_jsonl(path, text_field, target_field, encoding, options)
        else:
            found = _read_csv(path, text_field, target_field, encoding, options)
        name = str(path.relative_to(folder))
        records.extend(Record(r.text, r.target, f"{name}:{r.where.split(':', 1)[-1]}") for r in found)
    return records


def read_file(
    path: str | Path, text_field: str = "text", encoding: str = "utf-8", options: FileOptions = RUN_INPUTS
) -> list[str]:
    return [record.text for record in read_records(path, text_field, encoding=encoding, options=options)]


def load_inputs(cfg: DataConfig, datasets: dict[str, Any]) -> Inputs:
    """Read the configured inputs; an empty set is a ConfigError (before any weights load)."""
    cfg = validate_data_config(cfg)
    given = [k for k in ("texts", "path", "dataset") if getattr(cfg, k) not in (None, [], "")]
    if len(given) > 1:
        raise ConfigError(f"data: give one of texts / path / dataset, not {' and '.join(given)}")
    targets = None
    if cfg.texts:
        texts, source = [str(t) for t in cfg.texts], "inline"
    elif cfg.path:
        records = read_records(cfg.path, cfg.text_field, cfg.target_field, cfg.encoding, text_unit=cfg.text_unit)
        texts, source = [r.text for r in records], str(cfg.path)
        if any(r.target is not None for r in records):
            targets = [r.target for r in records]
    elif cfg.dataset:
        if cfg.dataset not in datasets:
            known = ", ".join(sorted(datasets)) or "(none)"
            raise ConfigError(f"unknown dataset {cfg.dataset!r}; registered datasets: {known}")
        texts, source = list(datasets[cfg.dataset].obj.load()), f"dataset:{cfg.dataset}"
    else:
        raise ConfigError("no inputs: set data.texts=[...], data.path=<file> or data.dataset=<name>")
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
        return coerce_dataclass(DataConfig, data, "data")
    return DataConfig(texts=[str(t) for t in data])
