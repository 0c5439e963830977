"""The measured impact of pruning plans: perplexity, IOI logit difference and factual recall, with bootstrap CIs.

`evaluate_plans(model, plans, texts)` measures every plan (and the unpruned baseline) on one
shared model, never a copy of it. Two paths, because the two kinds of plan differ in what they
change:

- **Structured plans (neurons, heads) share passes.** Zeroing a neuron's gate/up rows and
  down column is the same model as zeroing its `blocks.L.mlp.post` unit, and zeroing a head's
  o_proj columns is the same as zeroing its `blocks.L.attn.z` slice (tests/test_pruning_plan.py
  checks both to 1e-5). So each structured plan becomes a list of zero interventions, and ONE
  `model.sweep` per evaluation batch runs all of them: many plans per forward pass, each pass
  starting at the first pruned layer from the reference residual stream. An impact curve of
  dozens of structured levels then costs a few batched passes instead of one full pass per
  level. The check `sweep_matches_masked.<granularity>` re-runs the largest plan of each
  granularity through its real weight masks (`masked`) on the first batch and compares.
- **Unstructured plans need weight masks**: a zeroed weight is not an activation intervention,
  so each is applied in place with `masked(model, plan)` (only the pruned entries are saved and
  restored bit-exactly on exit) and every task is measured inside that one application.
- **A plan that prunes nothing** also takes the masked path, with the baseline's batches, so
  it runs exactly the baseline's computation: the check `sparsity0_matches_baseline` requires
  the SAME numbers (tolerance 0), which catches any mask that does not restore.

Tasks (one value per plan; the bootstrap resamples the task's units: texts or prompts):
- `perplexity`: exp(total next-token NLL / predicted tokens) over the real tokens of `texts`
  (token-weighted, `token_nll` of the mechanistic engine). Texts are the bootstrap units, so
  the CI reflects which texts were chosen, the dominant source of variation at this scale.
- `ioi`: mean logit difference logit(indirect object) - logit(subject) at the last token of
  the clean IOI prompts (`ioi_pairs`, `tokenize_pairs`, `logit_diff`).
- `facts`: top-1 accuracy of the answer's token at the last position of the distinct clean
  prompts of `factual_pairs`.

The bootstrap (percentile, `n_boot` resamples, seeded) draws the SAME resampled unit sets for
every plan of a task, so the bands of different plans are paired and comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.results import Check

from .plan import PruningPlan

if TYPE_CHECKING:
    from interpsuite.models.hooked import HookedModel, TokenBatch

__all__ = ["TASKS", "ImpactResult", "evaluate_plans", "plan_interventions"]

TASKS: tuple[str, ...] = ("perplexity", "ioi", "facts")
#: the sweep and the masked forward are fp32 passes of different batch composition
SWEEP_TOLERANCE = 1e-4
COLUMNS = ["criterion", "granularity", "sparsity", "task", "value", "ci_low", "ci_high", "n"]
Progress = Callable[[Iterable, str, int], Iterable]


@dataclass
class _Part:
    """One evaluation batch of a task: the sweep metric gives one value per row."""

    batch: TokenBatch
    metric: Callable[[torch.Tensor, TokenBatch], torch.Tensor]
    keep: int | torch.Tensor


@dataclass
class _Task:
    """A task's batches and how per-row values become the statistic.

    statistic = transform(sum(values) / sum(weights)) over the units (rows); for perplexity the
    values are per-text NLL sums and the weights their predicted tokens, otherwise weights are 1."""

    name: str
    parts: list[_Part]
    weights: np.ndarray
    transform: Callable[[np.ndarray], np.ndarray]
    continuous: bool = True


@dataclass
class ImpactResult:
    """Impact of each plan. `table`: one row per (plan, task) with COLUMNS plus `plan` (index into
    the plans given), `achieved_sparsity`, `path` ("sweep" or "masked") and `delta` (value -
    baseline). `baseline`: one row per task for the unpruned model. `samples[task]`: per-unit
    values, row 0 the baseline and row i + 1 plan i (per-text NLL sums for perplexity, with
    `weights[task]` their token counts), so other statistics can be computed without rerunning."""

    table: pd.DataFrame
    baseline: pd.DataFrame
    checks: dict[str, Check] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def baseline_value(self, task: str) -> float:
        rows = self.baseline[self.baseline.task == task]
        if rows.empty:
            raise ConfigError(f"task {task!r} was not measured; measured: {', '.join(self.baseline.task)}")
        return float(rows.value.iloc[0])

    def curve(self, task: str, include_baseline: bool = True) -> pd.DataFrame:
        """The task's values by (criterion, granularity) and sparsity, ready to plot as curves with
        bands. With `include_baseline`, each curve without a sparsity-0 point starts at the baseline."""
        baseline = self.baseline_value(task)
        rows = self.table[self.table.task == task].copy()
        if include_baseline:
            base = self.baseline[self.baseline.task == task].iloc[0]
            extra = []
            for (criterion, granularity), group in rows.groupby(["criterion", "granularity"], sort=False):
                if not (group.sparsity == 0).any():
                    extra.append(
                        {
                            **{c: base[c] for c in ("task", "value", "ci_low", "ci_high", "n")},
                            "criterion": criterion,
                            "granularity": granularity,
                            "sparsity": 0.0,
                            "achieved_sparsity": 0.0,
                            "plan": -1,
                            "path": "baseline",
                        }
                    )
            if extra:
                rows = pd.concat([rows, pd.DataFrame(extra)], ignore_index=True)
        rows["delta"] = rows.value - baseline
        return rows.sort_values(["criterion", "granularity", "sparsity"], kind="stable").reset_index(drop=True)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks.values())

    def summary(self) -> dict[str, Any]:
        """A small JSON payload: baseline and per-plan values per task, and the checks."""
        return {
            "baseline": {r.task: round(float(r.value), 6) for r in self.baseline.itertuples()},
            "plans": [
                {
                    "plan": int(r.plan),
                    "task": r.task,
                    "value": round(float(r.value), 6),
                    "delta": round(float(r.delta), 6),
                }
                for r in self.table.itertuples()
            ],
            "checks": {
                name: {"value": c.value, "threshold": c.threshold, "passed": c.passed}
                for name, c in self.checks.items()
            },
        }


# --- plans as interventions ------------------------------------------------------------------
def plan_interventions(plan: PruningPlan) -> list[Intervention]:
    """The zero interventions equal to a structured plan's masks (mlp.post units, attn.z heads)."""
    if plan.granularity == "neurons":
        return [Intervention(f"blocks.{layer}.mlp.post", "zero", units=ids) for layer, ids in plan.units.items() if ids]
    if plan.granularity == "heads":
        return [Intervention(f"blocks.{layer}.attn.z", "zero", heads=ids) for layer, ids in plan.units.items() if ids]
    raise ConfigError("an unstructured plan prunes weights, which no activation intervention expresses; apply it")


