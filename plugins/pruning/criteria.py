"""Importance criteria for pruning (issue 15): one entry point per question, `importance_scores` and `prune`.

Every criterion answers "how much does the model need this weight / neuron / head?" with higher =
more important, so `plan_from_scores` can always drop the lowest. The criteria reuse the engines
that already measure these things; none is re-implemented here:

| granularity | criterion | what it measures | engine |
|---|---|---|---|
| unstructured | magnitude | abs(W) | `calibration.magnitude_scores` |
| unstructured | wanda | abs(W) x the input feature's L2 norm | `calibration.input_feature_norms` |
| neurons | activation | mean abs(act) over real tokens at `blocks.L.mlp.post` | `model.forward(capture=...)` |
| neurons | taylor | abs(sum over real tokens of act x dLoss/dact) | `gradient.neurons.grad_x_act` |
| neurons | ablation | loss increase when the unit is zeroed | `model.sweep` + `sweep_loss` |
| heads | taylor | the same over the head's `attn.z` d_head slice | `grad_x_act` on z |
| heads | ablation | loss increase when the head's z slice is zeroed | `model.sweep` + `sweep_loss` |

Why three neuron criteria: activation is cheap and finds dead units (it also reports the
fraction of tokens each unit is active on), taylor is the first-order estimate of the ablation
effect from one backward pass, and ablation is the true effect, whose cost grows with the number
of units (one sweep item each), hence `units` to measure only some. Unmeasured units are NaN and
`Scores.plan` never prunes them.

Loss = mean next-token NLL over the real tokens of all `texts` (`mechanistic.head_ablation.token_nll`),
token-weighted across batches, so scores do not depend on `batch_size`. Loss-based criteria need a
causal LM; encoders get activation, magnitude and wanda.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from interpsuite.analyzer import check_layers
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

from ..gradient.neurons import grad_x_act
from ..gradient.target import gradients
from ..mechanistic.head_ablation import sweep_loss, token_nll, z_name
from .calibration import input_feature_norms, magnitude_scores, wanda_scores
from .plan import GRANULARITIES, SCOPES, PruningPlan, check_sparsity, plan_from_scores
from .weights import linear_modules

__all__ = ["CRITERIA", "Scores", "importance_scores", "prune"]

#: valid criteria per granularity
CRITERIA: dict[str, tuple[str, ...]] = {
    "unstructured": ("magnitude", "wanda"),
    "neurons": ("activation", "taylor", "ablation"),
    "heads": ("taylor", "ablation"),
}
#: criteria that read calibration text, and those that need a next-token loss (a causal LM)
NEEDS_TEXT = frozenset({"wanda", "activation", "taylor", "ablation"})
NEEDS_LOSS = frozenset({"taylor", "ablation"})
#: |act| above this counts as active (the dead-neuron statistic)
ACTIVE_THRESHOLD = 1e-6
#: `prune` options passed on to `importance_scores`
OPTIONS = frozenset({"layers", "units", "batch_size", "max_length", "sweep_batch", "progress"})

Progress = Callable[[Iterable, str, int], Iterable]
UnitSpec = dict[int, Sequence[int]] | Sequence[tuple[int, int]]


@dataclass
class Scores:
    """Importance scores of one criterion (higher = more important).

    `values`: {param name: tensor shaped like the weight} (unstructured) or {layer: tensor[n_units]}
    (neurons: d_mlp, heads: n_heads), float64 on CPU for structured scores; NaN = not measured.
    `active_fraction` (neurons/activation): {layer: fraction of real tokens with |act| > 1e-6};
    0 marks a dead neuron. `baseline_loss`: the unpruned mean NLL (ablation criteria). `n_tokens`:
    what the statistic averages over (real tokens for activation and wanda, predicted next tokens
    for taylor and ablation, 0 for magnitude).
    """

    granularity: str
    criterion: str
    values: dict[Any, torch.Tensor]
    n_tokens: int = 0
    active_fraction: dict[int, torch.Tensor] = field(default_factory=dict)
    baseline_loss: float | None = None

    def table(self) -> pd.DataFrame:
        """Long table (layer, unit, score[, active_fraction]) of a neurons/heads criterion, NaN rows kept."""
        if self.granularity == "unstructured":
            raise ConfigError(
                "Scores.table is for neurons/heads scores; unstructured scores are per weight: use .values"
            )
        frames = []
        for layer, score in sorted(self.values.items()):
            frame = pd.DataFrame({"layer": layer, "unit": range(score.numel()), "score": score.double().cpu().numpy()})
            if layer in self.active_fraction:
                frame["active_fraction"] = self.active_fraction[layer].double().cpu().numpy()
            frames.append(frame)
        columns = ["layer", "unit", "score", *(["active_fraction"] if self.active_fraction else [])]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def dead(self) -> pd.DataFrame:
        """Neurons active on no real token (|act| <= 1e-6 everywhere): (layer, unit, score)."""
        if not self.active_fraction:
            raise ConfigError("dead neurons come from the neurons 'activation' criterion; compute that first")
        table = self.table()
        return table[table["active_fraction"] == 0].reset_index(drop=True)

    def plan(self, model, sparsity: float, scope: str | None = None) -> PruningPlan:
        """Prune the lowest scores. Unmeasured (NaN) units are never pruned: they are left out of
        the ranking, and a sparsity that would need them is one ConfigError line."""
        sparsity = check_sparsity(sparsity)
        if self.granularity == "unstructured":
            return plan_from_scores(model, self.values, sparsity, "unstructured", self.criterion, scope)
        return plan_from_scores(
            model, self._measured_only(sparsity, scope), sparsity, self.granularity, self.criterion, scope
        )

    def _measured_only(self, sparsity: float, scope: str | None) -> dict[int, torch.Tensor]:
        """Scores with NaN raised above every measured value (so never among the lowest), after
        checking the count to prune fits inside the measured units."""
        measured = {layer: int((~score.isnan()).sum()) for layer, score in self.values.items()}
        scored = {layer: score for layer, score in self.values.items() if measured[layer]}
        if not scored:
            raise ConfigError(f"no {self.granularity} were measured by {self.criterion}; nothing to rank")
        n = next(iter(scored.values())).numel()
        if (scope or "per_layer") == "global":
            need, have = min(len(scored) * n, round(sparsity * len(scored) * n)), sum(measured[k] for k in scored)
        else:
            need, have = min(n, round(sparsity * n)), min(measured[k] for k in scored)
        if need > have:
            raise ConfigError(
                f"sparsity {sparsity:g} prunes {need} {self.granularity} but {self.criterion} measured only {have} "
                f"(per {'model' if scope == 'global' else 'layer'}); measure more units or prune less"
            )
        top = max(float(score[~score.isnan()].max()) for score in scored.values())
        above = top + 1.0 + abs(top)
        return {layer: torch.nan_to_num(score.double(), nan=above) for layer, score in scored.items()}


# --- validation -------------------------------------------------------------------------------------
def _check_request(model, criterion: str, granularity: str, texts) -> list[str]:
    """One ConfigError line per bad request, before any pass; returns the texts as a list."""
    if granularity not in CRITERIA:
        raise ConfigError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    if criterion not in CRITERIA[granularity]:
        valid = "; ".join(f"{g}: {', '.join(c)}" for g, c in CRITERIA.items())
        raise ConfigError(f"criterion {criterion!r} does not score {granularity}; valid pairs are {valid}")
    if criterion in NEEDS_LOSS and not model.info.is_causal:
        raise ConfigError(
            f"criterion {criterion!r} measures next-token loss, which needs a causal LM; {model.info.name} is an "
            "encoder (use activation, magnitude or wanda)"
        )
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts or [])
    if criterion in NEEDS_TEXT and not texts:
        raise ConfigError(f"criterion {criterion!r} needs calibration text; give texts=...")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"texts must be strings, got a {bad[0]}")
    return texts


def _check_sizes(batch_size: Any, sweep_batch: Any) -> None:
    for name, value in (("batch_size", batch_size), ("sweep_batch", sweep_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_units(model, units: UnitSpec | None, granularity: str, layers: list[int]) -> list[tuple[int, int]]:
    """(layer, unit) pairs to ablate: all units of `layers` by default, else the given ones checked."""
    n = model.info.d_mlp if granularity == "neurons" else model.info.n_heads
    if units is None:
        return [(layer, u) for layer in layers for u in range(n)]
    pairs = [(lay, u) for lay, ids in units.items() for u in ids] if isinstance(units, dict) else list(units)
    if not pairs:
        raise ConfigError("units is empty; give (layer, unit) pairs to measure, or None for all")
    clean = []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ConfigError(f"units must be (layer, unit) pairs or {{layer: [units]}}, got {pair!r}")
        layer, unit = (int(x) for x in pair)
        if layer not in layers:
            raise ConfigError(f"units names layer {layer}, which is not among the scored layers {layers}")
        if not 0 <= unit < n:
            raise ConfigError(f"unit {unit} of layer {layer} is outside [0, {n}) for {granularity}")
        clean.append((layer, unit))
    if len(set(clean)) != len(clean):
        raise ConfigError("units lists a (layer, unit) pair twice; give each once")
    return clean


def _check_predictable(model, texts: list[str], max_length: int | None) -> None:
    """Loss criteria need a next token somewhere: refuse texts that are all one token (cheap: no pass)."""
    longest = max(model.token_lengths(texts))
    if min(longest, max_length or longest) < 2:
        raise ConfigError("every text is a single token, so there is no next token to predict; give longer texts")


# --- the criteria -----------------------------------------------------------------------------------
def _batches(model, texts, batch_size, max_length, progress: Progress | None, label: str):
    batches = model.batches(texts, batch_size, max_length)
    return progress(batches, label, math.ceil(len(texts) / batch_size)) if progress else batches


def _unstructured(model, criterion, texts, layers, batch_size, max_length, progress) -> Scores:
    params = {m.param for m in linear_modules(model, layers)}
    if criterion == "magnitude":
        values = {p: s for p, s in magnitude_scores(model).items() if p in params}
        return Scores("unstructured", criterion, values)
    norms = input_feature_norms(model, texts, batch_size, max_length, layers=layers, progress=progress)
    return Scores("unstructured", criterion, wanda_scores(model, norms), n_tokens=model.count_tokens(texts, max_length))


def _activation(model, texts, layers, batch_size, max_length, progress) -> Scores:
    """Mean |act| and the active fraction per neuron, accumulated in float64 over real tokens."""
    names = [f"blocks.{layer}.mlp.post" for layer in layers]
    sums = {layer: torch.zeros(model.info.d_mlp, dtype=torch.float64) for layer in layers}
    active = {layer: torch.zeros(model.info.d_mlp, dtype=torch.float64) for layer in layers}
    count = 0
    for batch in _batches(model, texts, batch_size, max_length, progress, "activation"):
        with torch.no_grad():
            cache = model.forward(batch, capture=names, **_keep_one(model)).cache
        real = batch.attention_mask.bool()
        for layer, name in zip(layers, names, strict=True):
            acts = cache[name][real].abs().double()  # [n_real, d_mlp]
            sums[layer] += acts.sum(0).cpu()
            active[layer] += (acts > ACTIVE_THRESHOLD).sum(0).double().cpu()
        count += batch.n_tokens
    return Scores(
        "neurons",
        "activation",
        {layer: s / count for layer, s in sums.items()},
        n_tokens=count,
        active_fraction={layer: a / count for layer, a in active.items()},
    )


def _keep_one(model) -> dict[str, int]:
    """Only the activations are needed: skip the unembedding where there is one."""
    return {"logits_to_keep": 1} if model.info.is_causal else {}


def _taylor(model, granularity, texts, layers, batch_size, max_length, progress) -> Scores:
    """|sum over real tokens of act x dLoss/dact|: minus the first-order change of the loss when
    the unit (or the head's d_head slice of z) is zeroed. Summed signed over every text, then |.|."""
    names = [f"blocks.{layer}.mlp.post" if granularity == "neurons" else z_name(layer) for layer in layers]
    totals: dict[int, torch.Tensor] = {}
    count = 0
    for batch in _batches(model, texts, batch_size, max_length, progress, "taylor"):
        result = model.forward(batch, capture=names, grad=True)
        nll, predicted = token_nll(result.output, batch)
        acts = [result.cache[name] for name in names]
        grads = gradients(nll, acts, names)  # d(summed NLL)/d act; divided by the token count below
        for layer, act, grad in zip(layers, acts, grads, strict=True):
            flat = act.flatten(2), grad.flatten(2)  # heads: [B, T, H * d_head]
            per_unit = grad_x_act(*flat, batch.attention_mask).sum(0)
            if granularity == "heads":
                per_unit = per_unit.view(model.info.n_heads, -1).sum(1)
            totals[layer] = per_unit.cpu() + totals.get(layer, 0)
        count += int(predicted.sum())
    return Scores(granularity, "taylor", {layer: (t / count).abs() for layer, t in totals.items()}, n_tokens=count)


def _ablation(model, granularity, texts, pairs, batch_size, max_length, sweep_batch, progress) -> Scores:
    """Loss increase from zeroing each unit, exact: per text batch ONE `model.sweep` whose items
    are the clean run (item 0) and one zero intervention per (layer, unit), so every ablation of a
    batch shares batched passes that start at the ablated layer."""
    hook = "mlp.post" if granularity == "neurons" else "attn.z"
    key = "units" if granularity == "neurons" else "heads"
    items = [[]] + [[Intervention(f"blocks.{layer}.{hook}", "zero", **{key: [u]})] for layer, u in pairs]
    sums = torch.zeros(len(items), dtype=torch.float64)
    count = 0
    for batch in _batches(model, texts, batch_size, max_length, progress, "ablation"):
        with torch.no_grad():
            rows = model.sweep(batch, items, sweep_loss, batch_size=sweep_batch, logits_to_keep=0)
        sums += rows.double().sum(1).cpu()
        count += int(batch.attention_mask[:, 1:].sum())
    n = model.info.d_mlp if granularity == "neurons" else model.info.n_heads
    values = {layer: torch.full((n,), math.nan, dtype=torch.float64) for layer in sorted({lay for lay, _ in pairs})}
    for (layer, unit), total in zip(pairs, sums[1:], strict=True):
        values[layer][unit] = (total - sums[0]) / count
    return Scores(granularity, "ablation", values, n_tokens=count, baseline_loss=float(sums[0] / count))


# --- entry points -----------------------------------------------------------------------------------
def importance_scores(
    model,
    criterion: str,
    granularity: str,
    texts: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    units: UnitSpec | None = None,
    batch_size: int = 8,
    max_length: int | None = 128,
    sweep_batch: int = 32,
    progress: Progress | None = None,
) -> Scores:
    """Importance scores of `criterion` at `granularity` (see the module table); higher = more important.

    `layers`: the blocks scored (None: all). `units` (ablation only): the (layer, unit) pairs to
    measure, as pairs or {layer: [units]}; the rest are NaN. `sweep_batch`: rows per sweep pass.
    """
    texts = _check_request(model, criterion, granularity, texts)
    _check_sizes(batch_size, sweep_batch)
    chosen = check_layers(model.info, layers, f"importance_scores({criterion!r})")
    if units is not None and criterion != "ablation":
        raise ConfigError(f"units restricts the ablation criterion only; {criterion!r} scores every unit cheaply")
    if criterion in NEEDS_LOSS:
        _check_predictable(model, texts, max_length)
    if granularity == "unstructured":
        return _unstructured(model, criterion, texts, chosen, batch_size, max_length, progress)
    if criterion == "activation":
        return _activation(model, texts, chosen, batch_size, max_length, progress)
    if criterion == "taylor":
        return _taylor(model, granularity, texts, chosen, batch_size, max_length, progress)
    pairs = _check_units(model, units, granularity, chosen)
    return _ablation(model, granularity, texts, pairs, batch_size, max_length, sweep_batch, progress)


def prune(
    model,
    criterion: str,
    sparsity: float,
    granularity: str = "unstructured",
    texts: Sequence[str] | None = None,
    *,
    scope: str | None = None,
    **options: Any,
) -> PruningPlan:
    """`importance_scores` then `plan_from_scores`: the plan pruning the lowest-scoring fraction.

    For several sparsities, compute `importance_scores` once and call `Scores.plan` per level."""
    sparsity = check_sparsity(sparsity)
    if scope is not None and scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if scope == "per_row" and granularity != "unstructured":
        raise ConfigError(f"scope 'per_row' is for unstructured pruning; use 'per_layer' or 'global' for {granularity}")
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ConfigError(f"prune: unknown options {unknown}; valid are {', '.join(sorted(OPTIONS))}")
    scores = importance_scores(model, criterion, granularity, texts, **options)
    return scores.plan(model, sparsity, scope)
