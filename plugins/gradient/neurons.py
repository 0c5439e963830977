"""neuron_importance: gradient x activation attribution of the target to every MLP neuron.

For each text, the attribution of neuron u at layer L is sum over the text's real tokens of
act * d target / d act at `blocks.L.mlp.post`: the first-order (linear) estimate of how much the
target drops when the neuron is zero-ablated at every position, i.e. the estimated ablation
effect (ablated - clean) is -attr. Neurons are ranked by the mean over texts of |attr|.

For the top `n_check` neurons the estimate is compared with the real effect of zero-ablating
each one (all positions), run as one batched sweep per batch through `model.sweep`: the table
`checked` gives both, and the Spearman rank correlation between estimated and real effects is
reported as a metric and in the summary (not a pass/fail check: it is a property of the model,
and grad x act is only a linearisation). Checks: gradients are finite, and the sweep's clean
baseline reproduces the target of the gradient forward pass.

The per-text signed attributions are kept in memory (texts x layers x d_mlp float32) for the
ablation comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .plots import plot_neuron_importance
from .target import check_target_options, forward_target, gradients, last_positions, resolve_target, sweep_metric


@dataclass
class NeuronImportanceConfig:
    target: str | None = None
    contrast: str | None = None
    layers: list[int] | None = None
    top_n: int = 50
    n_check: int = 20
    sweep_batch_size: int = 32


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if len(a) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def grad_x_act(acts: torch.Tensor, grads: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-text neuron attribution: sum over real tokens of act * grad. [B, T, N] -> [B, N]."""
    return (acts.detach().double() * grads.double() * mask[:, :, None].double()).sum(1)


def ablation_effects(model, spec, batch, ids, clean, neurons, batch_size, progress=None) -> torch.Tensor:
    """Real effect (ablated - clean target) of zero-ablating each (layer, unit): [len(neurons), B].

    One batched sweep; item 0 is an empty intervention set (the clean baseline), returned last."""
    items = [[]] + [[Intervention(f"blocks.{L}.mlp.post", "zero", units=[u])] for L, u in neurons]
    keep, _ = last_positions(batch)
    with torch.no_grad():
        out = model.sweep(batch, items, sweep_metric(spec, ids), batch_size=batch_size, logits_to_keep=keep)
    out = out.double()
    return torch.cat([out[1:] - clean.double().unsqueeze(0), out[:1]])


