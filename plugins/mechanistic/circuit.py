"""circuit_discovery: a small set of attention heads that carries a behaviour (IOI by default).

Method (node-level edge attribution patching + a search on the ranked heads, after Syed et al.
2023 "Attribution patching outperforms automated circuit discovery" and Conmy et al. 2023, ACDC):

1. Data: `n_prompts` generated IOI prompt pairs (`pairs.ioi_pairs`: 8 templates x ordered pairs
   of one-token names; Wang et al. 2022). The metric is the mean logit difference
   m = logit(IO) - logit(S) over the CLEAN prompts; every number below is a fraction of m for
   the full model.
2. Ablation: a head is removed by writing a reference value into its `blocks.{L}.attn.z` at
   every position. `mean` (default): the head's mean z, position by position, over the clean
   AND corrupted prompts of the same template and length. Wang et al. mean-ablate over a
   reference distribution (ABC prompts) that keeps a template's structure but says nothing
   about the answer; here every clean prompt (S repeated) has a corrupted twin (IO repeated),
   so their joint mean averages out both the names and which name is repeated: with every
   head ablated the logit difference falls to ~0 (SmolLM2: 0.02 of m). `mean_corrupted` (the
   corrupted prompts only) leaves a bias toward the corrupted answer (SmolLM2: -0.11 with every
   head ablated); `zero` writes zeros (off-distribution; for comparison).
3. Ranking: one forward + one backward pass on the clean prompts gives, for every head, the
   first-order estimate of ablating it alone: (z_ref - z_clean) . dm/dz, summed over positions
   and d_head (EAP on nodes). Heads are ranked by how much their ablation is estimated to lower
   m (signed: heads working against the behaviour, such as negative name movers, rank last).
4. Search: the circuit is the smallest top-k set that is both sufficient, kept(k) = m(only the
   top k heads intact, all others ablated) >= `target` (0.8), and necessary, ablated(k) =
   m(the top k heads ablated, the rest intact) <= `max_circuit_ablated` (0.5). Sufficiency
   alone is a weak criterion: with templates of fixed word order one head that suppresses the
   name in the subject's position can keep ~90% of m by itself while its redundant partners
   are ablated (SmolLM2: L23H3), although ablating only that head leaves half of m in place.
   Binary search on k: ~log2(#heads) steps, each one sweep with two items (the top-k set kept,
   the top-k set ablated), every ablated head in one intervention list, all prompts batched.
   Neither curve need be monotone in k; the search returns a k that qualifies whose
   predecessor among the evaluated points does not. When no k qualifies, all heads are returned
   and the checks fail.

Why this method: ACDC prunes edges one at a time (thousands of forward passes on a 270-head
model); EAP needs one backward pass for the ranking and the binary search ~2 x 9 forward passes.
Node-level (heads, not edges) keeps the result a head list, which the validation ablations test.

Validation (metrics; checks):
(a) `circuit_faithfulness`: every head outside the circuit ablated: >= target (check).
(b) `circuit_ablated_fraction`: the circuit's heads ablated, the rest intact: <=
    `max_circuit_ablated` (check; 0.5 = ablating the circuit removes at least half of m).
(c) `random_ablated_fraction_mean`: `n_random` random head sets of the circuit's size ablated
    (seeded, uniform over all heads): check that they keep at least `min_random_margin` more of
    m than (b). Also reported: random sets of that size kept alone (`random_only_fraction_mean`).
(b) and (c) are claims about a model that performs the task: they are checked only when the
clean logit difference is positive on at least `min_task_accuracy` of the prompts (random tiny
test models do not do IOI; the summary says when they were skipped). (a) holds by construction
once the search succeeds; the exact check `full_model_reproduced_rel_err` (the sweep with no
head ablated equals the clean forward pass) guards the evaluation machinery.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import AnalyzerError, ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .attribution_patching import forward_capture, forward_with_grads
from .circuit_plots import plot_circuit_graph, plot_faithfulness, plot_head_map
from .metrics import last_positions, sweep_logit_diff
from .pairs import PairBatch, check_pair_source, load_pairs, tokenize_pairs

ABLATIONS = ("mean", "mean_corrupted", "zero")
REPRODUCE_TOLERANCE = 1e-4

Head = tuple[int, int]


@dataclass
class CircuitDiscoveryConfig:
    pairs: str = "ioi"  # ioi | factual | path to a .jsonl of {clean, corrupted, answer, wrong}
    n_prompts: int = 100
    target: float = 0.8  # faithfulness the circuit must reach: m(circuit only) / m(full model)
    ablation: str = "mean"  # mean (clean + corrupted prompts of a template, per position) | mean_corrupted | zero
    n_random: int = 3  # random head sets of the circuit's size (control)
    max_circuit_ablated: float = 0.5  # search and check (b): ablating the circuit keeps at most this fraction
    min_random_margin: float = 0.3  # check (c): random-set ablation keeps at least this much more than (b)
    min_task_accuracy: float = 0.9  # (b) and (c) are checked when m > 0 on at least this fraction of prompts
    allow_first_piece: bool = False  # multi-piece answers: use their first piece
    sweep_batch_size: int = 128  # rows per forward pass in the evaluations
    top_n: int = 30  # heads listed by rank in the summary


# --- ablation reference and evaluation -----------------------------------------------------------
def check_same_positions(pb: PairBatch, what: str) -> None:
    """Refuse position-mapped pairs: the reference mixes clean and corrupted activations position by position."""
    mapped = [i for i, p in enumerate(pb.pairs) if p.position_map is not None]
    if mapped:
        raise ConfigError(
            f"{what}: pairs {mapped[:5]} carry a position_map; circuit discovery averages clean and corrupted "
            "activations position by position, so both prompts of a pair must have the same tokens count and no "
            "position_map. Reword the pairs to equal lengths"
        )


def template_groups(pb: PairBatch) -> list[int]:
    """A group id per row: same template (pair meta) and clean length."""
    lengths = pb.clean.lengths.tolist()
    keys: dict[tuple, int] = {}
    return [keys.setdefault((p.meta.get("template"), n), len(keys)) for p, n in zip(pb.pairs, lengths, strict=True)]


def group_means(acts: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Per-row reference: the mean of `acts` [B, T, ...] over the rows of its group, per position."""
    ids = torch.as_tensor(groups, device=acts.device)
    n_groups = int(ids.max()) + 1
    sums = torch.zeros(n_groups, *acts.shape[1:], dtype=torch.float64, device=acts.device)
    sums.index_add_(0, ids, acts.double())
    counts = torch.bincount(ids, minlength=n_groups).double().view(-1, *([1] * (acts.ndim - 1)))
    return (sums / counts)[ids].to(acts.dtype)


