"""`pruning_candidates`: what each importance criterion would prune, and whether the criteria agree.

A thin analyzer over `criteria.importance_scores` at three granularities:

- unstructured weights: magnitude |W| and Wanda |W| x ||X|| (calibration text). Per module, the
  masks both would apply at `sparsity` are compared: the Jaccard overlap of their pruned sets and
  the Spearman correlation of the two scores on a seeded sample of weights;
- MLP neurons: mean |activation| (with dead neurons: active on no calibration token), Taylor
  |act x dLoss/dact| and the true ablation effect (loss increase when zeroed, one batched sweep).
  Ablating every neuron of a real model is hours on a CPU, so ablation measures `ablation_units`
  units: the lowest-ranked by Taylor (the candidates) and as many drawn at random (so that the
  rank correlation has a spread to measure);
- attention heads: Taylor and the ablation effect of every head (one batched sweep).

Rankings are compared per granularity with Spearman and the overlap of the bottom-k candidates
(k = `candidate_fraction` of the units measured by both). Loss-based criteria need a causal LM:
on an encoder they are left out and the summary says so.

Checks: scores are finite where measured; the ablation score of the lowest candidate equals
the loss increase measured by plain forward passes (`ablation_sweep_vs_forward`, <= 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .pruning_impact import CALIBRATION_SOURCES, calibration_texts

LOSS_BASED = ("taylor", "ablation")


@dataclass
class PruningCandidatesConfig:
    unstructured: list[str] = field(default_factory=lambda: ["magnitude", "wanda"])
    neurons: list[str] = field(default_factory=lambda: ["activation", "taylor", "ablation"])
    heads: list[str] = field(default_factory=lambda: ["taylor", "ablation"])
    sparsity: float = 0.5  # unstructured: the masks compared
    candidate_fraction: float = 0.1  # structured: the bottom fraction listed and compared (top-k overlap)
    ablation_units: int = 64  # neurons measured by ablation: this many lowest by taylor + as many at random
    sample_weights: int = 20000  # unstructured Spearman: weights sampled per module
    calibration: str = "python_docs"  # python_docs | lens_corpus | inputs
    calibration_texts: int = 32


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation over the entries both measured (NaN when fewer than 3 or one is constant)."""
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return float("nan")
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def bottom_k(scores: np.ndarray, k: int) -> set[int]:
    """Indices of the k lowest measured scores (ties broken by index: deterministic)."""
    measured = np.flatnonzero(~np.isnan(scores))
    order = measured[np.lexsort((measured, scores[measured]))]
    return set(order[:k].tolist())


def ablation_reference(ctx: RunContext, granularity: str, layer: int, unit: int, texts: list[str]) -> float:
    """Mean next-token loss with one unit zeroed, by plain forward passes (the sweep's reference)."""
    from interpsuite.hooks import Intervention

    from ..mechanistic.head_ablation import token_nll, z_name

    if granularity == "neurons":
        intervention = Intervention(f"blocks.{layer}.mlp.post", "zero", units=[unit])
    else:
        intervention = Intervention(z_name(layer), "zero", heads=[unit])
    total, count = 0.0, 0.0
    with torch.no_grad():
        for batch in ctx.model.batches(texts, ctx.batch_size, ctx.max_length):
            nll, n = token_nll(ctx.model.forward(batch, interventions=[intervention]).output, batch)
            total, count = total + float(nll.double().sum()), count + float(n.sum())
    return total / count


