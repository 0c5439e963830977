"""/api/pruning/*: weight statistics, importance scores, pruning plans, their impact and export.

Thin routes over the engines of `plugins/pruning` (weights.analyze_weights,
criteria.importance_scores, plan.PruningPlan, impact.evaluate_plans, export.export_pruned). Every
request is checked with the engines' own checks (criterion/granularity pairs, layers, units,
sparsity, scope, tasks) before it takes a place in the queue; the work itself runs on the pool,
and a progress hook stops it between batches once the request's time budget is spent.

Plans made by /candidates and /impact-analysis are kept in memory under a `plan_id`
(`PlanStore`: least recently used out first, bounded in count and in mask bytes, since an
unstructured plan holds one byte per weight) so /impact-analysis and /export can reuse them. A
plan remembers the model it was made on; after a model switch it is refused with one line.

Plans are applied to the shared model in place (masks restored exactly, see plugins/pruning/masks.py),
so every other analysis running at that moment would see the pruned weights: the server's
default single worker (`--workers 1`) runs pool work one job at a time, which keeps them apart.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ...analyzer import check_layers
from ...errors import ConfigError
from ...progress import Cancelled
from ...results import to_jsonable
from ..analysis import check_limits, deadline, submit, wait
from ..errors import ApiError
from ..paths import export_target
from ..state import Loaded, ServerState
from .deps import get_state

router = APIRouter(prefix="/api/pruning", tags=["pruning"])

_FORBID = ConfigDict(extra="forbid")
#: plans kept for /impact-analysis and /export, and the most mask bytes they may hold together
MAX_PLANS = 32
MAX_PLAN_BYTES = 1 << 30
#: units one ablation request may measure: each is an item of one uninterruptible sweep per text batch
MAX_ABLATION_UNITS = 2048
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "a ConfigError: bad criterion/granularity pair, layer, sparsity, empty text (one line)"},
    404: {"description": "unknown plan_id (plans are kept in memory, a few dozen at most)"},
    409: {"description": "the export folder exists (pass overwrite: true)"},
    413: {"description": "too many or too long texts"},
    422: {"description": "the request does not fit the schema"},
    503: {"description": "the analysis queue is full (Retry-After)"},
    504: {"description": "the time budget ran out; the work was cancelled"},
}


# --- requests ----------------------------------------------------------------------------------------
class WeightAnalysisRequest(BaseModel):
    """Which blocks' linear maps to describe (weights only, no text)."""

    model_config = _FORBID
    layers: list[int] | None = Field(default=None, description="blocks (null: all)")
    kinds: list[str] | None = Field(default=None, description="e.g. ['attn.q', 'mlp.down'] (null: all)")
    spectrum: bool = Field(default=True, description="singular values, spectral norm and ranks (the slow part)")
    include_spectra: bool = Field(default=False, description="also the top singular values of each matrix")
    include_histograms: bool = Field(default=False, description="also the log10|w| histogram of each matrix")


class ScoringFields(BaseModel):
    """What every scoring request shares: the blocks, and (ablation) the units to measure."""

    model_config = _FORBID
    layers: list[int] | None = Field(default=None, description="blocks scored (null: all)")
    units: dict[int, list[int]] | None = Field(
        default=None, description="ablation only: {layer: [unit ids]} to measure (the rest are never pruned)"
    )


class ImportanceRequest(ScoringFields):
    texts: list[str] = Field(description="calibration texts")
    criterion: str = Field(default="activation", description="neurons: activation | taylor | ablation; heads: ...")
    granularity: Literal["neurons", "heads"] = "neurons"
    top: int = Field(default=20, ge=1, le=10000, description="units listed at each end of the ranking")


class CandidatesRequest(ScoringFields):
    texts: list[str] | None = Field(default=None, description="calibration texts (magnitude needs none)")
    criterion: str = Field(default="magnitude", description="unstructured: magnitude | wanda; neurons; heads")
    granularity: str = Field(default="unstructured", description="unstructured | neurons | heads")
    sparsity: float = Field(default=0.5, description="fraction to prune, in [0, 1)")
    scope: str | None = Field(default=None, description="per_row | per_layer | global (null: the default)")


