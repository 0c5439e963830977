"""head_ablation: knock out every attention head, one at a time, three ways, and measure the damage.

A head's contribution to the residual stream is o_proj applied to its slice of `blocks.L.attn.z`
(the per-head mixed values). Ablating head h of layer L replaces that slice (every position)
and leaves the other heads alone; the effect is metric(ablated) - metric(clean).

Strategies (Wang et al. 2022, "Interpretability in the wild", §3 and App. H; Chan et al. 2022,
causal scrubbing, for resampling):
- `zero`: the slice becomes 0. Simple, but 0 may be far off the head's usual range, so the
  downstream layers see an input they never saw in training and the effect can be overstated.
- `mean`: the slice becomes the head's mean z over a reference set: the mean over every real
  token of the reference texts (position-independent: one [d_head] vector per head, written at
  every position). `reference: inputs` uses all of the run's texts; `reference: prompts` the
  evaluated prompts themselves. This removes the information the head carries about *this*
  input while keeping its typical output.
- `resample`: the slice comes from another evaluated prompt: row b reads row pi(b), where pi is
  a fixed derangement of the rows (seeded by `seed`; no row reads itself), at the same position
  t, or at the source's last real token where the source is shorter than t. The head then
  carries real information, just about the wrong input.

Metric (`metric`):
- `loss` (default): mean next-token cross-entropy over the real tokens of the first `max_texts`
  run texts (token-weighted: total NLL / number of predicted tokens). Effect > 0: the head helps.
- `logit_diff`: logit(answer) - logit(wrong) at the last token of the clean prompts of `pairs`
  (default the IOI set), mean over pairs; only the clean prompts are run, `wrong` is the
  contrast token. Effect < 0: the head pushes towards the answer (name movers on IOI).

All ablations (layers x heads x strategies) plus one empty item (the clean baseline) run as
ONE `HookedModel.sweep`: one item per (head, strategy), batched passes that start from the
clean residual stream at the ablated layer.

Outputs: table `effects` (layer, head, strategy, ablated metric, effect, rank by |effect|
within the strategy), table `critical_heads` (top `top_k` by |effect| per strategy, and whether
the head is in every strategy's top-k), figures `effects` (layer x head heatmap per strategy)
and `strategy_comparison` (effects of one strategy against another, head by head), metrics
`spearman.<a>_vs_<b>` and `topk_overlap.<a>_vs_<b>` (fraction of shared top-k heads).
Checks: `sweep_clean_matches_forward` (the sweep's empty item reproduces the clean metric of a
plain forward pass, <= 1e-4 relative to max(1, |clean|)) and `top_head_forward_matches_sweep`
(for each strategy the head with the largest |effect| re-run as one plain `model.forward` with
the same intervention gives the same metric, <= 1e-4 likewise).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import HookedModel, ModelInfo, TokenBatch
from interpsuite.results import Result

from .ablation_plots import plot_effect_heatmaps, plot_strategy_comparison
from .metrics import last_positions, sweep_logit_diff
from .pairs import check_pair_source, load_pairs

STRATEGIES = ("zero", "mean", "resample")
METRICS = ("loss", "logit_diff")
REFERENCES = ("inputs", "prompts")
#: relative tolerance of the two self-checks (fp32 passes of different batch composition)
FORWARD_TOLERANCE = 1e-4
#: bytes of logits one sweep pass may hold with the loss metric (it needs every position's logits)
LOSS_LOGIT_BYTES = 256 * 2**20


@dataclass
class HeadAblationConfig:
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))  # zero | mean | resample
    metric: str = "loss"  # loss | logit_diff
    pairs: str | None = None  # logit_diff only: ioi (default) | factual | path to .jsonl
    n_pairs: int = 8  # logit_diff: clean prompts evaluated
    max_texts: int = 16  # loss: the first run texts evaluated (one batch)
    allow_first_piece: bool = False  # logit_diff: multi-piece answers use their first piece
    reference: str = "inputs"  # mean ablation: mean over the run's texts (inputs) or the evaluated prompts
    layers: list[int] | None = None  # null: every layer
    top_k: int = 10  # critical heads per strategy
    seed: int = 0  # pairs and the resample derangement
    sweep_batch_size: int = 64  # rows per forward pass of the sweep


# --- metrics ----------------------------------------------------------------------------------
def token_nll(logits: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (sum of next-token NLL over real tokens, number of predicted tokens).

    `logits` are [B, T, V] (every position kept); position t predicts token t + 1."""
    logprobs = logits[:, :-1].float().log_softmax(-1)
    targets = batch.input_ids[:, 1:].to(logits.device)
    mask = batch.attention_mask[:, 1:].to(logprobs.dtype)
    nll = -logprobs.gather(-1, targets[..., None])[..., 0]
    return (nll * mask).sum(1), mask.sum(1)


