"""activation_patching: which activations carry the difference between a clean and a corrupted prompt.

Convention (as in ROME's causal tracing and TransformerLens' `patching` module): run the
*corrupted* prompt and write one *clean* activation into it; the metric is the logit difference
logit(answer) - logit(wrong) at the last token, normalised so that the corrupted run is 0 and the
clean run is 1. A value near 1 means that activation alone restores the clean behaviour.

Sites: the residual stream (`blocks.L.resid_pre`), attention output (`attn.out`) and MLP output
(`mlp.out`) by layer x position; every head's output (`attn.z` of that head) at all positions
and by position. Every sweep is a handful of batched passes through `HookedModel.sweep`, which
starts each pass at the earliest layer and position its patches touch.

Positions before the first token where clean and corrupted differ carry identical activations in
both runs of a causal model: patching them changes nothing, so the position-resolved sweeps fill
those cells with exactly 0 instead of computing them (said in the summary).

Position-resolved results need one token per position, so they average over the largest group of
pairs that share a template (built-in sets) and a token length; head results (all positions)
average over every pair.

Checks: both endpoints. The unpatched corrupted run gives 0, and patching the whole clean
residual stream (at the first layer, and at the last layer's output) gives 1, each within 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .metrics import Normaliser, last_positions, logit_diff, sweep_logit_diff
from .pairs import PairBatch, check_pair_source, load_pairs, tokenize_pairs
from .patching_plots import plot_head_grid, plot_heads_by_position, plot_layer_position

#: site name -> the hook site it patches (per layer)
LAYER_POSITION_SITES = {"resid_pre": "resid_pre", "attn_out": "attn.out", "mlp_out": "mlp.out"}
SITES = (*LAYER_POSITION_SITES, "heads", "heads_by_position")
ENDPOINT_TOLERANCE = 1e-4


@dataclass
class ActivationPatchingConfig:
    pairs: str = "ioi"  # "ioi", "factual" or a .jsonl of clean/corrupted/answer/wrong[/position_map]
    n_pairs: int = 16
    sites: list[str] = field(default_factory=lambda: list(SITES))
    layers: list[int] | None = None
    batch_size: int = 64  # rows per forward pass (bounds memory)
    allow_first_piece: bool = False  # answers split into pieces: use their first piece


@dataclass
class PatchingRun:
    """A pair batch with its clean activations, ready for patching sweeps."""

    model: object
    pairs: PairBatch
    clean: dict[str, torch.Tensor]
    clean_value: float
    corrupted_value: float
    keep: torch.Tensor
    column: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.pairs.corrupted.input_ids.shape[1])

    def patch(self, hook: str, **where) -> Intervention:
        """Write the clean activation at `hook` into the corrupted run (restricted by heads/positions)."""
        return Intervention(hook, "replace", value=self.clean[hook], **where)

    def sweep(self, items: Sequence[Sequence[Intervention]], batch_size: int, progress=None) -> torch.Tensor:
        """Mean (over pairs) logit difference of each item: [N]."""
        metric = sweep_logit_diff(self.column, self.pairs.answer_ids, self.pairs.wrong_ids)
        with torch.no_grad():
            values = self.model.sweep(
                self.pairs.corrupted, items, metric, batch_size=batch_size, logits_to_keep=self.keep, progress=progress
            )
        return values.double().mean(1)


def prepare(model, pairs: PairBatch, hooks: Sequence[str]) -> PatchingRun:
    """One clean pass (capturing `hooks`, aligned to corrupted positions) and one corrupted pass."""
    with torch.no_grad():
        keep_clean, column_clean = last_positions(pairs.clean)
        out = model.forward(pairs.clean, capture=hooks, logits_to_keep=keep_clean)
        clean_ld = logit_diff(out.output, column_clean, pairs.answer_ids, pairs.wrong_ids)
        keep, column = last_positions(pairs.corrupted)
        corrupted_ld = logit_diff(
            model.forward(pairs.corrupted, logits_to_keep=keep).output, column, pairs.answer_ids, pairs.wrong_ids
        )
    clean = {name: pairs.align(value) for name, value in out.cache.items()}
    return PatchingRun(
        model, pairs, clean, float(clean_ld.double().mean()), float(corrupted_ld.double().mean()), keep, column
    )


def layer_position_items(run: PatchingRun, hook_site: str, layers: Sequence[int], positions: Sequence[int]):
    """One item per (layer, position): that clean activation patched in."""
    return [[run.patch(f"blocks.{L}.{hook_site}", positions=[p])] for L in layers for p in positions]


def head_items(run: PatchingRun, layers: Sequence[int], positions: Sequence[int] | None = None):
    """One item per (layer, head) over the positions from the first difference on; or per (layer, head, position)."""
    n_heads = run.model.info.n_heads
    if positions is None:
        span = list(range(run.pairs.first_diff, run.width))
        return [[run.patch(f"blocks.{L}.attn.z", heads=[h], positions=span)] for L in layers for h in range(n_heads)]
    return [
        [run.patch(f"blocks.{L}.attn.z", heads=[h], positions=[p])]
        for L in layers
        for h in range(n_heads)
        for p in positions
    ]


def position_group(pairs: PairBatch) -> list[int]:
    """The largest set of rows sharing a template (built-in sets) and a token length: one role per position."""

    def key(row: int):
        meta = pairs.pairs[row].meta
        return int(pairs.corrupted.lengths[row]), meta.get("template", meta.get("relation"))

    groups: dict = {}
    for row in range(pairs.size):
        groups.setdefault(key(row), []).append(row)
    return max(groups.values(), key=len)  # the largest group (the first one on ties)


class ActivationPatching(Analyzer):
    name = "activation_patching"
    family = "mechanistic"
    description = (
        "Clean -> corrupted activation patching by layer x position and by head, normalised clean=1, corrupted=0"
    )
    Config = ActivationPatchingConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: ActivationPatchingConfig) -> None:
        check_pair_source(cfg.pairs, self.name)
        check_layers(info, cfg.layers, self.name)
        unknown = [s for s in cfg.sites if s not in SITES]
        if unknown or not cfg.sites:
            raise ConfigError(f"{self.name}: unknown or no sites {unknown}; choose from {', '.join(SITES)}")
        if cfg.n_pairs < 1 or cfg.batch_size < 1:
            raise ConfigError(f"{self.name}: n_pairs ({cfg.n_pairs}) and batch_size ({cfg.batch_size}) must be >= 1")

    def estimate(self, info: ModelInfo, cfg: ActivationPatchingConfig, workload):
        """A clean and a corrupted pass, the endpoint sweep, then one sweep per site: items per
        (layer, head) from the first differing position, per (layer, position) and per
        (layer, head, position) over the largest group of pairs sharing a template."""
        model = workload.model
        layers = check_layers(info, cfg.layers, self.name)
        pair_list = load_pairs(cfg.pairs, model.tokenizer, cfg.n_pairs, workload.seed)
        pairs = tokenize_pairs(model, pair_list, cfg.allow_first_piece, self.name)
        hooks = self._hooks(cfg.sites, layers, info.n_layers)

        def prepared(p: PairBatch):
            keep, _ = last_positions(p.corrupted)
            clean = workload.forward(p.size, int(p.clean.input_ids.shape[1]), logits=len(keep), capture=hooks)
            return clean + workload.forward(p.size, int(p.corrupted.input_ids.shape[1]), logits=len(keep)), keep

        cost, keep = prepared(pairs)
        width, last = int(pairs.corrupted.input_ids.shape[1]), info.n_layers - 1
        endpoints = [(info.n_layers, width), (0, 0), (last, 0)]
        cost = cost + workload.sweep_batch(pairs.corrupted, endpoints, cfg.batch_size, keep)
        heads = [(L, pairs.first_diff) for L in layers for _ in range(info.n_heads)]
        figures = 0
        if "heads" in cfg.sites:
            cost, figures = cost + workload.sweep_batch(pairs.corrupted, heads, cfg.batch_size, keep), figures + 1
        position_sites = [s for s in cfg.sites if s in LAYER_POSITION_SITES or s == "heads_by_position"]
        if position_sites:
            group = position_group(pairs)
            sub = pairs if len(group) == pairs.size else pairs.subset(model, group)
            if sub is not pairs:
                more, _ = prepared(sub)
                cost = cost + more
            sub_keep, _ = last_positions(sub.corrupted)
            computed = range(sub.first_diff, int(sub.corrupted.lengths[0]))
            grid = [(L, p) for L in layers for p in computed]
            for site in position_sites:
                starts = grid if site != "heads_by_position" else [(L, p) for L, p in grid for _ in range(info.n_heads)]
                cost = cost + workload.sweep_batch(sub.corrupted, starts, cfg.batch_size, sub_keep)
            figures += int(any(s in LAYER_POSITION_SITES for s in position_sites))
            figures += int("heads_by_position" in cfg.sites)
        return cost + workload.figures(figures, figures + len(position_sites))

    def run(self, ctx: RunContext) -> Result:
        cfg: ActivationPatchingConfig = self.cfg
        model = ctx.model
        layers = check_layers(model.info, cfg.layers, self.name)
        pair_list = load_pairs(cfg.pairs, model.tokenizer, cfg.n_pairs, ctx.seed)
        pairs = tokenize_pairs(model, pair_list, cfg.allow_first_piece, self.name)
        result = Result()
        hooks = self._hooks(cfg.sites, layers, model.info.n_layers)
        run = prepare(model, pairs, hooks)
        norm = Normaliser(run.clean_value, run.corrupted_value)
        result.metrics.update({"clean_logit_diff": run.clean_value, "corrupted_logit_diff": run.corrupted_value})
        self._endpoints(run, norm, cfg.batch_size, result)

        def progress(desc: str) -> Callable:
            return lambda it: ctx.progress(it, f"{self.name} {desc}")

        if "heads" in cfg.sites:
            values = norm(run.sweep(head_items(run, layers), cfg.batch_size, progress("heads")))
            grid = values.reshape(len(layers), model.info.n_heads).numpy()
            result.tables["heads"] = _head_table(grid, layers)
            result.add_figure("heads", plot_head_grid, grid, layers, model.info.name, ctx.style)
            top = result.tables["heads"].sort_values("patched", key=abs, ascending=False).head(10)
            result.summary["top_heads"] = [f"L{r.layer}H{r.head}: {r.patched:.3f}" for r in top.itertuples()]
            for r in top.itertuples():
                result.metrics[f"heads.L{r.layer}H{r.head}"] = float(r.patched)
        position_sites = [s for s in cfg.sites if s in LAYER_POSITION_SITES or s == "heads_by_position"]
        if position_sites:
            self._by_position(ctx, run, pairs, position_sites, layers, norm, result, progress)
        result.summary.update(
            {
                "pairs": pairs.size,
                "pair_source": cfg.pairs,
                "example": {"clean": pair_list[0].clean, "corrupted": pair_list[0].corrupted},
                "clean_logit_diff": round(run.clean_value, 4),
                "corrupted_logit_diff": round(run.corrupted_value, 4),
                "first_differing_position": pairs.first_diff,
            }
        )
        return result

    @staticmethod
    def _hooks(sites: Sequence[str], layers: Sequence[int], n_layers: int) -> list[str]:
        names = {"blocks.0.resid_pre", f"blocks.{n_layers - 1}.resid_post"}
        for site in sites:
            hook_site = LAYER_POSITION_SITES.get(site, "attn.z")
            names.update(f"blocks.{L}.{hook_site}" for L in layers)
        return sorted(names)

    def _endpoints(self, run: PatchingRun, norm: Normaliser, batch_size: int, result: Result) -> None:
        """Nothing patched -> 0; the whole clean residual stream patched (first layer, last layer) -> 1."""
        last = run.model.info.n_layers - 1
        items = [[], [run.patch("blocks.0.resid_pre")], [run.patch(f"blocks.{last}.resid_post")]]
        corrupted, first, final = norm(run.sweep(items, batch_size)).tolist()
        result.add_check("endpoint_corrupted_is_0", abs(corrupted), ENDPOINT_TOLERANCE)
        result.metrics["endpoint_corrupted"] = corrupted
        if not run.pairs.mapped:  # with a position map the clean run is not a patch of the corrupted one
            result.add_check("endpoint_clean_is_1_first_layer", abs(first - 1), ENDPOINT_TOLERANCE)
            result.add_check("endpoint_clean_is_1_last_layer", abs(final - 1), ENDPOINT_TOLERANCE)
            result.metrics["endpoint_clean_first_layer"] = first
            result.metrics["endpoint_clean_last_layer"] = final

    def _by_position(self, ctx, run, pairs, sites, layers, norm, result, progress) -> None:
        cfg: ActivationPatchingConfig = self.cfg
        group = position_group(pairs)
        sub = run if len(group) == pairs.size else prepare(ctx.model, pairs.subset(ctx.model, group), sorted(run.clean))
        width = int(sub.pairs.corrupted.lengths[0])
        tokens = sub.pairs.corrupted.tokens[0]
        computed = list(range(sub.pairs.first_diff, width))
        # the normalisation stays the one over all pairs' clean/corrupted values when the group is smaller
        group_norm = norm if sub is run else Normaliser(sub.clean_value, sub.corrupted_value)
        grids = {}
        for site in sites:
            if site == "heads_by_position":
                continue
            values = group_norm(
                sub.sweep(
                    layer_position_items(sub, LAYER_POSITION_SITES[site], layers, computed),
                    cfg.batch_size,
                    progress(site),
                )
            )
            grid = torch.zeros(len(layers), width, dtype=torch.float64)
            grid[:, sub.pairs.first_diff :] = values.reshape(len(layers), len(computed))
            grids[site] = grid.numpy()
            result.tables[site] = _position_table(grids[site], layers, tokens)
            peak = result.tables[site].iloc[result.tables[site]["patched"].abs().idxmax()]
            result.metrics[f"{site}.peak"] = float(peak.patched)
            result.summary[f"{site}_peak"] = {
                "layer": int(peak.layer),
                "position": int(peak.position),
                "token": peak.token,
                "patched": round(float(peak.patched), 4),
            }
        if grids:
            result.add_figure(
                "layer_position", plot_layer_position, grids, layers, tokens, ctx.model.info.name, ctx.style
            )
        if "heads_by_position" in sites:
            n_heads = ctx.model.info.n_heads
            values = group_norm(
                sub.sweep(head_items(sub, layers, computed), cfg.batch_size, progress("heads by position"))
            )
            cube = torch.zeros(len(layers), n_heads, width, dtype=torch.float64)
            cube[:, :, sub.pairs.first_diff :] = values.reshape(len(layers), n_heads, len(computed))
            rows = [
                {"layer": L, "head": h, "position": p, "token": tokens[p], "patched": float(cube[i, h, p])}
                for i, L in enumerate(layers) for h in range(n_heads) for p in range(width)
            ]  # fmt: skip
            result.tables["heads_by_position"] = pd.DataFrame(rows)
            result.add_figure(
                "heads_by_position",
                plot_heads_by_position,
                cube.numpy(),
                layers,
                tokens,
                ctx.model.info.name,
                ctx.style,
            )
        result.summary["position_group"] = {"pairs": len(group), "tokens": tokens, "filled_zero_before": computed[0]}


def _head_table(grid, layers: Sequence[int]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"layer": L, "head": h, "patched": float(grid[i, h])}
            for i, L in enumerate(layers)
            for h in range(grid.shape[1])
        ]
    )


def _position_table(grid, layers: Sequence[int], tokens: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"layer": L, "position": p, "token": tokens[p], "patched": float(grid[i, p])}
            for i, L in enumerate(layers)
            for p in range(grid.shape[1])
        ]
    )


ANALYZERS = [ActivationPatching]
