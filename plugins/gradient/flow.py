"""gradient_flow and attention_gradients: gradients of a target through the residual stream.

Both differentiate the target of `target.py` (logit of a chosen/top token, a logit difference,
or for encoders the norm of the mean-pooled final hidden state) with `model.forward(grad=True)`
and `torch.autograd.grad` with respect to the captured activations.

- gradient_flow: per layer, the L2 norm of d target / d activation at every real token for
  resid_pre, resid_post, attn.out and mlp.out, averaged over all real tokens of the dataset.
  Check: the gradient with respect to blocks.L.resid_post equals that with respect to
  blocks.L+1.resid_pre (the same tensor; a test of the hook plumbing).
- attention_gradients: attention attribution (Hao et al. 2021): per head, the sum over real
  (query, key) pairs of |A * dT/dA| (`score`, the default ranking) and of A * dT/dA (`signed`,
  the first-order change of the target when the head's pattern is scaled by 1 + eps, divided by
  eps), averaged over texts. Checks: attention rows of real queries sum to 1; gradients are
  finite; the signed total per layer equals a central finite difference of the target under
  scaling that layer's patterns (a batched sweep on the first batch).
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

from .plots import plot_gradient_flow, plot_head_heatmap
from .target import check_target_options, forward_target, gradients, last_positions, resolve_target, sweep_metric

FLOW_SITES = ("resid_pre", "resid_post", "attn.out", "mlp.out")


@dataclass
class GradientFlowConfig:
    target: str | None = None
    contrast: str | None = None
    layers: list[int] | None = None


class GradientFlow(Analyzer):
    name = "gradient_flow"
    family = "gradient"
    description = "Per-layer gradient norms of the target w.r.t. residual stream, attention and MLP outputs"
    Config = GradientFlowConfig

    def validate(self, info: ModelInfo, cfg: GradientFlowConfig) -> None:
        check_layers(info, cfg.layers, self.name)
        check_target_options(info, cfg.target, cfg.contrast, self.name)

    def estimate(self, info: ModelInfo, cfg: GradientFlowConfig, workload):
        """One forward+backward pass per batch (the target at each row's last token) through the
        residual stream, attention and MLP outputs of the chosen layers."""
        layers = check_layers(info, cfg.layers, self.name)
        names = [f"blocks.{L}.{s}" for L in layers for s in FLOW_SITES]
        names += [f"blocks.{L}.resid_pre" for L in range(1, info.n_layers)]  # the identity check
        return workload.forward_inputs(logits="last", capture=names, grad=True) + workload.figures(1)

    def run(self, ctx: RunContext) -> Result:
        cfg: GradientFlowConfig = self.cfg
        model = ctx.model
        spec = resolve_target(model, cfg.target, cfg.contrast)
        layers = check_layers(model.info, cfg.layers, self.name)
        available = set(model.hook_names())
        names = [f"blocks.{L}.{s}" for L in layers for s in FLOW_SITES if f"blocks.{L}.{s}" in available]
        pairs = [
            (f"blocks.{L}.resid_post", f"blocks.{L + 1}.resid_pre")
            for L in range(model.info.n_layers - 1)
            if f"blocks.{L}.resid_post" in available and f"blocks.{L + 1}.resid_pre" in available
        ]
        extra = [n for pair in pairs for n in pair if n not in names]
        norm_sums = dict.fromkeys(names, 0.0)
        tokens, texts, target_sum = 0, 0, 0.0
        identity_err = 0.0
        nonfinite = 0
        for batch in ctx.batches(self.name):
            capture = names + extra
            values, _, cache = forward_target(model, spec, batch, capture)
            grads = dict(zip(capture, gradients(values, [cache[n] for n in capture], capture), strict=True))
            mask = batch.attention_mask.bool()
            for name in names:
                norms = grads[name].double().norm(dim=-1)[mask]
                nonfinite += int((~torch.isfinite(norms)).sum())
                norm_sums[name] += float(norms.sum())
            for post, pre in pairs:
                a, b = grads[post][mask].double(), grads[pre][mask].double()
                identity_err = max(identity_err, float((a - b).norm() / b.norm().clamp_min(1e-30)))
            tokens += int(mask.sum())
            texts += batch.size
            target_sum += float(values.detach().sum())
        rows = []
        for name in names:
            layer, site = int(name.split(".")[1]), name.split(".", 2)[2]
            rows.append({"layer": layer, "hook_point": site, "mean_grad_norm": norm_sums[name] / tokens})
        table = pd.DataFrame(rows)
        result = Result()
        result.tables["gradient_norms"] = table
        for row in rows:
            result.metrics[f"{row['hook_point']}.layer{row['layer']}.grad_norm"] = row["mean_grad_norm"]
        result.metrics["target_mean"] = target_sum / texts
        result.add_figure("gradient_flow", plot_gradient_flow, table, model.info.name, spec.label, ctx.style)
        if pairs:
            result.add_check("resid_post_equals_next_resid_pre_rel_err", identity_err, 1e-5)
        result.add_check("nonfinite_gradients", nonfinite, 0)
        resid = table[table["hook_point"] == "resid_pre"].sort_values("layer")
        result.summary = {
            "target": spec.label,
            "texts": texts,
            "tokens": tokens,
            "layers": layers,
            "resid_pre_grad_norm_by_layer": resid["mean_grad_norm"].round(6).tolist(),
        }
        return result


@dataclass
class AttentionGradientsConfig:
    target: str | None = None
    contrast: str | None = None
    layers: list[int] | None = None
    top_n: int = 20
    fd_eps: float = 1e-2


class AttentionGradients(Analyzer):
    name = "attention_gradients"
    family = "gradient"
    description = "Attention attribution: gradient x attention pattern per head, a head-importance table"
    Config = AttentionGradientsConfig

    def validate(self, info: ModelInfo, cfg: AttentionGradientsConfig) -> None:
        check_layers(info, cfg.layers, self.name)
        check_target_options(info, cfg.target, cfg.contrast, self.name)
        if cfg.top_n < 1:
            raise ConfigError(f"{self.name}: top_n={cfg.top_n} must be >= 1; e.g. top_n: 20")
        if not 0 < cfg.fd_eps < 0.1:
            raise ConfigError(f"{self.name}: fd_eps={cfg.fd_eps} must lie in (0, 0.1); the default is 1e-2")

    def estimate(self, info: ModelInfo, cfg: AttentionGradientsConfig, workload):
        """Forward+backward per batch through every chosen pattern; on the first batch a sweep
        scaling each layer's pattern up and down (the finite-difference check)."""
        layers = check_layers(info, cfg.layers, self.name)
        names = [f"blocks.{L}.attn.pattern" for L in layers]
        cost = workload.forward_inputs(logits="last", capture=names, grad=True)
        batches = workload.batches()
        if batches:
            first = batches[0]
            starts = [(L, 0) for L in layers for _ in (1, -1)]  # patterns cannot be shifted: position 0
            cost = cost + workload.sweep(
                len(first), max(first), starts, logits=len(set(first)), last_position=min(first) - 1
            )
        return cost + workload.figures(1)

    def run(self, ctx: RunContext) -> Result:
        cfg: AttentionGradientsConfig = self.cfg
        model = ctx.model
        spec = resolve_target(model, cfg.target, cfg.contrast)
        layers = check_layers(model.info, cfg.layers, self.name)
        names = [f"blocks.{L}.attn.pattern" for L in layers]
        n_heads = model.info.n_heads
        abs_sum = torch.zeros(len(layers), n_heads, dtype=torch.float64)
        signed_sum = torch.zeros_like(abs_sum)
        row_err, nonfinite, texts = 0.0, 0, 0
        fd_err = None
        for index, batch in enumerate(ctx.batches(self.name)):
            values, ids, cache = forward_target(model, spec, batch, names)
            patterns = [cache[n] for n in names]
            grads = gradients(values, patterns, names)
            mask = batch.attention_mask.to(torch.float64)
            pair = (mask[:, :, None] * mask[:, None, :])[:, None]  # [B, 1, Q, K] real query and key
            layer_signed = []
            for i, (pattern, grad) in enumerate(zip(patterns, grads, strict=True)):
                pattern, grad = pattern.detach().double(), grad.double()
                nonfinite += int((~torch.isfinite(grad)).sum())
                prod = pattern * grad * pair
                abs_sum[i] += prod.abs().sum(dim=(2, 3)).sum(0)
                signed = prod.sum(dim=(2, 3))
                signed_sum[i] += signed.sum(0)
                layer_signed.append(float(signed.sum()))
                rows = pattern.sum(-1)  # [B, H, Q]
                real_q = mask.bool()[:, None, :].expand_as(rows)
                row_err = max(row_err, float((rows[real_q] - 1).abs().max()))
            if index == 0:
                fd_err = self._finite_difference(model, spec, batch, ids, names, layer_signed, cfg.fd_eps)
            texts += batch.size
        abs_mean, signed_mean = (abs_sum / texts).numpy(), (signed_sum / texts).numpy()
        table = pd.DataFrame(
            [
                {"layer": L, "head": h, "score": abs_mean[i, h], "signed": signed_mean[i, h]}
                for i, L in enumerate(layers)
                for h in range(n_heads)
            ]
        )
        table = table.sort_values("score", ascending=False, ignore_index=True)
        table["rank"] = np.arange(1, len(table) + 1)
        result = Result()
        result.tables["head_importance"] = table
        result.add_figure(
            "head_importance", plot_head_heatmap, abs_mean, layers, model.info.name, spec.label, ctx.style
        )
        top = table.head(cfg.top_n)
        for _, row in top.iterrows():
            result.metrics[f"L{int(row['layer'])}H{int(row['head'])}.score"] = float(row["score"])
        result.metrics["total_signed"] = float(signed_mean.sum())
        result.add_check("pattern_row_sum_err", row_err, 1e-4)
        result.add_check("nonfinite_gradients", nonfinite, 0)
        if fd_err is not None:
            result.add_check("signed_total_vs_finite_difference_rel_err", fd_err, 0.05)
        result.summary = {
            "target": spec.label,
            "texts": texts,
            "score": "mean over texts of sum over real (query, key) of |pattern * d target / d pattern|",
            "top_heads": [f"L{int(r.layer)}H{int(r.head)}" for r in top.itertuples()][:10],
        }
        return result

    @staticmethod
    def _finite_difference(model, spec, batch, ids, names, layer_signed, eps) -> float:
        """max over layers of |central difference of the target under pattern scaling - signed total|."""
        items = [[Intervention(n, "scale", factor=1 + s * eps)] for n in names for s in (1, -1)]
        keep, _ = last_positions(batch)
        with torch.no_grad():
            out = model.sweep(batch, items, sweep_metric(spec, ids), logits_to_keep=keep).double().sum(1)
        fd = ((out[0::2] - out[1::2]) / (2 * eps)).cpu().numpy()
        analytic = np.array(layer_signed)
        scale = max(float(np.abs(analytic).max()), float(np.abs(fd).max()), 1e-6)
        return float(np.abs(fd - analytic).max() / scale)


ANALYZERS = [GradientFlow, AttentionGradients]
