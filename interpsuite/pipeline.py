"""InterpretabilityPipeline: config -> validated plan -> model -> analyzers -> sinks.

Everything that can be checked without weights (analyzer names and options, model name,
layer/head ranges, inputs) is checked in `validate()`, so a typo costs a second, not a
minute. A failing analyzer is recorded as failed and the others still run.
"""

from __future__ import annotations

import importlib.util
import random
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .analyzer import Analyzer, RunContext, build_config
from .data import DataConfig, Inputs, as_data_config, load_inputs
from .errors import AnalyzerError, ConfigError
from .models import HookedModel, ModelInfo, describe_model
from .models.loading import load_model
from .models.placement import resolve_placement
from .plugins import PluginRegistry, get_registry
from .results import Result
from .sinks.base import RunInfo, Sink
from .sinks.rundir import RunDirSink


@dataclass
class PlannedAnalyzer:
    name: str
    analyzer: Analyzer
    config: Any


@dataclass
class RunPlan:
    """The validated run: nothing in it needs model weights."""

    model_info: ModelInfo
    inputs: Inputs
    analyzers: list[PlannedAnalyzer]
    #: analyzers that cannot run on this model at all (a causal-LM analyzer on an encoder in an
    #: experiment with others that can), by name -> reason; recorded as status "skipped"
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class RunReport:
    run_dir: Path
    payload: dict
    results: dict[str, Result] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "skipped") for r in self.results.values())


