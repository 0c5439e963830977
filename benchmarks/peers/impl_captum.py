"""captum's `IntegratedGradients` on the input embeddings of an unwrapped copy of the model.

Called as captum's documentation shows, with its defaults (Gauss-Legendre, `internal_batch_size`
None = every step in one pass), the same 50 steps, target and baseline as the interpsuite cell.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients
from peer_workloads import IG_STEPS, Builder, Cell, Problem, embeddings


def _cell(problem: Problem, logits_to_keep: int) -> Cell:
    twin = problem.twin("sdpa")
    embeds, base = embeddings(problem)
    good = problem.answers[0]

    def target(points: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(points.shape[:2], dtype=torch.long, device=points.device)
        out = twin(inputs_embeds=points, attention_mask=mask, use_cache=False, logits_to_keep=logits_to_keep)
        return out.logits[:, -1, good]

    ig = IntegratedGradients(target)

    def run() -> torch.Tensor:
        return ig.attribute(embeds.clone(), baselines=base, n_steps=IG_STEPS)[0]

    kept = "every position's logits" if logits_to_keep == 0 else "the last logit only"
    return Cell(run, "sdpa", f"{IG_STEPS} steps, defaults, {kept}")


def integrated_gradients(problem: Problem) -> Cell:
    """The forward a captum user writes, `model(inputs_embeds=x).logits[:, -1, target]`: every
    position's logits, as interpsuite's attribution forward computes them."""
    return _cell(problem, 0)


def integrated_gradients_last_logit(problem: Problem) -> Cell:
    """The same with `logits_to_keep=1`: how much of IG's time the unused logits cost."""
    return _cell(problem, 1)


BUILDERS: dict[tuple[str, str], Builder] = {
    ("ig", "captum"): integrated_gradients,
    ("ig", "captum_last_logit"): integrated_gradients_last_logit,
}
