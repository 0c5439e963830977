"""Training-time monitors: run interpsuite analyzers while a model trains.

- `InterpsuiteCallback`: a Hugging Face `TrainerCallback` (`Trainer(callbacks=[...])`).
- `interpsuite.callbacks.lightning.InterpsuiteMonitor`: a Lightning `Callback`
  (`pip install 'interpsuite[lightning]'`).

Both are thin: they decide when to run; `interpsuite.monitor.TrainingMonitor` does the work
(docs/monitoring.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .hf import InterpsuiteCallback

__all__ = ["InterpsuiteCallback"]


def __getattr__(name: str) -> Any:
    if name == "InterpsuiteCallback":  # transformers is imported when the callback is asked for
        from .hf import InterpsuiteCallback

        return InterpsuiteCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
