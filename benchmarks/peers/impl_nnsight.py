"""nnsight (0.8) cells: one `trace` per intervention, on the local model object (no hub).

nnsight runs the traced block's body against the real forward pass, so modules must be touched in
execution order, and values leave the trace through containers created outside it (new local
names made inside a trace are not visible after it when it runs inside a function).
"""

from __future__ import annotations

import warnings

import torch
from peer_workloads import N_THREADS, Builder, Cell, Problem, capture_batch, hidden, run_threads, sae_spec

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nnsight import LanguageModel


def language_model(problem: Problem, attention: str) -> LanguageModel:
    """`LanguageModel(hf_model, tokenizer=...)` around an unwrapped copy with `attention` kernel."""
    key = f"nnsight_{attention}"
    if key not in problem._twins:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problem._twins[key] = LanguageModel(problem.twin(attention), tokenizer=problem.model.tokenizer)
    return problem._twins[key]


def capture(problem: Problem) -> Cell:
    lm, ids = language_model(problem, "sdpa"), capture_batch(problem).input_ids

    def run() -> torch.Tensor:
        saved: list = []
        with torch.no_grad(), lm.trace(ids):
            for layer in range(problem.n_layers):
                saved.append(lm.model.layers[layer].output.save())
        return torch.stack([hidden(resid)[0] for resid in saved])

    return Cell(run, "sdpa", "trace, layers[L].output.save()")


def _last_diff(lm: LanguageModel, problem: Problem, ids: torch.Tensor, edit) -> float:
    """One traced pass with `edit(lm)` applied; logit difference at the last token."""
    box: dict = {}
    with torch.no_grad(), lm.trace(ids):
        edit(lm)
        box["logits"] = lm.lm_head.output[:, -1].save()
    good, bad = problem.answers
    return float(box["logits"][0, good] - box["logits"][0, bad])


def _sweep_heads(problem: Problem, lm: LanguageModel, indices: list[int]) -> torch.Tensor:
    """One trace per head at `indices` (of `problem.heads`), the metric of each."""
    d_head = problem.model.info.d_head
    values = torch.empty(len(indices))
    for i, index in enumerate(indices):
        layer, head = problem.heads[index]

        def zero(lm: LanguageModel, layer: int = layer, head: int = head) -> None:
            lm.model.layers[layer].self_attn.o_proj.input[..., head * d_head : (head + 1) * d_head] = 0

        values[i] = _last_diff(lm, problem, problem.clean.input_ids, zero)
    return values


def head_sweep(problem: Problem) -> Cell:
    lm, every = language_model(problem, "sdpa"), list(range(len(problem.heads)))
    return Cell(lambda: _sweep_heads(problem, lm, every), "sdpa", "one trace per head")


def concurrency(problem: Problem) -> Cell:
    """The head sweep's traces on 4 threads sharing the one LanguageModel."""
    lm = language_model(problem, "sdpa")
    return Cell(
        lambda: run_threads(lambda indices: _sweep_heads(problem, lm, indices), len(problem.heads)),
        "sdpa",
        f"{N_THREADS} threads, one LanguageModel, one trace per head",
    )


def patching(problem: Problem) -> Cell:
    lm = language_model(problem, "sdpa")

    def run() -> torch.Tensor:
        clean: dict[int, torch.Tensor] = {}
        with torch.no_grad(), lm.trace(problem.clean.input_ids):
            for layer in problem.patch_layers:
                clean[layer] = lm.model.layers[layer].input.save()
        values = torch.empty(len(problem.patch_layers) * problem.width)
        i = 0
        for layer in problem.patch_layers:
            for position in range(problem.width):

                def write(lm: LanguageModel, layer: int = layer, position: int = position) -> None:
                    lm.model.layers[layer].input[:, position] = clean[layer][:, position]

                values[i] = _last_diff(lm, problem, problem.corrupted.input_ids, write)
                i += 1
        return values

    return Cell(run, "sdpa", "one trace per (layer, position)")


def attention(problem: Problem) -> Cell:
    lm = language_model(problem, "eager")

    def run() -> torch.Tensor:
        saved: list = []
        with torch.no_grad(), lm.trace(problem.clean.input_ids):
            for layer in range(problem.n_layers):
                saved.append(lm.model.layers[layer].self_attn.output[1].save())
        return torch.stack([pattern[0] for pattern in saved])

    return Cell(run, "eager", "trace, self_attn.output[1].save()")


def sae(problem: Problem) -> Cell:
    """One trace per edit: the decoder layer's output replaced by decode(edited) + error."""
    lm, spec = language_model(problem, "sdpa"), sae_spec(problem)

    def run() -> torch.Tensor:
        rows = []
        for feature, value in zip(spec.features, spec.values, strict=True):
            box: dict = {}
            with torch.no_grad(), lm.trace(problem.clean.input_ids):
                layer = lm.model.layers[spec.layer]
                output = layer.output
                spliced = spec.spliced(hidden(output), feature, value)
                layer.output = (spliced, *output[1:]) if isinstance(output, tuple) else spliced
                box["logits"] = lm.lm_head.output[:, -1].save()
            rows.append(box["logits"][0].float())
        return torch.stack(rows)

    return Cell(run, "sdpa", "one trace per edit, layers[L].output replaced")


BUILDERS: dict[tuple[str, str], Builder] = {
    ("capture", "nnsight"): capture,
    ("head_sweep", "nnsight"): head_sweep,
    ("patching", "nnsight"): patching,
    ("attention", "nnsight"): attention,
    ("sae", "nnsight"): sae,
    ("concurrency", "nnsight"): concurrency,
}