def _prunes_nothing(plan: PruningPlan) -> bool:
    return plan.achieved_sparsity().pruned == 0


# --- validation (all before any forward pass) ------------------------------------------------
def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"evaluate_plans: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_tasks(tasks: Any) -> list[str]:
    tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise ConfigError(f"evaluate_plans: tasks={tasks}; give a non-empty list without repeats of {', '.join(TASKS)}")
    return tasks


def _check_plans(model: HookedModel, plans: Any) -> list[PruningPlan]:
    if isinstance(plans, PruningPlan):
        plans = [plans]
    plans = list(plans)
    for i, plan in enumerate(plans):
        if not isinstance(plan, PruningPlan):
            raise ConfigError(f"evaluate_plans: plans[{i}] is a {type(plan).__name__}, not a PruningPlan")
        plan.validate_for(model)
    return plans


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ConfigError("evaluate_plans: the perplexity task needs evaluation text; give texts=[...]")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t]
    if bad:
        raise ConfigError(f"evaluate_plans: texts{bad[:5]} are empty or not strings; give non-empty strings")
    return texts


# --- tasks ----------------------------------------------------------------------------------
def _perplexity_task(model: HookedModel, texts: list[str], batch_size: int, max_length: int) -> _Task:
    from interpsuite_plugins.mechanistic.head_ablation import sweep_loss

    parts, counts = [], []
    for batch in model.batches(texts, batch_size, max_length):
        parts.append(_Part(batch, sweep_loss, 0))
        counts.append(batch.attention_mask[:, 1:].sum(1).double().cpu().numpy())
    weights = np.concatenate(counts)
    if not (weights > 0).any():
        raise ConfigError(
            "evaluate_plans: every text is a single token, so there is no next token to predict; give texts of at "
            "least two tokens"
        )
    return _Task("perplexity", parts, weights, np.exp)


