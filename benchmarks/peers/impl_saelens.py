"""The SAELens (6.x) cell of the SAE workload, written the way SAELens documents steering:
the SAE attached to the model with its error term (`with model.saes(saes=[sae],
use_error_term=True)`), and a `run_with_hooks` hook on the SAE's `hook_sae_acts_post` that
sets the feature, one full forward per edit.

The model is SAELens's `SAETransformerBridge` (its TransformerLens-3 `TransformerBridge`
subclass), booted offline from the local model object exactly like the TransformerLens cells
(`boot_transformers(name, hf_model=..., tokenizer=...)`, no hub call). The SAE is SAELens's own
`StandardSAE` (ReLU) holding the workload's weights. SAELens computes the error term as
`x - decode(encode(x))` with hooks off and adds it to `decode(edited)`, so the edit's effect is
the same as the other cells' up to float rounding; TransformerLens runs the eager attention kernel.
Needs `interpsuite[sae]` (sae-lens) and TransformerLens 3 (SAELens 6 does not import with 4).
"""

from __future__ import annotations

import warnings

import torch
from impl_tlens import boot_kwargs
from peer_workloads import Builder, Cell, Problem, sae_spec
from transformer_lens.hook_points import HookPoint

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from sae_lens import SAETransformerBridge, StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata


def sae_bridge(problem: Problem) -> SAETransformerBridge:
    """`SAETransformerBridge.boot_transformers` around a fresh eager copy of the model (offline)."""
    if "saelens" not in problem._twins:
        name, kwargs = boot_kwargs(problem)
        problem._twins["saelens"] = SAETransformerBridge.boot_transformers(name, **kwargs)
    return problem._twins["saelens"]


def standard_sae(problem: Problem) -> StandardSAE:
    """SAELens's ReLU SAE at the workload's hook (TransformerLens name), the workload's weights."""
    spec = sae_spec(problem)
    d_in, width = spec.W_enc.shape
    cfg = StandardSAEConfig(
        d_in=int(d_in),
        d_sae=int(width),
        dtype="float32",
        device=str(problem.device),
        metadata=SAEMetadata(hook_name=f"blocks.{spec.layer}.hook_resid_post"),
    )
    sae = StandardSAE(cfg)
    sae.load_state_dict({name: tensor.clone() for name, tensor in spec.tensors.items()})
    return sae.eval()


def _set_feature(feature: int, value: float):
    def hook(acts: torch.Tensor, hook: HookPoint | None = None) -> torch.Tensor:
        acts = acts.clone()
        acts[..., feature] = value
        return acts

    return hook


def sae(problem: Problem) -> Cell:
    model, autoencoder, spec = sae_bridge(problem), standard_sae(problem), sae_spec(problem)
    ids = problem.clean.input_ids

    def run() -> torch.Tensor:
        rows = []
        with torch.no_grad(), model.saes(saes=[autoencoder], use_error_term=True):
            acts_hook = model.get_sae_hook_name(autoencoder)
            for feature, value in zip(spec.features, spec.values, strict=True):
                logits = model.run_with_hooks(ids, fwd_hooks=[(acts_hook, _set_feature(feature, value))])
                rows.append(logits[0, -1].float())
        return torch.stack(rows)

    return Cell(run, "eager", "SAETransformerBridge, saes(use_error_term=True), run_with_hooks per edit")


BUILDERS: dict[tuple[str, str], Builder] = {("sae", "sae_lens"): sae}
