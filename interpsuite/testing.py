"""Test kit for plugin authors: tiny-model fixtures, `run_analyzer`, `assert_result_contract`.

What pytest's `pytester` is to pytest plugins, this is to interpsuite analyzers. pytest
loads it through interpsuite's `pytest11` entry point, so in any project with interpsuite
installed the fixtures are simply there (with `PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`, add
`-p interpsuite`):

    from interpsuite.testing import assert_result_contract, run_analyzer

    def test_my_analyzer(interpsuite_tiny_model, tmp_path):
        result = run_analyzer(MyAnalyzer, interpsuite_tiny_model, options={"layers": [0]}, run_dir=tmp_path)
        assert_result_contract(result, all_checks_passed=True, run_dir=tmp_path)

Fixtures carry an `interpsuite_` prefix so they never shadow a project's own `tiny_model`.
Importing this module is cheap (interpsuite itself is imported on first use), because
pytest imports it in every test session of an environment that has interpsuite installed.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from .analyzer import Analyzer
    from .data import Inputs
    from .models import HookedModel
    from .results import Result

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")

__all__ = [
    "DEFAULT_TEXTS",
    "TINY_CAUSAL_MODELS",
    "TINY_MODELS",
    "assert_result_contract",
    "cached_model",
    "contract_problems",
    "run_analyzer",
]

#: 2-layer random models built in-process (seeded): Llama-like, GPT-2 and a BERT encoder
TINY_MODELS = ("tiny_llama", "tiny_gpt2", "tiny_bert")
TINY_CAUSAL_MODELS = ("tiny_llama", "tiny_gpt2")
#: texts of different lengths, so every batch has right padding for an analyzer to get wrong
DEFAULT_TEXTS = (
    "The cat sat on the mat.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "Hi",
)


@functools.cache
def cached_model(name: str = "tiny_llama") -> HookedModel:
    """`load_model(name)`, once per process: models are read-only to analyzers, so tests share them."""
    from .models import load_model

    return load_model(name)


@pytest.fixture(scope="session", params=TINY_MODELS)
def interpsuite_tiny_model(request: pytest.FixtureRequest) -> HookedModel:
    """Each tiny model in turn (tiny_llama, tiny_gpt2, tiny_bert): the test runs once per model."""
    return cached_model(request.param)


@pytest.fixture(scope="session", params=TINY_CAUSAL_MODELS)
def interpsuite_tiny_causal_model(request: pytest.FixtureRequest) -> HookedModel:
    """The tiny causal LMs (tiny_llama, tiny_gpt2), for analyzers with `requires_causal_lm`."""
    return cached_model(request.param)


@pytest.fixture(scope="session")
def interpsuite_model_factory() -> Callable[[str], HookedModel]:
    """`factory(name)` -> a HookedModel for any name `load_model` knows, loaded once per process."""
    return cached_model


def _analyzer_class(analyzer: str | type[Analyzer]) -> type[Analyzer]:
    if isinstance(analyzer, str):
        from .plugins import get_registry

        return get_registry().analyzer(analyzer)
    return analyzer


def _seed(seed: int) -> None:
    """What the pipeline seeds before its analyzers run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_analyzer(
    analyzer: str | type[Analyzer],
    model: str | HookedModel = "tiny_llama",
    texts: Sequence[str] | Inputs | None = None,
    options: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    *,
    batch_size: int = 8,
    max_length: int | None = 128,
    seed: int = 0,
    reraise: bool = False,
) -> Result:
    """Validate and run one analyzer the way the pipeline does; return its Result.

    `analyzer` is a registered name or a class (it need not be installed). Options are
    checked against its `Config` and `validate(info, cfg)` is called first, so a bad
    option raises ConfigError here exactly as `pipeline.validate()` would; when `validate`
    returns a config (an instance of `Config`), `run` sees that one as `self.cfg`. A
    failure inside `run` is recorded as status "failed" with the error, as in a real run
    (`reraise=True` raises it instead, with its traceback). With `run_dir`, the result also
    goes through the run-directory sink, so files and results.json can be checked.
    """
    from .analyzer import RunContext, build_config, resolve_config
    from .data import Inputs
    from .errors import AnalyzerError, ConfigError
    from .models import HookedModel
    from .results import Result

    cls = _analyzer_class(analyzer)
    hooked = model if isinstance(model, HookedModel) else cached_model(model)
    if isinstance(texts, str):
        texts = [texts]
    inputs = texts if isinstance(texts, Inputs) else Inputs(list(texts or DEFAULT_TEXTS), source="run_analyzer")
    cfg = build_config(cls, dict(options or {}))
    info = hooked.info
    if cls.requires_causal_lm and not info.is_causal:
        raise ConfigError(f"analyzer {cls.name} needs a causal LM; {info.name} is an encoder")
    instance = cls(cfg)
    resolve_config(instance, info)  # as the pipeline does: run() reads the resolved config as self.cfg
    path = Path(run_dir) if run_dir is not None else None
    ctx = RunContext(hooked, inputs, batch_size, max_length, seed, show_progress=False, run_dir=path)
    _seed(seed)
    started = time.perf_counter()
    try:
        result = instance.run(ctx)
        if not isinstance(result, Result):
            raise AnalyzerError(f"{cls.name}.run() returned {type(result).__name__}, not Result")
        result.status, result.error = "ok", None
    except Exception as err:
        if reraise:
            raise
        if path is not None:
            (path / "logs").mkdir(parents=True, exist_ok=True)
            (path / "logs" / f"{cls.name}.traceback.txt").write_text(traceback.format_exc())
        result = Result.failure(err, 0.0)
    result.duration_s = time.perf_counter() - started
    if path is not None:
        _write_run_dir(path, cls.name, result, hooked, inputs, dict(options or {}), max_length)
    return result