class ImpactFields(ScoringFields):
    texts: list[str] | None = Field(default=None, description="evaluation texts (needed for perplexity)")
    calibration: list[str] | None = Field(
        default=None, description="calibration texts for data-aware criteria (null: `texts`)"
    )
    granularity: str = Field(default="unstructured", description="unstructured | neurons | heads")
    sparsities: list[float] | None = Field(default=None, description="levels in [0, 1), e.g. [0, 0.2, 0.5]")
    scope: str | None = None
    tasks: list[str] = Field(default_factory=lambda: ["perplexity"], description="perplexity | ioi | facts")
    n_boot: int = Field(default=1000, ge=0, le=100000, description="bootstrap resamples (0: no intervals)")
    n_pairs: int = Field(default=64, ge=1, le=10000, description="IOI / factual prompts")
    seed: int = 0
    allow_first_piece: bool = Field(default=False, description="score multi-piece answers by their first piece")


class ImpactRequest(ImpactFields):
    """Either a criterion and sparsities (plans made here) or `plan_ids` from earlier requests."""

    criterion: str | None = None
    plan_ids: list[str] | None = None


class BatchRequest(ImpactFields):
    """Several criteria at the same sparsities, measured in one job against one baseline."""

    criteria: list[str] = Field(min_length=1, description="criteria of `granularity`")


class ExportRequest(BaseModel):
    model_config = _FORBID
    plan_id: str
    name: str = Field(description="folder name under the server's exports directory")
    overwrite: bool = False


# --- the plan store ----------------------------------------------------------------------------------
@dataclass
class StoredPlan:
    plan: Any  # PruningPlan
    model: str
    nbytes: int


class PlanStore:
    """plan_id -> plan, least recently used out first past `max_plans` or `max_bytes` of masks."""

    def __init__(self, max_plans: int = MAX_PLANS, max_bytes: int = MAX_PLAN_BYTES):
        self.max_plans, self.max_bytes = max_plans, max_bytes
        self._plans: OrderedDict[str, StoredPlan] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, plan: Any, model: str) -> str:
        plan_id = uuid.uuid4().hex[:16]
        nbytes = sum(mask.numel() * mask.element_size() for mask in plan.masks.values())
        with self._lock:
            self._plans[plan_id] = StoredPlan(plan, model, nbytes)
            while len(self._plans) > self.max_plans or (
                len(self._plans) > 1 and sum(p.nbytes for p in self._plans.values()) > self.max_bytes
            ):
                self._plans.popitem(last=False)
        return plan_id

    def get(self, plan_id: str, model: str) -> Any:
        """The plan (404 when unknown or evicted; 400 when made on another model than `model`)."""
        with self._lock:
            stored = self._plans.get(plan_id)
            if stored is not None:
                self._plans.move_to_end(plan_id)
        if stored is None:
            raise ApiError(
                404,
                f"no pruning plan {plan_id!r}; plans live in memory (the {self.max_plans} most recent): "
                "make one with POST /api/pruning/candidates",
            )
        if stored.model != model:
            raise ConfigError(
                f"plan {plan_id} was made on model {stored.model} but the server now serves {model}; make a new plan"
            )
        return stored.plan

    def listing(self) -> list[dict]:
        """Every kept plan, most recent first: id, model and the plan's summary."""
        with self._lock:
            items = list(self._plans.items())
        return [{"plan_id": key, "model": p.model, "summary": p.plan.summary()} for key, p in reversed(items)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._plans)


_STATE_LOCK = threading.Lock()


def plan_store(state: ServerState) -> PlanStore:
    """The server's plan store (made on first use)."""
    with _STATE_LOCK:
        store = getattr(state, "pruning_plans", None)
        if store is None:
            store = PlanStore()
            state.pruning_plans = store
        return store


# --- checks before the queue ---------------------------------------------------------------------------
def check_text_list(texts: list[str] | None, what: str, required: bool = True) -> list[str]:
    """Texts as a list; an empty list (when required) or a blank text is one ConfigError line."""
    texts = list(texts or [])
    if required and not texts:
        raise ConfigError(f"{what}: the list is empty; give at least one non-empty text")
    for i, text in enumerate(texts):
        if not text.strip():
            raise ConfigError(f"{what}[{i}] is empty; give non-empty texts only")
    return texts


@dataclass
class Scoring:
    """A checked scoring request: what importance_scores will be called with."""

    criterion: str
    granularity: str
    texts: list[str]
    layers: list[int]
    units: dict[int, list[int]] | None


