"""attribution_patching: the gradient approximation of activation patching (Nanda 2023).

Activation patching in this project follows the ROME / TransformerLens convention: run the
CORRUPTED prompt, write one site's CLEAN activation into it, and report the logit difference
m = logit(answer) - logit(wrong) (mean over pairs) normalised so that corrupted = 0 and
clean = 1. A value near 1 means that site alone restores the behaviour.

Attribution patching replaces the one forward pass per site by a first-order Taylor expansion
around the corrupted run:

    m(a_corr -> a_clean) - m(a_corr)  ~  (a_clean - a_corr) . dm/da |_(corrupted run)

so every site of every layer is estimated from two forward passes (clean without gradients,
corrupted with them) and ONE backward pass, and then divided by m_clean - m_corr like the
real patching values. Syed et al. (2023, "Attribution patching outperforms automated circuit
discovery") show that it ranks components well; where the model is far from linear between
the two runs (typically early-layer residual sites, attention patterns that flip) it can be off.

Sites:
- `attn.z` (heads): the dot product is summed over positions and d_head per head: the estimate
  of patching one head at every position, a [layer, head] map. Averaged over all pairs.
- `resid_pre`, `attn.out`, `mlp.out`, `resid_post`: per layer and (corrupted) position. A
  position means the same thing in two pairs only when they share a template, so these maps
  average over the largest group of pairs with the same template (pair `meta`) and token length
  (`patching.position_group`, the group activation patching uses), reported in the summary.

Checks (heads, with `check: true`):
- `pearson_vs_activation_patching` (mode min): Pearson correlation over heads between the
  estimates and real head patching (one batched `model.sweep` over every head; clean `attn.z`
  of one head written into the corrupted run). This is an empirical property of the model:
  ~0.9 and above for SmolLM2 on IOI heads, and random tiny models (close to linear at their
  small weights) also pass; a failure means the linear approximation is not to be trusted.
- `first_order_rel_err` (mode max): an exact property. For the `n_fd` heads with the largest
  estimates, the central difference (m(a_corr + eps d) - m(a_corr - eps d)) / (2 eps), with
  d = a_clean - a_corr written by the same sweep machinery, must equal the estimate up to
  O(eps^2): this ties the backward pass, the sign and the normalisation to the intervention.

Pairs of different lengths need a `position_map` (for each corrupted token, the clean position
patched into it); clean activations are moved to corrupted positions with `PairBatch.align`
before the difference is taken, exactly as activation patching writes them. The reference sweep
is activation patching's own (`patching.head_items`: each head patched at every position from
the first differing token on), so the two analyzers report the same real values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .circuit_plots import plot_attribution_vs_patching, plot_head_map, plot_layer_position
from .metrics import Normaliser, last_positions, logit_diff, sweep_logit_diff
from .pairs import PairBatch, check_pair_source, load_pairs, tokenize_pairs
from .patching import PatchingRun, head_items, position_group

#: sites the analyzer knows; `attn.z` is reported per head, the others per layer x position
SITES = ("attn.z", "resid_pre", "attn.out", "mlp.out", "resid_post")
#: relative step of the central-difference check
FD_EPS = 1e-2
FD_TOLERANCE = 1e-2


@dataclass
class AttributionPatchingConfig:
    pairs: str = "ioi"  # ioi | factual | path to a .jsonl of {clean, corrupted, answer, wrong}
    n_pairs: int = 8
    sites: list[str] = field(default_factory=lambda: ["attn.z", "resid_pre", "attn.out", "mlp.out"])
    layers: list[int] | None = None  # null: all layers
    allow_first_piece: bool = False  # multi-piece answers: use their first piece
    check: bool = True  # real head patching (one batched sweep) for the correlation check
    min_correlation: float = 0.6  # threshold of the Pearson check
    n_fd: int = 5  # heads in the first-order (central difference) check
    sweep_batch_size: int = 64  # rows per forward pass of the reference sweep
    top_n: int = 20


# --- shared helpers (circuit discovery uses them too) -----------------------------------------
def graph_interventions(names: list[str]) -> list[Intervention]:
    """Identity interventions (scale by 1) that put the captured `attn.z` tensors into the graph.

    `attn.z` is a reshaped view of the output projection's input; without an intervention the
    model computes from the raw tensor and a gradient w.r.t. the captured view is None. With
    one, the captured (post-intervention) tensor is the one the model consumes."""
    return [Intervention(name, "scale", factor=1.0) for name in names if name.endswith("attn.z")]


def forward_with_grads(model, batch, answer_ids, wrong_ids, names: list[str], extra: tuple[str, ...] = ()):
    """Forward with gradients: (per-row logit differences, activations, d(sum of rows)/d activations).

    Rows are independent, so the gradient of the sum w.r.t. row b's activation is row b's own.
    `extra` hook points are captured too (detached, no gradient)."""
    keep, column = last_positions(batch)
    capture = [*names, *(n for n in extra if n not in names)]
    out = model.forward(
        batch, capture=capture, interventions=graph_interventions(names), grad=True, logits_to_keep=keep
    )
    diffs = logit_diff(out.output, column, answer_ids, wrong_ids)
    acts = [out.cache[n] for n in names]
    grads = torch.autograd.grad(diffs.sum(), acts, allow_unused=True)
    grads = [torch.zeros_like(a) if g is None else g for g, a in zip(grads, acts, strict=True)]
    cache = {n: t.detach() for n, t in out.cache.items()}
    return diffs.detach(), cache, dict(zip(names, grads, strict=True))


def forward_capture(model, batch, answer_ids, wrong_ids, names: list[str]):
    """Forward without gradients: (per-row logit differences, activations)."""
    keep, column = last_positions(batch)
    with torch.no_grad():
        out = model.forward(batch, capture=names, logits_to_keep=keep)
    return logit_diff(out.output, column, answer_ids, wrong_ids), dict(out.cache)


# --- the estimate ------------------------------------------------------------------------------
@dataclass
class AttributionEstimate:
    """Per-row contributions (a_clean - a_corr) . d m_row / d a of every site, before normalising.

    heads[name]: [B, T, H] (summed over d_head); positions[name]: [B, T] (summed over d_model)."""

    clean: torch.Tensor  # [B] logit differences
    corrupted: torch.Tensor  # [B]
    heads: dict[str, torch.Tensor]
    positions: dict[str, torch.Tensor]
    clean_acts: dict[str, torch.Tensor]
    corrupted_acts: dict[str, torch.Tensor]

    def head_map(self, layers: list[int], rows: list[int] | None = None) -> torch.Tensor:
        """[L, H] normalised estimate of patching each head (all positions) in the given rows."""
        rows_t = torch.as_tensor(rows if rows is not None else range(self.clean.shape[0]))
        norm = Normaliser(float(self.clean[rows_t].double().mean()), float(self.corrupted[rows_t].double().mean()))
        gap = norm.clean - norm.corrupted
        stacked = torch.stack([self.heads[f"blocks.{L}.attn.z"][rows_t].sum(1).mean(0) for L in layers])
        return stacked.double() / gap

    def position_map(self, site: str, layers: list[int], rows: list[int]) -> torch.Tensor:
        """[L, T] normalised estimate of patching one site at one position in the given rows."""
        rows_t = torch.as_tensor(rows)
        norm = Normaliser(float(self.clean[rows_t].double().mean()), float(self.corrupted[rows_t].double().mean()))
        gap = norm.clean - norm.corrupted
        stacked = torch.stack([self.positions[f"blocks.{L}.{site}"][rows_t].mean(0) for L in layers])
        return stacked.double() / gap


def attribution_patching(model, pb: PairBatch, sites: list[str], layers: list[int]) -> AttributionEstimate:
    """Two forward passes (clean; corrupted with gradients) and one backward pass.

    Clean activations are moved to corrupted positions (`pb.align`: the identity without a position map)."""
    names = [f"blocks.{L}.{site}" for L in layers for site in sites]
    clean, clean_cache = forward_capture(model, pb.clean, pb.answer_ids, pb.wrong_ids, names)
    clean_acts = {name: pb.align(value) for name, value in clean_cache.items()}
    corrupted, corr_acts, grads = forward_with_grads(model, pb.corrupted, pb.answer_ids, pb.wrong_ids, names)
    heads, positions = {}, {}
    for name in names:
        delta = (clean_acts[name] - corr_acts[name]).double() * grads[name].double()
        if name.endswith("attn.z"):
            heads[name] = delta.sum(-1)  # [B, T, H]
        else:
            positions[name] = delta.flatten(2).sum(-1)  # [B, T]
    return AttributionEstimate(clean.detach(), corrupted, heads, positions, clean_acts, corr_acts)


# --- the reference: real patching ---------------------------------------------------------------
def interpolation_items(
    estimate: AttributionEstimate, pb: PairBatch, heads: list[tuple[int, int]], scale: float
) -> list[list[Intervention]]:
    """One item per head: its attn.z set to corr + scale * (clean - corr), from the first differing position."""
    span = list(range(pb.first_diff, int(pb.corrupted.input_ids.shape[1])))
    items = []
    for layer, head in heads:
        name = f"blocks.{layer}.attn.z"
        corr = estimate.corrupted_acts[name]
        value = corr + scale * (estimate.clean_acts[name] - corr)
        items.append([Intervention(name, "replace", value=value, heads=[head], positions=span)])
    return items


def sweep_corrupted(model, pb: PairBatch, items, batch_size: int, progress=None) -> torch.Tensor:
    """Mean logit difference of the corrupted run under each item: [N] (one batched sweep)."""
    keep, column = last_positions(pb.corrupted)
    metric = sweep_logit_diff(column, pb.answer_ids, pb.wrong_ids)
    with torch.no_grad():
        out = model.sweep(pb.corrupted, items, metric, batch_size=batch_size, logits_to_keep=keep, progress=progress)
    return out.double().mean(1)


def real_head_patching(
    model, pb: PairBatch, estimate: AttributionEstimate, layers: list[int], batch_size: int = 64, progress=None
) -> torch.Tensor:
    """[L, H] real activation patching of every head (clean attn.z into the corrupted run), normalised.

    Activation patching's own items and sweep (`patching.head_items`), fed the activations the
    estimate already holds: no extra forward pass."""
    keep, column = last_positions(pb.corrupted)
    clean_value, corrupted_value = float(estimate.clean.double().mean()), float(estimate.corrupted.double().mean())
    z_names = {f"blocks.{L}.attn.z" for L in layers}
    clean = {name: value for name, value in estimate.clean_acts.items() if name in z_names}
    run = PatchingRun(model, pb, clean, clean_value, corrupted_value, keep, column)
    values = run.sweep(head_items(run, layers), batch_size, progress)
    return Normaliser(clean_value, corrupted_value)(values).reshape(len(layers), model.info.n_heads)


def central_differences(
    model, pb: PairBatch, estimate: AttributionEstimate, heads: list[tuple[int, int]], batch_size: int = 64
) -> torch.Tensor:
    """Normalised directional derivatives along a_clean - a_corr at the corrupted run, per head: [n]."""
    plus = interpolation_items(estimate, pb, heads, FD_EPS)
    minus = interpolation_items(estimate, pb, heads, -FD_EPS)
    values = sweep_corrupted(model, pb, plus + minus, batch_size)
    gap = float(estimate.clean.double().mean()) - float(estimate.corrupted.double().mean())
    return (values[: len(heads)] - values[len(heads) :]) / (2 * FD_EPS) / gap


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# --- the analyzer ------------------------------------------------------------------------------
class AttributionPatching(Analyzer):
    name = "attribution_patching"
    family = "mechanistic"
    description = (
        "Gradient estimate of activation patching for heads and layer x position, checked against real patching"
    )
    Config = AttributionPatchingConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: AttributionPatchingConfig) -> None:
        check_pair_source(cfg.pairs, self.name)
        check_layers(info, cfg.layers, self.name)
        unknown = [s for s in cfg.sites if s not in SITES]
        if unknown or not cfg.sites:
            raise ConfigError(
                f"{self.name}: sites {unknown or '[]'} not supported; choose from {', '.join(SITES)} "
                "(attn.z is reported per head, the others per layer x position)"
            )
        if cfg.n_pairs < 1 or cfg.sweep_batch_size < 1 or cfg.top_n < 1 or cfg.n_fd < 0:
            raise ConfigError(
                f"{self.name}: n_pairs ({cfg.n_pairs}), sweep_batch_size ({cfg.sweep_batch_size}) and top_n "
                f"({cfg.top_n}) must be >= 1 and n_fd ({cfg.n_fd}) >= 0; e.g. n_pairs: 8"
            )
        if cfg.check and "attn.z" not in cfg.sites:
            raise ConfigError(
                f"{self.name}: check: true compares head estimates; add attn.z to sites or set check: false"
            )
        if not -1.0 <= cfg.min_correlation <= 1.0:
            raise ConfigError(f"{self.name}: min_correlation={cfg.min_correlation} must lie in [-1, 1]")

    def estimate(self, info: ModelInfo, cfg: AttributionPatchingConfig, workload):
        """A clean pass and a corrupted forward+backward pass; with `check`, real patching of every
        head (one sweep), and a sweep of 2 x n_fd interpolations for the first-order check."""
        model = workload.model
        layers = check_layers(info, cfg.layers, self.name)
        pairs = load_pairs(cfg.pairs, model.tokenizer, cfg.n_pairs, workload.seed)
        pb = tokenize_pairs(model, pairs, cfg.allow_first_piece, self.name)
        names = [f"blocks.{L}.{site}" for L in layers for site in dict.fromkeys(cfg.sites)]
        keep, _ = last_positions(pb.corrupted)
        rows, width = pb.size, int(pb.corrupted.input_ids.shape[1])
        cost = workload.forward(rows, int(pb.clean.input_ids.shape[1]), logits=len(keep), capture=names)
        cost = cost + workload.forward(rows, width, logits=len(keep), capture=names, grad=True)
        cost = cost.hold(3 * sum(rows * width * workload.width_of(n) for n in names) * workload.dtype_bytes)
        heads = "attn.z" in cfg.sites
        if heads and cfg.check:
            starts = [(L, pb.first_diff) for L in layers for _ in range(info.n_heads)]
            cost = cost + workload.sweep_batch(pb.corrupted, starts, cfg.sweep_batch_size, keep)
        n_fd = min(cfg.n_fd, len(layers) * info.n_heads) if heads else 0
        if n_fd:  # the top heads' layers are known only after the estimate: assumed spread evenly
            starts = [(layers[i * len(layers) // n_fd], pb.first_diff) for i in range(n_fd)] * 2
            cost = cost + workload.sweep_batch(pb.corrupted, starts, cfg.sweep_batch_size, keep)
        n_figures = int(heads) * (1 + int(cfg.check)) + int(any(s != "attn.z" for s in cfg.sites))
        return cost + workload.figures(n_figures, n_figures + len(cfg.sites) - 1)

    def run(self, ctx: RunContext) -> Result:
        cfg: AttributionPatchingConfig = self.cfg
        model = ctx.model
        layers = check_layers(model.info, cfg.layers, self.name)
        pairs = load_pairs(cfg.pairs, model.tokenizer, cfg.n_pairs, ctx.seed)
        pb = tokenize_pairs(model, pairs, cfg.allow_first_piece, self.name)
        sites = list(dict.fromkeys(cfg.sites))
        estimate = attribution_patching(model, pb, sites, layers)
        result = Result()
        norm = Normaliser(float(estimate.clean.double().mean()), float(estimate.corrupted.double().mean()))
        result.metrics["clean_logit_diff"] = norm.clean
        result.metrics["corrupted_logit_diff"] = norm.corrupted
        result.summary = {
            "pairs": cfg.pairs,
            "n_pairs": pb.size,
            "clean_logit_diff": round(norm.clean, 4),
            "corrupted_logit_diff": round(norm.corrupted, 4),
            "convention": "clean activation patched into the corrupted run; corrupted = 0, clean = 1",
        }
        if "attn.z" in sites:
            self._heads(ctx, pb, estimate, layers, result)
        group = position_group(pb)
        tokens = pb.corrupted.tokens[group[0]]
        frames, maps = [], {}
        for site in (s for s in sites if s != "attn.z"):
            values = estimate.position_map(site, layers, group)[:, : len(tokens)].cpu().numpy()
            maps[site] = values
            for i, layer in enumerate(layers):
                frames.append(
                    pd.DataFrame(
                        {
                            "site": site,
                            "layer": layer,
                            "position": range(len(tokens)),
                            "token": tokens,
                            "estimate": values[i],
                        }
                    )
                )
        if frames:
            result.tables["layer_position"] = pd.concat(frames, ignore_index=True)
            result.add_figure("layer_position", plot_layer_position, maps, layers, tokens, model.info.name, ctx.style)
            result.summary["position_group"] = {
                "rows": len(group),
                "template": pb.pairs[group[0]].meta.get("template"),
                "corrupted_prompt": pb.pairs[group[0]].corrupted,
            }
        nonfinite = sum(
            int((~torch.isfinite(t)).sum()) for t in (*estimate.heads.values(), *estimate.positions.values())
        )
        result.add_check("nonfinite_estimates", nonfinite, 0)
        return result

    def _heads(self, ctx: RunContext, pb: PairBatch, estimate: AttributionEstimate, layers, result: Result) -> None:
        cfg: AttributionPatchingConfig = self.cfg
        model = ctx.model
        n_heads = model.info.n_heads
        head_map = estimate.head_map(layers).cpu()
        table = pd.DataFrame(
            {
                "layer": np.repeat(layers, n_heads),
                "head": np.tile(np.arange(n_heads), len(layers)),
                "attribution": head_map.flatten().numpy(),
            }
        )
        real = None
        if cfg.check:
            progress = (lambda it: ctx.progress(it, f"{self.name} patching")) if ctx.show_progress else None
            real = real_head_patching(model, pb, estimate, layers, cfg.sweep_batch_size, progress).cpu()
            table["patching"] = real.flatten().numpy()
            r = pearson(table["attribution"].to_numpy(), table["patching"].to_numpy())
            result.metrics["pearson_vs_activation_patching"] = r
            result.metrics["max_abs_error_vs_patching"] = float((head_map - real).abs().max())
            result.add_check("pearson_vs_activation_patching", r, cfg.min_correlation, mode="min")
            result.summary["pearson_vs_activation_patching"] = None if np.isnan(r) else round(r, 4)
        order = table["attribution"].abs().sort_values(ascending=False, kind="stable").index
        table = table.loc[order].reset_index(drop=True)
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        n_fd = min(cfg.n_fd, len(table))
        if n_fd:
            heads = [(int(r.layer), int(r.head)) for r in table.head(n_fd).itertuples()]
            fd = central_differences(model, pb, estimate, heads, cfg.sweep_batch_size).cpu().numpy()
            est = table["attribution"].head(n_fd).to_numpy()
            scale = max(float(np.abs(table["attribution"]).max()), 1e-12)
            result.add_check("first_order_rel_err", float(np.abs(fd - est).max()) / scale, FD_TOLERANCE)
        result.tables["heads"] = table
        result.add_figure(
            "head_attribution",
            plot_head_map,
            head_map.numpy(),
            layers,
            "attribution patching estimate (normalised)",
            model.info.name,
            ctx.style,
        )
        if real is not None:
            result.add_figure(
                "attribution_vs_patching",
                plot_attribution_vs_patching,
                head_map.flatten().numpy(),
                real.flatten().numpy(),
                model.info.name,
                ctx.style,
            )
        top = table.head(cfg.top_n)
        for r in top.head(10).itertuples():
            result.metrics[f"L{int(r.layer)}H{int(r.head)}.attribution"] = float(r.attribution)
        result.summary["top_heads"] = [f"L{int(r.layer)}H{int(r.head)}" for r in top.itertuples()]


ANALYZERS = [AttributionPatching]
