"""The validation layer for run settings: every top-level key, the model and data groups.

Configs arrive from YAML, the command line and Python calls, so a value can be any type
(`batch_size=abc` is the string "abc"). Rather than checking keys one by one where they are
used, each setting is declared once as a dataclass field with its type and constraints, and
`coerce_dataclass` turns a mapping into the dataclass or raises one `ConfigError` naming the
key, the value, what was expected and an example. New settings are covered by declaring
them; nothing downstream ever sees a wrongly typed value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from .errors import ConfigError

FIGURE_FORMATS = ("png", "pdf", "svg")


def constrained(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rules: Any):
    """A dataclass field with validation rules: `min=`, `choices=`, `example=`, `each_choices=`."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(annotation) or (Any,)
        return f"a list of {_type_name(inner).removeprefix('a ').removeprefix('an ')}s"
    if origin in (dict, Mapping) or annotation is dict:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _optional_inner(annotation: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) < len(typing.get_args(annotation)):
            return True, (args[0] if len(args) == 1 else Union[tuple(args)])  # noqa: UP007
    return False, annotation


def _fail(key: str, value: Any, expected: str, example: str | None) -> ConfigError:
    hint = f"; e.g. {key}={example}" if example else ""
    return ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__}){hint}")


def coerce_value(key: str, value: Any, annotation: Any, rules: Mapping[str, Any] | None = None) -> Any:
    """`value` as `annotation` (int, float, bool, str, Literal, list[...], dict, Optional, Any)."""
    rules = rules or {}
    example = rules.get("example")
    optional, annotation = _optional_inner(annotation)
    if value is None:
        if optional or annotation is Any:
            return None
        raise _fail(key, value, _type_name(annotation), example)
    origin = typing.get_origin(annotation)
    if annotation is Any:
        result = value
    elif annotation is bool:
        if isinstance(value, bool):
            result = value
        elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            result = value.strip().lower() in _TRUE
        else:
            raise _fail(key, value, "true or false", example)
    elif annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, float)):
            raise _fail(key, value, "an integer", example)
        try:
            result = int(value)
        except ValueError:
            raise _fail(key, value, "an integer", example) from None
    elif annotation is float:
        if isinstance(value, bool):
            raise _fail(key, value, "a number", example)
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise _fail(key, value, "a number", example) from None
    elif annotation is str:
        if isinstance(value, (Mapping, list, tuple)):
            raise _fail(key, value, "a string", example)
        result = str(value)
    elif origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
        result = value
    elif origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _fail(key, value, _type_name(annotation), example)
        (inner, *_) = typing.get_args(annotation) or (Any,)
        result = [coerce_value(f"{key}[{i}]", item, inner) for i, item in enumerate(value)]
    elif origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _fail(key, value, "a mapping", example)
        result = dict(value)
    elif dataclasses.is_dataclass(annotation):
        result = coerce_dataclass(annotation, value, key)
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                result = coerce_value(key, value, option)
                break
            except ConfigError:
                continue
        else:
            raise _fail(key, value, " or ".join(_type_name(a) for a in typing.get_args(annotation)), example)
    else:
        result = value
    _check_rules(key, result, rules)
    return result


def _check_rules(key: str, value: Any, rules: Mapping[str, Any]) -> None:
    if value is None:
        return
    minimum = rules.get("min")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}{_example(key, rules)}")
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    each = rules.get("each_choices")
    if each is not None:
        for item in value:
            if item not in each:
                raise ConfigError(f"{key}: {item!r} is not one of {', '.join(map(str, each))}")
    if rules.get("non_empty") and not value:
        raise ConfigError(f"{key} is empty{_example(key, rules)}")


def _example(key: str, rules: Mapping[str, Any]) -> str:
    return f"; e.g. {key}={rules['example']}" if rules.get("example") else ""


