"""InterpretabilityPipeline: config -> validated plan -> model -> analyzers -> sinks.

Everything that can be checked without weights (analyzer names and options, model name,
layer/head ranges, inputs) is checked in `validate()`, so a typo costs a second, not a
minute. A failing analyzer is recorded as failed and the others still run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import random
import sys
import threading
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
from .analyzer import Analyzer, RunContext, build_config, resolve_config
from .data import DataConfig, Inputs, as_data_config, load_inputs, validate_data_config, window_spec
from .errors import AnalyzerError, ConfigError
from .estimate import estimate_run
from .models import HookedModel, ModelInfo, describe_model
from .models.loading import load_model
from .models.placement import resolve_placement
from .models.usage import InputUsage, record_inputs
from .plugins import PluginRegistry, get_registry
from .progress import CANCELLED, Cancelled, CancelToken, ProgressListener, ProgressReporter
from .results import Result, figures_deferred
from .settings import (
    BudgetSettings,
    FiguresConfig,
    FigureStyleSettings,
    ModelSettings,
    RunSettings,
    check_writable_dir,
    coerce_dataclass,
    prefer_user_source,
)
from .sinks.base import RunInfo, Sink, SinkWarning
from .sinks.rundir import RunDirSink
from .window_results import check_windowable, combine_windows
from .windows import special_frame, window_documents

#: top-level key of the sae_* experiments' shared settings (read only through interpolation)
SHARED_SAE_KEY = "sae"


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
    #: the run directory, checked writable (created) before any weights load
    run_dir: Path | None = None


@dataclass
class RunReport:
    run_dir: Path
    payload: dict
    results: dict[str, Result] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "skipped") for r in self.results.values())

    @property
    def exit_code(self) -> int:
        """0: every analyzer ok or skipped; 1: one or more failed; 130: interrupted or cancelled."""
        if self.payload.get("status") in ("interrupted", CANCELLED):
            return EXIT_INTERRUPTED
        return EXIT_OK if self.ok else EXIT_FAILED


#: exit codes of `python -m interpsuite` (README, docs/reference.md)
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("interpsuite")
#: matplotlib renders (mathtext, layout) unsafely from several threads at once: runs sharing a process
#: (AnalysisService requests) save their figures one at a time
_FIGURE_LOCK = threading.RLock()


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
        figures: FiguresConfig | Mapping[str, Any] | None = None,
        figure_style: FigureStyleSettings | Mapping[str, Any] | str | None = None,
        fail_fast: bool = False,
        progress: bool = True,
        draw_figures: bool = True,
        resolved_config: dict | None = None,
        registry: PluginRegistry | None = None,
        budget: BudgetSettings | Mapping[str, Any] | None = None,
        yes: bool = False,
        listener: ProgressListener | None = None,
        cancel: CancelToken | None = None,
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
        self.sink_names = [sinks] if isinstance(sinks, str) else sinks
        self.wandb_options = wandb if wandb is not None else {"mode": "offline"}
        self.table_format = table_format
        self.figures = figures if figures is not None else FiguresConfig()
        if isinstance(figure_style, str):
            figure_style = {"preset": figure_style}
        self.figure_style = figure_style if figure_style is not None else FigureStyleSettings()
        self.fail_fast = fail_fast
        self.progress = progress
        #: False: figures are saved as data only (figure_data/), drawn later by `interpsuite figures`
        self.draw_figures = draw_figures
        self.resolved_config = resolved_config
        self.registry = registry or get_registry()
        #: resource budget (time_s, memory_gb, disk_gb): a run estimated over it stops unless `yes`
        self.budget = budget if budget is not None else BudgetSettings()
        self.yes = yes
        #: progress events (interpsuite.progress) and a token that stops the run between progress items
        self.listener, self.cancel = listener, cancel

    # --- construction from Hydra ----------------------------------------------------------
    @classmethod
    def from_config(
        cls, cfg, output_dir: str | Path | None = None, user_overrides: Sequence[str] = (), **overrides
    ) -> InterpretabilityPipeline:
        """A pipeline from a composed Hydra config. `user_overrides` (the command line's
        overrides) decide which input source wins: `data.path=...` given by the user replaces
        an experiment's inline texts instead of conflicting with them."""
        from omegaconf import OmegaConf, open_dict

        if not isinstance(cfg, dict):
            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.pop("hydra", None)  # Hydra's own node (it resolves only inside a running job)
        container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
        container.pop("hydra", None)
        if container.get("models") in (None, [], ""):
            container.pop("models", None)
        elif "models" in container:
            raise ConfigError(
                "models=[...] makes one run per model: use python -m interpsuite, or from Python "
                "interpsuite.model_comparison.plan_comparison(config, output_dir) and run_comparison(plan)"
            )
        if container.get("train", 0) is None:  # no training experiment: a plain run
            container.pop("train")
        if container.get("checkpoints") in (None, [], ""):  # `temporal:` without checkpoints: one plain run
            container.pop("checkpoints", None)
            container.pop("temporal", None)
        elif "checkpoints" in container:
            raise ConfigError(
                "checkpoints=... makes one run per checkpoint: use python -m interpsuite, or from Python "
                "interpsuite.temporal.temporal_plan(checkpoints, ...) and run_temporal(plan)"
            )
        # `sae:` holds the sae_* experiments' shared choices (sae.hook=..., sae.width=...); the
        # analyzers' options read them by interpolation, resolved above, so nothing else uses it
        container.pop(SHARED_SAE_KEY, None)
        known = {f.name for f in dataclasses.fields(RunSettings)} | {"model", "data", "analyzers", "output_dir"}
        unknown = sorted(set(map(str, container)) - known)
        if unknown:
            raise ConfigError(f"unknown top-level config key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        model_cfg = container.get("model") or {}
        if isinstance(model_cfg, str):
            model_cfg = {"name": model_cfg}
        model = coerce_dataclass(ModelSettings, model_cfg, "model")
        if not model.name:
            raise ConfigError("model: no name; use model=<embedded name> or model.name=<hub name or path>")
        data = container.get("data") or {}
        if not isinstance(data, dict):
            raise ConfigError("data: expected a mapping (texts / path / dataset ...)")
        data = prefer_user_source(data, user_overrides)
        settings = {k: container[k] for k in (f.name for f in dataclasses.fields(RunSettings)) if k in container}
        kwargs = dict(
            model=model.name,
            data=data,
            analyzers=container.get("analyzers") or {},
            experiment=settings.pop("experiment_name", None) or "run",
            output_dir=output_dir or container.get("output_dir"),
            dtype=model.dtype,
            device_map=model.device_map,
            max_memory=model.max_memory,
            offload_dir=model.offload_dir,
            resolved_config=container,
            **settings,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def _checked_settings(self) -> RunSettings:
        """Every top-level setting through the validation layer; typed values are kept."""
        settings = coerce_dataclass(
            RunSettings,
            {
                "device": self.device,
                "seed": self.seed,
                "batch_size": self.batch_size,
                "fail_fast": self.fail_fast,
                "progress": self.progress,
                "table_format": self.table_format,
                "sinks": list(self.sink_names) if isinstance(self.sink_names, (list, tuple)) else self.sink_names,
                "wandb": self.wandb_options,
                "figures": self.figures,
                "figure_style": self.figure_style,
                "experiment_name": self.experiment,
                "budget": self.budget,
            },
        )
        self.figure_style = settings.figure_style
        self.seed, self.batch_size, self.fail_fast = settings.seed, settings.batch_size, settings.fail_fast
        self.progress, self.table_format, self.sink_names = settings.progress, settings.table_format, settings.sinks
        self.figures = settings.figures
        self.budget = settings.budget
        self.wandb_options = dataclasses.asdict(settings.wandb)
        self.data = validate_data_config(self.data)
        return settings

    # --- validation (no weights) ----------------------------------------------------------
    def validate(self) -> RunPlan:
        """Everything that can be checked without weights, in the order a user would fix it.
        Nothing is written: the run directory is only checked (it is made by `run`)."""
        if not self.analyzer_options:
            raise ConfigError(
                "no analyzers selected; add some, e.g. +analyzers.activation_stats={} or "
                "+experiment=quickstart (see `interpsuite plugins` for the list)"
            )
        self._checked_settings()
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
            item.config = resolve_config(item.analyzer, info)  # run() gets the resolved config
        if self.data.long_documents == "window":
            check_windowable([(item.name, item.analyzer.window_outputs) for item in planned])
            window_spec(self.data).check(info.max_positions, 0, info.name)
        inputs = load_inputs(self.data, self.registry.datasets)
        run_dir = check_writable_dir(self._run_dir(), "run directory", create=False)
        return RunPlan(info, inputs, planned, skipped, run_dir)

    # --- running ---------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        if self.output_dir is None:
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
            self.output_dir = Path("outputs") / self.experiment / stamp
        return self.output_dir

    def _seed(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def _open_sinks(self, run: RunInfo, status: dict[str, dict]) -> list[Sink]:
        opened = []
        for name in self.sink_names:
            if name == RunDirSink.name:
                continue
            try:
                opened.append(self.registry.sink(name)(run))
                status[name] = {"status": "ok", "error": None}
            except Exception as err:  # a sink must never cost the local results
                status[name] = {"status": "failed", "error": f"failed to start: {type(err).__name__}: {err}"}
                warnings.warn(f"sink {name} failed to start: {type(err).__name__}: {err}", SinkWarning, stacklevel=2)
        return opened

    def _check_truncation(self, model: HookedModel, inputs: Inputs) -> dict[str, int]:
        """How many of the data group's texts `max_length` cuts; `truncation: error` refuses them."""
        max_length = self.data.max_length
        if max_length is None:
            return {"truncated_texts": 0, "truncated_tokens": 0}
        excess = [n - max_length for n in model.token_lengths(inputs.texts) if n > max_length]
        if excess and (self.data.truncation == "error" or self.data.long_documents == "error"):
            raise ConfigError(
                f"{len(excess)} of {inputs.count} texts are longer than data.max_length={max_length} tokens "
                f"(up to {max_length + max(excess)}); raise data.max_length, shorten them, set "
                f"data.long_documents=window to analyse them in overlapping windows, or data.long_documents=truncate "
                f"(with data.truncation=warn) to cut them"
            )
        if excess:
            log.warning(
                "%d of %d texts are longer than data.max_length=%d tokens: %d tokens cut (data.truncation=error "
                "refuses instead)",
                len(excess),
                inputs.count,
                max_length,
                sum(excess),
            )
        return {"truncated_texts": len(excess), "truncated_tokens": sum(excess)}

    def load_weights(self) -> HookedModel:
        """The model this pipeline runs: the one it was given, or loaded with its placement settings
        (also what `interpsuite estimate` loads for its timing probe)."""
        if isinstance(self.model, HookedModel):
            return self.model
        return load_model(
            self.model,
            device=self.device,
            dtype=self.dtype,
            seed=self.seed,
            device_map=self.device_map,
            max_memory=self.max_memory,
            offload_dir=self.offload_dir,
        )

    def _windowed(self, model: HookedModel, inputs: Inputs) -> tuple[Inputs, int]:
        """The documents as overlapping windows (interpsuite.windows), and the longest model input
        a window makes (its content plus the tokenizer's special tokens)."""
        spec = window_spec(self.data)
        prefix, suffix = special_frame(model.tokenizer)
        spec.check(model.info.max_positions, len(prefix) + len(suffix), model.info.name)
        texts, windowed = window_documents(model, inputs.texts, spec)
        extra = {
            key: [values[w.document] for w in windowed.windows] if isinstance(values, list) else values
            for key, values in inputs.extra.items()
        }
        summary = windowed.summary()
        log.info(
            "data.long_documents=window: %d documents (%d longer than %d tokens) as %d windows, stride %d",
            summary["documents"],
            summary["windowed_documents"],
            spec.length,
            summary["windows"],
            spec.stride,
        )
        windowed_inputs = Inputs(texts, inputs.source, extra, windowed)
        return windowed_inputs, spec.length + len(prefix) + len(suffix)

    def run(self) -> RunReport:
        """Run every analyzer; results.json is rewritten (atomically) after each one, so a crash,
        a failing sink or Ctrl-C never costs a finished analyzer."""
        started = time.perf_counter()
        plan = self.validate()
        check_writable_dir(plan.run_dir, "run directory")
        self._seed()
        model = self.load_weights()
        max_length = self.data.max_length
        if self.data.long_documents == "window":
            plan.inputs, max_length = self._windowed(model, plan.inputs)
            data_truncation = {"truncated_texts": 0, "truncated_tokens": 0, "windows": plan.inputs.windows.summary()}
        else:
            data_truncation = self._check_truncation(model, plan.inputs)
        ctx = RunContext(
            model=model,
            inputs=plan.inputs,
            batch_size=self.batch_size,
            max_length=max_length,
            seed=self.seed,
            style=self.figure_style.style(),
            show_progress=self.progress,
        )
        run_dir = plan.run_dir
        ctx.run_dir = run_dir
        ctx.reporter = reporter = ProgressReporter(self.listener, self.cancel)
        estimate = estimate_run(self, plan, ctx, started)  # printed; ConfigError over budget without `yes`
        inputs_entry: dict[str, Any] = {
            "source": plan.inputs.source,
            "count": 0,
            "n_tokens": 0,
            "truncated_texts": 0,
            "truncated_tokens": 0,
            "max_length": self.data.max_length,
            "data": {"source": plan.inputs.source, "count": plan.inputs.count, **data_truncation},
        }
        run = RunInfo(
            run_dir=run_dir,
            experiment=self.experiment,
            model=model.info.contract_dict(),
            inputs=inputs_entry,
            config=self.resolved_config or self._python_config(),
            options={
                "wandb": self.wandb_options,
                "table_format": self.table_format,
                "figure_formats": list(self.figures.formats),
            },
        )
        payload: dict[str, Any] = {
            "interpsuite_version": __version__,
            "experiment": self.experiment,
            "status": "running",
            "model": run.model,
            "inputs": inputs_entry,
            "duration_s": 0.0,
            "analyzers": {},
            "sinks": {RunDirSink.name: {"status": "ok", "error": None}},
            "plugins": {"errors": list(self.registry.warnings)},
            "estimate": estimate,
        }
        rundir = RunDirSink(run)
        sinks = self._open_sinks(run, payload["sinks"])
        report = RunReport(run_dir, payload)
        used = InputUsage()
        running: str | None = None
        try:
            reporter.emit("run_start", total=len(plan.analyzers) + len(plan.skipped))
            for name, reason in plan.skipped.items():
                skipped = Result(status="skipped", error=reason)
                report.results[name] = skipped
                payload["analyzers"][name] = self._entry(skipped)
                reporter.analyzer = name
                reporter.emit("analyzer_end", status="skipped")
            for item in plan.analyzers:
                reporter.analyzer = None
                reporter.check()
                running = reporter.analyzer = item.name
                reporter.emit("analyzer_start")
                result, usage = self._run_one(item, ctx, run_dir)
                running = None
                used.merge(usage)
                inputs_entry.update({k: v for k, v in used.summary().items() if k != "max_length"})
                report.results[item.name] = result
                entry = self._entry(result, usage)
                with _FIGURE_LOCK, ctx.style.context():  # saved under the rcParams they were drawn with
                    self._deliver(item.name, result, entry, rundir, sinks, payload["sinks"])
                payload["analyzers"][item.name] = entry
                payload["duration_s"] = time.perf_counter() - started
                self._save(rundir, payload)
                _close_figures(result)
                reporter.emit("analyzer_end", status=result.status)
                if result.status == "failed" and self.fail_fast:
                    raise AnalyzerError(f"analyzer {item.name} failed (fail_fast): {result.error}")
            payload["status"] = "complete"
        except Cancelled:  # a CancelToken or a listener: like Ctrl-C, but the run returns its report
            payload["status"] = CANCELLED
            for item in plan.analyzers:  # the running one and those not started; finished ones are kept
                if item.name not in payload["analyzers"]:
                    cut = "cancelled before it finished" if item.name == running else "cancelled before it started"
                    report.results[item.name] = Result(status="interrupted", error=f"Cancelled: {cut}")
                    payload["analyzers"][item.name] = self._entry(report.results[item.name])
            if running is not None:
                reporter.emit("analyzer_end", status="interrupted")
        except KeyboardInterrupt:
            payload["status"] = "interrupted"
            if running is not None:
                interrupted = Result(status="interrupted", error="KeyboardInterrupt: interrupted before it finished")
                report.results[running] = interrupted
                payload["analyzers"][running] = self._entry(interrupted)
            raise
        except AnalyzerError:
            payload["status"] = "stopped"  # fail_fast: the analyzers after the failed one did not run
            raise
        except BaseException:
            payload["status"] = "crashed"
            raise
        finally:
            payload["duration_s"] = time.perf_counter() - started
            self._save(rundir, payload)
            for sink in sinks:
                self._guarded(sink, payload["sinks"], lambda sink=sink: sink.close(payload))
            if any(s["status"] != "ok" for s in payload["sinks"].values()):
                self._save(rundir, payload)  # the sinks' own failures, on the record
            reporter.analyzer = None
            reporter.emit("run_end", status=payload["status"])
        return report

    @staticmethod
    def _guarded(sink: Sink, status: dict[str, dict], action) -> None:
        """Run a sink action; a failure is recorded under `sinks.<name>` and never propagates."""
        try:
            action()
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
            if status.get(sink.name, {}).get("status") != "failed":  # warn once per sink; keep its first error
                warnings.warn(f"sink {sink.name} failed: {message}", SinkWarning, stacklevel=2)
                status[sink.name] = {"status": "failed", "error": message}

    def _deliver(
        self, name: str, result: Result, entry: dict, rundir: RunDirSink, sinks: list[Sink], status: dict
    ) -> None:
        self._guarded(rundir, status, lambda: rundir.write(name, result, entry))
        for sink in sinks:
            self._guarded(sink, status, lambda sink=sink: sink.write(name, result, entry))

    @staticmethod
    def _save(rundir: RunDirSink, payload: dict) -> None:
        try:
            rundir.save(payload)
        except Exception as err:  # the run goes on; the terminal report still has everything
            message = f"{type(err).__name__}: {err}"
            payload["sinks"][RunDirSink.name] = {"status": "failed", "error": f"results.json not written: {message}"}
            print(f"interpsuite: warning: {rundir.results_path} could not be written: {message}", file=sys.stderr)

    def _run_one(self, item: PlannedAnalyzer, ctx: RunContext, run_dir: Path) -> tuple[Result, InputUsage]:
        started = time.perf_counter()
        drawing = contextlib.nullcontext() if self.draw_figures else figures_deferred()
        with record_inputs() as usage, drawing:
            try:
                result = item.analyzer.run(ctx)
                if not isinstance(result, Result):
                    raise AnalyzerError(f"{item.name}.run() returned {type(result).__name__}, not Result")
                result.status, result.error = "ok", None
                if ctx.inputs.windows is not None:
                    combine_windows(result, ctx.inputs.windows, item.analyzer.window_outputs)
            except Cancelled:  # stops the run (recorded by run()), not a failure of this analyzer
                raise
            except Exception as err:  # recorded as failed; the other analyzers still run
                self._write_traceback(run_dir, item.name)
                result = Result.failure(err, 0.0)
        result.duration_s = time.perf_counter() - started
        return result, usage

    @staticmethod
    def _write_traceback(run_dir: Path, name: str) -> None:
        try:
            log_dir = run_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"{name}.traceback.txt").write_text(traceback.format_exc())
        except OSError as err:
            log.warning("traceback of %s not saved: %s", name, err)

    @staticmethod
    def _entry(result: Result, usage: InputUsage | None = None) -> dict[str, Any]:
        entry = {
            "status": result.status,
            "error": result.error,
            "duration_s": result.duration_s,
            "metrics": {k: float(v) for k, v in result.metrics.items()},
            "tables": {},
            "figures": {},
            "checks": {k: c.to_dict() for k, c in result.checks.items()},
            "summary": result.summary,
            "artifacts": {},
            "figure_data": {},
        }
        if usage is not None:
            entry["inputs"] = usage.summary()
        return entry

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
            "figure_style": dataclasses.asdict(self.figure_style)
            if dataclasses.is_dataclass(self.figure_style)
            else self.figure_style,
        }


def record_result(
    run_dir: Path,
    experiment: str,
    name: str,
    result: Result,
    *,
    model: dict,
    inputs: dict,
    config: dict,
    settings: RunSettings | None = None,
    started: float | None = None,
    extra: dict | None = None,
) -> dict:
    """A run directory holding one result made outside a pipeline run (a temporal summary, a
    training experiment), written by the run-directory sink so it follows the results contract
    and `interpsuite figures` redraws its figures."""
    settings = settings or RunSettings()
    run = RunInfo(
        run_dir=run_dir,
        experiment=experiment,
        model=model,
        inputs=inputs,
        config=config,
        options={"table_format": settings.table_format, "figure_formats": settings.figures.formats},
    )
    sink = RunDirSink(run)
    entry = InterpretabilityPipeline._entry(result)
    with settings.figure_style.style().context():  # saved under the rcParams they were drawn with
        sink.write(name, result, entry)
    payload = {
        "interpsuite_version": __version__,
        "experiment": experiment,
        "status": "complete",
        "model": model,
        "inputs": inputs,
        "duration_s": time.perf_counter() - started if started is not None else result.duration_s,
        "analyzers": {name: entry},
        "sinks": {RunDirSink.name: {"status": "ok", "error": None}},
        **(extra or {}),
    }
    sink.save(payload)
    _close_figures(result)
    return payload


def _close_figures(result: Result) -> None:
    """Release figures that were made through pyplot (ours are plain Figures pyplot never saw)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        for figure in result.figures.values():
            plt.close(figure)
