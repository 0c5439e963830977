"""TrainingMonitor: run analyzers on a model while it trains, without changing its training.

The engine behind the Hugging Face callback (`interpsuite.callbacks.InterpsuiteCallback`) and
the Lightning one (`interpsuite.callbacks.lightning.InterpsuiteMonitor`); both only decide
*when* to call `run(step)`. Each run is an ordinary `InterpretabilityPipeline` run over a
fixed probe set, with the analyzer names and options of the YAML, written to
`<output_dir>/step_000500/` for step 500 (a complete run directory, so `interpsuite figures` and
`+experiment=temporal checkpoints=<output_dir>` read it like any run).

Not perturbing training is the contract, and a test checks it bit for bit:
- the model is wrapped (`models.wrap`) only for the duration of a run, so training passes
  never meet a listener; it is never moved between devices or cast;
- analyses see the model as evaluation does (dropout off), and every module's own `training`
  flag is put back afterwards, as are every parameter's `requires_grad` and `.grad` (gradient
  analyzers' backward passes land in fresh `.grad`s that are dropped);
- the pipeline seeds the global RNGs for reproducible analyses; the Python, NumPy, torch and
  CUDA RNG states are restored afterwards, so dropout masks and data order after a monitored
  step are the ones an unmonitored run draws.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .results import to_jsonable

log = logging.getLogger("interpsuite")

MONITOR_FILE = "monitor.json"
STEPS_FILE = "steps.jsonl"
FORMAT_VERSION = 1


def step_folder(step: int) -> str:
    return f"step_{step:06d}"


@dataclass
class MonitorSchedule:
    """When to run: every N optimizer steps, at chosen steps, at each evaluation, at the ends."""

    every_n_steps: int | None = None
    at_steps: Sequence[int] = ()
    on_evaluate: bool = False
    at_start: bool = True
    at_end: bool = True

    def __post_init__(self) -> None:
        n = self.every_n_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(
                f"monitor interval every_n_steps={n!r}: give a positive number of steps (e.g. 50), "
                "or None with at_steps=[...] / on_evaluate=True"
            )
        bad = [s for s in self.at_steps if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise ConfigError(f"monitor at_steps: {bad[0]!r} is not a step number (an integer >= 0)")
        if n is None and not self.at_steps and not self.on_evaluate and not (self.at_start or self.at_end):
            raise ConfigError("monitor: nothing schedules a run; give every_n_steps, at_steps or on_evaluate=True")

    def due(self, step: int) -> bool:
        return step in self.at_steps or (self.every_n_steps is not None and step % self.every_n_steps == 0)


@dataclass
class TrainingState:
    """What a monitor run must leave as it found it (see the module docstring)."""

    modes: list[tuple[torch.nn.Module, bool]]
    requires_grad: list[tuple[torch.nn.Parameter, bool]]
    grads: list[tuple[torch.nn.Parameter, torch.Tensor | None]]
    python_rng: Any
    numpy_rng: Any
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None = None

    @classmethod
    def save(cls, model: torch.nn.Module) -> TrainingState:
        params = list(model.parameters())
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(
            modes=[(m, m.training) for m in model.modules()],
            requires_grad=[(p, p.requires_grad) for p in params],
            grads=[(p, p.grad) for p in params],
            python_rng=random.getstate(),
            numpy_rng=np.random.get_state(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=cuda,
        )

    def restore(self) -> None:
        for module, mode in self.modes:
            module.training = mode
        for param, flag in self.requires_grad:
            param.requires_grad_(flag)
        for param, grad in self.grads:
            param.grad = grad
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


@contextlib.contextmanager
def preserved_training_state(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode and fresh gradients inside; the training state exactly as before after."""
    state = TrainingState.save(model)
    try:
        for param, _ in state.grads:
            param.grad = None
        model.eval()
        yield
    finally:
        state.restore()


@dataclass
class MonitorStep:
    step: int
    epoch: float | None
    run_dir: str
    duration_s: float
    metrics: dict[str, float]
    train: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


