"""Request models generated from the analyzers' config dataclasses.

Every analyzer's `Config` dataclass becomes a pydantic model (`dataclasses.fields` ->
`create_model`, `extra="forbid"`), so the API takes exactly the options YAML takes, /docs and
/openapi.json list each analyzer's options with their types and defaults, and a typo is refused
before any work. The options a client gave (and only those: `exclude_unset`) are handed to the
analysis service, which builds the Config the same way the CLI does (`build_config`), so the two
front ends cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import keyword
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ..errors import ConfigError

_FORBID = ConfigDict(extra="forbid", protected_namespaces=())


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", name) if part) or "Unnamed"


def _safe_name(name: str, taken: set[str]) -> tuple[str, str | None]:
    """A Python field name for `name` and the alias to use when `name` itself cannot be one."""
    reserved = keyword.iskeyword(name) or hasattr(BaseModel, name) or name.startswith("_")
    if name.isidentifier() and not reserved:
        return name, None
    base = "f_" + re.sub(r"\W", "_", name)
    candidate, i = base, 1
    while candidate in taken or hasattr(BaseModel, candidate):
        candidate, i = f"{base}_{i}", i + 1
    return candidate, name


def _pydantic_type(annotation: Any, models: dict[type, type[BaseModel]]) -> Any:
    """The annotation with nested config dataclasses replaced by forbid-extra models."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return dataclass_model(annotation, models=models)
    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation
    args = typing.get_args(annotation)
    converted = tuple(_pydantic_type(arg, models) for arg in args)
    if converted == args:
        return annotation
    if origin in (Union, types.UnionType):
        return Union[converted]  # noqa: UP007 - built from a runtime tuple
    return origin[converted if len(converted) > 1 else converted[0]]


def _default(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def dataclass_model(
    config: type, name: str | None = None, doc: str | None = None, models: dict[type, type[BaseModel]] | None = None
) -> type[BaseModel]:
    """A pydantic model with one optional field per dataclass field (type and default kept)."""
    models = {} if models is None else models
    if config in models and name is None:
        return models[config]
    hints = typing.get_type_hints(config)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        annotation = _pydantic_type(hints.get(f.name, Any), models)
        python_name, alias = _safe_name(f.name, set(fields))
        help_text = f.metadata.get("help") if isinstance(f.metadata, Mapping) else None
        if f.default is not dataclasses.MISSING:
            info = Field(default=_default(f.default), alias=alias, description=help_text)
        elif f.default_factory is not dataclasses.MISSING:
            info = Field(default=_default(f.default_factory()), alias=alias, description=help_text)
        else:
            info = Field(alias=alias, description=help_text)
        fields[python_name] = (annotation, info)
    model = create_model(name or f"{config.__name__}Options", __config__=_FORBID, __doc__=doc, **fields)
    if name is None:
        models[config] = model
    return model


def analyzers_model(registry: Any) -> type[BaseModel]:
    """`{analyzer name: its options model | null}` for every registered analyzer, extra names refused."""
    fields: dict[str, Any] = {}
    models: dict[type, type[BaseModel]] = {}
    for name in sorted(registry.analyzers):
        analyzer = registry.analyzers[name].obj
        description = (getattr(analyzer, "description", "") or "").strip() or None
        options = dataclass_model(analyzer.Config, f"{_camel(name)}Options", description, models)
        python_name, alias = _safe_name(name, set(fields))
        fields[python_name] = (options | None, Field(default=None, alias=alias, description=description))
    doc = "Analyzers to run, with their options ({} or null: the defaults)."
    return create_model("Analyzers", __config__=_FORBID, __doc__=doc, **fields)


def given(model: BaseModel) -> dict[str, Any]:
    """What the client sent, under its original names: `exclude_unset`, aliases restored."""
    return model.model_dump(exclude_unset=True, by_alias=True)


class AnalyzeBase(BaseModel):
    """One analysis: a text (or several) and the analyzers to run on them."""

    model_config = _FORBID
    text: str | None = Field(default=None, description="one text (give `text` or `texts`)")
    texts: list[str] | None = Field(default=None, description="several texts analysed together")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give either `text` or `texts` (exactly one)")
        if not given(self).get("analyzers"):
            raise ValueError('`analyzers` is empty; name at least one analyzer, e.g. {"logit_lens": {}}')
        return self

    def text_list(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    def analyzer_options(self) -> dict[str, dict | None]:
        return given(self.analyzers)  # type: ignore[attr-defined] - added by RequestSchemas


class RequestSchemas:
    """The request models of one registry: /analyze, /analyze/batch and the WebSocket's analyze message."""

    def __init__(self, registry: Any):
        self.registry = registry
        analyzers = analyzers_model(registry)
        self.AnalyzeRequest = create_model(
            "AnalyzeRequest",
            __base__=AnalyzeBase,
            __doc__=AnalyzeBase.__doc__,
            analyzers=(analyzers, Field(description="analyzer name -> its options (the same keys as in YAML)")),
        )
        self.BatchRequest = create_model(
            "BatchRequest",
            __config__=_FORBID,
            __doc__="Several independent analyses, run one after the other as one job, answered in order.",
            items=(list[self.AnalyzeRequest], Field(min_length=1, description="the analyses")),
        )
        self.WebSocketAnalyze = create_model(
            "WebSocketAnalyze",
            __base__=self.AnalyzeRequest,
            __doc__='WebSocket message {"type": "analyze", "id": ..., "text"/"texts", "analyzers"}.',
            type=(typing.Literal["analyze"], "analyze"),
            id=(str | int | None, None),
        )

    def explain(self, error: Mapping[str, Any]) -> str | None:
        """The CLI's one-line message for an unknown analyzer or option (None: keep pydantic's)."""
        if error.get("type") != "extra_forbidden":
            return None
        loc = [part for part in error.get("loc", ()) if part != "body"]
        if "analyzers" not in loc:
            return None
        at = loc.index("analyzers")
        prefix = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[:at]).lstrip(".")
        rest = loc[at + 1 :]
        try:
            if len(rest) == 1:
                self.registry.analyzer(str(rest[0]))
            elif len(rest) >= 2:
                from ..analyzer import build_config

                options: Any = error.get("input")
                for key in reversed(rest[2:]):
                    options = {key: options}
                build_config(self.registry.analyzer(str(rest[0])), {str(rest[1]): options})
        except ConfigError as err:
            return f"{prefix}: {err}" if prefix else str(err)
        return None
