"""Attribution methods by name: each returns one score per input token for the same input and target.

Gradient methods work on the input embeddings (`inputs_embeds`), via captum where captum has the
algorithm:
- `saliency`: captum `Saliency` (|d f / d embedding|), reduced over d_model by the L2 norm, so the
  score is >= 0 (a magnitude, no sign);
- `grad_x_input`: captum `InputXGradient`, summed over d_model (signed; sums to the first-order
  Taylor estimate of f(x) - f(0));
- `integrated_gradients`: our batched IG (Gauss-Legendre or trapezoid nodes from captum's
  `approximation_parameters`, steps in chunks of `internal_batch_size`, one forward+backward per
  chunk), summed over d_model. It matches captum's `IntegratedGradients` at equal steps, method and
  baseline (see `captum_ig`, tests and benchmarks). Baselines: "zero", "pad" (pad-token embedding
  everywhere) and the default "pad_keep_first" (first position's embedding unchanged, pad
  elsewhere): position 0 is the attention sink, whose interpolation is wildly non-linear, so IG
  with a zero or all-pad baseline does not converge on real LMs. Completeness error
  |sum attr - (f(x) - f(b))| / |f(x) - f(b)| is reported; steps double from `n_steps` until it is
  below `tolerance` or `max_steps` is reached; a failing value is reported as such, never hidden.
- `occlusion`: captum `FeatureAblation` over token positions, each position's embedding replaced by
  the baseline (pad embedding; the first position is ablated too): score = f(x) - f(ablated).
- `lime`, `shap`: from `plugins/attribution/perturbation.py` when that module exists.

More methods: `register_method(name, fn)`; `fn(problem, options) -> MethodOutput`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from interpsuite.errors import ConfigError

from .targets import TargetSpec, model_output, target_scalar

BASELINES = ("pad_keep_first", "pad", "zero")


@dataclass
class AttributionProblem:
    """One input to explain: real tokens only (batch of 1)."""

    model: object
    input_ids: torch.Tensor  # [1, T]
    embeds: torch.Tensor  # [1, T, D] detached
    spec: TargetSpec

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B] target values.

        A logit target reads the last position only, so only its logits are computed: the
        unembedding of the other positions (a [T-1, vocab] matmul and its backward) would be
        about a sixth of each IG step on SmolLM2, for numbers nobody reads."""
        b, t = embeds.shape[:2]
        mask = torch.ones(b, t, dtype=torch.long, device=embeds.device)
        if self.model.info.is_causal and self.spec.kind in ("logit", "logit_diff"):
            last = torch.zeros(b, dtype=torch.long, device=embeds.device)  # the one position kept
            output = model_output(self.model, embeds, mask, logits_to_keep=1)
        else:
            last = torch.full((b,), t - 1, dtype=torch.long, device=embeds.device)
            output = model_output(self.model, embeds, mask)
        return target_scalar(output.float(), self.spec, last, mask)

    def baseline(self, kind: str) -> torch.Tensor:
        if kind not in BASELINES:
            raise ConfigError(f"unknown IG baseline {kind!r}; choose from {list(BASELINES)}")
        if kind == "zero":
            return torch.zeros_like(self.embeds)
        tok = self.model.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        table = self.model.hf_model.get_input_embeddings()
        with torch.no_grad():
            base = table(torch.full_like(self.input_ids, int(pad))).detach().to(self.embeds.dtype)
        if kind == "pad_keep_first":
            base[:, 0] = self.embeds[:, 0]
        return base


@dataclass
class MethodOutput:
    scores: np.ndarray  # [n_tokens]
    info: dict = field(default_factory=dict)


MethodFn = Callable[[AttributionProblem, dict], MethodOutput]
_METHODS: dict[str, MethodFn] = {}


def register_method(name: str, fn: MethodFn) -> None:
    _METHODS[name] = fn


def available_methods() -> list[str]:
    return list(_METHODS)


def get_method(name: str) -> MethodFn:
    if name not in _METHODS:
        raise ConfigError(f"unknown attribution method {name!r}; available: {available_methods()}")
    return _METHODS[name]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def saliency(problem: AttributionProblem, options: dict) -> MethodOutput:
    from captum.attr import Saliency

    grads = Saliency(problem.forward).attribute(problem.embeds.clone().requires_grad_(True), abs=True)
    return MethodOutput(_np(grads[0].norm(dim=-1)), {"reduction": "L2 norm of |grad| over d_model"})


def grad_x_input(problem: AttributionProblem, options: dict) -> MethodOutput:
    from captum.attr import InputXGradient

    attr = InputXGradient(problem.forward).attribute(problem.embeds.clone().requires_grad_(True))
    return MethodOutput(_np(attr[0].sum(-1)), {"reduction": "sum over d_model"})


