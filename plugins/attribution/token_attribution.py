"""token_attribution: per-token attribution scores of several methods for the same input and target,
and how far the methods agree (Spearman rank correlation, top-k overlap).

Inputs: the run's texts (`ctx.inputs`, first `max_texts`); a .jsonl/.csv input with a `target`
field (`data.target_field`) gives each text its own target (causal LMs). Targets: see
`targets.py` (causal LMs: top prediction, a token, or a logit difference; encoders:
pooled-embedding norm or cosine to `reference_text`). Methods: see `methods.py`. Checks, per
text: the gradient methods against central finite differences of the target (`saliency_fd`,
`grad_x_input_fd`, float32/float64 models; see `finite_difference_errors`), integrated-gradients
completeness, and SHAP efficiency when shap is selected; a failing check stays visible in the result.
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .methods import BASELINES, AttributionProblem, available_methods, get_method
from .plots import plot_method_agreement, plot_token_heatmap
from .targets import resolve_target

COMPLETENESS_THRESHOLD = 0.05
#: relative L2 error allowed between a gradient method's scores and their finite-difference
#: estimate. Worst measured (float32 on CPU; the 8 quickstart and 40 english texts and "Hi", with
#: the top prediction and " Mary" as targets): SmolLM2 grad_x_input 5.5e-3, saliency 1.6e-3;
#: MiniLM 1.1e-3, 2.5e-4; tiny_llama / tiny_gpt2 / tiny_bert 3.0e-3, 1.9e-3. A gradient off by
#: 10% gives ~0.1, a doubled one ~1.0
FD_THRESHOLD = 0.03
#: relative step per method: grad_x_input scales e_t by (1 +- h); saliency moves e_t by
#: +- h * |e_t| along the gradient direction (where f bends sooner: SmolLM2 needs a smaller step)
FD_STEPS = {"grad_x_input": 2e-2, "saliency": 2e-3}
#: positions checked per text (evenly spaced, first and last included): 4 forwards each per method
FD_MAX_POSITIONS = 32
#: five-point central difference: f'(0) = (f(-2h) - 8 f(-h) + 8 f(h) - f(2h)) / 12h + O(h^4)
FD_STENCIL = {2.0: -1 / 12, 1.0: 8 / 12, -1.0: -8 / 12, -2.0: 1 / 12}
FD_DTYPES = (torch.float32, torch.float64)


def _fd_positions(n_tokens: int, limit: int = FD_MAX_POSITIONS) -> list[int]:
    if n_tokens <= limit:
        return list(range(n_tokens))
    return sorted({int(round(i)) for i in np.linspace(0, n_tokens - 1, limit)})


def finite_difference_errors(
    problem: AttributionProblem, scores: dict[str, np.ndarray], batch_size: int = 64
) -> dict[str, float]:
    """Relative L2 error ||scores - fd|| / ||fd|| of each gradient method (`saliency`,
    `grad_x_input`) in `scores` against finite differences of the target f (FD_STENCIL).

    `grad_x_input` at position t is grad_t . e_t, the derivative of f as e_t alone is scaled by
    (1 + eps), so fd_t differentiates eps -> f(e_t (1 + eps)) at 0 with step h: no gradient is
    involved. `saliency` at t is |grad_t|, the derivative of f along the unit vector
    u_t = grad_t / |grad_t| (along any other unit vector it is smaller), so fd_t differentiates
    s -> f(e_t + s u_t) with step h |e_t|, u_t from a plain autograd pass here (independent of
    the method's own code). At most FD_MAX_POSITIONS positions are compared (evenly spaced)."""
    checked = [m for m in FD_STEPS if m in scores]
    if not checked:
        return {}
    x = problem.embeds
    positions = _fd_positions(problem.n_tokens)
    idx = torch.tensor(positions, device=x.device)
    rows = torch.arange(len(positions), device=x.device)
    norms = x[0, idx].norm(dim=-1).double()
    directions = {}
    if "grad_x_input" in checked:
        directions["grad_x_input"] = x[0, idx]  # f(e_t + eps * e_t): step eps = h
    if "saliency" in checked:
        point = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(problem.forward(point).sum(), point)
        g = grad[0, idx]
        u = g / g.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
        directions["saliency"] = u * norms.to(x.dtype).unsqueeze(-1)  # step eps = h * |e_t|
    values = []
    with torch.no_grad():
        for method in checked:
            for multiple in FD_STENCIL:  # one block of rows at a time: row r moves position positions[r]
                block = x.repeat(len(positions), 1, 1)
                block[rows, idx] = block[rows, idx] + multiple * FD_STEPS[method] * directions[method]
                values += [problem.forward(chunk) for chunk in block.split(max(1, batch_size))]
    values = torch.cat(values).double().view(len(checked), len(FD_STENCIL), len(positions))
    weights = torch.tensor(list(FD_STENCIL.values()), dtype=torch.float64, device=values.device).view(-1, 1)
    errors = {}
    for k, method in enumerate(checked):
        step = FD_STEPS[method] * (norms if method == "saliency" else torch.ones_like(norms))
        fd = ((values[k] * weights).sum(0) / step).cpu().numpy()
        got = np.asarray(scores[method], dtype=float)[positions]
        errors[method] = float(np.linalg.norm(got - fd) / max(float(np.linalg.norm(fd)), 1e-12))
    return errors


@dataclass
class TokenAttributionConfig:
    methods: list[str] = field(default_factory=lambda: ["saliency", "grad_x_input", "integrated_gradients"])
    target: str | None = None
    contrast: str | None = None
    allow_first_piece: bool = False
    reference_text: str | None = None
    baseline: str = "pad_keep_first"
    n_steps: int = 50
    max_steps: int = 800
    internal_batch_size: int = 64
    ig_method: str = "gausslegendre"
    n_samples: int = 200
    top_k: int = 3
    max_texts: int = 4


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k, ranking tokens by |score|."""
    k = min(k, len(a))
    top_a, top_b = set(np.argsort(-np.abs(a))[:k]), set(np.argsort(-np.abs(b))[:k])
    return len(top_a & top_b) / k


class TokenAttribution(Analyzer):
    name = "token_attribution"
    window_outputs = "per_window"  # each window's prediction, completeness per window
    family = "attribution"
    description = (
        "per-token saliency / grad x input / integrated gradients / occlusion (/ lime / shap) and their agreement"
    )
    Config = TokenAttributionConfig

    def validate(self, info: ModelInfo, cfg: TokenAttributionConfig) -> None:
        if not cfg.methods:
            raise ConfigError(f"token_attribution.methods is empty; choose from {available_methods()}")
        for name in cfg.methods:
            get_method(name)  # unknown name -> ConfigError listing the available ones
        if len(set(cfg.methods)) != len(cfg.methods):
            raise ConfigError(f"token_attribution.methods has duplicates: {cfg.methods}")
        if cfg.baseline not in BASELINES:
            raise ConfigError(f"token_attribution.baseline {cfg.baseline!r} unknown; choose from {list(BASELINES)}")
        if cfg.ig_method not in ("gausslegendre", "riemann_trapezoid", "riemann_middle"):
            raise ConfigError("token_attribution.ig_method: use gausslegendre, riemann_trapezoid or riemann_middle")
        if cfg.n_steps < 2 or cfg.max_steps < cfg.n_steps:
            raise ConfigError("token_attribution: need n_steps >= 2 and max_steps >= n_steps")
        if cfg.internal_batch_size < 1 or cfg.max_texts < 1 or cfg.top_k < 1 or cfg.n_samples < 1:
            raise ConfigError("token_attribution: internal_batch_size, max_texts, top_k, n_samples must be >= 1")
        if not info.is_causal and (cfg.target is not None or cfg.contrast is not None):
            raise ConfigError(
                f"{info.name} is an encoder (no LM head): target/contrast do not apply; leave them unset "
                "(pooled-embedding norm) or set reference_text (cosine similarity)"
            )
        if cfg.contrast is not None and cfg.target is None:
            raise ConfigError("token_attribution.contrast needs a target too (e.g. ' positive' vs ' negative')")

    def estimate(self, info: ModelInfo, cfg: TokenAttributionConfig, workload):
        """Per text (one row of t tokens, all logits): each method's passes, then the finite-difference
        checks of the gradient methods (4 stencil points x up to 32 positions)."""
        cost = workload.figures(2 if len(cfg.methods) > 1 else 1, 3 if len(cfg.methods) > 1 else 1)
        chunk = cfg.internal_batch_size
        for t in workload.first(cfg.max_texts):
            cost = cost + workload.forward(1, t)  # the target's value
            for method in cfg.methods:
                if method in ("saliency", "grad_x_input"):
                    cost = cost + workload.forward(1, t, grad=True)
                elif method == "integrated_gradients":
                    cost = cost + workload.forward(2, t)
                    for start in range(0, cfg.n_steps, chunk):
                        cost = cost + workload.forward(min(chunk, cfg.n_steps - start), t, grad=True)
                elif method == "occlusion":
                    cost = cost + workload.forward(1, t) + workload.forward_batches([t] * t, min(t, chunk))
                elif method in ("lime", "shap"):
                    cost = cost + workload.forward_batches([t] * cfg.n_samples, 32)
            checked = [m for m in FD_STEPS if m in cfg.methods]
            if checked and workload.dtype_bytes >= 4:
                rows = len(checked) * len(FD_STENCIL) * len(_fd_positions(t))
                cost = cost + workload.forward_batches([t] * rows, chunk)
                if "saliency" in checked:
                    cost = cost + workload.forward(1, t, grad=True)
        if "integrated_gradients" in cfg.methods:
            cost = cost.note(f"IG at n_steps={cfg.n_steps}; doubled (up to {cfg.max_steps}) where completeness fails")
        return cost

    def run(self, ctx: RunContext) -> Result:
        cfg: TokenAttributionConfig = self.cfg
        model = ctx.model
        texts = ctx.inputs.texts[: cfg.max_texts]
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ConfigError(f"token_attribution: text(s) {empty} are empty; remove them from the inputs")
        options = {
            "baseline": cfg.baseline,
            "n_steps": cfg.n_steps,
            "max_steps": cfg.max_steps,
            "tolerance": COMPLETENESS_THRESHOLD,
            "internal_batch_size": cfg.internal_batch_size,
            "ig_method": cfg.ig_method,
            "n_samples": cfg.n_samples,
            "seed": ctx.seed,
        }
        result = Result()
        rows, pairs, per_text = [], [], []
        per_text_targets = ctx.inputs.extra.get("targets") if model.info.is_causal else None
        dtypes = {p.dtype for p in model.hf_model.parameters()}
        fd_ok = dtypes <= set(FD_DTYPES)  # finite differences in half precision measure rounding, not gradients
        for text_id, text in enumerate(ctx.progress(texts, desc="token_attribution")):
            batch = model.tokenize([text], ctx.max_length)
            ids = batch.input_ids[:, : int(batch.lengths[0])]
            target = cfg.target
            if per_text_targets is not None and per_text_targets[text_id] is not None:
                target = per_text_targets[text_id]  # the data file's own target for this text wins
            spec = resolve_target(model, ids, target, cfg.contrast, cfg.allow_first_piece, cfg.reference_text)
            with torch.no_grad():
                embeds = model.hf_model.get_input_embeddings()(ids).detach().float()
            problem = AttributionProblem(model, ids, embeds, spec)
            with torch.no_grad():
                value = float(problem.forward(embeds)[0])
            scores, infos = {}, {}
            for name in cfg.methods:
                out = get_method(name)(problem, options)
                scores[name], infos[name] = out.scores, out.info
            tokens = batch.tokens[0]
            for pos, tok in enumerate(tokens):
                rows.append({"text_id": text_id, "position": pos, "token": tok, **{m: scores[m][pos] for m in scores}})
            for a, b in itertools.combinations(cfg.methods, 2):
                pairs.append(
                    {
                        "text_id": text_id,
                        "method_a": a,
                        "method_b": b,
                        "spearman": spearman(scores[a], scores[b]),
                        "topk_overlap": topk_overlap(scores[a], scores[b], cfg.top_k),
                    }
                )
            entry = {"text_id": text_id, "target": spec.label, "target_value": value, "n_tokens": len(tokens)}
            if spec.note:
                entry["note"] = spec.note
            if fd_ok:
                for method, error in finite_difference_errors(problem, scores, cfg.internal_batch_size).items():
                    result.add_check(f"{method}_fd.text{text_id}", error, FD_THRESHOLD)
                    entry[f"{method}_fd_error"] = error
            if "integrated_gradients" in infos:
                ig = infos["integrated_gradients"]
                result.add_check(f"ig_completeness.text{text_id}", ig["completeness_error"], COMPLETENESS_THRESHOLD)
                result.metrics[f"ig_completeness_error.text{text_id}"] = float(ig["completeness_error"])
                result.metrics[f"ig_steps.text{text_id}"] = float(ig["steps"])
                entry.update(ig_steps=ig["steps"], ig_completeness_error=ig["completeness_error"])
                if not ig["passed"]:
                    entry["ig_warning"] = (
                        f"completeness {ig['completeness_error']:.3g} > {COMPLETENESS_THRESHOLD} at max_steps "
                        f"{cfg.max_steps}: IG did not converge; raise max_steps or change the baseline"
                    )
            if "shap" in infos:
                result.add_check(f"shap_efficiency.text{text_id}", infos["shap"]["efficiency_error"], 1e-3)
            entry["top_tokens"] = {m: [tokens[i] for i in np.argsort(-np.abs(scores[m]))[: cfg.top_k]] for m in scores}
            per_text.append(entry)
            if text_id == 0:
                title = f"text 0: {spec.label}"
                result.add_figure("token_heatmap", plot_token_heatmap, tokens, scores, title, ctx.style)
        result.tables["token_scores"] = pd.DataFrame(rows)
        if pairs:
            result.tables["method_agreement"] = pd.DataFrame(pairs)
            result.add_figure("method_agreement", plot_method_agreement, result.tables["method_agreement"], ctx.style)
        result.metrics["texts"] = float(len(texts))
        result.summary = {"methods": list(cfg.methods), "texts": per_text, "available_methods": available_methods()}
        if not fd_ok and any(m in FD_STEPS for m in cfg.methods):
            result.summary["fd_checks"] = (
                f"skipped: the model runs in {sorted(str(d) for d in dtypes)}; finite-difference checks of the "
                "gradient methods need float32 or float64 (dtype=float32)"
            )
        return result


def _cell(token: str, score: float, scale: float) -> str:
    a = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    colour = f"rgba(214,39,40,{a:.3f})" if score > 0 else f"rgba(31,119,180,{a:.3f})"
    return f'<span class="t" style="background:{colour}" title="{score:.4g}">{html.escape(token)}</span>'


def explanation_html(
    text: str, predictions: list[dict], scores: dict[str, np.ndarray], tokens: list[str], summary: str
):
    """One self-contained page: top predictions and a red (positive) / blue (negative) heatmap per method."""
    rows = "".join(
        f"<tr><td>{html.escape(repr(p['token']))}</td><td>{p['probability']:.3f}</td></tr>" for p in predictions
    )
    maps = "".join(
        f'<h3>{html.escape(m)}</h3><div class="map">'
        + "".join(_cell(t, float(v), float(np.abs(s).max())) for t, v in zip(tokens, s, strict=True))
        + "</div>"
        for m, s in scores.items()
    )
    style = (
        "body{font-family:sans-serif;margin:2em}.t{white-space:pre;padding:2px 1px;border-radius:3px;"
        "font-family:monospace}.map{line-height:2em}table{border-collapse:collapse}td{padding:2px 8px}"
    )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>explain_prediction</title><style>{style}'
        f"</style></head><body><h2>Input</h2><p>{html.escape(text)}</p><h2>Top predictions</h2><table>{rows}"
        f"</table><h2>Summary</h2><p>{html.escape(summary)}</p><h2>Attributions</h2>"
        "<p>red: pushes the target up; blue: pushes it down (each method scaled by its max |score|; hover for values)"
        f"</p>{maps}</body></html>"
    )


@dataclass
class ExplainPredictionConfig(TokenAttributionConfig):
    top_predictions: int = 5
    max_texts: int = 1


class ExplainPrediction(TokenAttribution):
    """The model's top next-token predictions for one input and why: attributions of each method
    to the target (default: the top prediction), a plain-language summary, JSON + one HTML page."""

    name = "explain_prediction"
    window_outputs = "per_window"  # each window's next-token prediction explained
    family = "attribution"
    description = "top predictions, per-method token attributions, a plain summary and an HTML heatmap page"
    requires_causal_lm = True
    Config = ExplainPredictionConfig

    def estimate(self, info: ModelInfo, cfg: ExplainPredictionConfig, workload):
        """token_attribution's passes, and one more forward per text for its top predictions."""
        lengths = workload.first(cfg.max_texts)
        return super().estimate(info, cfg, workload) + workload.each_text(lengths, logits=1)

    def run(self, ctx: RunContext) -> Result:
        cfg: ExplainPredictionConfig = self.cfg
        result = super().run(ctx)
        model = ctx.model
        scores_table = result.tables["token_scores"]
        pages = []
        for entry in result.summary["texts"]:
            text_id = entry["text_id"]
            text = ctx.inputs.texts[text_id]
            batch = model.tokenize([text], ctx.max_length)
            with torch.no_grad():
                logits = model.forward(batch, logits_to_keep=batch.last_index[:, None]).output[0, -1].float()
            probs = torch.softmax(logits, -1)
            top = torch.topk(probs, min(cfg.top_predictions, probs.shape[0]))
            predictions = [
                {"token": model.tokenizer.decode([int(i)]), "probability": float(p)}
                for p, i in zip(top.values, top.indices, strict=True)
            ]
            rows = scores_table[scores_table["text_id"] == text_id]
            tokens = rows["token"].tolist()
            scores = {m: rows[m].to_numpy() for m in cfg.methods}
            ref = "integrated_gradients" if "integrated_gradients" in scores else cfg.methods[-1]
            order = np.argsort(-scores[ref])
            ups = [f"{tokens[i]!r} ({scores[ref][i]:+.3g})" for i in order[: cfg.top_k] if scores[ref][i] > 0]
            downs = [f"{tokens[i]!r} ({scores[ref][i]:+.3g})" for i in order[::-1][: cfg.top_k] if scores[ref][i] < 0]
            summary = (
                f"The model's top prediction is {predictions[0]['token']!r} (p={predictions[0]['probability']:.2f}). "
                f"Target: {entry['target']}. By {ref}, the tokens pushing it up most are {', '.join(ups) or 'none'}"
                f"; pushing it down most: {', '.join(downs) or 'none'}."
            )
            entry.update(predictions=predictions, explanation=summary)
            pages.append(explanation_html(text, predictions, scores, tokens, summary))
            result.metrics[f"top_probability.text{text_id}"] = predictions[0]["probability"]
        for i, page in enumerate(pages):  # one self-contained page per text
            result.artifacts["explain_prediction.html" if i == 0 else f"explain_prediction_text{i}.html"] = page
        return result


ANALYZERS = [TokenAttribution, ExplainPrediction]