class NeuronImportance(Analyzer):
    name = "neuron_importance"
    family = "gradient"
    description = "Gradient x activation attribution of the target to MLP neurons, ranked, checked against ablation"
    Config = NeuronImportanceConfig

    def validate(self, info: ModelInfo, cfg: NeuronImportanceConfig) -> None:
        check_layers(info, cfg.layers, self.name)
        check_target_options(info, cfg.target, cfg.contrast, self.name)
        if cfg.top_n < 1 or cfg.n_check < 0 or cfg.sweep_batch_size < 1:
            raise ConfigError(
                f"{self.name}: top_n ({cfg.top_n}) and sweep_batch_size ({cfg.sweep_batch_size}) must be >= 1 and "
                f"n_check ({cfg.n_check}) >= 0; e.g. top_n: 50, n_check: 20"
            )

    def estimate(self, info: ModelInfo, cfg: NeuronImportanceConfig, workload):
        """Forward+backward per batch through the MLP neurons, then per batch a sweep ablating the
        n_check top neurons (their layers are known only after ranking: assumed spread evenly)."""
        layers = check_layers(info, cfg.layers, self.name)
        names = [f"blocks.{L}.mlp.post" for L in layers]
        cost = workload.forward_inputs(logits="last", capture=names, grad=True)
        batches = workload.batches()
        cost = cost.hold(4 * len(workload.lengths) * len(layers) * info.d_mlp)  # attributions of every text
        n_check = min(cfg.n_check, len(layers) * info.d_mlp)
        if n_check:
            spread = [layers[i * len(layers) // n_check] for i in range(n_check)]
            for rows in batches:
                starts = [(info.n_layers, max(rows))] + [(L, 0) for L in spread]
                kept = {"logits": len(set(rows)), "last_position": min(rows) - 1}
                cost = cost + workload.sweep(len(rows), max(rows), starts, cfg.sweep_batch_size, **kept)
        return cost + workload.figures(1, 2) + workload.table(cfg.top_n, 5)

    def run(self, ctx: RunContext) -> Result:
        cfg: NeuronImportanceConfig = self.cfg
        model = ctx.model
        spec = resolve_target(model, cfg.target, cfg.contrast)
        layers = check_layers(model.info, cfg.layers, self.name)
        names = [f"blocks.{L}.mlp.post" for L in layers]
        kept, nonfinite = [], 0
        for batch in ctx.batches(self.name):
            values, ids, cache = forward_target(model, spec, batch, names)
            acts = [cache[n] for n in names]
            grads = gradients(values, acts, names)
            attr = torch.stack([grad_x_act(a, g, batch.attention_mask) for a, g in zip(acts, grads, strict=True)], 1)
            nonfinite += int((~torch.isfinite(attr)).sum())
            kept.append((batch, ids, values.detach(), attr.float().cpu()))  # attr: [B, layers, N]
        attr = torch.cat([k[3] for k in kept]).double()  # [texts, layers, N]
        texts, n_units = attr.shape[0], attr.shape[2]
        mean_abs, mean_signed = attr.abs().mean(0), attr.mean(0)
        order = torch.argsort(mean_abs.flatten(), descending=True)
        ranked = pd.DataFrame(
            {
                "layer": [layers[int(i) // n_units] for i in order],
                "neuron": [int(i) % n_units for i in order],
                "mean_abs_attr": mean_abs.flatten()[order].numpy(),
                "mean_attr": mean_signed.flatten()[order].numpy(),
            }
        )
        ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
        result = Result()
        result.tables["top_neurons"] = ranked.head(cfg.top_n).reset_index(drop=True)
        checked = None
        n_check = min(cfg.n_check, len(ranked))
        if n_check:
            neurons = [(int(r.layer), int(r.neuron)) for r in ranked.head(n_check).itertuples()]
            real_sum = torch.zeros(n_check, dtype=torch.float64)
            baseline_err = 0.0
            for batch, ids, clean, _ in ctx.progress(kept, f"{self.name} ablations", len(kept)):
                effects = ablation_effects(model, spec, batch, ids, clean, neurons, cfg.sweep_batch_size)
                real_sum += effects[:-1].sum(1).cpu()
                err = (effects[-1].cpu() - clean.double().cpu()).abs() / clean.double().cpu().abs().clamp_min(1.0)
                baseline_err = max(baseline_err, float(err.max()))
            estimated = np.array([-float(mean_signed[layers.index(L), u]) for L, u in neurons])
            real = (real_sum / texts).numpy()
            checked = ranked.head(n_check).copy()
            checked["estimated_effect"] = estimated
            checked["real_effect"] = real
            rho = spearman(estimated, real)
            sign_agree = float(np.mean(np.sign(estimated) == np.sign(real)))
            result.tables["ablation_check"] = checked.reset_index(drop=True)
            result.metrics["spearman_estimated_vs_real"] = rho
            result.metrics["sign_agreement_estimated_vs_real"] = sign_agree
            result.add_check("sweep_baseline_matches_forward_rel_err", baseline_err, 1e-4)
        result.add_check("nonfinite_attributions", nonfinite, 0)
        result.add_figure(
            "neuron_importance",
            plot_neuron_importance,
            ranked.head(min(cfg.top_n, 30)),
            checked,
            model.info.name,
            ctx.style,
        )
        for r in ranked.head(min(cfg.top_n, 10)).itertuples():
            result.metrics[f"L{int(r.layer)}.N{int(r.neuron)}.mean_abs_attr"] = float(r.mean_abs_attr)
        result.summary = {
            "target": spec.label,
            "texts": texts,
            "neurons_ranked": len(ranked),
            "top_neurons": [f"L{int(r.layer)}.N{int(r.neuron)}" for r in ranked.head(10).itertuples()],
        }
        if checked is not None:
            result.summary.update(
                {
                    "ablation_checked": n_check,
                    "spearman_estimated_vs_real": None if np.isnan(rho) else round(rho, 4),
                    "sign_agreement": round(sign_agree, 4),
                }
            )
        return result


ANALYZERS = [NeuronImportance]
