"""The Hugging Face Trainer callback: when to run the monitor, in Trainer terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..monitor import MonitorSchedule, TrainingMonitor


class InterpsuiteCallback(TrainerCallback):
    """Run interpsuite analyzers every N optimizer steps, at chosen steps or at each evaluation.

        trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                          callbacks=[InterpsuiteCallback({"attention_entropy": {}}, every_n_steps=100)])

    `analyzers`: names and options exactly as under `analyzers:` in the YAML. `data`: the fixed
    probe set (texts, a data group mapping, or None for the shipped English sentences).
    Results go to `output_dir` (default `<args.output_dir>/interpsuite_monitor`) and, when a W&B
    run is active (`report_to="wandb"`), into that run on its `train/global_step` axis. Only the
    main process (`state.is_world_process_zero`) runs analyses.
    """

    def __init__(
        self,
        analyzers: Mapping[str, Any] | Sequence[str],
        data: Any = None,
        *,
        every_n_steps: int | None = 100,
        at_steps: Sequence[int] = (),
        on_evaluate: bool = False,
        at_start: bool = True,
        at_end: bool = True,
        output_dir: str | Path | None = None,
        tokenizer: Any = None,
        **monitor_options: Any,
    ):
        self.schedule = MonitorSchedule(every_n_steps, tuple(at_steps), on_evaluate, at_start, at_end)
        self._output_dir = output_dir
        self._tokenizer = tokenizer
        self._options = dict(analyzers=analyzers, data=data, schedule=self.schedule, **monitor_options)
        # built now so that a bad analyzer name or option fails where the callback is created
        self.monitor = TrainingMonitor(output_dir=output_dir or "interpsuite_monitor", **self._options)
        self._last_logs: dict[str, float] = {}
        self._active = False

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._active = bool(state.is_world_process_zero)
        if not self._active:
            return
        if self._output_dir is None:
            self.monitor.output_dir = Path(args.output_dir) / "interpsuite_monitor"
        tokenizer = self._tokenizer or processing_class or kwargs.get("tokenizer")
        self.monitor.start(model, tokenizer)
        if self.schedule.at_start:
            self.monitor.run(state.global_step, state.epoch, self._last_logs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self._last_logs = {k: v for k, v in logs.items() if isinstance(v, (int, float))}

    def on_step_end(self, args, state, control, **kwargs):
        if self._active and self.monitor.due(state.global_step):
            self.monitor.run(state.global_step, state.epoch, self._last_logs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._active and self.schedule.on_evaluate and not self.monitor.has_run(state.global_step):
            self.monitor.run(state.global_step, state.epoch, {**self._last_logs, **(metrics or {})})

    def on_train_end(self, args, state, control, **kwargs):
        if self._active:
            self.summary = self.monitor.finish(state.global_step, state.epoch, self._last_logs)
            self._active = False