def _analyzer_options(analyzers: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    if analyzers is None:
        return {}
    if isinstance(analyzers, Mapping):
        return {str(k): (dict(v) if isinstance(v, Mapping) else v) for k, v in analyzers.items()}
    return {str(name): {} for name in analyzers}


class InterpretabilityPipeline:
    """Run analyzers on a model over inputs and hand the results to sinks.

    From Python::

        InterpretabilityPipeline(model="tiny_llama", data=["Hello world"],
                                 analyzers={"activation_stats": {"layers": [0, 1]}}).run()

    From Hydra: `InterpretabilityPipeline.from_config(cfg)` (what `python -m interpsuite` does).
    `model` may also be an already loaded HookedModel (monitors and notebooks reuse one).
    """

    def __init__(
        self,
        model: str | HookedModel = "smollm2",
        data: DataConfig | dict | Sequence[str] | str | None = None,
        analyzers: Mapping[str, Any] | Sequence[str] | None = None,
        *,
        experiment: str = "python",
        output_dir: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        device_map: str | Mapping[str, Any] | None = None,
        max_memory: Mapping[str, Any] | None = None,
        offload_dir: str | Path | None = None,
        seed: int = 0,
        batch_size: int = 8,
        sinks: Sequence[str] = ("rundir", "wandb"),
        wandb: Mapping[str, Any] | None = None,
        table_format: str = "csv",
        fail_fast: bool = False,
        progress: bool = True,
        resolved_config: dict | None = None,
        registry: PluginRegistry | None = None,
    ):
        self.model = model
        self.data = as_data_config(data)
        self.analyzer_options = _analyzer_options(analyzers)
        self.experiment = experiment
        self.output_dir = Path(output_dir) if output_dir else None
        self.device = device
        self.dtype = dtype
        self.device_map = device_map
        self.max_memory = max_memory
        self.offload_dir = offload_dir
        self.seed = seed
        self.batch_size = batch_size
        self.sink_names = list(sinks)
        self.wandb_options = dict(wandb or {"mode": "offline"})
        self.table_format = table_format
        self.fail_fast = fail_fast
        self.progress = progress
        self.resolved_config = resolved_config
        self.registry = registry or get_registry()

    # --- construction from Hydra ----------------------------------------------------------
    @classmethod
    def from_config(cls, cfg, output_dir: str | Path | None = None, **overrides) -> InterpretabilityPipeline:
        from omegaconf import OmegaConf

        container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
        container.pop("hydra", None)
        model_cfg = container.get("model") or {}
        model = model_cfg.get("name") if isinstance(model_cfg, dict) else str(model_cfg)
        if not model:
            raise ConfigError("model: no name; use model=<embedded name> or model.name=<hub name or path>")
        data = container.get("data") or {}
        if not isinstance(data, dict):
            raise ConfigError("data: expected a mapping (texts / path / dataset ...)")
        kwargs = dict(
            model=model,
            data=data,
            analyzers=container.get("analyzers") or {},
            experiment=container.get("experiment_name") or "run",
            output_dir=output_dir or container.get("output_dir"),
            device=container.get("device", "cpu"),
            dtype=(model_cfg.get("dtype") if isinstance(model_cfg, dict) else None)
            or container.get("dtype", "float32"),
            device_map=model_cfg.get("device_map") if isinstance(model_cfg, dict) else None,
            max_memory=model_cfg.get("max_memory") if isinstance(model_cfg, dict) else None,
            offload_dir=model_cfg.get("offload_dir") if isinstance(model_cfg, dict) else None,
            seed=int(container.get("seed", 0)),
            batch_size=int(container.get("batch_size", 8)),
            sinks=container.get("sinks") or ["rundir"],
            wandb=container.get("wandb") or {},
            table_format=container.get("table_format", "csv"),
            fail_fast=bool(container.get("fail_fast", False)),
            progress=bool(container.get("progress", True)),
            resolved_config=container,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    # --- validation (no weights) ----------------------------------------------------------
    def validate(self) -> RunPlan:
        if not self.analyzer_options:
            raise ConfigError(
                "no analyzers selected; add some, e.g. +analyzers.activation_stats={} or "
                "+experiment=quickstart (see `interpsuite plugins` for the list)"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.table_format not in ("csv", "parquet"):
            raise ConfigError(f"table_format must be csv or parquet, got {self.table_format!r}")
        if self.table_format == "parquet" and importlib.util.find_spec("pyarrow") is None:
            raise ConfigError("table_format=parquet needs pyarrow: pip install 'interpsuite[parquet]'")
        for sink in self.sink_names:
            self.registry.sink(sink)
        if not isinstance(self.model, HookedModel):  # device, dtype and device map: before any weights
            resolve_placement(self.device, self.dtype, self.device_map, self.max_memory, self.offload_dir)
        planned = []
        for name, options in self.analyzer_options.items():
            cls = self.registry.analyzer(name)
            config = build_config(cls, options)
            planned.append(PlannedAnalyzer(name, cls(config), config))
        info = self.model.info if isinstance(self.model, HookedModel) else describe_model(self.model)
        unfit = [item.name for item in planned if item.analyzer.requires_causal_lm and not info.is_causal]
        if unfit and len(unfit) == len(planned):
            raise ConfigError(f"analyzer {unfit[0]} needs a causal LM; {info.name} is an encoder")
        skipped = {
            name: f"needs a causal LM; {info.name} is an encoder (skipped, the other analyzers ran)" for name in unfit
        }
        planned = [item for item in planned if item.name not in skipped]
        for item in planned:
            item.analyzer.validate(info, item.config)
        inputs = load_inputs(self.data, self.registry.datasets)
        return RunPlan(info, inputs, planned, skipped)

    # --- running ---------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        return Path("outputs") / self.experiment / stamp

    def _seed(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def _open_sinks(self, run: RunInfo) -> tuple[RunDirSink, list[Sink]]:
        rundir = RunDirSink(run)
        others = []
        for name in self.sink_names:
            if name == RunDirSink.name:
                continue
            try:
                others.append(self.registry.sink(name)(run))
            except Exception as err:  # a sink must never cost the local results
                warnings.warn(f"sink {name!r} failed to start: {type(err).__name__}: {err}", stacklevel=2)
        return rundir, others

    def run(self) -> RunReport:
        started = time.perf_counter()
        plan = self.validate()
        self._seed()
        model = (
            self.model
            if isinstance(self.model, HookedModel)
            else load_model(
                self.model,
                device=self.device,
                dtype=self.dtype,
                seed=self.seed,
                device_map=self.device_map,
                max_memory=self.max_memory,
                offload_dir=self.offload_dir,
            )
        )
        ctx = RunContext(
            model=model,
            inputs=plan.inputs,
            batch_size=self.batch_size,
            max_length=self.data.max_length,
            seed=self.seed,
            show_progress=self.progress,
        )
        n_tokens = model.count_tokens(plan.inputs.texts, self.data.max_length)
        run_dir = self._run_dir()
        ctx.run_dir = run_dir
        run = RunInfo(
            run_dir=run_dir,
            experiment=self.experiment,
            model=model.info.contract_dict(),
            inputs={"source": plan.inputs.source, "count": plan.inputs.count, "n_tokens": n_tokens},
            config=self.resolved_config or self._python_config(),
            options={"wandb": self.wandb_options, "table_format": self.table_format},
        )
        rundir, sinks = self._open_sinks(run)
        payload: dict[str, Any] = {
            "interpsuite_version": __version__,
            "experiment": self.experiment,
            "model": run.model,
            "inputs": run.inputs,
            "duration_s": 0.0,
            "analyzers": {},
        }
        report = RunReport(run_dir, payload)
        try:
            for name, reason in plan.skipped.items():
                skipped = Result(status="skipped", error=reason)
                report.results[name] = skipped
                payload["analyzers"][name] = self._entry(skipped)
            for item in plan.analyzers:
                result = self._run_one(item, ctx, run_dir)
                report.results[item.name] = result
                entry = self._entry(result)
                rundir.write(item.name, result, entry)
                for sink in sinks:
                    sink.write(item.name, result, entry)
                payload["analyzers"][item.name] = entry
                payload["duration_s"] = time.perf_counter() - started
                rundir.save(payload)
                _close_figures(result)
                if result.status == "failed" and self.fail_fast:
                    raise AnalyzerError(f"analyzer {item.name} failed (fail_fast): {result.error}")
        finally:
            payload["duration_s"] = time.perf_counter() - started
            rundir.save(payload)
            for sink in sinks:
                sink.close(payload)
        return report

    def _run_one(self, item: PlannedAnalyzer, ctx: RunContext, run_dir: Path) -> Result:
        started = time.perf_counter()
        try:
            result = item.analyzer.run(ctx)
            if not isinstance(result, Result):
                raise AnalyzerError(f"{item.name}.run() returned {type(result).__name__}, not Result")
            result.status, result.error = "ok", None
        except Exception as err:  # recorded as failed; the other analyzers still run
            log_dir = run_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"{item.name}.traceback.txt").write_text(traceback.format_exc())
            result = Result.failure(err, 0.0)
        result.duration_s = time.perf_counter() - started
        return result

    @staticmethod
    def _entry(result: Result) -> dict[str, Any]:
        return {
            "status": result.status,
            "error": result.error,
            "duration_s": result.duration_s,
            "metrics": {k: float(v) for k, v in result.metrics.items()},
            "tables": {},
            "figures": {},
            "checks": {k: c.to_dict() for k, c in result.checks.items()},
            "summary": result.summary,
            "artifacts": {},
        }

    def _python_config(self) -> dict:
        return {
            "model": {"name": self.model if isinstance(self.model, str) else self.model.info.name},
            "data": self.data.__dict__,
            "analyzers": self.analyzer_options,
            "experiment_name": self.experiment,
            "device": self.device,
            "dtype": self.dtype,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "sinks": self.sink_names,
            "wandb": self.wandb_options,
        }


def _close_figures(result: Result) -> None:
    import matplotlib.pyplot as plt

    for figure in result.figures.values():
        plt.close(figure)