def _last_token_part(batch: TokenBatch, metric: Callable) -> _Part:
    keep, column = batch.last_positions()

    def per_row(output: torch.Tensor, repeated: TokenBatch) -> torch.Tensor:
        k = output.shape[0] // column.shape[0]
        return metric(output, column.repeat(k), k)

    return _Part(batch, per_row, keep)


def _pair_task(model: HookedModel, name: str, pairs: list, batch_size: int, allow_first_piece: bool) -> _Task:
    from interpsuite_plugins.mechanistic.metrics import logit_diff
    from interpsuite_plugins.mechanistic.pairs import tokenize_pairs

    parts = []
    for start in range(0, len(pairs), batch_size):
        chunk = tokenize_pairs(model, pairs[start : start + batch_size], allow_first_piece, what=name)
        answer, wrong = chunk.answer_ids, chunk.wrong_ids
        if name == "ioi":

            def metric(output, column, k, answer=answer, wrong=wrong):
                return logit_diff(output, column, answer.repeat(k), wrong.repeat(k))

        else:

            def metric(output, column, k, answer=answer):
                rows = torch.arange(output.shape[0], device=output.device)
                top = output[rows, column.to(output.device)].argmax(-1)
                return (top == answer.repeat(k)).to(torch.float32)

        parts.append(_last_token_part(chunk.clean, metric))
    return _Task(name, parts, np.ones(len(pairs)), lambda x: x, continuous=name == "ioi")


def _tasks(model, names, texts, batch_size, max_length, n_pairs, seed, allow_first_piece) -> list[_Task]:
    from interpsuite_plugins.mechanistic.pairs import factual_pairs, ioi_pairs

    tasks = []
    for name in names:
        if name == "perplexity":
            tasks.append(_perplexity_task(model, texts, batch_size, max_length))
        elif name == "ioi":
            tasks.append(
                _pair_task(model, name, ioi_pairs(n_pairs, seed, model.tokenizer), batch_size, allow_first_piece)
            )
        else:
            distinct = list({p.clean: p for p in factual_pairs(model.tokenizer, None, seed)}.values())[:n_pairs]
            tasks.append(_pair_task(model, name, distinct, batch_size, allow_first_piece))
    return tasks


# --- running --------------------------------------------------------------------------------
def _forward_values(model: HookedModel, task: _Task) -> np.ndarray:
    """Per-row values of one plain pass per batch (the baseline and the masked path)."""
    values = []
    with torch.no_grad():
        for part in task.parts:
            out = model.forward(part.batch, logits_to_keep=part.keep).output
            values.append(part.metric(out, part.batch).double().cpu().numpy())
    return np.concatenate(values)


def _sweep_rows(model: HookedModel, part: _Part, requested: int) -> int:
    """Rows per sweep pass: `requested`, capped by the memory of the logits the metric needs."""
    from interpsuite_plugins.mechanistic.head_ablation import LOSS_LOGIT_BYTES

    width = part.batch.input_ids.shape[1]
    kept = width if isinstance(part.keep, int) and part.keep == 0 else int(torch.as_tensor(part.keep).numel())
    cap = LOSS_LOGIT_BYTES // max(1, kept * model.info.vocab_size * 4)
    return max(part.batch.size, min(requested, cap))