class PruningCandidates(Analyzer):
    name = "pruning_candidates"
    family = "pruning"
    description = "importance scores of weights, neurons and heads per criterion; candidates; Spearman/top-k agreement"
    Config = PruningCandidatesConfig

    def validate(self, info: ModelInfo, cfg: PruningCandidatesConfig) -> None:
        from .criteria import CRITERIA
        from .plan import check_sparsity

        what = self.name
        for granularity in ("unstructured", "neurons", "heads"):
            chosen = getattr(cfg, granularity)
            unknown = [c for c in chosen if c not in CRITERIA[granularity]]
            if unknown:
                raise ConfigError(
                    f"{what}.{granularity}: {unknown} unknown; choose from {', '.join(CRITERIA[granularity])}"
                )
        if not (cfg.unstructured or cfg.neurons or cfg.heads):
            raise ConfigError(f"{what}: every criterion list is empty; give at least one criterion")
        try:
            check_sparsity(cfg.sparsity)
        except ConfigError as err:
            raise ConfigError(f"{what}.sparsity: {err}") from None
        if not 0.0 < cfg.candidate_fraction <= 1.0:
            raise ConfigError(f"{what}.candidate_fraction must be in (0, 1], got {cfg.candidate_fraction}")
        if cfg.ablation_units < 1 or cfg.sample_weights < 3 or cfg.calibration_texts < 1:
            raise ConfigError(f"{what}: ablation_units and calibration_texts must be >= 1, sample_weights >= 3")
        if cfg.calibration not in CALIBRATION_SOURCES:
            raise ConfigError(f"{what}.calibration: {cfg.calibration!r}; choose from {', '.join(CALIBRATION_SOURCES)}")

    def estimate(self, info: ModelInfo, cfg: PruningCandidatesConfig, workload):
        """Each criterion's passes over the calibration texts (interpsuite.estimate_analyzers.importance_cost):
        neuron ablation measures 2 x ablation_units neurons, head ablation every head; one plain
        forward re-checks the weakest ablated unit."""
        from interpsuite.estimate_analyzers import importance_cost

        texts = calibration_texts(cfg.calibration, workload.texts, cfg.calibration_texts)
        lengths = workload.token_lengths(texts)
        causal = info.is_causal
        cost = workload.figures(1 + len(cfg.heads), 1 + len(cfg.heads))
        for criterion in cfg.unstructured:
            cost = cost + importance_cost(workload, criterion, "unstructured", lengths)
        for granularity in ("neurons", "heads"):
            for criterion in getattr(cfg, granularity):
                if criterion in LOSS_BASED and not causal:
                    continue
                layers = None
                if criterion == "ablation":
                    if granularity == "neurons":
                        units = min(2 * cfg.ablation_units, info.n_layers * info.d_mlp)
                        layers = [i * info.n_layers // units for i in range(units)]
                    else:
                        layers = [layer for layer in range(info.n_layers) for _ in range(info.n_heads)]
                    cost = cost + workload.forward_batches(lengths)  # the re-checked unit
                cost = cost + importance_cost(workload, criterion, granularity, lengths, layers)
        return cost + workload.table(info.n_layers * (info.d_mlp + info.n_heads), 12)

    def run(self, ctx: RunContext) -> Result:
        cfg: PruningCandidatesConfig = self.cfg
        model = ctx.model
        texts = calibration_texts(cfg.calibration, ctx.inputs.texts, cfg.calibration_texts)
        causal = model.info.is_causal
        skipped = [f"{g}.{c}" for g in ("neurons", "heads") for c in getattr(cfg, g) if c in LOSS_BASED and not causal]
        result = Result()
        agreement: list[dict] = []
        options = {"batch_size": ctx.batch_size, "max_length": ctx.max_length, "progress": ctx.progress}
        if cfg.unstructured:
            result.tables["unstructured"] = self._unstructured(ctx, cfg, texts, options, agreement)
        for granularity in ("neurons", "heads"):
            criteria = [c for c in getattr(cfg, granularity) if causal or c not in LOSS_BASED]
            if criteria:
                table = self._structured(ctx, cfg, granularity, criteria, texts, options, agreement, result)
                result.tables[granularity] = table
        result.tables["agreement"] = pd.DataFrame(
            agreement, columns=["granularity", "criterion_a", "criterion_b", "spearman", "topk_overlap", "k", "n"]
        )
        from .candidate_plots import plot_criteria_agreement, plot_head_scores

        if agreement:
            result.add_figure("criteria_agreement", plot_criteria_agreement, result.tables["agreement"],
                              model.info.name, ctx.style)  # fmt: skip
        heads = result.tables.get("heads")
        for criterion in [c for c in cfg.heads if heads is not None and c in heads.columns]:
            grid = heads.pivot(index="layer", columns="unit", values=criterion).to_numpy(dtype=float)
            result.add_figure(f"heads_{criterion}", plot_head_scores, grid, criterion, model.info.name, ctx.style)
        for row in agreement:
            key = f"{row['granularity']}.{row['criterion_a']}_vs_{row['criterion_b']}"
            if not np.isnan(row["spearman"]):
                result.metrics[f"{key}.spearman"] = row["spearman"]
            result.metrics[f"{key}.topk_overlap"] = row["topk_overlap"]
        result.summary = {
            "calibration": f"{cfg.calibration} ({len(texts)} texts)",
            "skipped_on_encoder": skipped,
            "sparsity": cfg.sparsity,
            "candidate_fraction": cfg.candidate_fraction,
        }
        return result

    def _unstructured(self, ctx, cfg, texts, options, agreement) -> pd.DataFrame:
        from .criteria import importance_scores

        scores = {c: importance_scores(ctx.model, c, "unstructured", texts, **options) for c in cfg.unstructured}
        plans = {c: s.plan(ctx.model, cfg.sparsity) for c, s in scores.items()}
        generator = torch.Generator().manual_seed(ctx.seed)
        rows = []
        first = cfg.unstructured[0]
        for param, keep in plans[first].masks.items():
            row = {"param": param, "numel": keep.numel(), "sparsity": 1 - float(keep.double().mean())}
            sample = torch.randperm(keep.numel(), generator=generator)[: cfg.sample_weights]
            for other in cfg.unstructured[1:]:
                pruned_a, pruned_b = ~keep, ~plans[other].masks[param]
                union = int((pruned_a | pruned_b).sum())
                row[f"jaccard_{first}_{other}"] = int((pruned_a & pruned_b).sum()) / union if union else 1.0
                a = scores[first].values[param].flatten()[sample].double().numpy()
                b = scores[other].values[param].flatten()[sample].double().numpy()
                row[f"spearman_{first}_{other}"] = spearman(a, b)
            rows.append(row)
        table = pd.DataFrame(rows)
        for other in cfg.unstructured[1:]:
            weights = table["numel"] / table["numel"].sum()
            agreement.append({
                "granularity": "unstructured", "criterion_a": first, "criterion_b": other,
                "spearman": float(np.nansum(table[f"spearman_{first}_{other}"] * weights)),
                "topk_overlap": float((table[f"jaccard_{first}_{other}"] * weights).sum()),
                "k": int(round(cfg.sparsity * table["numel"].sum())), "n": int(table["numel"].sum()),
            })  # fmt: skip
        return table

    def _structured(self, ctx, cfg, granularity, criteria, texts, options, agreement, result) -> pd.DataFrame:
        from .criteria import importance_scores

        model = ctx.model
        scores: dict[str, np.ndarray] = {}
        baselines: dict[str, float] = {}
        frame: pd.DataFrame | None = None
        for criterion in criteria:
            units = None
            if granularity == "neurons" and criterion == "ablation":
                units = self._ablation_units(ctx, cfg, scores, frame)
            computed = importance_scores(model, criterion, granularity, texts, units=units, **options)
            table = computed.table().rename(columns={"score": criterion})
            if computed.active_fraction:
                result.metrics["dead_neurons"] = float((table["active_fraction"] == 0).sum())
            if computed.baseline_loss is not None:
                baselines[granularity] = float(computed.baseline_loss)
                result.metrics[f"{granularity}.baseline_loss"] = float(computed.baseline_loss)
            frame = table if frame is None else frame.merge(table, on=["layer", "unit"], how="left")
            scores[criterion] = frame[criterion].to_numpy(dtype=float)
            measured = ~np.isnan(scores[criterion])
            result.add_check(f"{granularity}.{criterion}.finite_where_measured",
                             float((~np.isfinite(scores[criterion][measured])).sum()), 0)  # fmt: skip
        for criterion in criteria:
            rank = pd.Series(scores[criterion]).rank(method="first")
            frame[f"{criterion}_rank"] = rank.to_numpy()
            k = max(1, round(cfg.candidate_fraction * int((~np.isnan(scores[criterion])).sum())))
            chosen = bottom_k(scores[criterion], k)
            frame[f"{criterion}_candidate"] = [i in chosen for i in range(len(frame))]
            if criterion == "ablation":
                index = min(chosen, key=lambda i: (scores[criterion][i], i))
                layer, unit = int(frame["layer"].iloc[index]), int(frame["unit"].iloc[index])
                reference = ablation_reference(ctx, granularity, layer, unit, texts) - baselines[granularity]
                error = abs(reference - scores[criterion][index]) / max(1.0, abs(reference))
                result.add_check(f"{granularity}.ablation_sweep_vs_forward", error, 1e-4)
        for i, a in enumerate(criteria):
            for b in criteria[i + 1 :]:
                both = ~(np.isnan(scores[a]) | np.isnan(scores[b]))
                n = int(both.sum())
                k = max(1, round(cfg.candidate_fraction * n))
                sub_a, sub_b = np.where(both, scores[a], np.nan), np.where(both, scores[b], np.nan)
                overlap = len(bottom_k(sub_a, k) & bottom_k(sub_b, k)) / k
                agreement.append({"granularity": granularity, "criterion_a": a, "criterion_b": b,
                                  "spearman": spearman(scores[a], scores[b]), "topk_overlap": overlap,
                                  "k": k, "n": n})  # fmt: skip
        return frame

    def _ablation_units(self, ctx, cfg, scores, frame) -> list[tuple[int, int]]:
        """The `ablation_units` lowest by Taylor (when computed) plus as many at random, seeded."""
        info = ctx.model.info
        total = info.n_layers * info.d_mlp
        rng = np.random.default_rng(ctx.seed)
        chosen: list[int] = []
        if "taylor" in scores:
            chosen += sorted(bottom_k(scores["taylor"], min(cfg.ablation_units, total)))
        rest = np.setdiff1d(np.arange(total), np.array(chosen, dtype=int))
        chosen += rng.choice(rest, size=min(cfg.ablation_units, len(rest)), replace=False).tolist()
        return sorted((int(i) // info.d_mlp, int(i) % info.d_mlp) for i in chosen)


ANALYZERS = [PruningCandidates]
