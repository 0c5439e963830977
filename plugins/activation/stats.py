"""activation_stats: per-layer and per-unit statistics of activations over a dataset.

Streams over batches with float64 moment accumulators, so memory does not grow with the
dataset. Padding tokens never count. Kurtosis is excess kurtosis (0 for a Gaussian); the
residual stream's few outlier dimensions show up as very large values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_hook_points, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .plots import plot_layer_profile, plot_unit_histograms

SUPPORTED_HOOKS = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn.out",
    "attn.z",
    "mlp.pre",
    "mlp.up",
    "mlp.post",
    "mlp.out",
)
STATS = ("mean", "std", "mean_norm", "near_zero_frac", "kurtosis", "max_abs")


@dataclass
class ActivationStatsConfig:
    hook_points: list[str] = field(default_factory=lambda: ["resid_post", "mlp.post"])
    layers: list[int] | None = None
    near_zero_threshold: float = 0.01
    dead_neuron_threshold: float = 0.01


class MomentAccumulator:
    """Streaming moments of all elements plus per-unit statistics of [tokens, units] blocks."""

    def __init__(self, n_units: int, near_zero: float, dead: float):
        self.near_zero, self.dead = near_zero, dead
        self.shift: float | None = None
        self.n = 0
        self.sums = np.zeros(4)
        self.near_zero_count = 0
        self.norm_sum = 0.0
        self.tokens = 0
        self.max_abs = 0.0
        self.unit_shift: torch.Tensor | None = None
        self.unit_moments = torch.zeros(4, n_units, dtype=torch.float64)  # sums of (x - shift)^1..4
        self.unit_active = torch.zeros(n_units, dtype=torch.float64)
        self.unit_max_abs = torch.zeros(n_units, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """x: [tokens, units] (real tokens only)."""
        x = x.to(torch.float64)
        if self.shift is None:  # shifting by a rough mean keeps the raw-moment formulas stable
            self.shift = float(x.mean())
        centred = x - self.shift
        powers = [centred, centred**2]
        powers += [powers[1] * centred, powers[1] ** 2]
        self.sums += np.array([float(p.sum()) for p in powers])
        self.n += x.numel()
        self.near_zero_count += int((x.abs() < self.near_zero).sum())
        self.norm_sum += float(x.norm(dim=-1).sum())
        self.tokens += x.shape[0]
        abs_x = x.abs()
        self.max_abs = max(self.max_abs, float(abs_x.max()))
        if self.unit_shift is None:
            self.unit_shift = x.mean(0)
        unit_centred = x - self.unit_shift
        squared = unit_centred**2
        self.unit_moments += torch.stack([unit_centred, squared, squared * unit_centred, squared**2]).sum(1)
        self.unit_active += (abs_x > self.dead).sum(0)
        self.unit_max_abs = torch.maximum(self.unit_max_abs, abs_x.max(0).values)

    def summary(self) -> dict[str, float]:
        n = self.n
        s1, s2, s3, s4 = self.sums / n
        m2 = s2 - s1**2
        m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4
        return {
            "mean": s1 + (self.shift or 0.0),
            "std": float(np.sqrt(max(m2, 0.0))),
            "mean_norm": self.norm_sum / self.tokens,
            "near_zero_frac": self.near_zero_count / n,
            "kurtosis": float(m4 / m2**2 - 3.0) if m2 > 0 else float("nan"),
            "max_abs": self.max_abs,
        }

    def units(self) -> pd.DataFrame:
        s1, s2, s3, s4 = self.unit_moments / self.tokens
        var = (s2 - s1**2).clamp_min(0)
        m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4
        kurtosis = torch.where(var > 1e-24, m4 / var.clamp_min(1e-24) ** 2 - 3.0, torch.full_like(var, float("nan")))
        return pd.DataFrame(
            {
                "unit": np.arange(len(s1)),
                "mean": (s1 + self.unit_shift).numpy(),
                "std": var.sqrt().numpy(),
                "kurtosis": kurtosis.numpy(),
                "sparsity": (1 - self.unit_active / self.tokens).numpy(),
                "active_frac": (self.unit_active / self.tokens).numpy(),
                "max_abs": self.unit_max_abs.numpy(),
            }
        )


def direct_stats(x: torch.Tensor, near_zero: float) -> dict[str, float]:
    """The same statistics computed in one go (the reference the streaming path must match)."""
    x = x.to(torch.float64)
    centred = x - x.mean()
    m2 = float((centred**2).mean())
    return {
        "mean": float(x.mean()),
        "std": m2**0.5,
        "mean_norm": float(x.norm(dim=-1).mean()),
        "near_zero_frac": float((x.abs() < near_zero).double().mean()),
        "kurtosis": float((centred**4).mean()) / m2**2 - 3.0,
        "max_abs": float(x.abs().max()),
    }


def _unit_error(units: pd.DataFrame, x: torch.Tensor) -> float:
    """Largest relative error of streamed per-unit mean/std against a one-shot computation."""
    x = x.to(torch.float64)
    direct = {"mean": x.mean(0), "std": x.std(0, unbiased=False)}
    scale = x.abs().max().clamp_min(1e-12)
    return max(float((torch.tensor(units[k].to_numpy(copy=True)) - v).abs().max() / scale) for k, v in direct.items())


def _tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, pos, ...] -> [real tokens, units] (per-head tensors are flattened)."""
    return x[mask].reshape(int(mask.sum()), -1)