def _write_run_dir(
    path: Path, name: str, result: Result, model: HookedModel, inputs: Inputs, options: dict, max_length: int | None
) -> None:
    """results.json, tables and figures exactly as the run-directory sink writes them in a run."""
    from . import __version__
    from .pipeline import InterpretabilityPipeline
    from .sinks.base import RunInfo
    from .sinks.rundir import RunDirSink

    n_tokens = model.count_tokens(inputs.texts, max_length)
    run = RunInfo(
        run_dir=path,
        experiment="run_analyzer",
        model=model.info.contract_dict(),
        inputs={"source": inputs.source, "count": inputs.count, "n_tokens": n_tokens},
        config={"model": {"name": model.info.name}, "analyzers": {name: options}},
        options={"table_format": "csv"},
    )
    sink = RunDirSink(run)
    entry = InterpretabilityPipeline._entry(result)
    sink.write(name, result, entry)
    sink.save(
        {
            "interpsuite_version": __version__,
            "experiment": run.experiment,
            "model": run.model,
            "inputs": run.inputs,
            "duration_s": result.duration_s,
            "analyzers": {name: entry},
        }
    )


def _unjsonable(value: Any, where: str) -> list[str]:
    """Values that `to_jsonable` would only turn into their str(): almost always a mistake."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _unjsonable(item, f"{where}[{key!r}]")]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in _unjsonable(item, f"{where}[{i}]")]
    if value is None or isinstance(value, (str, int, float, bool)) or hasattr(value, "tolist"):
        return []
    return [f"{where} is a {type(value).__name__}, which results.json would only hold as its str()"]


def _metric_problem(name: Any, value: Any) -> str | None:
    if not isinstance(name, str):
        return f"metric name {name!r} is not a str"
    if value is None:
        return None
    if not isinstance(value, numbers.Real):
        return f"metric {name} is a {type(value).__name__}, not a number (use float(...))"
    if not math.isfinite(float(value)):
        return f"metric {name} is {value}: not finite (use None for 'not defined')"
    return None


def _check_problems(name: Any, check: Any) -> list[str]:
    from .results import Check

    if not isinstance(check, Check):
        return [f"check {name!r} is a {type(check).__name__}, not a Check (use result.add_check)"]
    problems = []
    if check.mode not in ("max", "min"):
        problems.append(f"check {name}: mode {check.mode!r} is neither 'max' nor 'min'")
    if not isinstance(check.value, numbers.Real) or not isinstance(check.threshold, numbers.Real):
        problems.append(f"check {name}: value and threshold must be numbers")
    elif not math.isfinite(float(check.threshold)):
        problems.append(f"check {name}: threshold {check.threshold} is not finite")
    return problems


def contract_problems(result: Any, all_checks_passed: bool = False, run_dir: str | Path | None = None) -> list[str]:
    """Every way `result` breaks the Result contract (empty: it conforms); see assert_result_contract."""
    import pandas as pd
    from matplotlib.figure import Figure

    from .results import Check, Result, contract_errors, read_results, to_jsonable

    if not isinstance(result, Result):
        return [f"expected a Result, got {type(result).__name__}"]
    if result.status != "ok":
        return [f"status is {result.status!r}: {result.error} (run_analyzer(..., reraise=True) shows the traceback)"]
    problems = [p for name, value in result.metrics.items() if (p := _metric_problem(name, value))]
    problems += [p for name, check in result.checks.items() for p in _check_problems(name, check)]
    problems += [
        f"table {name!r} is a {type(table).__name__}, not a pandas DataFrame"
        for name, table in result.tables.items()
        if not isinstance(table, pd.DataFrame)
    ]
    problems += [
        f"figure {name!r} is a {type(fig).__name__}, not a matplotlib Figure (use ctx.style.figure())"
        for name, fig in result.figures.items()
        if not isinstance(fig, Figure)
    ]
    problems += [
        f"artifact {name!r} is a {type(text).__name__}, not a str"
        for name, text in result.artifacts.items()
        if not isinstance(text, str)
    ]
    if not isinstance(result.summary, dict):
        problems.append(f"summary is a {type(result.summary).__name__}, not a dict")
    else:
        problems += _unjsonable(result.summary, "summary")
        try:
            json.dumps(to_jsonable(result.summary), allow_nan=False)
        except (TypeError, ValueError) as err:
            problems.append(f"summary is not JSON-serialisable: {err}")
    if all_checks_passed:
        problems += [
            f"check {name} failed: value {check.value} vs threshold {check.threshold} (mode {check.mode})"
            for name, check in result.checks.items()
            if isinstance(check, Check) and not check.passed
        ]
    if run_dir is not None:
        problems += [f"results.json: {e}" for e in contract_errors(read_results(run_dir), Path(run_dir))]
    return problems


def assert_result_contract(result: Any, *, all_checks_passed: bool = False, run_dir: str | Path | None = None) -> None:
    """Assert that an analyzer's Result is one every sink can write.

    Status "ok"; metrics numbers that are finite (or None); checks `Check`s with mode
    max/min and a finite threshold; tables pandas DataFrames; figures matplotlib Figures;
    artifacts text; the summary a dict that results.json holds as it is (nothing written
    as its str()). With `all_checks_passed`, every check passed too; with `run_dir` (as
    given to run_analyzer), results.json there meets the contract and its files exist.
    One AssertionError lists every problem.
    """
    problems = contract_problems(result, all_checks_passed, run_dir)
    if problems:
        raise AssertionError("Result breaks the interpsuite contract:\n- " + "\n- ".join(problems))