def ig_attributions(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    baseline: torch.Tensor,
    n_steps: int,
    method: str = "gausslegendre",
    internal_batch_size: int = 64,
) -> torch.Tensor:
    """Batched IG on one input x [1, ...]: attributions of the same shape (not reduced).

    Nodes/weights from captum's `approximation_parameters` (so equal steps give captum's result);
    the path points are evaluated `internal_batch_size` at a time, one forward+backward each."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes_fn, alphas_fn = approximation_parameters(method)
    alphas = torch.tensor(alphas_fn(n_steps), dtype=x.dtype, device=x.device)
    weights = torch.tensor(step_sizes_fn(n_steps), dtype=x.dtype, device=x.device)
    delta = x - baseline
    total = torch.zeros_like(x[0])
    view = (-1,) + (1,) * (x.dim() - 1)
    for start in range(0, n_steps, max(1, internal_batch_size)):
        a = alphas[start : start + internal_batch_size]
        w = weights[start : start + internal_batch_size]
        points = (baseline + a.view(view) * delta).requires_grad_(True)
        with torch.enable_grad():
            out = forward(points)
            (grads,) = torch.autograd.grad(out.sum(), points)
        total += (grads * w.view(view)).sum(0)
    return total.unsqueeze(0) * delta


def captum_ig(problem: AttributionProblem, baseline: str, n_steps: int, internal_batch_size: int | None = None):
    """captum's `IntegratedGradients` with its default method, the same baseline: ([1,T,D] attr, delta)."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(problem.forward)
    return ig.attribute(
        problem.embeds.clone(),
        baselines=problem.baseline(baseline),
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )


def integrated_gradients(problem: AttributionProblem, options: dict) -> MethodOutput:
    baseline_kind = options.get("baseline", "pad_keep_first")
    n_steps = int(options.get("n_steps", 50))
    max_steps = max(int(options.get("max_steps", 800)), n_steps)
    tolerance = float(options.get("tolerance", 0.05))
    batch = int(options.get("internal_batch_size", 64))
    method = options.get("ig_method", "gausslegendre")
    base = problem.baseline(baseline_kind)
    with torch.no_grad():
        f_x, f_b = (float(v) for v in problem.forward(torch.cat([problem.embeds, base])))
    gap = f_x - f_b
    steps, history = n_steps, []
    while True:
        attr = ig_attributions(problem.forward, problem.embeds, base, steps, method, batch)
        total = float(attr.sum())
        error = abs(total - gap) / max(abs(gap), 1e-8)
        history.append((steps, error))
        if error <= tolerance or steps * 2 > max_steps:
            break
        steps *= 2
    return MethodOutput(
        _np(attr[0].sum(-1)),
        {
            "completeness_error": error,
            "steps": steps,
            "passed": error <= tolerance,
            "sum_attributions": total,
            "f_input": f_x,
            "f_baseline": f_b,
            "baseline": baseline_kind,
            "history": history,
        },
    )


def occlusion(problem: AttributionProblem, options: dict) -> MethodOutput:
    from captum.attr import FeatureAblation

    base = problem.baseline(options.get("occlusion_baseline", "pad"))
    t = problem.n_tokens
    feature_mask = torch.arange(t, device=problem.embeds.device).view(1, t, 1).expand_as(problem.embeds)
    with torch.no_grad():
        attr = FeatureAblation(problem.forward).attribute(
            problem.embeds.clone(),
            baselines=base,
            feature_mask=feature_mask,
            perturbations_per_eval=min(t, int(options.get("internal_batch_size", 64))),
        )
    return MethodOutput(_np(attr[0, :, 0]), {"replacement": "pad-token embedding"})


def _score_fn(problem: AttributionProblem, batch_size: int = 32):
    """score_fn for perturbation methods: token-id sequences -> target value (last real token)."""
    model, spec = problem.model, problem.spec
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0

    def score(seqs: list[list[int]]) -> np.ndarray:
        out = np.empty(len(seqs))
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            ids, mask = ids.to(model.device), mask.to(model.device)
            with torch.no_grad():
                hf = model.hf_model(input_ids=ids, attention_mask=mask)
                output = hf.logits if model.info.is_causal else hf.last_hidden_state
                out[start : start + len(chunk)] = _np(target_scalar(output.float(), spec, mask.sum(1) - 1, mask))
        return out

    return score


def _mask_id(problem: AttributionProblem) -> int | None:
    return None if problem.model.info.is_causal else problem.model.tokenizer.mask_token_id


try:
    from . import perturbation as _perturbation
except ModuleNotFoundError as exc:  # only a missing perturbation module disables lime/shap
    if exc.name != f"{__package__}.perturbation":
        raise
    _perturbation = None


def lime(problem: AttributionProblem, options: dict) -> MethodOutput:
    stats: dict = {}
    scores = _perturbation.lime_token_scores(
        problem.model,
        problem.input_ids[0].tolist(),
        _score_fn(problem),
        n_samples=int(options.get("n_samples", 200)),
        seed=int(options.get("seed", 0)),
        mask_token_id=_mask_id(problem),
        stats=stats,
    )
    return MethodOutput(np.asarray(scores, dtype=float), stats)


def shap(problem: AttributionProblem, options: dict) -> MethodOutput:
    stats: dict = {}
    scores, error = _perturbation.shap_token_scores(
        problem.model,
        problem.input_ids[0].tolist(),
        _score_fn(problem),
        max_evals=int(options.get("n_samples", 200)),
        seed=int(options.get("seed", 0)),
        mask_token_id=_mask_id(problem),
        stats=stats,
    )
    return MethodOutput(np.asarray(scores, dtype=float), {**stats, "efficiency_error": float(error)})


register_method("saliency", saliency)
register_method("grad_x_input", grad_x_input)
register_method("integrated_gradients", integrated_gradients)
register_method("occlusion", occlusion)
if _perturbation is not None:
    register_method("lime", lime)
    register_method("shap", shap)
