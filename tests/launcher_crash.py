"""A Hydra callback that kills the process of one job: a worker that dies mid-multirun, as an
out-of-memory kill or a lost node does. Used by tests/test_launchers.py with the joblib launcher
only (with the basic launcher it would kill the driver itself)."""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback


class DieInJob(Callback):
    def __init__(self, job: int = 1) -> None:
        self.job = job

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if int(config.hydra.job.num) == self.job:
            os._exit(9)  # no cleanup, no exception: the worker process is simply gone
