"""Plain PyTorch cells: stock transformers and torch hooks, one forward pass per intervention.

This is the loop a user writes without any interpretability library, on an unwrapped copy of the
model (stock `sdpa` attention; `eager` where attention weights are needed).
"""

from __future__ import annotations

import torch
from peer_workloads import (
    N_THREADS,
    Builder,
    Cell,
    Problem,
    SAESpec,
    capture_batch,
    hidden,
    last_logit_diff,
    run_threads,
    sae_spec,
)
from torch import nn


def bare(problem: Problem) -> Cell:
    """A bare forward of the capture batch, no hooks: what capture overhead is measured against.
    It captures nothing, so it has no numbers to compare (the parent skips it in agreement)."""
    twin, batch = problem.twin("sdpa"), capture_batch(problem)

    def run() -> torch.Tensor:
        with torch.no_grad():
            twin(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return torch.empty(0)

    return Cell(run, "sdpa", "no hooks, all logits")


def capture(problem: Problem) -> Cell:
    """A forward hook on each decoder layer keeping its output (= resid_post)."""
    twin, batch = problem.twin("sdpa"), capture_batch(problem)

    def run() -> torch.Tensor:
        store: list[torch.Tensor] = []
        handles = [
            layer.register_forward_hook(lambda m, a, out: store.append(hidden(out).detach()))
            for layer in twin.model.layers
        ]
        try:
            with torch.no_grad():
                twin(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack([resid[0] for resid in store])

    return Cell(run, "sdpa")


def _loop(twin: nn.Module, ids: torch.Tensor, answers: tuple[int, int], patches) -> torch.Tensor:
    """One pass per (module, pre-hook), last logit only; the metric of each pass."""
    values = torch.empty(len(patches))
    with torch.no_grad():
        for i, (module, hook) in enumerate(patches):
            handle = module.register_forward_pre_hook(hook)
            try:
                logits = twin(input_ids=ids, use_cache=False, logits_to_keep=1).logits
            finally:
                handle.remove()
            values[i] = last_logit_diff(logits, answers)[0]
    return values


def _head_patches(problem: Problem, twin: nn.Module) -> list:
    """(o_proj, pre-hook zeroing one head's slice of its input) per head, in head order."""
    d_head = problem.model.info.d_head
    patches = []
    for layer, head in problem.heads:

        def zero(module: nn.Module, args: tuple, head: int = head) -> tuple:
            z = args[0].clone()
            z[..., head * d_head : (head + 1) * d_head] = 0
            return (z, *args[1:])

        patches.append((twin.model.layers[layer].self_attn.o_proj, zero))
    return patches


def head_sweep(problem: Problem) -> Cell:
    """A pre-hook on o_proj zeroing one head's slice of its input (the heads' concatenation)."""
    twin = problem.twin("sdpa")
    patches = _head_patches(problem, twin)
    return Cell(
        lambda: _loop(twin, problem.clean.input_ids, problem.answers, patches),
        "sdpa",
        "one pass per head, last logit only",
    )


def concurrency(problem: Problem) -> Cell:
    """The head sweep's loop on 4 threads sharing the one model: each thread registers its
    o_proj pre-hook per pass, where the other threads' passes see it too (a module hook is
    global to the module), so the numbers may be wrong: that is what the workload shows."""
    twin = problem.twin("sdpa")
    patches = _head_patches(problem, twin)

    def job(indices: list[int]) -> torch.Tensor:
        return _loop(twin, problem.clean.input_ids, problem.answers, [patches[i] for i in indices])

    return Cell(
        lambda: run_threads(job, len(patches)),
        "sdpa",
        f"{N_THREADS} threads, one model, an o_proj pre-hook per pass",
    )


def _sae_hook(spec: SAESpec, feature: int, value: float):
    """A decoder-layer forward hook: encode the layer's output, set one feature, decode, add
    the error term (the activation minus its clean reconstruction)."""

    def hook(module: nn.Module, args: tuple, output):
        spliced = spec.spliced(hidden(output), feature, value)
        return (spliced, *output[1:]) if isinstance(output, tuple) else spliced

    return hook


def sae(problem: Problem) -> Cell:
    """One full forward per edit, the SAE spliced in by a forward hook on the decoder layer."""
    twin, spec = problem.twin("sdpa"), sae_spec(problem)
    layer = twin.model.layers[spec.layer]

    def run() -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for feature, value in zip(spec.features, spec.values, strict=True):
                handle = layer.register_forward_hook(_sae_hook(spec, feature, value))
                try:
                    logits = twin(input_ids=problem.clean.input_ids, use_cache=False, logits_to_keep=1).logits
                finally:
                    handle.remove()
                rows.append(logits[0, -1].float())
        return torch.stack(rows)

    return Cell(run, "sdpa", "decoder-layer forward hook, one full pass per edit")


def patching(problem: Problem) -> Cell:
    """A pre-hook on each decoder layer writing the clean residual stream at one position."""
    twin = problem.twin("sdpa")
    layers = twin.model.layers

    def run() -> torch.Tensor:
        clean: dict[int, torch.Tensor] = {}
        handles = [
            layers[layer].register_forward_pre_hook(lambda m, a, layer=layer: clean.__setitem__(layer, a[0]))
            for layer in problem.patch_layers
        ]
        try:
            with torch.no_grad():
                twin(input_ids=problem.clean.input_ids, use_cache=False, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
        patches = []
        for layer in problem.patch_layers:
            for position in range(problem.width):

                def write(module: nn.Module, args: tuple, layer: int = layer, position: int = position) -> tuple:
                    resid = args[0].clone()
                    resid[:, position] = clean[layer][:, position]
                    return (resid, *args[1:])

                patches.append((layers[layer], write))
        return _loop(twin, problem.corrupted.input_ids, problem.answers, patches)

    return Cell(run, "sdpa", "one pass per (layer, position), last logit only")


def attention(problem: Problem) -> Cell:
    """transformers' own `output_attentions=True` (needs the eager kernel)."""
    twin = problem.twin("eager")

    def run() -> torch.Tensor:
        with torch.no_grad():
            out = twin(input_ids=problem.clean.input_ids, use_cache=False, output_attentions=True, logits_to_keep=1)
        return torch.stack([pattern[0] for pattern in out.attentions])

    return Cell(run, "eager", "output_attentions=True")


BUILDERS: dict[tuple[str, str], Builder] = {
    ("capture", "bare"): bare,
    ("capture", "plain"): capture,
    ("head_sweep", "plain"): head_sweep,
    ("patching", "plain"): patching,
    ("attention", "plain"): attention,
    ("sae", "plain"): sae,
    ("concurrency", "plain"): concurrency,
}