class ActivationStats(Analyzer):
    name = "activation_stats"
    window_outputs = "accumulate"  # moments over counted tokens
    family = "activation"
    description = "per-layer mean/std/norm/sparsity/kurtosis and per-unit statistics"
    Config = ActivationStatsConfig

    def validate(self, info: ModelInfo, cfg: ActivationStatsConfig) -> None:
        if not cfg.hook_points:
            raise ConfigError("activation_stats.hook_points is empty; e.g. [resid_post, mlp.post]")
        bad = [h for h in cfg.hook_points if h not in SUPPORTED_HOOKS]
        if bad:
            raise ConfigError(f"activation_stats.hook_points: {bad} not supported; choose from {list(SUPPORTED_HOOKS)}")
        check_hook_points(info, cfg.hook_points, "activation_stats.hook_points")
        check_layers(info, cfg.layers, "activation_stats.layers")
        if cfg.near_zero_threshold < 0 or cfg.dead_neuron_threshold < 0:
            raise ConfigError("activation_stats thresholds must be >= 0")

    def estimate(self, info: ModelInfo, cfg: ActivationStatsConfig, workload):
        """One capturing pass over the inputs; streamed moments of every unit (a few flops each)."""
        layers = check_layers(info, cfg.layers, "activation_stats.layers")
        names = [f"blocks.{layer}.{h}" for h in cfg.hook_points for layer in layers]
        cost = workload.forward_inputs(capture=[*names, *self._decomposition_hooks(info, layers)])
        units = sum(workload.width_of(name) for name in names)
        mlp = "mlp.post" in cfg.hook_points
        figures = workload.figures(2, 4 + 2) if mlp else workload.figures(1, 2)
        neurons = workload.table(len(layers) * info.d_mlp, 8) if mlp else workload.table(0, 0)
        return cost + workload.macs(8 * workload.tokens * units) + figures + neurons

    def run(self, ctx: RunContext) -> Result:
        cfg: ActivationStatsConfig = self.cfg
        info = ctx.model.info
        layers = check_layers(info, cfg.layers, "activation_stats.layers")
        names = {(h, layer): f"blocks.{layer}.{h}" for h in cfg.hook_points for layer in layers}
        accumulators: dict[tuple[str, int], MomentAccumulator] = {}
        reference: tuple[tuple[str, int], torch.Tensor] | None = None
        result = Result()
        for batch_number, batch in enumerate(ctx.batches("activation_stats")):
            extra = self._decomposition_hooks(info, layers) if batch_number == 0 else []
            cache = ctx.model.forward(batch, capture=[*names.values(), *extra]).cache
            mask = batch.counted_mask.bool()  # a window's own tokens: each document token once
            for key, name in names.items():
                x = _tokens(cache[name], mask)
                if key not in accumulators:
                    accumulators[key] = MomentAccumulator(
                        x.shape[1], cfg.near_zero_threshold, cfg.dead_neuron_threshold
                    )
                accumulators[key].update(x)
                if reference is None:
                    reference = (key, x.clone())
            if extra:
                self._check_decomposition(result, cache, mask, layers)
        rows = []
        for (hook, layer), acc in accumulators.items():
            stats = acc.summary()
            units = acc.units()
            dead = int((units["active_frac"] == 0).sum())
            always_on = int((units["active_frac"] >= 0.999).sum())
            rows.append(
                {
                    "hook_point": hook,
                    "layer": layer,
                    **stats,
                    "units": len(units),
                    "dead_units": dead,
                    "always_on_units": always_on,
                }
            )
            for stat in STATS:
                result.metrics[f"{hook}.L{layer:02d}.{stat}"] = stats[stat]
            result.metrics[f"{hook}.L{layer:02d}.dead_frac"] = dead / len(units)
        table = pd.DataFrame(rows)
        result.tables["layer_stats"] = table
        unit_tables = []
        for (hook, layer), acc in accumulators.items():
            if hook == "mlp.post":
                frame = acc.units()
                frame.insert(0, "layer", layer)
                unit_tables.append(frame)
        if unit_tables:
            result.tables["neuron_stats"] = pd.concat(unit_tables, ignore_index=True)
            result.add_figure("neuron_histograms", plot_unit_histograms, result.tables["neuron_stats"], ctx.style)
        result.add_figure("layer_profile", plot_layer_profile, table, info.name, ctx.style)
        if reference is not None:
            (key, x) = reference
            fresh = MomentAccumulator(x.shape[1], cfg.near_zero_threshold, cfg.dead_neuron_threshold)
            half = max(1, x.shape[0] // 2)  # two updates, so the streaming merge is exercised
            fresh.update(x[:half])
            if half < x.shape[0]:
                fresh.update(x[half:])
            streamed, direct = fresh.summary(), direct_stats(x, cfg.near_zero_threshold)
            error = max(abs(streamed[k] - direct[k]) / max(abs(direct[k]), 1e-12) for k in STATS)
            result.add_check("streaming_matches_direct", error, 1e-6)
            result.add_check("unit_streaming_matches_direct", _unit_error(fresh.units(), x), 1e-6)
        result.summary = self._summary(table)
        return result

    @staticmethod
    def _decomposition_hooks(info: ModelInfo, layers: list[int]) -> list[str]:
        if info.post_norm:  # the residual does not decompose additively
            return []
        layer = layers[0]
        return [f"blocks.{layer}.{s}" for s in ("resid_pre", "attn.out", "mlp.out", "resid_post")]

    @staticmethod
    def _check_decomposition(result: Result, cache, mask: torch.Tensor, layers: list[int]) -> None:
        """Pre-norm blocks: resid_post = resid_pre + attn.out + mlp.out (the hooks see the
        tensors they claim to)."""
        p = f"blocks.{layers[0]}."
        rebuilt = cache[p + "resid_pre"] + cache[p + "attn.out"] + cache[p + "mlp.out"]
        actual = cache[p + "resid_post"]
        error = float((rebuilt - actual)[mask].abs().max() / actual[mask].abs().max().clamp_min(1e-12))
        result.add_check("residual_decomposition_rel_error", error, 1e-4)

    @staticmethod
    def _summary(table: pd.DataFrame) -> dict:
        summary = {}
        for hook, frame in table.groupby("hook_point"):
            top = frame.sort_values("kurtosis", ascending=False).head(3)
            summary[hook] = {
                "highest_kurtosis_layers": top["layer"].astype(int).tolist(),
                "highest_kurtosis": [round(float(v), 3) for v in top["kurtosis"]],
                "dead_units_total": int(frame["dead_units"].sum()),
                "norm_growth": round(float(frame["mean_norm"].iloc[-1] / frame["mean_norm"].iloc[0]), 3),
            }
        return summary


ANALYZERS = [ActivationStats]
