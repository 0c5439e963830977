"""One run over several models, ending in one comparison report (`models=[smollm2,minilm]`).

The config's `models` list turns a run into one pipeline per model, each in
`<run dir>/models/<name>/` with the same data and analyzers, then `compare.compare_runs`
writes `<run dir>/comparison.html` overlaying them. Every pipeline is validated before the
first model loads, so a misspelt model or an option one architecture lacks stops the whole
comparison with one line instead of after an hour of the first model.

Cross-model CKA needs the representations of every model at once; rather than keeping them,
the first model's `representation_similarity` (when configured) is given the other models as
its `models`, which loads each in turn on the same texts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

MODELS_KEY = "models"
RUNS_FOLDER = "models"


@dataclass
class ComparisonPlan:
    """The per-model pipelines of a comparison and where the report goes."""

    output_dir: Path
    models: list[str]
    pipelines: list[Any] = field(default_factory=list)  # InterpretabilityPipeline, in `models` order

    def validate(self) -> None:
        for pipeline in self.pipelines:
            pipeline.validate()


def _model_names(value: Any) -> list[str]:
    if value in (None, [], ""):
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.strip("[]").split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"models: expected a list of model names, e.g. models=[smollm2,minilm]; got {value!r}")
    names = [v.strip() for v in value]
    if len(names) < 2:
        raise ConfigError(f"models: {names} compares nothing; give two or more, e.g. models=[smollm2,minilm]")
    if len(set(names)) != len(names):
        raise ConfigError(f"models: {names} names a model twice; give each model once")
    return names


def plan_comparison(container: dict[str, Any], output_dir: str | Path, user_overrides=()) -> ComparisonPlan | None:
    """None when the config has no `models`; otherwise one pipeline per model (not yet validated).

    `container` is the composed config as a plain dict (its `models` key is removed).
    """
    from .pipeline import InterpretabilityPipeline

    names = _model_names(container.pop(MODELS_KEY, None))
    if not names:
        return None
    output_dir = Path(output_dir)
    base_model = container.get("model") or {}
    if isinstance(base_model, str):
        base_model = {"name": base_model}
    plan = ComparisonPlan(output_dir, names)
    for index, name in enumerate(names):
        job = copy.deepcopy(container)
        job["model"] = {**base_model, "name": name}
        job["experiment_name"] = container.get("experiment_name") or "compare_models"
        similarity = (job.get("analyzers") or {}).get("representation_similarity")
        if isinstance(similarity, dict):
            others = names[1:] if index == 0 else []
            if index > 0 or similarity.get("pooling", "tokens") == "tokens":
                similarity["models"] = []  # cross-model CKA runs once, from the first model
            elif not similarity.get("models"):
                similarity["models"] = others
        run_dir = output_dir / RUNS_FOLDER / name
        pipeline = InterpretabilityPipeline.from_config(job, output_dir=run_dir, user_overrides=user_overrides)
        plan.pipelines.append(pipeline)
    return plan


@dataclass
class ComparisonOutcome:
    reports: list[Any]  # RunReport per model
    comparison: Any | None  # compare.ComparisonReport, None when it could not be written
    error: str | None = None


def run_comparison(plan: ComparisonPlan) -> ComparisonOutcome:
    """Run every model's pipeline, then write the report (a failed analyzer still gets reported)."""
    from .compare import compare_runs

    reports = [pipeline.run() for pipeline in plan.pipelines]
    try:
        comparison = compare_runs([r.run_dir for r in reports], plan.output_dir)
    except ConfigError as err:
        return ComparisonOutcome(reports, None, str(err))
    return ComparisonOutcome(reports, comparison)