def coerce_dataclass(cls: type, values: Any, prefix: str = "") -> Any:
    """A mapping (or an instance of `cls`) -> a validated instance; unknown keys are an error."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    label = prefix or cls.__name__
    if not isinstance(values, Mapping):
        raise ConfigError(f"{label}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, values)) - set(known))
    if unknown:
        raise ConfigError(f"{label}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    kwargs = {}
    for name, spec in known.items():
        if name not in values:
            continue
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = coerce_value(key, values[name], hints[name], spec.metadata)
    return cls(**kwargs)


@dataclass
class FiguresConfig:
    """How figures are saved (`figures.formats`)."""

    formats: list[str] = constrained(
        factory=lambda: ["png", "pdf"], each_choices=FIGURE_FORMATS, non_empty=True, example="[png,svg]"
    )


@dataclass
class FigureStyleSettings:
    """The `figure_style` group: a preset (default, paper, slides, poster) and overrides."""

    preset: str = constrained("default", choices=("default", "paper", "slides", "poster"))
    column: str = constrained("double", choices=("single", "double"))
    font_size: float | None = constrained(None, min=4, example=8)
    width: float | None = constrained(None, min=1, example=6.75)
    height: float | None = constrained(None, min=1, example=4)
    dpi: int | None = constrained(None, min=50, example=300)

    def style(self):
        """The FigureStyle these settings stand for."""
        from .figures import preset

        overrides = {"font_size": self.font_size, "width": self.width, "height": self.height, "dpi": self.dpi}
        return preset(self.preset, self.column, **overrides)


@dataclass
class WandbSettings:
    """The `wandb` group: offline by default (files under the run dir, no account needed)."""

    mode: str = constrained("offline", choices=("offline", "online", "disabled"))
    project: str = "interpsuite"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    notes: str | None = None


@dataclass
class BudgetSettings:
    """The `budget` group: a run whose resource estimate exceeds one of these stops before the
    analyzers start (exit 2) unless `--yes` (or `budget.assume_yes=true`); null = no limit."""

    time_s: float | None = constrained(None, min=0, example=600)
    memory_gb: float | None = constrained(None, min=0, example=8)
    disk_gb: float | None = constrained(None, min=0, example=10)
    assume_yes: bool = False


@dataclass
class RunSettings:
    """Top-level settings other than model, data and analyzers (see docs/reference.md)."""

    device: str = constrained("cpu", example="cpu")
    seed: int = constrained(0, example=0)
    batch_size: int = constrained(8, min=1, example=8)
    fail_fast: bool = False
    progress: bool = True
    table_format: str = constrained("csv", choices=("csv", "parquet"))
    sinks: list[str] = constrained(factory=lambda: ["rundir", "wandb"], example="[rundir]")
    wandb: WandbSettings = field(default_factory=lambda: WandbSettings())
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    figure_style: FigureStyleSettings = field(default_factory=FigureStyleSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    experiment_name: str = "run"


def check_writable_dir(path: str | Path, what: str = "output directory", create: bool = True) -> Path:
    """Refuse a run directory that is a file, sits under a file, or cannot be written, before any
    work starts. A probe file is written and removed (permission bits alone do not say it: root,
    read-only mounts, /proc): in the directory, created first when `create`, else in its
    nearest existing ancestor, so a check ahead of time leaves no folder behind."""
    import tempfile

    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == path else f"is under {str(probe)!r}, which is"
        raise ConfigError(f"{what} {str(path)!r} {where} a file, not a directory; choose another directory")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            probe = path
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"{what} {str(path)!r} cannot be written ({reason}); choose another directory") from None
    return path


@dataclass
class ModelSettings:
    """The `model` group: which model and where it goes (docs/model-layer.md for placement)."""

    name: str = constrained("smollm2", example="tiny_llama")
    dtype: str = constrained("float32", example="bfloat16")
    device_map: Any = None
    max_memory: dict | None = None
    offload_dir: str | None = None


DATA_SOURCES = ("texts", "path", "dataset")


def _overridden_keys(overrides: Sequence[str], group: str) -> set[str]:
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith(group + "."):
            keys.add(key[len(group) + 1 :].split(".", 1)[0])
    return keys


def prefer_user_source(data: dict, overrides: Sequence[str]) -> dict:
    """The data group with the input source the user named on the command line winning.

    An experiment or data group brings its own source (inline texts, a dataset); a user who
    adds `data.path=my.jsonl` means "these instead", not "these as well". Sources the user did
    not name are cleared; two sources named by the user are still the user's conflict."""
    named = _overridden_keys(overrides, "data") & set(DATA_SOURCES)
    if not named:
        return data
    return {**data, **{key: None for key in DATA_SOURCES if key not in named}}