class TrainingMonitor:
    """Runs analyzers (names and options as in the YAML) on a training model's probe set.

        monitor = TrainingMonitor({"head_classification": {"n_ablate": 0}}, data=["..."],
                                  schedule=MonitorSchedule(every_n_steps=50), output_dir="monitor")
        monitor.start(hf_model, tokenizer)        # validates everything before the first step
        if monitor.due(step): monitor.run(step)
        monitor.finish()

    `wandb_step_key`: the metric the trainer's W&B run uses as its x axis ("train/global_step"
    for the HF Trainer, "trainer/global_step" for Lightning), logged beside ours so that both
    share the axis.
    """

    def __init__(
        self,
        analyzers: Mapping[str, Any] | Sequence[str],
        data: Any = None,
        *,
        schedule: MonitorSchedule | None = None,
        output_dir: str | Path = "interpsuite_monitor",
        batch_size: int = 8,
        seed: int = 0,
        figure_style: Any = None,
        figures: Mapping[str, Any] | None = None,
        log_to_wandb: bool = True,
        draw_figures: bool | None = None,
        wandb_step_key: str = "train/global_step",
        progress: bool = False,
    ):
        from .analyzer import build_config
        from .data import as_data_config, validate_data_config
        from .pipeline import _analyzer_options
        from .plugins import get_registry

        self.analyzers = _analyzer_options(analyzers)
        if not self.analyzers:
            raise ConfigError(
                "monitor: no analyzers; give e.g. {'attention_entropy': {}} (`interpsuite plugins` lists them)"
            )
        registry = get_registry()
        for name, options in self.analyzers.items():
            build_config(registry.analyzer(name), options)  # unknown names and bad options: now, not at step 500
        self.data = validate_data_config(as_data_config(data if data is not None else {"dataset": "english"}))
        self.schedule = schedule if schedule is not None else MonitorSchedule(every_n_steps=100)
        self.output_dir = Path(output_dir)
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.figure_style, self.figures = figure_style, figures
        self.log_to_wandb, self.wandb_step_key = log_to_wandb, wandb_step_key
        #: None: draw only when a W&B run will receive the figures; otherwise save their data only
        #: (drawing costs more than a small model's analyses; `interpsuite figures` draws later)
        self._draw_figures = draw_figures
        self.steps: list[MonitorStep] = []
        self.monitor_time_s = 0.0
        self._started: float | None = None
        self._model: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self._info: dict[str, Any] = {}

    @property
    def draw_figures(self) -> bool:
        if self._draw_figures is not None:
            return self._draw_figures
        wandb = sys.modules.get("wandb")
        return self.log_to_wandb and wandb is not None and getattr(wandb, "run", None) is not None

    # --- lifecycle ------------------------------------------------------------------------------
    def _pipeline(self, hooked, output_dir: Path | None):
        from .pipeline import InterpretabilityPipeline

        return InterpretabilityPipeline(
            model=hooked,
            data=self.data,
            analyzers=self.analyzers,
            experiment="monitor",
            output_dir=output_dir,
            seed=self.seed,
            batch_size=self.batch_size,
            sinks=["rundir"],
            figure_style=self.figure_style,
            figures=self.figures,
            progress=self.progress,
            draw_figures=self.draw_figures,
        )

    def start(self, model: torch.nn.Module, tokenizer: Any) -> None:
        """Check the analyzers against the model being trained, before its first step."""
        from .models import wrap
        from .plugins import get_registry
        from .settings import check_writable_dir

        if tokenizer is None:
            raise ConfigError(
                "monitor: no tokenizer; pass tokenizer=... to the callback (or processing_class= to the Trainer)"
            )
        started = time.perf_counter()  # the checks count as the monitor's time (plugins load here)
        self._model, self._tokenizer = model, tokenizer
        with preserved_training_state(model), wrap(model, tokenizer) as hooked:
            info = hooked.info
            registry = get_registry()
            unfit = [n for n in self.analyzers if registry.analyzer(n).requires_causal_lm and not info.is_causal]
            if unfit:
                raise ConfigError(
                    f"monitor: analyzer {unfit[0]} needs a causal LM; the model being trained ({info.name}, "
                    f"{info.architecture}) is an encoder; remove it from the monitor's analyzers"
                )
            self._pipeline(hooked, self.output_dir / "validate").validate()
            self._info = info.contract_dict()
        check_writable_dir(self.output_dir, "monitor output directory")
        self._started = started
        self.monitor_time_s += time.perf_counter() - started
        self._write_summary("running")

    def due(self, step: int) -> bool:
        return self._model is not None and self.schedule.due(step) and not self.has_run(step)

    def has_run(self, step: int) -> bool:
        return any(s.step == step for s in self.steps)

    def run(self, step: int, epoch: float | None = None, train: Mapping[str, Any] | None = None) -> MonitorStep:
        """One monitored step: the analyzers on the probe set, results in step_000500/ for step 500."""
        from .models import wrap

        if self._model is None:
            raise ConfigError("monitor: start(model, tokenizer) first")
        started = time.perf_counter()
        folder = step_folder(step)
        with preserved_training_state(self._model), wrap(self._model, self._tokenizer) as hooked:
            report = self._pipeline(hooked, self.output_dir / folder).run()
        metrics = {
            f"{name}.{key}": value
            for name, entry in report.payload["analyzers"].items()
            for key, value in entry.get("metrics", {}).items()
        }
        failed = [name for name, result in report.results.items() if result.status == "failed"]
        for name in failed:
            log.warning("monitor step %d: analyzer %s failed: %s", step, name, report.results[name].error)
        duration = time.perf_counter() - started
        self.monitor_time_s += duration
        train_values = {k: float(v) for k, v in (train or {}).items() if isinstance(v, (int, float))}
        record = MonitorStep(step, epoch, folder, duration, metrics, train_values, failed)
        self.steps.append(record)
        with (self.output_dir / STEPS_FILE).open("a") as handle:
            handle.write(json.dumps(to_jsonable(record.__dict__), allow_nan=False) + "\n")
        self._write_summary("running")
        self._log_wandb(step, metrics, report)
        return record

    def finish(self, step: int | None = None, epoch: float | None = None, train: Mapping[str, Any] | None = None):
        """The last run (at_end) and the summary with the monitor's share of training time."""
        if self._model is None:
            return self.summary()
        if step is not None and self.schedule.at_end and not self.has_run(step):
            self.run(step, epoch, train)
        summary = self._write_summary("complete")
        log.info(
            "interpsuite monitor: %d runs, %.1f s of %.1f s (%.1f%% of training time); results in %s",
            len(self.steps),
            summary["monitor_time_s"],
            summary["wall_time_s"],
            100 * summary["monitor_fraction"],
            self.output_dir,
        )
        self._model = None
        return summary

    # --- reporting ------------------------------------------------------------------------------
    def summary(self, status: str = "running") -> dict[str, Any]:
        wall = time.perf_counter() - self._started if self._started is not None else 0.0
        return {
            "format_version": FORMAT_VERSION,
            "status": status,
            "analyzers": self.analyzers,
            "steps": [s.step for s in self.steps],
            "model": self._info,
            "wall_time_s": wall,
            "train_time_s": max(wall - self.monitor_time_s, 0.0),
            "monitor_time_s": self.monitor_time_s,
            "monitor_fraction": self.monitor_time_s / wall if wall > 0 else 0.0,
            "failed_steps": {s.step: s.failed for s in self.steps if s.failed},
        }

    def _write_summary(self, status: str) -> dict[str, Any]:
        summary = self.summary(status)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.output_dir / f".{MONITOR_FILE}.tmp"
        tmp.write_text(json.dumps(to_jsonable(summary), indent=2, allow_nan=False))
        tmp.replace(self.output_dir / MONITOR_FILE)
        return summary

    def _log_wandb(self, step: int, metrics: dict[str, float], report) -> None:
        """Into the trainer's own W&B run, if one is active: metrics and figures, on its step axis."""
        wandb = sys.modules.get("wandb")
        if not self.log_to_wandb or wandb is None or getattr(wandb, "run", None) is None:
            return
        payload: dict[str, Any] = {f"interpsuite/{k}": v for k, v in metrics.items() if v is not None}
        for name, entry in report.payload["analyzers"].items():
            for figure, paths in entry.get("figures", {}).items():
                png = next((p for p in paths if p.endswith(".png")), None)
                if png is not None:
                    payload[f"interpsuite/{name}/{figure}"] = wandb.Image(str(report.run_dir / png))
        payload[self.wandb_step_key] = step
        try:
            wandb.log(payload)
        except Exception as err:  # the monitor must never stop training
            log.warning("interpsuite monitor: W&B logging failed at step %d: %s", step, err)
