"""The Lightning callback: when to run the monitor, in Lightning terms.

Needs `lightning` (`pip install 'interpsuite[lightning]'`); `pytorch_lightning` works too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..monitor import MonitorSchedule, TrainingMonitor

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError as err:
        raise ImportError(
            "interpsuite.callbacks.lightning needs Lightning: pip install 'interpsuite[lightning]'"
        ) from err


class InterpsuiteMonitor(Callback):
    """Run interpsuite analyzers on the Hugging Face model inside a LightningModule.

        trainer = lightning.Trainer(callbacks=[InterpsuiteMonitor({"attention_entropy": {}},
                                                                  every_n_steps=100)])

    `model_attr`: the LightningModule attribute holding the transformers model (default
    `model`); `tokenizer`: given here or found as the module's `tokenizer` attribute. Steps are
    `trainer.global_step` (optimizer steps). W&B: logged into the active run on Lightning's
    `trainer/global_step` axis. Only global rank zero runs analyses.
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
        model_attr: str = "model",
        tokenizer: Any = None,
        **monitor_options: Any,
    ):
        self.schedule = MonitorSchedule(every_n_steps, tuple(at_steps), on_evaluate, at_start, at_end)
        self._output_dir = output_dir
        self.model_attr, self._tokenizer = model_attr, tokenizer
        monitor_options.setdefault("wandb_step_key", "trainer/global_step")
        self.monitor = TrainingMonitor(
            analyzers, data, schedule=self.schedule, output_dir=output_dir or "interpsuite_monitor", **monitor_options
        )
        self._active = False
        self.summary: dict[str, Any] | None = None

    def _hf_model(self, pl_module):
        model = getattr(pl_module, self.model_attr, None)
        if model is None or not hasattr(model, "config"):
            raise ConfigError(
                f"monitor: the LightningModule has no transformers model at .{self.model_attr}; "
                "pass model_attr='<attribute>' to InterpsuiteMonitor"
            )
        return model

    def _train_values(self, trainer) -> dict[str, float]:
        values = {}
        for key, value in trainer.callback_metrics.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                continue
        return values

    def on_train_start(self, trainer, pl_module) -> None:
        self._active = bool(trainer.is_global_zero)
        if not self._active:
            return
        if self._output_dir is None:
            self.monitor.output_dir = Path(trainer.default_root_dir) / "interpsuite_monitor"
        tokenizer = self._tokenizer or getattr(pl_module, "tokenizer", None)
        self.monitor.start(self._hf_model(pl_module), tokenizer)
        if self.schedule.at_start:
            self.monitor.run(trainer.global_step, trainer.current_epoch, {})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._active and self.monitor.due(trainer.global_step):
            self.monitor.run(trainer.global_step, trainer.current_epoch, self._train_values(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._active and self.schedule.on_evaluate and not trainer.sanity_checking:
            if not self.monitor.has_run(trainer.global_step):
                self.monitor.run(trainer.global_step, trainer.current_epoch, self._train_values(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        if self._active:
            values = self._train_values(trainer)
            self.summary = self.monitor.finish(trainer.global_step, trainer.current_epoch, values)
            self._active = False