def _sweep_values(model, task: _Task, items: list[list[Intervention]], rows: int, progress) -> np.ndarray:
    """[len(items), rows of the task]: one batched sweep per evaluation batch over all items."""
    values = []
    with torch.no_grad():
        for i, part in enumerate(task.parts):
            watch = None
            if progress is not None:

                def watch(chunks, i=i):
                    return progress(chunks, f"pruning impact: {task.name} sweep {i + 1}/{len(task.parts)}", len(chunks))

            out = model.sweep(
                part.batch,
                items,
                part.metric,
                batch_size=_sweep_rows(model, part, rows),
                logits_to_keep=part.keep,
                progress=watch,
            )
            values.append(out.double().cpu().numpy())
    return np.concatenate(values, axis=1)


def _statistics(
    task: _Task, values: np.ndarray, n_boot: int, seed: int, index: int
) -> list[tuple[float, float, float]]:
    """(value, ci_low, ci_high) per row of `values` ([settings, units]); paired percentile bootstrap."""
    used = task.weights > 0
    values, weights = values[:, used], task.weights[used]
    point = task.transform(values.sum(1) / weights.sum())
    n = weights.size
    if n_boot == 0:
        return [(float(p), math.nan, math.nan) for p in point]
    draws = np.random.default_rng([seed, index]).integers(0, n, size=(n_boot, n))
    denominators = weights[draws].sum(-1)
    boot = np.stack([task.transform(row[draws].sum(-1) / denominators) for row in values])  # [settings, n_boot]
    low, high = np.percentile(boot, [2.5, 97.5], axis=1)
    return [(float(p), float(lo), float(hi)) for p, lo, hi in zip(point, low, high, strict=True)]