def sweep_loss(output: torch.Tensor, repeated: TokenBatch) -> torch.Tensor:
    """A `HookedModel.sweep` metric: per-row summed NLL (divide by the token count to get the loss)."""
    return token_nll(output, repeated)[0]


@dataclass
class Evaluation:
    """The evaluated prompts and how to turn per-row sweep values into the metric."""

    batch: TokenBatch
    metric: Callable[[torch.Tensor, TokenBatch], torch.Tensor]
    logits_to_keep: int | torch.Tensor
    #: per-row values [..., B] -> the metric [...]
    reduce: Callable[[torch.Tensor], torch.Tensor]
    label: str
    source: str

    def value(self, output: torch.Tensor) -> float:
        """The metric of one plain forward pass on `batch`."""
        return float(self.reduce(self.metric(output, self.batch).double()))


def loss_evaluation(model: HookedModel, texts: list[str], max_length: int | None) -> Evaluation:
    batch = model.tokenize(texts, max_length)
    count = float(batch.attention_mask[:, 1:].sum())
    if count == 0:
        raise ConfigError(
            "head_ablation: every evaluated text is a single token, so there is no next token to predict; "
            "give texts of at least two tokens"
        )
    return Evaluation(
        batch, sweep_loss, 0, lambda rows: rows.sum(-1) / count, "loss (mean next-token NLL)", f"{len(texts)} texts"
    )


def logit_diff_evaluation(model: HookedModel, cfg: HeadAblationConfig) -> Evaluation:
    source = cfg.pairs or "ioi"
    pairs = load_pairs(source, model.tokenizer, cfg.n_pairs, cfg.seed)
    # only the clean prompts run: corrupted ones need not match them token for token here
    clean = model.tokenize([p.clean for p in pairs])

    def ids(field: str) -> torch.Tensor:
        what = "head_ablation: pair {} " + field
        tokens = [
            model.token_id(getattr(p, field), what.format(i), cfg.allow_first_piece)[0] for i, p in enumerate(pairs)
        ]
        return torch.tensor(tokens, device=model.device)

    keep, column = last_positions(clean)
    metric = sweep_logit_diff(column, ids("answer"), ids("wrong"))
    label = "logit difference answer - wrong"
    return Evaluation(clean, metric, keep, lambda rows: rows.mean(-1), label, f"{source}: {len(pairs)} pairs")


# --- reference activations --------------------------------------------------------------------
def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.z"


def masked_mean_z(zs: dict[int, torch.Tensor], mask: torch.Tensor) -> dict[int, torch.Tensor]:
    """Mean of z over the real tokens: {layer: [B, T, H, dh]} -> {layer: [H, dh]} (float64)."""
    m = mask.to(torch.float64)[:, :, None, None]
    return {layer: (z.double() * m).sum((0, 1)) / m.sum() for layer, z in zs.items()}


def reference_means(
    model: HookedModel, texts: list[str], layers: list[int], batch_size: int, max_length: int | None
) -> tuple[dict[int, torch.Tensor], int]:
    """Each head's mean z over every real token of `texts` (streamed in batches): ({layer: [H, dh]}, tokens)."""
    names = [z_name(layer) for layer in layers]
    sums = {layer: torch.zeros(model.info.n_heads, model.info.d_head, dtype=torch.float64) for layer in layers}
    count = 0
    for batch in model.batches(texts, batch_size, max_length):
        cache = model.forward(batch, capture=names, logits_to_keep=1).cache
        m = batch.attention_mask.to(torch.float64)[:, :, None, None]
        for layer in layers:
            sums[layer] += (cache[z_name(layer)].double() * m).sum((0, 1)).cpu()
        count += batch.n_tokens
    return {layer: s / count for layer, s in sums.items()}, count


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) without fixed points (n >= 2)."""
    if n < 2:
        raise ConfigError("head_ablation: resample ablation needs at least 2 prompts (a row never reads itself)")
    generator = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=generator)
        if bool((perm != torch.arange(n)).all()):
            return perm.tolist()


def resample_values(z: torch.Tensor, lengths: torch.Tensor, permutation: list[int]) -> torch.Tensor:
    """z of row permutation[b] at the same position, clamped to that row's last real token: [B, T, ...]."""
    source = torch.as_tensor(permutation, device=z.device)
    width = z.shape[1]
    positions = torch.arange(width, device=z.device)[None, :]
    last = (lengths.to(z.device)[source] - 1)[:, None]
    index = torch.minimum(positions, last)  # [B, T] positions inside the source row
    return z[source[:, None], index]