def ablation_interventions(heads: Sequence[Head], reference: dict[int, torch.Tensor] | None) -> list[Intervention]:
    """One attn.z intervention per layer writing the reference (None: zeros) into the given heads."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    out = []
    for layer, hs in sorted(by_layer.items()):
        name = f"blocks.{layer}.attn.z"
        if reference is None:
            out.append(Intervention(name, "zero", heads=sorted(hs)))
        else:
            out.append(Intervention(name, "replace", value=reference[layer], heads=sorted(hs)))
    return out


def evaluate_ablations(
    model,
    pb: PairBatch,
    ablated: Sequence[Sequence[Head]],
    reference: dict[int, torch.Tensor] | None,
    batch_size: int = 128,
    progress: Callable | None = None,
) -> torch.Tensor:
    """Per-row clean logit differences with each head set ablated: [len(ablated), B] (one sweep)."""
    items = [ablation_interventions(heads, reference) for heads in ablated]
    keep, column = last_positions(pb.clean)
    metric = sweep_logit_diff(column, pb.answer_ids, pb.wrong_ids)
    with torch.no_grad():
        return model.sweep(pb.clean, items, metric, batch_size=batch_size, logits_to_keep=keep, progress=progress)


def all_heads(info) -> list[Head]:
    return [(L, h) for L in range(info.n_layers) for h in range(info.n_heads)]


def complement(circuit: Sequence[Head], info) -> list[Head]:
    inside = set(circuit)
    return [head for head in all_heads(info) if head not in inside]


def evaluate_circuits(
    model,
    pb: PairBatch,
    circuits: Sequence[Sequence[Head]],
    reference: dict[int, torch.Tensor] | None,
    batch_size: int = 128,
) -> torch.Tensor:
    """Mean clean logit difference with ONLY each circuit's heads intact (all others ablated): [N]."""
    ablated = [complement(c, model.info) for c in circuits]
    return evaluate_ablations(model, pb, ablated, reference, batch_size).double().mean(1)


