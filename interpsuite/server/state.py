"""What one running server holds: the loaded model, its analysis service, the cache and the pool.

One `ServerState` per app (`app.state.server`). The model and its service are swapped together
under a lock by POST /models/switch; a request takes the pair once (`current()`) and keeps it for
its whole analysis, so a switch never changes the model under a running analysis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..analysis_service import AnalysisService
from ..errors import ConfigError
from ..progress import CancelToken
from ..result_cache import ResultCache
from .gate import ModelGate
from .jobs import Job, JobPool
from .schemas import RequestSchemas
from .settings import ServerSettings

log = logging.getLogger("interpsuite.server")


@dataclass(frozen=True)
class Loaded:
    """A model and the service that analyses with it (replaced together)."""

    name: str
    model: Any  # HookedModel
    service: AnalysisService


class ServerState:
    def __init__(
        self, settings: ServerSettings, registry: Any, model: Any = None, schemas: RequestSchemas | None = None
    ):
        self.settings = settings
        self.registry = registry
        self.schemas = schemas or RequestSchemas(registry)
        self.started = time.monotonic()
        self.cache = ResultCache(settings.cache_dir, max_bytes=settings.cache_max_bytes)
        self.pool = JobPool(settings.workers, settings.queue)
        #: forward passes share the model; jobs that prune its weights in place hold it alone
        self.gate = ModelGate()
        self._lock = threading.Lock()
        self.switching: str | None = None
        model = model if model is not None else load(settings.model)
        self._loaded = self._make(settings.model, model)

    def _make(self, name: str, model: Any) -> Loaded:
        service = AnalysisService(
            model,
            runs_dir=self.settings.runs_dir,
            cache=self.cache,
            registry=self.registry,
            batch_size=self.settings.batch_size,
            max_length=self.settings.max_length,
            draw_figures=self.settings.draw_figures,
        )
        return Loaded(name, model, service)

    def current(self) -> Loaded:
        with self._lock:
            return self._loaded

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started

    def submit(
        self, work: Callable[[Loaded, CancelToken], Any], description: str = "", *, exclusive: bool = False
    ) -> Job:
        """Queue `work(loaded, cancel)` on the pool with the current model (QueueFull when full;
        RuntimeError while a model switch is in progress). It runs holding the model gate: shared,
        or alone with `exclusive` (work that changes the weights in place)."""
        hold = self.gate.exclusive if exclusive else self.gate.shared

        def run(cancel: CancelToken) -> Any:
            with hold():
                return work(loaded, cancel)

        with self._lock:
            if self.switching is not None:
                raise RuntimeError(f"the server is switching to model {self.switching}; retry when it is done")
            loaded = self._loaded
            return self.pool.submit(run, description)

    def allowed_models(self) -> list[str]:
        from ..models.sources import EMBEDDED

        names = list(EMBEDDED)
        for extra in (self.settings.model, *self.settings.extra_models):
            if extra not in names:
                names.append(extra)
        return names

    def begin_switch(self, name: str) -> None:
        """Claim the switch (ConfigError for an unknown model; RuntimeError when busy, with the reason)."""
        if name not in self.allowed_models():
            known = ", ".join(self.allowed_models())
            raise ConfigError(f"unknown model {name!r}; models this server can load: {known}")
        with self._lock:
            if self.switching is not None:
                raise RuntimeError(f"a switch to {self.switching} is already in progress; retry when it is done")
            snapshot = self.pool.snapshot()
            if snapshot["running"] or snapshot["waiting"]:
                raise RuntimeError(
                    f"{snapshot['running']} analyses are running and {snapshot['waiting']} waiting on "
                    f"{self._loaded.name}; switch when the queue is empty (see GET /health)"
                )
            self.switching = name

    def finish_switch(self, name: str) -> Loaded:
        """Load `name` (slow; call from a thread after `begin_switch`) and make it current."""
        try:
            loaded = self._make(name, load(name))
            with self._lock:
                self._loaded = loaded
            log.info("switched to model %s", name)
            return loaded
        finally:
            with self._lock:
                self.switching = None

    def close(self) -> None:
        self.pool.shutdown()


def load(name: str) -> Any:
    from ..models import load_model

    return load_model(name)