def evaluate_plans(
    model: HookedModel,
    plans: Sequence[PruningPlan],
    texts: Sequence[str] | None = None,
    *,
    tasks: Sequence[str] = ("perplexity",),
    batch_size: int = 8,
    max_length: int = 128,
    n_boot: int = 1000,
    seed: int = 0,
    n_pairs: int = 64,
    sweep_batch: int = 32,
    share_passes: bool = True,
    allow_first_piece: bool = False,
    progress: Progress | None = None,
) -> ImpactResult:
    """Measure each plan and the unpruned baseline on `tasks`; the model is pruned in place one
    plan at a time (or not at all, for structured plans on the sweep path) and never copied.

    `share_passes=False` evaluates structured plans through their weight masks too, one apply
    per plan: the reference the sweep path is tested against. `n_pairs`: IOI prompts, and at
    most that many distinct factual prompts; `allow_first_piece`: score multi-piece answers by
    their first piece (byte-level tokenizers of tiny models). `progress(iterable, desc, total)`
    wraps the loops (RunContext.progress fits)."""
    from .masks import active_plan, masked

    names = _check_tasks(tasks)
    for option, value, minimum in (("batch_size", batch_size, 1), ("n_boot", n_boot, 0), ("n_pairs", n_pairs, 1)):
        _check_int(option, value, minimum)
    _check_int("sweep_batch", sweep_batch, 1)
    if not model.info.is_causal:
        raise ConfigError(
            f"evaluate_plans: {model.info.name} is an encoder without a causal LM head; perplexity, the IOI logit "
            "difference and factual recall are read from next-token logits. Use a causal LM"
        )
    plans = _check_plans(model, plans)
    if "perplexity" in names:
        texts = _check_texts(texts)
    applied = active_plan(model)
    if applied is not None:
        raise ConfigError(
            f"evaluate_plans: a pruning plan ({applied}) is already applied to this model; exit its `with` block so "
            "each plan is measured against the unpruned model"
        )
    task_list = _tasks(model, names, texts, batch_size, max_length, n_pairs, seed, allow_first_piece)

    swept = [
        i for i, p in enumerate(plans) if share_passes and p.granularity != "unstructured" and not _prunes_nothing(p)
    ]
    masked_ids = [i for i in range(len(plans)) if i not in set(swept)]
    values = {t.name: np.full((len(plans) + 1, t.weights.size), np.nan) for t in task_list}
    for task in task_list:
        values[task.name][0] = _forward_values(model, task)
    if swept:
        items = [plan_interventions(plans[i]) for i in swept]
        for task in task_list:
            values[task.name][[i + 1 for i in swept]] = _sweep_values(model, task, items, sweep_batch, progress)
    loop = progress(masked_ids, "pruning impact: masked plans", len(masked_ids)) if progress else masked_ids
    for i in loop:
        with masked(model, plans[i]):
            for task in task_list:
                values[task.name][i + 1] = _forward_values(model, task)

    checks = _checks(model, plans, swept, task_list, values)
    rows, base_rows = [], []
    for index, task in enumerate(task_list):
        stats = _statistics(task, values[task.name], n_boot, seed, index)
        n = int((task.weights > 0).sum())
        base_rows.append(
            {"task": task.name, "value": stats[0][0], "ci_low": stats[0][1], "ci_high": stats[0][2], "n": n}
        )
        for i, plan in enumerate(plans):
            value, low, high = stats[i + 1]
            rows.append(
                {
                    "plan": i,
                    "criterion": plan.criterion,
                    "granularity": plan.granularity,
                    "sparsity": plan.sparsity,
                    "achieved_sparsity": plan.achieved_sparsity().overall,
                    "task": task.name,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "n": n,
                    "path": "sweep" if i in swept else "masked",
                    "delta": value - stats[0][0],
                }
            )
    extra = ["plan", "achieved_sparsity", "path", "delta"]
    table = pd.DataFrame(rows, columns=[*COLUMNS, *extra])
    baseline = pd.DataFrame(base_rows, columns=["task", "value", "ci_low", "ci_high", "n"])
    weights = {t.name: t.weights for t in task_list}
    return ImpactResult(table, baseline, checks, values, weights)


def _checks(model, plans, swept, task_list, values) -> dict[str, Check]:
    """sparsity0_matches_baseline (exact) and sweep_matches_masked.<granularity> (<= 1e-4).

    The sweep check re-runs, for each structured granularity, the plan pruning the most units
    through its weight masks on each continuous task's first batch, per row: NLL per predicted
    token for perplexity (so long texts do not scale the error), the logit difference for IOI,
    relative to max(1, |value|). Top-1 accuracy is left out: a near tie may flip either way."""
    from .masks import masked

    checks: dict[str, Check] = {}
    empty = [i for i, p in enumerate(plans) if _prunes_nothing(p)]
    if empty:
        worst = max(
            float(np.nanmax(np.abs(values[t.name][i + 1] - values[t.name][0]))) for i in empty for t in task_list
        )
        checks["sparsity0_matches_baseline"] = Check(worst, 0.0)
    for granularity in ("neurons", "heads"):
        candidates = [i for i in swept if plans[i].granularity == granularity]
        continuous = [t for t in task_list if t.continuous]
        if not candidates or not continuous:
            continue
        largest = max(candidates, key=lambda i: plans[i].achieved_sparsity().pruned)
        worst = 0.0
        with masked(model, plans[largest]), torch.no_grad():
            for task in continuous:
                part = task.parts[0]
                reference = part.metric(model.forward(part.batch, logits_to_keep=part.keep).output, part.batch)
                reference = reference.double().cpu().numpy()
                rows = reference.size
                swept_values = values[task.name][largest + 1][:rows]
                scale = np.maximum(task.weights[:rows], 1.0) if task.name == "perplexity" else np.ones(rows)
                a, b = swept_values / scale, reference / scale
                worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)))))
        checks[f"sweep_matches_masked.{granularity}"] = Check(worst, SWEEP_TOLERANCE)
    return checks