def check_scoring(loaded: Loaded, criterion: str, granularity: str, texts: list[str], request: ScoringFields,
                  max_length: int | None) -> Scoring:  # fmt: skip
    """The engine's own checks of a scoring request (no forward pass): criterion/granularity pair,
    causal LM for loss criteria, calibration text, layers, units, a next token to predict."""
    from interpsuite_plugins.pruning import criteria

    model = loaded.model
    texts = criteria._check_request(model, criterion, granularity, texts)
    layers = check_layers(model.info, request.layers, "layers")
    if request.units is not None and criterion != "ablation":
        raise ConfigError(f"units restricts the ablation criterion only; {criterion!r} scores every unit cheaply")
    if criterion == "ablation":
        pairs = criteria._check_units(model, request.units, granularity, layers)
        if len(pairs) > MAX_ABLATION_UNITS:
            raise ConfigError(
                f"ablation would measure {len(pairs)} {granularity} (one ablated pass each, which cannot be stopped "
                f"midway); give `units` or `layers` for at most {MAX_ABLATION_UNITS}, or use the taylor criterion"
            )
    if criterion in criteria.NEEDS_LOSS:
        criteria._check_predictable(model, texts, max_length)
    return Scoring(criterion, granularity, texts, layers, request.units)


def check_scope(scope: str | None, granularity: str) -> None:
    from interpsuite_plugins.pruning.plan import SCOPES

    if scope is not None and scope not in SCOPES:
        raise ConfigError(f"scope: unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if scope == "per_row" and granularity != "unstructured":
        raise ConfigError(f"scope 'per_row' is for unstructured pruning; use 'per_layer' or 'global' for {granularity}")


def check_sparsities(levels: list[float] | None) -> list[float]:
    from interpsuite_plugins.pruning.plan import check_sparsity

    if not levels:
        raise ConfigError("sparsities is empty; give levels in [0, 1), e.g. [0, 0.25, 0.5]")
    out = []
    for level in levels:
        try:
            out.append(check_sparsity(level))
        except ConfigError as err:
            raise ConfigError(f"sparsities: {err}") from None
    return out


def check_impact(loaded: Loaded, body: ImpactFields) -> list[str]:
    """The tasks, checked as evaluate_plans checks them (before any pass)."""
    from interpsuite_plugins.pruning.impact import _check_tasks

    if not loaded.model.info.is_causal:
        raise ConfigError(
            f"{loaded.name} is an encoder without a causal LM head; pruning impact is read from next-token logits"
        )
    return _check_tasks(body.tasks)


# --- running ---------------------------------------------------------------------------------------------
def cancellable(cancel: Any):
    """A `progress(iterable, desc, total)` for the engines that stops between items once cancelled."""

    def progress(iterable: Iterable, desc: str = "", total: int | None = None) -> Iterator:
        for item in iterable:
            if cancel.cancelled:
                raise Cancelled(f"{desc or 'pruning'}: cancelled")
            yield item

    return progress


def scores_of(model: Any, scoring: Scoring, settings: Any, progress: Any) -> Any:
    from interpsuite_plugins.pruning.criteria import importance_scores

    return importance_scores(
        model, scoring.criterion, scoring.granularity, scoring.texts, layers=scoring.layers, units=scoring.units,
        batch_size=settings.batch_size, max_length=settings.max_length, progress=progress,
    )  # fmt: skip


def evaluate(model: Any, plans: list, body: ImpactFields, tasks: list[str], texts: list[str], settings: Any,
             progress: Any) -> Any:  # fmt: skip
    from interpsuite_plugins.pruning.impact import evaluate_plans

    return evaluate_plans(
        model, plans, texts, tasks=tasks, batch_size=settings.batch_size, max_length=settings.max_length or 128,
        n_boot=body.n_boot, seed=body.seed, n_pairs=body.n_pairs, allow_first_piece=body.allow_first_piece,
        progress=progress,
    )  # fmt: skip


def impact_body(result: Any, plan_ids: list[str], criteria: set[str] | None = None) -> dict:
    """{"baseline", "baseline_intervals", "curves": {task: points}, "checks", "plan_ids"} of an ImpactResult
    (only the plans of `criteria` when given: /batch-analysis splits one result by criterion)."""
    baseline = {row.task: row.value for row in result.baseline.itertuples()}
    intervals = {
        row.task: {"value": row.value, "ci_low": row.ci_low, "ci_high": row.ci_high, "n": row.n}
        for row in result.baseline.itertuples()
    }
    curves: dict[str, list[dict]] = {}
    for task in baseline:
        table = result.curve(task)
        if criteria is not None:
            table = table[table.criterion.isin(criteria)]
        curves[task] = [
            {
                "criterion": row.criterion,
                "granularity": row.granularity,
                "sparsity": row.sparsity,
                "achieved_sparsity": row.achieved_sparsity,
                "value": row.value,
                "ci_low": row.ci_low,
                "ci_high": row.ci_high,
                "delta": row.delta,
                "path": row.path,
                "plan_id": plan_ids[int(row.plan)] if int(row.plan) >= 0 else None,
            }
            for row in table.itertuples()
        ]
    wanted = [i for i, p in enumerate(plan_ids) if criteria is None or result_criterion(result, i) in criteria]
    return {
        "baseline": baseline,
        "baseline_intervals": intervals,
        "curves": curves,
        "checks": {name: check.to_dict() for name, check in result.checks.items()},
        "plan_ids": [plan_ids[i] for i in wanted],
    }


def result_criterion(result: Any, plan: int) -> str:
    rows = result.table[result.table.plan == plan]
    return str(rows.criterion.iloc[0]) if len(rows) else ""


def records(frame: Any) -> list[dict]:
    return to_jsonable(frame.to_dict(orient="records"))


# --- routes ---------------------------------------------------------------------------------------------
@router.post("/weight-analysis", summary="Statistics of every linear map (no text)", responses=_ERRORS)
async def weight_analysis(body: WeightAnalysisRequest, state: ServerState = Depends(get_state)) -> dict:
    """One row per matrix (shape, moments, |w| quantiles, norms, ranks, outliers) as
    `weights.analyze_weights` computes it, a summary and the analysis' own checks."""
    from interpsuite_plugins.pruning.weights import analyze_weights, linear_modules

    settings = state.settings
    until = deadline(settings)
    loaded = state.current()
    layers = check_layers(loaded.model.info, body.layers, "layers") if body.layers is not None else None
    await run_in_threadpool(linear_modules, loaded.model, layers, body.kinds)  # unknown kinds: one line, no SVD

    def work(current: Loaded, cancel: Any) -> Any:
        return analyze_weights(
            current.model, spectrum=body.spectrum, layers=layers, kinds=body.kinds, progress=cancellable(cancel)
        )

    analysis = await wait(submit(state, work, "pruning weight-analysis"), settings, until)
    table = analysis.modules
    params = int(table["numel"].sum()) if len(table) else 0
    zeros = int(table["n_zero"].sum()) if len(table) else 0
    summary: dict[str, Any] = {
        "matrices": len(table),
        "layers": sorted({int(layer) for layer in table["layer"]}) if len(table) else [],
        "parameters": params,
        "zeros": zeros,
        "frac_zero": zeros / params if params else 0.0,
        "outlier_weights": int(table["outlier_weights"].sum()) if len(table) else 0,
        "outlier_features": int(table["outlier_features"].sum()) if len(table) else 0,
    }
    if body.spectrum and len(table):
        summary["max_spectral_norm"] = float(table["spectral_norm"].max())
        summary["mean_effective_rank_ratio"] = float(table["effective_rank_ratio"].mean())
    out: dict[str, Any] = {
        "matrices": records(table),
        "summary": summary,
        "outlier_features": analysis.outlier_features,
        "checks": {name: {"value": v, "threshold": t, "mode": m} for name, (v, t, m) in analysis.checks().items()},
    }
    if body.include_spectra:
        out["spectra"] = records(analysis.spectra)
    if body.include_histograms:
        out["histograms"] = records(analysis.histograms)
        out["hist_edges"] = analysis.hist_edges.tolist()
    return to_jsonable(out)


@router.post("/neuron-importance", summary="Importance of MLP neurons (or heads) by one criterion",
             responses=_ERRORS)  # fmt: skip
async def neuron_importance(body: ImportanceRequest, state: ServerState = Depends(get_state)) -> dict:
    """The least and most important units by `criterion` (higher = more important) and, for
    `activation`, the dead neurons (active on no calibration token)."""
    settings = state.settings
    until = deadline(settings)
    check_limits(settings, [body.texts])
    texts = check_text_list(body.texts, "texts")
    loaded = state.current()
    scoring = await run_in_threadpool(
        check_scoring, loaded, body.criterion, body.granularity, texts, body, settings.max_length
    )

    def work(current: Loaded, cancel: Any) -> Any:
        return scores_of(current.model, scoring, settings, cancellable(cancel))

    scores = await wait(submit(state, work, f"pruning importance {body.criterion}"), settings, until)
    table = scores.table()
    measured = table.dropna(subset=["score"])
    least = measured.sort_values(["score", "layer", "unit"], kind="stable").head(body.top)
    most = measured.sort_values(["score", "layer", "unit"], ascending=[False, True, True], kind="stable").head(body.top)
    dead = scores.dead() if scores.active_fraction else table.iloc[0:0]
    return to_jsonable(
        {
            "criterion": scores.criterion,
            "granularity": scores.granularity,
            "n_tokens": scores.n_tokens,
            "baseline_loss": scores.baseline_loss,
            "measured": len(measured),
            "total": len(table),
            "least_important": records(least),
            "most_important": records(most),
            "dead": records(dead),
            "dead_count": len(dead),
        }
    )


@router.post("/candidates", summary="A pruning plan: what a criterion prunes at a sparsity", responses=_ERRORS)
async def candidates(body: CandidatesRequest, state: ServerState = Depends(get_state)) -> dict:
    """The plan (`PruningPlan.to_json()`: unit ids for neurons/heads, mask shapes for weights), its
    summary (achieved sparsity, per-layer counts) and a `plan_id` for /impact-analysis and /export."""
    from interpsuite_plugins.pruning.plan import check_sparsity

    settings = state.settings
    until = deadline(settings)
    check_limits(settings, [body.texts or []])
    texts = check_text_list(body.texts, "texts", required=False)
    sparsity = check_sparsity(body.sparsity)
    check_scope(body.scope, body.granularity)
    loaded = state.current()
    scoring = await run_in_threadpool(
        check_scoring, loaded, body.criterion, body.granularity, texts, body, settings.max_length
    )

    def work(current: Loaded, cancel: Any) -> Any:
        scores = scores_of(current.model, scoring, settings, cancellable(cancel))
        return scores.plan(current.model, sparsity, body.scope)

    plan = await wait(submit(state, work, f"pruning candidates {body.criterion}"), settings, until)
    plan_id = plan_store(state).add(plan, loaded.name)
    return to_jsonable({"plan": plan.to_json(), "summary": plan.summary(), "plan_id": plan_id, "model": loaded.name})


def impact_inputs(state: ServerState, body: Any) -> tuple[Any, float, Loaded, list[str], list[str]]:
    """What impact-analysis and batch-analysis check first: limits, tasks, evaluation texts."""
    settings = state.settings
    until = deadline(settings)
    check_limits(settings, [body.texts or [], body.calibration or []])
    loaded = state.current()
    tasks = check_impact(loaded, body)
    return settings, until, loaded, tasks, check_text_list(body.texts, "texts", required="perplexity" in tasks)


@router.post("/impact-analysis", summary="Perplexity (IOI, facts) against sparsity, with bootstrap intervals",
             responses=_ERRORS)  # fmt: skip
async def impact_analysis(body: ImpactRequest, state: ServerState = Depends(get_state)) -> dict:
    """Plans of one criterion at `sparsities` (or earlier plans by `plan_ids`) measured against the
    unpruned baseline (`impact.evaluate_plans`). Curves start at the baseline; the checks include
    `sparsity0_matches_baseline` (exact) when a level is 0."""
    settings, until, loaded, tasks, texts = impact_inputs(state, body)
    store = plan_store(state)
    if body.plan_ids is not None:
        if body.criterion is not None or body.sparsities is not None:
            raise ConfigError("give `plan_ids` or `criterion` with `sparsities`, not both")
        if not body.plan_ids:
            raise ConfigError("plan_ids is empty; give ids from POST /api/pruning/candidates")
        plans = [store.get(plan_id, loaded.name) for plan_id in body.plan_ids]
        for plan in plans:
            plan.validate_for(loaded.model)

        def work(current: Loaded, cancel: Any) -> Any:
            return evaluate(current.model, plans, body, tasks, texts, settings, cancellable(cancel))

        masked = any(plan.granularity == "unstructured" for plan in plans)  # applied to the weights in place
        job = submit(state, work, "pruning impact (plans)", exclusive=masked)
        result = await wait(job, settings, until)
        return to_jsonable(impact_body(result, list(body.plan_ids)))

    if body.criterion is None:
        raise ConfigError("give `criterion` and `sparsities` (plans made here) or `plan_ids` (earlier plans)")
    levels = check_sparsities(body.sparsities)
    check_scope(body.scope, body.granularity)
    calibration = check_text_list(body.calibration, "calibration") if body.calibration is not None else texts
    scoring = await run_in_threadpool(
        check_scoring, loaded, body.criterion, body.granularity, calibration, body, settings.max_length
    )

    def sweep(current: Loaded, cancel: Any) -> Any:
        progress = cancellable(cancel)
        scores = scores_of(current.model, scoring, settings, progress)
        plans = [scores.plan(current.model, level, body.scope) for level in levels]
        return plans, evaluate(current.model, plans, body, tasks, texts, settings, progress)

    masked = body.granularity == "unstructured"  # its plans are applied to the weights in place
    job = submit(state, sweep, f"pruning impact {body.criterion}", exclusive=masked)
    plans, result = await wait(job, settings, until)
    plan_ids = [store.add(plan, loaded.name) for plan in plans]
    out = impact_body(result, plan_ids)
    out["calibration"] = "calibration" if body.calibration is not None else "texts (the evaluation texts)"
    return to_jsonable(out)


@router.post("/batch-analysis", summary="Impact curves of several criteria in one job", responses=_ERRORS)
async def batch_analysis(body: BatchRequest, state: ServerState = Depends(get_state)) -> dict:
    """`{"results": {criterion: <impact-analysis body>}}`: every criterion scored, its plans made at
    the same sparsities, and all plans measured in one evaluation against one shared baseline."""
    settings, until, loaded, tasks, texts = impact_inputs(state, body)
    levels = check_sparsities(body.sparsities)
    check_scope(body.scope, body.granularity)
    if len(set(body.criteria)) != len(body.criteria):
        raise ConfigError(f"criteria {body.criteria} lists one twice; give each once")
    calibration = check_text_list(body.calibration, "calibration") if body.calibration is not None else texts
    scorings = []
    for criterion in body.criteria:
        scorings.append(
            await run_in_threadpool(
                check_scoring, loaded, criterion, body.granularity, calibration, body, settings.max_length
            )
        )

    def work(current: Loaded, cancel: Any) -> Any:
        progress = cancellable(cancel)
        plans = []
        for scoring in scorings:
            scores = scores_of(current.model, scoring, settings, progress)
            plans += [scores.plan(current.model, level, body.scope) for level in levels]
        return plans, evaluate(current.model, plans, body, tasks, texts, settings, progress)

    masked = body.granularity == "unstructured"  # its plans are applied to the weights in place
    job = submit(state, work, f"pruning batch x{len(scorings)}", exclusive=masked)
    plans, result = await wait(job, settings, until)
    store = plan_store(state)
    plan_ids = [store.add(plan, loaded.name) for plan in plans]
    return to_jsonable({"results": {c: impact_body(result, plan_ids, {c}) for c in body.criteria}})


@router.get("/plans", summary="The pruning plans kept in memory (most recent first)")
def plans(state: ServerState = Depends(get_state)) -> dict:
    store = plan_store(state)
    return to_jsonable({"plans": store.listing(), "capacity": store.max_plans})


@router.post("/export", summary="Write a plan's pruned model as a Hugging Face folder", responses=_ERRORS)
async def export(body: ExportRequest, state: ServerState = Depends(get_state)) -> dict:
    """`export.export_pruned` into `exports_dir/name`: structured units removed physically where a
    standard config allows, the folder reloaded with transformers and compared with the masked model
    (`max_abs_logit_diff` <= `tolerance`: `passed`). 409 when the folder exists, unless `overwrite`."""
    from interpsuite_plugins.pruning.export import export_pruned

    settings = state.settings
    until = deadline(settings)
    loaded = state.current()
    plan = plan_store(state).get(body.plan_id, loaded.name)
    target = export_target(settings, body.name, "export", body.overwrite)
    plan.validate_for(loaded.model)

    def work(current: Loaded, cancel: Any) -> Any:
        if target.exists() and not body.overwrite:  # another request took the name while this one waited
            raise ApiError(409, f"export: export {body.name!r} exists already; choose another name or pass overwrite")
        return export_pruned(current.model, plan, target, overwrite=body.overwrite)

    # the export writes the plan into the weights (and restores them): nothing else may run meanwhile
    report = await wait(submit(state, work, f"pruning export {body.name}", exclusive=True), settings, until)
    out = report.to_dict()
    out.update(path=body.name, name=body.name, plan_id=body.plan_id)
    if not math.isfinite(out.get("max_abs_logit_diff", 0.0)):
        out["passed"] = False
    return to_jsonable(out)