def ablation(
    strategy: str,
    layer: int,
    head: int,
    means: dict[int, torch.Tensor] | None = None,
    resampled: dict[int, torch.Tensor] | None = None,
) -> Intervention:
    """The intervention that ablates one head's `attn.z` slice (every position) with a strategy."""
    if strategy == "zero":
        return Intervention(z_name(layer), "zero", heads=[head])
    if strategy == "mean":
        return Intervention(z_name(layer), "mean", value=means[layer], heads=[head])
    return Intervention(z_name(layer), "resample", value=resampled[layer], heads=[head])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if len(a) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def rows_per_pass(evaluation: Evaluation, info: ModelInfo, requested: int) -> int:
    """Sweep rows per pass: `requested`, capped for the loss metric by the memory of full logits."""
    base = evaluation.batch.size
    if isinstance(evaluation.logits_to_keep, int) and evaluation.logits_to_keep == 0:
        per_row = evaluation.batch.input_ids.shape[1] * info.vocab_size * 4
        requested = min(requested, LOSS_LOGIT_BYTES // max(per_row, 1))
    return max(base, requested)


class HeadAblation(Analyzer):
    name = "head_ablation"
    family = "mechanistic"
    description = "Zero, mean and resample ablation of every attention head; effect table, critical heads"
    Config = HeadAblationConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: HeadAblationConfig) -> None:
        what = self.name
        if not info.is_causal:
            raise ConfigError(
                f"{what}: {info.name} is an encoder without a causal LM head; the loss and the logit difference are "
                "read from next-token logits. Use a causal LM (e.g. model=smollm2)"
            )
        unknown = [s for s in cfg.strategies if s not in STRATEGIES]
        if unknown or not cfg.strategies or len(set(cfg.strategies)) != len(cfg.strategies):
            raise ConfigError(
                f"{what}: strategies={list(cfg.strategies)}; give a non-empty list without repeats of "
                f"{', '.join(STRATEGIES)}"
            )
        if cfg.metric not in METRICS:
            raise ConfigError(f"{what}: metric={cfg.metric!r}; choose one of {', '.join(METRICS)}")
        if cfg.metric == "logit_diff":
            check_pair_source(cfg.pairs or "ioi", what)
        elif cfg.pairs is not None:
            raise ConfigError(
                f"{what}: pairs={cfg.pairs!r} is only used with metric: logit_diff (the loss metric runs on the "
                "run's texts); set metric: logit_diff or drop pairs"
            )
        if cfg.reference not in REFERENCES:
            raise ConfigError(f"{what}: reference={cfg.reference!r}; choose one of {', '.join(REFERENCES)}")
        check_layers(info, cfg.layers, what)
        for option in ("n_pairs", "max_texts", "top_k", "sweep_batch_size"):
            if getattr(cfg, option) < 1:
                raise ConfigError(f"{what}: {option} must be >= 1, got {getattr(cfg, option)}")
        if "resample" in cfg.strategies and cfg.metric == "logit_diff" and cfg.n_pairs < 2:
            raise ConfigError(
                f"{what}: resample ablation reads another prompt's activations and needs n_pairs >= 2 "
                f"(got {cfg.n_pairs}); raise n_pairs or drop 'resample' from strategies"
            )

    def evaluation(self, ctx: RunContext) -> Evaluation:
        cfg: HeadAblationConfig = self.cfg
        if cfg.metric == "logit_diff":
            return logit_diff_evaluation(ctx.model, cfg)
        return loss_evaluation(ctx.model, list(ctx.inputs.texts[: cfg.max_texts]), ctx.max_length)

    def estimate(self, info: ModelInfo, cfg: HeadAblationConfig, workload):
        """The clean pass, the reference means, ONE sweep of every (strategy, layer, head) plus the clean
        item (grouped into passes by the sweep engine's own planner: the pass count is exact), and
        one forward per strategy re-running its top head."""
        layers = sorted(set(check_layers(info, cfg.layers, self.name)))
        if cfg.metric == "logit_diff":
            evaluation = logit_diff_evaluation(workload.model, cfg)
        else:
            evaluation = loss_evaluation(workload.model, list(workload.texts[: cfg.max_texts]), workload.max_length)
        batch, keep = evaluation.batch, evaluation.logits_to_keep
        rows, width = batch.size, int(batch.input_ids.shape[1])
        kept = int(keep.numel()) if isinstance(keep, torch.Tensor) else (keep or None)
        names = [z_name(layer) for layer in layers]
        cost = workload.forward(rows, width, logits=kept, capture=names)
        if "mean" in cfg.strategies and cfg.reference == "inputs":
            cost = cost + workload.forward_inputs(logits=1, capture=names)
        # the clean item starts last; a head's ablation (every position) at its layer, position 0
        items = [(layer, 0) for _ in cfg.strategies for layer in layers for _ in range(info.n_heads)]
        starts = [(info.n_layers, width), *items]
        cost = cost + workload.sweep_batch(batch, starts, rows_per_pass(evaluation, info, cfg.sweep_batch_size), keep)
        cost = cost + workload.forward(rows, width, logits=kept, count=len(cfg.strategies))
        n = len(cfg.strategies)
        figures = workload.figures(1 + (n > 1), n + n * (n - 1) // 2)
        return cost + figures + workload.table(len(items), 6)

    def run(self, ctx: RunContext) -> Result:
        cfg: HeadAblationConfig = self.cfg
        model, info = ctx.model, ctx.model.info
        layers = sorted(set(check_layers(info, cfg.layers, self.name)))
        evaluation = self.evaluation(ctx)
        batch = evaluation.batch
        if "resample" in cfg.strategies and batch.size < 2:
            raise ConfigError(
                f"{self.name}: resample ablation needs at least 2 evaluated prompts, got {batch.size}; give more "
                "texts or drop 'resample' from strategies"
            )

        with torch.no_grad():
            clean_out = model.forward(
                batch, capture=[z_name(L) for L in layers], logits_to_keep=evaluation.logits_to_keep
            )
        clean = evaluation.value(clean_out.output)
        zs = {layer: clean_out.cache[z_name(layer)] for layer in layers}
        means = resampled = None
        permutation: list[int] = []
        reference_tokens = 0
        if "mean" in cfg.strategies:
            if cfg.reference == "inputs":
                means, reference_tokens = reference_means(
                    model, list(ctx.inputs.texts), layers, ctx.batch_size, ctx.max_length
                )
            else:
                means, reference_tokens = masked_mean_z(zs, batch.attention_mask), batch.n_tokens
            means = {layer: m.to(model.device, torch.float32) for layer, m in means.items()}
        if "resample" in cfg.strategies:
            permutation = derangement(batch.size, cfg.seed)
            resampled = {layer: resample_values(z, batch.lengths, permutation) for layer, z in zs.items()}

        keys = [(s, layer, head) for s in cfg.strategies for layer in layers for head in range(info.n_heads)]
        items = [[]] + [[ablation(s, layer, head, means, resampled)] for s, layer, head in keys]
        with torch.no_grad():
            per_row = model.sweep(
                batch,
                items,
                evaluation.metric,
                batch_size=rows_per_pass(evaluation, info, cfg.sweep_batch_size),
                logits_to_keep=evaluation.logits_to_keep,
                progress=lambda chunks: ctx.progress(chunks, f"{self.name} sweep", len(chunks)),
            )
        values = evaluation.reduce(per_row.double()).cpu().numpy()
        scale = max(1.0, abs(clean))
        result = Result()
        result.add_check("sweep_clean_matches_forward", abs(values[0] - clean) / scale, FORWARD_TOLERANCE)

        table = pd.DataFrame(keys, columns=["strategy", "layer", "head"])
        table["ablated"] = values[1:]
        table["effect"] = values[1:] - clean
        table["abs_effect"] = table["effect"].abs()
        table["rank"] = table.groupby("strategy")["abs_effect"].rank(ascending=False, method="first").astype(int)
        table = table[["layer", "head", "strategy", "ablated", "effect", "rank"]]
        result.tables["effects"] = table

        # the strongest head of each strategy, re-run as one plain forward pass
        worst = 0.0
        tops: dict[str, pd.Series] = {}
        for strategy in cfg.strategies:
            top = table[(table.strategy == strategy) & (table["rank"] == 1)].iloc[0]
            tops[strategy] = top
            iv = ablation(strategy, int(top.layer), int(top["head"]), means, resampled)
            with torch.no_grad():
                out = model.forward(batch, interventions=[iv], logits_to_keep=evaluation.logits_to_keep).output
            worst = max(worst, abs(evaluation.value(out) - float(top.ablated)) / scale)
        result.add_check("top_head_forward_matches_sweep", worst, FORWARD_TOLERANCE)

        maps = {
            s: table[table.strategy == s].sort_values(["layer", "head"])["effect"].to_numpy().reshape(len(layers), -1)
            for s in cfg.strategies
        }
        critical, agreement = self.critical_heads(table, cfg.strategies, result)
        result.tables["critical_heads"] = critical
        title = f"{info.name}: head ablation effect on the {evaluation.label} ({evaluation.source})"
        result.add_figure("effects", plot_effect_heatmaps, maps, layers, title, f"effect on {cfg.metric}", ctx.style)
        if len(cfg.strategies) > 1:
            result.add_figure(
                "strategy_comparison",
                plot_strategy_comparison,
                maps,
                f"{info.name}: the same heads under different ablations",
                f"effect on {cfg.metric}",
                ctx.style,
            )

        result.metrics[f"clean.{cfg.metric}"] = clean
        for strategy in cfg.strategies:
            effects = table[table.strategy == strategy]["effect"]
            top = tops[strategy]
            result.metrics[f"{strategy}.max_abs_effect"] = float(effects.abs().max())
            result.metrics[f"{strategy}.mean_abs_effect"] = float(effects.abs().mean())
            result.metrics[f"{strategy}.top_head_effect"] = float(top.effect)
            for r in table[(table.strategy == strategy) & (table["rank"] <= 5)].itertuples():
                result.metrics[f"{strategy}.L{r.layer}H{r.head}.effect"] = float(r.effect)
        result.summary = {
            "metric": cfg.metric,
            "evaluated": evaluation.source,
            "clean": round(clean, 6),
            "layers": layers if cfg.layers is not None else "all",
            "heads_ablated": len(layers) * info.n_heads,
            "strategies": list(cfg.strategies),
            "top_heads": {
                s: [
                    {"head": f"L{int(r.layer)}H{int(r.head)}", "effect": round(float(r.effect), 4)}
                    for r in table[table.strategy == s].sort_values("rank").head(cfg.top_k).itertuples()
                ]
                for s in cfg.strategies
            },
            "agreement": agreement,
        }
        if means is not None:
            result.summary["mean_reference"] = {"reference": cfg.reference, "tokens": int(reference_tokens)}
        if permutation:
            result.summary["resample_source_rows"] = permutation
        return result

    def critical_heads(self, table: pd.DataFrame, strategies: list[str], result: Result) -> tuple[pd.DataFrame, dict]:
        """Top-k heads by |effect| per strategy; Spearman and top-k overlap between strategies."""
        k = min(self.cfg.top_k, int((table.strategy == strategies[0]).sum()))
        top = {s: table[(table.strategy == s) & (table["rank"] <= k)].sort_values("rank") for s in strategies}
        sets = {s: set(zip(t.layer, t["head"], strict=True)) for s, t in top.items()}
        everywhere = set.intersection(*sets.values())
        critical = pd.concat(top.values(), ignore_index=True)
        critical["in_all_strategies"] = [
            (lh in everywhere) for lh in zip(critical.layer, critical["head"], strict=True)
        ]
        agreement: dict = {"top_k": k, "in_all_strategies": sorted(f"L{layer}H{head}" for layer, head in everywhere)}
        for a, b in itertools.combinations(strategies, 2):
            ea = table[table.strategy == a].sort_values(["layer", "head"])["effect"].to_numpy()
            eb = table[table.strategy == b].sort_values(["layer", "head"])["effect"].to_numpy()
            rho = spearman(ea, eb)
            overlap = len(sets[a] & sets[b]) / k
            result.metrics[f"spearman.{a}_vs_{b}"] = rho
            result.metrics[f"topk_overlap.{a}_vs_{b}"] = overlap
            agreement[f"{a}_vs_{b}"] = {"spearman": None if np.isnan(rho) else round(rho, 4), "topk_overlap": overlap}
        return critical, agreement


ANALYZERS = [HeadAblation]