# --- ranking and search ---------------------------------------------------------------------------
@dataclass
class CircuitInputs:
    """What the search needs from the two forward passes."""

    clean: torch.Tensor  # [B] clean logit differences
    corrupted: torch.Tensor  # [B]
    estimate: torch.Tensor  # [L, H] estimated change of mean m when ablating each head alone
    reference: dict[int, torch.Tensor] | None  # per layer [B, T, H, dh]; None = zero ablation
    patterns: dict[int, torch.Tensor]  # per layer [B, H, q, k] clean attention patterns


def prepare(model, pb: PairBatch, ablation: str) -> CircuitInputs:
    """Clean forward + backward (z, gradients, patterns), a corrupted forward, the ablation reference."""
    n_layers = model.info.n_layers
    z_names = [f"blocks.{L}.attn.z" for L in range(n_layers)]
    patterns = [f"blocks.{L}.attn.pattern" for L in range(n_layers)]
    clean, cache, grads = forward_with_grads(model, pb.clean, pb.answer_ids, pb.wrong_ids, z_names, tuple(patterns))
    corrupted, corr_cache = forward_capture(model, pb.corrupted, pb.answer_ids, pb.wrong_ids, z_names)
    reference = None
    if ablation != "zero":
        groups = template_groups(pb)
        reference = {}
        for layer, name in enumerate(z_names):
            corrupted_mean = group_means(corr_cache[name], groups)
            # every group holds as many clean as corrupted prompts: the mean over their union
            reference[layer] = (
                corrupted_mean
                if ablation == "mean_corrupted"
                else (group_means(cache[name], groups) + corrupted_mean) / 2
            )
    rows = pb.size
    estimate = torch.zeros(n_layers, model.info.n_heads, dtype=torch.float64)
    for layer, name in enumerate(z_names):
        ref = reference[layer] if reference is not None else torch.zeros_like(cache[name])
        delta = (ref - cache[name]).double() * grads[name].double()
        estimate[layer] = (delta.sum((1, 3)).sum(0) / rows).cpu()  # d(mean m) per head
    return CircuitInputs(clean, corrupted, estimate, reference, {L: cache[p] for L, p in enumerate(patterns)})


