"""POST /analyze and POST /analyze/batch: analyses through the bounded pool, with a time budget.

The request models are generated from the registry's analyzers (`schemas.RequestSchemas`), so
these routes are built per app by `build_router(schemas)`. (No `from __future__ import
annotations` here: FastAPI must see the generated classes themselves in the signatures.)
"""

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from ..analysis import check_limits, check_request, deadline, outcome_json, run_cached, submit, wait
from ..schemas import RequestSchemas
from ..state import Loaded, ServerState
from .deps import get_state

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "a ConfigError: unknown analyzer or option, bad value, empty text (the CLI's message)"},
    413: {"description": "body, text count or text length over the server's limits"},
    422: {"description": "the request does not fit the schema (one line naming the field)"},
    503: {"description": "the analysis queue is full (Retry-After)"},
    504: {"description": "the analysis took longer than the time budget and was cancelled"},
}


def build_router(schemas: RequestSchemas) -> APIRouter:
    router = APIRouter(tags=["analyze"])
    analyze_request = schemas.AnalyzeRequest
    batch_request = schemas.BatchRequest

    @router.post("/analyze", summary="Run analyzers on a text (or texts)", responses=_ERRORS)
    async def analyze(body: analyze_request, state: ServerState = Depends(get_state)) -> dict:  # type: ignore[valid-type]
        """The results.json fragment of each analyzer, with tables as JSON rows and figures as
        URLs under /runs/{run_id}/files/. Cached results come back without a forward pass."""
        texts, analyzers = body.text_list(), body.analyzer_options()
        until = deadline(state.settings)
        check_limits(state.settings, [texts])
        service = state.current().service
        await run_in_threadpool(check_request, service, texts, analyzers)
        if await run_in_threadpool(service.cached, texts, analyzers):  # no forward pass: skip the queue (a peek)
            return outcome_json(await run_cached(service, texts, analyzers, state.settings, until))

        def work(loaded: Loaded, cancel: Any) -> Any:
            return loaded.service.analyze(texts, analyzers, cancel=cancel)

        job = submit(state, work, f"analyze {','.join(analyzers)}")
        return outcome_json(await wait(job, state.settings, until))

    @router.post("/analyze/batch", summary="Several analyses, run in order as one job", responses=_ERRORS)
    async def analyze_batch(body: batch_request, state: ServerState = Depends(get_state)) -> dict:  # type: ignore[valid-type]
        """`{"items": [{text | texts, analyzers}, ...]}` -> `{"items": [outcome, ...]}` in order.
        Every item is checked before the first one runs; the batch takes one place in the queue."""
        items = [(item.text_list(), item.analyzer_options()) for item in body.items]
        until = deadline(state.settings)
        check_limits(state.settings, [texts for texts, _ in items])
        service = state.current().service
        for i, (texts, analyzers) in enumerate(items):
            await run_in_threadpool(check_request, service, texts, analyzers, f"items[{i}]")

        def work(loaded: Loaded, cancel: Any) -> list:
            outcomes = []
            for texts, analyzers in items:
                outcomes.append(loaded.service.analyze(texts, analyzers, cancel=cancel))
                if cancel.cancelled:
                    break
            return outcomes

        job = submit(state, work, f"batch of {len(items)}")
        outcomes = await wait(job, state.settings, until)
        return {"items": [outcome_json(outcome) for outcome in outcomes]}

    return router
