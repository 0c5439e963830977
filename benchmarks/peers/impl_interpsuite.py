"""The interpsuite cells: each workload through the public API, as a user would call it."""

from __future__ import annotations

import torch
from interpsuite_plugins.attribution.methods import AttributionProblem, ig_attributions
from interpsuite_plugins.attribution.targets import TargetSpec
from peer_workloads import (
    BEST_BATCH_SIZE,
    IG_STEPS,
    README_BATCH_SIZE,
    Builder,
    Cell,
    Problem,
    capture_batch,
    embeddings,
    last_logit_diff,
)

from interpsuite.hooks import Intervention


def _attention(problem: Problem) -> str:
    return str(problem.model.hf_model.config._attn_implementation)


def capture(problem: Problem) -> Cell:
    """`model.forward(batch, capture=[every resid_post])`; the numbers are row 0's streams."""
    batch = capture_batch(problem)
    names = [f"blocks.{layer}.resid_post" for layer in range(problem.n_layers)]

    def run() -> torch.Tensor:
        cache = problem.model.forward(batch, capture=names).cache
        return torch.stack([cache[name][0] for name in names])

    return Cell(run, _attention(problem))


def _head_sweep(problem: Problem, batch_size: int) -> torch.Tensor:
    model, batch = problem.model, problem.clean
    mary, john = problem.answers

    # the README's call, verbatim but for the layer range (all of them unless --quick)
    def logit_diff(logits, rows):
        return logits[:, -1, mary] - logits[:, -1, john]

    items = [[Intervention(f"blocks.{layer}.attn.z", "zero", heads=head)] for layer, head in problem.heads]
    effects = model.sweep(batch, items, logit_diff, batch_size=batch_size, logits_to_keep=1)
    return effects[:, 0]


def head_sweep_readme(problem: Problem) -> Cell:
    """The README's `model.sweep(batch, items, logit_diff, batch_size=32, logits_to_keep=1)`."""
    return Cell(lambda: _head_sweep(problem, README_BATCH_SIZE), _attention(problem), f"batch_size={README_BATCH_SIZE}")


def head_sweep_best(problem: Problem) -> Cell:
    """The same call at the batch size the core benchmark found fastest."""
    return Cell(lambda: _head_sweep(problem, BEST_BATCH_SIZE), _attention(problem), f"batch_size={BEST_BATCH_SIZE}")


def patching(problem: Problem) -> Cell:
    """Clean resid_pre written into the corrupted run, one (layer, position) per item, via `sweep`."""
    model = problem.model
    names = [f"blocks.{layer}.resid_pre" for layer in problem.patch_layers]

    def metric(logits, rows):
        return last_logit_diff(logits, problem.answers)

    def run() -> torch.Tensor:
        with torch.no_grad():
            clean = model.forward(problem.clean, capture=names, logits_to_keep=1).cache
            items = [
                [Intervention(name, "replace", value=clean[name], positions=[position])]
                for name in names
                for position in range(problem.width)
            ]
            return model.sweep(problem.corrupted, items, metric, batch_size=README_BATCH_SIZE, logits_to_keep=1)[:, 0]

    return Cell(run, _attention(problem), f"batch_size={README_BATCH_SIZE}")


def integrated_gradients(problem: Problem) -> Cell:
    """The attribution engine's batched IG (all steps in one forward+backward pass)."""
    embeds, base = embeddings(problem)
    spec = TargetSpec("logit", target_id=problem.answers[0])
    attribution = AttributionProblem(problem.model, problem.clean.input_ids, embeds, spec)

    def run() -> torch.Tensor:
        return ig_attributions(attribution.forward, embeds, base, IG_STEPS, internal_batch_size=IG_STEPS)[0]

    return Cell(run, _attention(problem), f"{IG_STEPS} steps, Gauss-Legendre, one pass")


def attention(problem: Problem) -> Cell:
    """Every layer's attention pattern of the clean prompt in one forward pass."""
    names = [f"blocks.{layer}.attn.pattern" for layer in range(problem.n_layers)]

    def run() -> torch.Tensor:
        with torch.no_grad():
            cache = problem.model.forward(problem.clean, capture=names, logits_to_keep=1).cache
        return torch.stack([cache[name][0] for name in names])

    return Cell(run, _attention(problem))


BUILDERS: dict[tuple[str, str], Builder] = {
    ("capture", "interpsuite"): capture,
    ("head_sweep", "interpsuite_readme"): head_sweep_readme,
    ("head_sweep", "interpsuite_best"): head_sweep_best,
    ("patching", "interpsuite"): patching,
    ("ig", "interpsuite"): integrated_gradients,
    ("attention", "interpsuite"): attention,
}
