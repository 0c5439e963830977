"""The interpsuite cells: each workload through the public API, as a user would call it."""

from __future__ import annotations

import torch
from interpsuite_plugins.attribution.methods import AttributionProblem, ig_attributions
from interpsuite_plugins.attribution.targets import TargetSpec
from interpsuite_plugins.sae.model import SAEConfig, SparseAutoencoder
from peer_workloads import (
    BEST_BATCH_SIZE,
    IG_STEPS,
    N_THREADS,
    README_BATCH_SIZE,
    Builder,
    Cell,
    Problem,
    capture_batch,
    embeddings,
    last_logit_diff,
    run_threads,
    sae_spec,
    thread_slices,
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


def _head_sweep(problem: Problem, batch_size: int, indices: list[int] | None = None) -> torch.Tensor:
    """The head sweep over `problem.heads` (or those at `indices`, in that order)."""
    model, batch = problem.model, problem.clean
    mary, john = problem.answers
    heads = problem.heads if indices is None else [problem.heads[i] for i in indices]

    # the README's call, verbatim but for the layer range (all of them unless --quick)
    def logit_diff(logits, rows):
        return logits[:, -1, mary] - logits[:, -1, john]

    items = [[Intervention(f"blocks.{layer}.attn.z", "zero", heads=head)] for layer, head in heads]
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


def sae(problem: Problem) -> Cell:
    """`model.sae_splice(sae, hook=...)`, the workbench's path: per run, one splice session whose
    first `run` also runs the prompt clean (cached) and whose every edit recomputes only the
    layers from the spliced one on; one `run` per edit (set one feature, error term kept)."""
    spec = sae_spec(problem)
    d_in, width = spec.W_enc.shape
    cfg = SAEConfig(d_in=int(d_in), width=int(width), architecture="relu", hook=spec.hook)
    autoencoder = SparseAutoencoder(cfg, device=problem.device)
    with torch.no_grad():
        for name, tensor in spec.tensors.items():
            getattr(autoencoder, name).copy_(tensor)

    def run() -> torch.Tensor:
        rows = []
        with torch.no_grad(), problem.model.sae_splice(autoencoder, hook=spec.hook) as splice:
            for feature, value in zip(spec.features, spec.values, strict=True):
                splice.clear().set_feature(feature, value)
                rows.append(splice.run(problem.clean).logits[0].float())
        return torch.stack(rows)

    return Cell(run, _attention(problem), f"sae_splice, {len(spec.features)} edits, cached clean run + prefix reuse")


def concurrency(problem: Problem) -> Cell:
    """The README's head sweep split over 4 threads sharing this one HookedModel (thread t
    sweeps heads t, t+4, ...). Setup (untimed) runs the same slices one after another; every
    timed run must equal that bitwise, or the cell raises (and the run fails). The slices batch
    the heads differently from the whole sweep, so the head_sweep workload's numbers are matched
    to float rounding (about 1e-8), not bitwise."""
    sequential = torch.empty(len(problem.heads))
    for indices in thread_slices(len(problem.heads)):
        sequential[indices] = _head_sweep(problem, README_BATCH_SIZE, indices).float()

    def run() -> torch.Tensor:
        values = run_threads(lambda indices: _head_sweep(problem, README_BATCH_SIZE, indices), len(problem.heads))
        if not torch.equal(values, sequential):
            worst = float((values - sequential).abs().max())
            raise RuntimeError(f"{N_THREADS} threads on one model differ from the sequential slices by {worst:.3g}")
        return values

    return Cell(run, _attention(problem), f"{N_THREADS} threads x sweep(batch_size={README_BATCH_SIZE}), one model")


BUILDERS: dict[tuple[str, str], Builder] = {
    ("capture", "interpsuite"): capture,
    ("head_sweep", "interpsuite_readme"): head_sweep_readme,
    ("head_sweep", "interpsuite_best"): head_sweep_best,
    ("patching", "interpsuite"): patching,
    ("ig", "interpsuite"): integrated_gradients,
    ("attention", "interpsuite"): attention,
    ("sae", "interpsuite"): sae,
    ("concurrency", "interpsuite"): concurrency,
}
