"""max_activating: the top-k tokens (with context) of chosen neurons over a dataset, streamed.

One pass over the data keeps, per layer, a running top-k of every tracked unit (values and
(text id, position) keys: memory is units x k, whatever the dataset size) together with a
streaming per-unit variance (Chan's parallel update, float64). Without explicit `neurons`
the `top_k_units` most variable units of each chosen layer are reported. Ties are broken by
the earlier (text, position), so the result does not depend on the batch size.

Afterwards only the texts that hold a reported example are re-run (bounded by neurons x k)
to get the context tokens and their activations for the HTML view; the top example of a few
neurons is recomputed from a fresh single-text forward pass (no padding) as the check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .neuron_views import max_activating_html, plot_top_activations

D_MODEL_HOOKS = ("resid_pre", "resid_post", "attn.out", "mlp.out")
SUPPORTED_HOOKS = ("mlp.post", *D_MODEL_HOOKS)
_STRIDE = 1 << 24  # key = text_id * _STRIDE + position
_REL_FLOOR = 1e-3  # relative errors are taken against max(|value|, this)


@dataclass
class MaxActivatingConfig:
    #: [[layer, unit], ...]; null: the `top_k_units` most variable units of each layer in `layers`
    neurons: list[list[int]] | None = None
    hook_point: str = "mlp.post"
    #: layers searched when `neurons` is null; null: first, middle and last layer
    layers: list[int] | None = None
    top_k_units: int = 4
    top_k: int = 10
    context: int = 5
    #: how many neurons get their top example recomputed from a single-text forward pass
    n_check: int = 3
    #: leave position 0 out (in models without a BOS token its activations are often huge outliers)
    ignore_first_token: bool = False


def unit_limit(info: ModelInfo, hook_point: str) -> tuple[int, str]:
    """(number of units, what it is called) at a hook point."""
    if hook_point == "mlp.post":
        return info.d_mlp, "d_mlp"
    return info.d_model, "d_model"


def default_layers(info: ModelInfo) -> list[int]:
    return sorted({0, info.n_layers // 2, info.n_layers - 1})


def resolve_neurons(info: ModelInfo, cfg: MaxActivatingConfig) -> dict[int, list[int]] | None:
    """Validated {layer: [units]} from cfg.neurons (None when not given)."""
    if cfg.neurons is None:
        return None
    if not cfg.neurons:
        raise ConfigError("max_activating.neurons is empty; give [[layer, unit], ...] or null for the most variable")
    limit, what = unit_limit(info, cfg.hook_point)
    chosen: dict[int, list[int]] = {}
    for pair in cfg.neurons:
        if len(pair) != 2:
            raise ConfigError(f"max_activating.neurons: {list(pair)} is not a [layer, unit] pair")
        layer = check_layers(info, [pair[0]], "max_activating.neurons")[0]
        unit = int(pair[1])
        if not 0 <= unit < limit:
            raise ConfigError(
                f"max_activating.neurons: unit {unit} (layer {pair[0]}) out of range; {cfg.hook_point} of "
                f"{info.name} has units 0..{limit - 1} ({what}={limit})"
            )
        if unit not in chosen.setdefault(layer, []):
            chosen[layer].append(unit)
    return chosen


class StreamingTopK:
    """Running top-k per unit of [tokens, units] blocks, plus per-unit streaming variance."""

    def __init__(self, n_units: int, k: int):
        self.k = k
        self.values = torch.full((0, n_units), float("-inf"))
        self.keys = torch.zeros((0, n_units), dtype=torch.long)
        self.n = 0
        self.mean = torch.zeros(n_units, dtype=torch.float64)
        self.m2 = torch.zeros(n_units, dtype=torch.float64)

    def update(self, x: torch.Tensor, keys: torch.Tensor) -> None:
        """x: [tokens, units] real tokens in (text, position) order; keys: [tokens] increasing,
        all larger than every key seen before (batches arrive in text order)."""
        if x.shape[0] == 0:
            return
        x = x.detach().float().cpu()
        x64 = x.double()
        m = x.shape[0]
        batch_mean = x64.mean(0)
        batch_m2 = ((x64 - batch_mean) ** 2).sum(0)
        total = self.n + m
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.n * m / total)
        self.n = total
        values = torch.cat([self.values, x])
        all_keys = torch.cat([self.keys, keys.cpu()[:, None].expand_as(x)])
        # stable sort: equal values keep (earlier kept entries, then earlier tokens) order
        order = torch.sort(values, dim=0, descending=True, stable=True).indices[: self.k]
        self.values = values.gather(0, order)
        self.keys = all_keys.gather(0, order)

    @property
    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.n, 1)


def window(length: int, position: int, context: int) -> tuple[int, int]:
    """[lo, hi) of the context window around `position`, clipped to the sequence."""
    return max(0, position - context), min(length, position + context + 1)


class MaxActivating(Analyzer):
    name = "max_activating"
    window_outputs = "stitch"  # top contexts at document positions
    family = "activation"
    description = "top-k activating tokens with context per neuron (streamed), table and HTML view"
    Config = MaxActivatingConfig

    def validate(self, info: ModelInfo, cfg: MaxActivatingConfig) -> None:
        if cfg.hook_point not in SUPPORTED_HOOKS:
            raise ConfigError(
                f"max_activating.hook_point: {cfg.hook_point!r} not supported; choose from {list(SUPPORTED_HOOKS)}"
            )
        for option in ("top_k", "top_k_units"):
            if getattr(cfg, option) < 1:
                raise ConfigError(f"max_activating.{option} must be >= 1 (got {getattr(cfg, option)})")
        if cfg.context < 0 or cfg.n_check < 0:
            raise ConfigError("max_activating.context and n_check must be >= 0")
        if cfg.layers is not None:
            check_layers(info, cfg.layers, "max_activating.layers")
        resolve_neurons(info, cfg)

    def estimate(self, info: ModelInfo, cfg: MaxActivatingConfig, workload):
        """A pass over the inputs, a second over the texts holding a top example, n_check single texts."""
        chosen = resolve_neurons(info, cfg)
        if chosen is None:
            layers = check_layers(info, cfg.layers, "max_activating.layers") if cfg.layers else default_layers(info)
            n_neurons = len(set(layers)) * cfg.top_k_units
        else:
            layers, n_neurons = list(chosen), sum(len(units) for units in chosen.values())
        names = [f"blocks.{layer}.{cfg.hook_point}" for layer in dict.fromkeys(layers)]
        needed = min(len(workload.lengths), n_neurons * cfg.top_k)  # at most every text holds an example
        cost = workload.forward_inputs(capture=names) + workload.forward_inputs(needed, capture=names)
        checks = workload.each_text(sorted(workload.lengths, reverse=True)[: cfg.n_check], capture=names[:1])
        return cost + checks + workload.figures(1) + workload.table(n_neurons * cfg.top_k, 11)

    def run(self, ctx: RunContext) -> Result:
        cfg: MaxActivatingConfig = self.cfg
        info = ctx.model.info
        chosen = resolve_neurons(info, cfg)
        if chosen is None:
            layers = check_layers(info, cfg.layers, "max_activating.layers") if cfg.layers else default_layers(info)
            layers = list(dict.fromkeys(layers))
            tracked: dict[int, list[int] | None] = dict.fromkeys(layers)
        else:
            tracked = dict(chosen)
        names = {layer: f"blocks.{layer}.{cfg.hook_point}" for layer in tracked}
        states: dict[int, StreamingTopK] = {}
        n_tokens = 0
        for batch in ctx.batches("max_activating"):
            cache = ctx.model.forward(batch, capture=list(names.values())).cache
            mask = batch.counted_mask.bool()  # a window's own tokens compete, each once
            if cfg.ignore_first_token:
                mask = mask.clone()
                mask[:, 0] = False
            positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            text_ids = torch.as_tensor(batch.text_ids, device=mask.device)[:, None].expand_as(mask)
            keys = (text_ids * _STRIDE + positions)[mask]
            n_tokens += int(mask.sum())
            for layer, name in names.items():
                x = cache[name][mask]
                units = tracked[layer]
                if units is not None:
                    x = x[:, units]
                if layer not in states:
                    states[layer] = StreamingTopK(x.shape[1], cfg.top_k)
                states[layer].update(x, keys)
        result = Result()
        neurons = self._pick(states, tracked, cfg.top_k_units)
        rows = []
        for layer, unit, column in neurons:
            state = states[layer]
            for rank in range(state.values.shape[0]):
                value = float(state.values[rank, column])
                if not np.isfinite(value):
                    continue
                key = int(state.keys[rank, column])
                rows.append(
                    {
                        "hook_point": cfg.hook_point,
                        "layer": layer,
                        "unit": unit,
                        "rank": rank,
                        "activation": value,
                        "text_id": key // _STRIDE,
                        "position": key % _STRIDE,
                        "variance": float(state.variance[column]),
                    }
                )
        table = pd.DataFrame(rows)
        if table.empty:
            raise ConfigError("max_activating: no tokens to rank (ignore_first_token with one-token texts?)")
        views = self._contexts(ctx, table, cfg)
        table = views["table"]
        result.tables["max_activating"] = table
        result.artifacts["max_activating.html"] = max_activating_html(
            views["neurons"], f"Max-activating examples: {info.name}, {cfg.hook_point}"
        )
        # only what the figure draws: the context strings stay in the table
        result.add_figure(
            "top_activations", plot_top_activations, table[["layer", "unit", "rank", "activation"]], ctx.style
        )
        result.add_check("recomputed_batched_rel_error", views["batched_error"], 1e-4)
        result.add_check("top_example_single_text_rel_error", self._single_text_error(ctx, table, cfg), 1e-4)
        result.metrics["neurons"] = float(len(neurons))
        result.metrics["tokens_streamed"] = float(n_tokens)
        result.metrics["mean_top_activation"] = float(table[table["rank"] == 0]["activation"].mean())
        result.summary = {
            "hook_point": cfg.hook_point,
            "neurons": [
                {
                    "layer": int(layer),
                    "unit": int(unit),
                    "top_tokens": frame["token"].head(5).tolist(),
                    "top_activation": round(float(frame["activation"].iloc[0]), 4),
                }
                for (layer, unit), frame in table.groupby(["layer", "unit"], sort=False)
            ][:12],
        }
        return result

    @staticmethod
    def _pick(
        states: dict[int, StreamingTopK], tracked: dict[int, list[int] | None], top_k_units: int
    ) -> list[tuple[int, int, int]]:
        """(layer, unit, column in the state) of every reported neuron."""
        picked = []
        for layer, units in tracked.items():
            if units is not None:
                picked += [(layer, unit, column) for column, unit in enumerate(units)]
                continue
            variance = states[layer].variance
            order = torch.sort(variance, descending=True, stable=True).indices[:top_k_units].tolist()
            picked += [(layer, int(unit), int(unit)) for unit in order]
        return picked

    @staticmethod
    def _contexts(ctx: RunContext, table: pd.DataFrame, cfg: MaxActivatingConfig) -> dict:
        """Re-run only the texts holding an example: tokens and activations of each context."""
        model, texts = ctx.model, ctx.inputs.texts
        needed = sorted(set(table["text_id"].astype(int)))
        layers = sorted(set(table["layer"].astype(int)))
        names = {layer: f"blocks.{layer}.{cfg.hook_point}" for layer in layers}
        units = {layer: sorted(set(table[table["layer"] == layer]["unit"].astype(int))) for layer in layers}
        store: dict[int, dict] = {}
        for start in range(0, len(needed), ctx.batch_size):
            ids = needed[start : start + ctx.batch_size]
            batch = model.tokenize([texts[i] for i in ids], ctx.max_length, text_ids=ids)
            cache = model.forward(batch, capture=list(names.values())).cache
            for row, text_id in enumerate(ids):
                length = int(batch.attention_mask[row].sum())
                store[text_id] = {
                    "tokens": batch.tokens[row],
                    "ids": batch.input_ids[row, :length].tolist(),
                    "acts": {
                        layer: {u: cache[name][row, :length, u].float().cpu().numpy() for u in units[layer]}
                        for layer, name in names.items()
                    },
                }
        decode = model.tokenizer.decode
        tokens_col, left_col, right_col, errors = [], [], [], []
        neurons: dict[tuple[int, int], dict] = {}
        for row in table.itertuples(index=False):
            entry = store[int(row.text_id)]
            pos = int(row.position)
            lo, hi = window(len(entry["tokens"]), pos, cfg.context)
            acts = entry["acts"][int(row.layer)][int(row.unit)]
            errors.append(abs(float(acts[pos]) - row.activation) / max(abs(row.activation), _REL_FLOOR))
            tokens_col.append(entry["tokens"][pos])
            left_col.append(decode(entry["ids"][lo:pos], clean_up_tokenization_spaces=False))
            right_col.append(decode(entry["ids"][pos + 1 : hi], clean_up_tokenization_spaces=False))
            neuron = neurons.setdefault(
                (int(row.layer), int(row.unit)),
                {"layer": int(row.layer), "unit": int(row.unit), "hook_point": cfg.hook_point, "examples": []},
            )
            neuron["examples"].append(
                {
                    "rank": int(row.rank),
                    "activation": float(row.activation),
                    "text_id": int(row.text_id),
                    "position": pos,
                    "tokens": entry["tokens"][lo:hi],
                    "activations": [float(a) for a in acts[lo:hi]],
                    "center": pos - lo,
                }
            )
        table = table.assign(token=tokens_col, left_context=left_col, right_context=right_col)
        columns = ["hook_point", "layer", "unit", "rank", "activation", "text_id", "position", "token"]
        table = table[[*columns, "left_context", "right_context", "variance"]]
        return {"table": table, "neurons": list(neurons.values()), "batched_error": max(errors, default=0.0)}

    @staticmethod
    def _single_text_error(ctx: RunContext, table: pd.DataFrame, cfg: MaxActivatingConfig) -> float:
        """Top example of the first n_check neurons, recomputed from a one-text forward pass."""
        tops = table[table["rank"] == 0].head(cfg.n_check)
        worst = 0.0
        for row in tops.itertuples(index=False):
            batch = ctx.model.tokenize([ctx.inputs.texts[int(row.text_id)]], ctx.max_length)
            name = f"blocks.{int(row.layer)}.{cfg.hook_point}"
            value = float(ctx.model.forward(batch, capture=[name]).cache[name][0, int(row.position), int(row.unit)])
            worst = max(worst, abs(value - row.activation) / max(abs(row.activation), _REL_FLOOR))
        return worst


ANALYZERS = [MaxActivating]