def rank_heads(estimate: torch.Tensor) -> list[Head]:
    """Heads by estimated loss of m when ablated, largest loss first (ties: lower layer, head)."""
    n_heads = estimate.shape[1]
    order = sorted(range(estimate.numel()), key=lambda i: (float(estimate.flatten()[i]), i))
    return [(i // n_heads, i % n_heads) for i in order]


def search_circuit(
    evaluate: Callable[[int], tuple[float, float]], n_total: int, target: float, max_ablated: float
) -> tuple[int, dict[int, tuple[float, float]]]:
    """Smallest k (binary search) whose top-k head set is sufficient and necessary.

    `evaluate(k)` gives (kept, ablated): the fraction of the metric with only the top k heads
    intact, and with the top k heads ablated. k qualifies when kept >= target and ablated <=
    max_ablated. evaluate(0) is called once: (all heads ablated, 1); k = n_total is known from it,
    (1, all heads ablated). When even k = n_total does not qualify, n_total is returned (the
    checks then report the failure). Returns (k, every {k: (kept, ablated)} known)."""
    history = {0: evaluate(0)}
    history[n_total] = (1.0, history[0][0])

    def qualifies(k: int) -> bool:
        kept, ablated = history[k]
        return kept >= target and ablated <= max_ablated

    if qualifies(0):
        return 0, history
    if not qualifies(n_total):
        return n_total, history
    lo, hi = 0, n_total
    while hi - lo > 1:
        mid = (lo + hi) // 2
        history[mid] = evaluate(mid)
        if qualifies(mid):
            hi = mid
        else:
            lo = mid
    return hi, history


def attention_to_names(patterns: dict[int, torch.Tensor], pb: PairBatch, heads: Sequence[Head]) -> pd.DataFrame:
    """Mean attention from the last position to the answer (IO) tokens and the wrong (S) tokens."""
    ids = pb.clean.input_ids
    rows = torch.arange(pb.size, device=ids.device)
    last = pb.clean.last_index
    is_io = (ids == pb.answer_ids[:, None]) & pb.clean.attention_mask.bool()
    is_s = (ids == pb.wrong_ids[:, None]) & pb.clean.attention_mask.bool()
    records = []
    for layer, head in heads:
        p = patterns[layer][rows, head, last]  # [B, k]
        records.append(
            {
                "attn_to_io": float((p * is_io).sum(1).mean()),
                "attn_to_s": float((p * is_s).sum(1).mean()),
            }
        )
    return pd.DataFrame(records)


# --- the analyzer ---------------------------------------------------------------------------------
class CircuitDiscovery(Analyzer):
    name = "circuit_discovery"
    family = "mechanistic"
    description = "Smallest head circuit (attribution-ranked, binary search) keeping the logit difference; validated"
    Config = CircuitDiscoveryConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: CircuitDiscoveryConfig) -> None:
        check_pair_source(cfg.pairs, self.name)
        if cfg.ablation not in ABLATIONS:
            raise ConfigError(f"{self.name}: ablation={cfg.ablation!r}; choose one of {', '.join(ABLATIONS)}")
        if not 0.0 < cfg.target <= 1.0:
            raise ConfigError(f"{self.name}: target={cfg.target} must lie in (0, 1]; e.g. 0.8 (80% of the metric)")
        if cfg.n_prompts < 2 or cfg.n_random < 0 or cfg.sweep_batch_size < 1 or cfg.top_n < 1:
            raise ConfigError(
                f"{self.name}: n_prompts ({cfg.n_prompts}) must be >= 2, n_random ({cfg.n_random}) >= 0, "
                f"sweep_batch_size ({cfg.sweep_batch_size}) and top_n ({cfg.top_n}) >= 1"
            )
        if not 0.0 <= cfg.min_task_accuracy <= 1.0:
            raise ConfigError(f"{self.name}: min_task_accuracy={cfg.min_task_accuracy} must lie in [0, 1]")

    def estimate(self, info: ModelInfo, cfg: CircuitDiscoveryConfig, workload):
        """A clean forward+backward (z and patterns of every layer), a corrupted pass, then sweeps of
        ablated head sets: all heads, two sets per binary-search step (log2 of the head count;
        the search may stop sooner), and the controls (the full model and 2 x n_random sets)."""
        import math

        model = workload.model
        pairs = load_pairs(cfg.pairs, model.tokenizer, cfg.n_prompts, workload.seed)
        pb = tokenize_pairs(model, pairs, cfg.allow_first_piece, self.name)
        keep, _ = last_positions(pb.clean)
        rows, width = pb.size, int(pb.clean.input_ids.shape[1])
        names = [f"blocks.{L}.{site}" for L in range(info.n_layers) for site in ("attn.z", "attn.pattern")]
        cost = workload.forward(rows, width, logits=len(keep), capture=names, grad=True)
        cost = cost + workload.forward(rows, int(pb.corrupted.input_ids.shape[1]), logits=len(keep), capture=names[::2])
        z_bytes = rows * width * info.n_heads * info.d_head * info.n_layers * workload.dtype_bytes
        steps = math.ceil(math.log2(max(info.n_layers * info.n_heads, 2)))
        evaluations = [[(0, 0)]] + [[(0, 0), (0, 0)]] * steps
        evaluations.append([(info.n_layers, width)] + [(0, 0)] * (2 * cfg.n_random))  # ablated sets reach layer 0
        for starts in evaluations:
            cost = cost + workload.sweep_batch(pb.clean, starts, cfg.sweep_batch_size, keep)
        cost = cost.hold(3 * z_bytes).note(f"binary search: up to {steps} steps of 2 head sets assumed")
        return cost + workload.figures(3) + workload.table(info.n_layers * info.n_heads, 8)

    def run(self, ctx: RunContext) -> Result:
        cfg: CircuitDiscoveryConfig = self.cfg
        model = ctx.model
        info = model.info
        pairs = load_pairs(cfg.pairs, model.tokenizer, cfg.n_prompts, ctx.seed)
        pb = tokenize_pairs(model, pairs, cfg.allow_first_piece, self.name)
        check_same_positions(pb, self.name)
        inputs = prepare(model, pb, cfg.ablation)
        m_full = float(inputs.clean.double().mean())
        if abs(m_full) < 1e-12:
            raise AnalyzerError(
                f"{self.name}: the clean logit difference averages to 0; faithfulness (a fraction of it) is undefined. "
                "Use pairs whose answers the model tells apart"
            )
        accuracy = float((inputs.clean > 0).double().mean())
        ranked = rank_heads(inputs.estimate)
        n_total = len(ranked)

        def evaluate(k: int) -> tuple[float, float]:
            if k == 0:
                kept = evaluate_ablations(model, pb, [all_heads(info)], inputs.reference, cfg.sweep_batch_size)
                return float(kept.double().mean()) / m_full, 1.0
            sets = [complement(ranked[:k], info), ranked[:k]]
            values = evaluate_ablations(model, pb, sets, inputs.reference, cfg.sweep_batch_size).double().mean(1)
            return float(values[0]) / m_full, float(values[1]) / m_full

        k, history = search_circuit(evaluate, n_total, cfg.target, cfg.max_circuit_ablated)
        circuit = sorted(ranked[:k])
        kept, ablated = history[k]
        empty = history[0][0]
        rng = random.Random(ctx.seed)
        heads = all_heads(info)
        random_sets = [rng.sample(heads, k) for _ in range(cfg.n_random)]
        sets = [[], *random_sets, *(complement(s, info) for s in random_sets)]
        progress = (lambda it: ctx.progress(it, f"{self.name} controls")) if ctx.show_progress else None
        values = evaluate_ablations(model, pb, sets, inputs.reference, cfg.sweep_batch_size, progress).double()
        reproduced = float((values[0].cpu() - inputs.clean.double().cpu()).abs().max()) / max(abs(m_full), 1e-12)
        fractions = (values.mean(1).cpu() / m_full).numpy()
        random_ablated = fractions[1 : 1 + cfg.n_random]
        random_only = fractions[1 + cfg.n_random :]
        task_performed = accuracy >= cfg.min_task_accuracy and m_full > 0

        result = Result()
        result.metrics.update(
            {
                "logit_diff_positive_fraction": accuracy,
                "clean_logit_diff": m_full,
                "corrupted_logit_diff": float(inputs.corrupted.double().mean()),
                "circuit_size": k,
                "circuit_fraction_of_heads": k / n_total,
                "circuit_faithfulness": kept,
                "circuit_faithfulness_normalised": (kept - empty) / (1 - empty) if empty != 1 else float("nan"),
                "circuit_ablated_fraction": ablated,
                "all_ablated_fraction": empty,
                "search_evaluations": len(history) - 1,  # k = all heads follows from k = 0
            }
        )
        if cfg.n_random:
            result.metrics["random_ablated_fraction_mean"] = float(random_ablated.mean())
            result.metrics["random_ablated_fraction_std"] = float(random_ablated.std())
            result.metrics["random_only_fraction_mean"] = float(random_only.mean())
        result.add_check("full_model_reproduced_rel_err", reproduced, REPRODUCE_TOLERANCE)
        result.add_check("circuit_faithfulness", kept, cfg.target, mode="min")
        if task_performed:
            result.add_check("circuit_ablated_fraction", ablated, cfg.max_circuit_ablated)
            if cfg.n_random:
                margin = float(random_ablated.mean()) - ablated
                result.metrics["random_minus_circuit_ablated"] = margin
                result.add_check("random_minus_circuit_ablated", margin, cfg.min_random_margin, mode="min")

        table = self._heads_table(inputs, pb, ranked, set(circuit), m_full)
        result.tables["heads"] = table
        result.tables["circuit"] = table[table["in_circuit"]].reset_index(drop=True)
        result.tables["search"] = pd.DataFrame(
            [(i, *history[i]) for i in sorted(history)], columns=["k", "circuit_only", "circuit_ablated"]
        )
        conditions = [
            ("full model", 1.0, 0.0),
            (f"circuit only ({k} heads)", kept, 0.0),
            (f"circuit ablated ({k} heads)", ablated, 0.0),
            ("all heads ablated", empty, 0.0),
        ]
        if cfg.n_random:
            conditions += [
                (f"random {k} ablated (n={cfg.n_random})", float(random_ablated.mean()), float(random_ablated.std())),
                (f"random {k} only (n={cfg.n_random})", float(random_only.mean()), float(random_only.std())),
            ]
        faith = pd.DataFrame(conditions, columns=["condition", "fraction_kept", "std"])
        faith["logit_diff"] = faith["fraction_kept"] * m_full
        result.tables["faithfulness"] = faith
        circuit_rows = result.tables["circuit"]
        result.add_figure(
            "circuit_graph", plot_circuit_graph, circuit_rows, info.n_layers, info.n_heads, info.name, ctx.style
        )
        result.add_figure("faithfulness", plot_faithfulness, faith, cfg.target, info.name, ctx.style)
        result.add_figure(
            "head_importance",
            plot_head_map,
            (-inputs.estimate / m_full).numpy(),
            list(range(info.n_layers)),
            "estimated loss when ablated",
            info.name,
            ctx.style,
            outlined=circuit,
        )
        result.summary = {
            "pairs": cfg.pairs,
            "n_prompts": pb.size,
            "ablation": cfg.ablation,
            "logit_diff_positive_fraction": round(accuracy, 4),
            "task_performed": task_performed,
            "circuit_size": k,
            "circuit": [f"L{L}H{h}" for L, h in circuit][: cfg.top_n],  # all of them: table `circuit`
            "circuit_by_rank": [f"L{L}H{h}" for L, h in ranked[:k]][: cfg.top_n],
            "faithfulness": {
                "circuit_only": round(kept, 4),
                "circuit_ablated": round(ablated, 4),
                "all_ablated": round(empty, 4),
                "random_ablated_mean": round(float(random_ablated.mean()), 4) if cfg.n_random else None,
                "random_only_mean": round(float(random_only.mean()), 4) if cfg.n_random else None,
            },
        }
        if not task_performed:
            result.summary["note"] = (
                f"the model does not perform the task (logit difference > 0 on {accuracy:.0%} of prompts, "
                f"mean {m_full:.3g}); checks (b) circuit ablated and (c) random control were skipped"
            )
        return result

    def _heads_table(self, inputs: CircuitInputs, pb: PairBatch, ranked: list[Head], circuit: set, m_full: float):
        attention = attention_to_names(inputs.patterns, pb, ranked)
        table = pd.DataFrame(
            {
                "rank": np.arange(1, len(ranked) + 1),
                "layer": [L for L, _ in ranked],
                "head": [h for _, h in ranked],
                "estimated_ablation_effect": [float(inputs.estimate[L, h]) / m_full for L, h in ranked],
                "in_circuit": [head in circuit for head in ranked],
            }
        )
        table["importance"] = -table["estimated_ablation_effect"]
        return pd.concat([table, attention], axis=1)


ANALYZERS = [CircuitDiscovery]
