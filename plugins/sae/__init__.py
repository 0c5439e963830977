"""Sparse autoencoders (family `sae`): the engine, as a Python API.

What exists now: `SAEConfig` / `SparseAutoencoder` (relu, topk, jumprelu; SAELens parameter
names; save/load as interpsuite artifacts), `train_sae` with `TrainSettings` (resumable
checkpoints, AuxK, decoder-norm L1, JumpReLU STE) plus `shuffle_buffer` / `store_batches` for
streaming an activation store, and `SyntheticDictionary` / `dictionary_recovery` (ground truth
that says whether training works), and `load_saelens` / `save_saelens` (SAELens's cfg.json +
sae_weights.safetensors, both ways), and `evaluate_sae` (MSE, explained variance, L0, dead and
dense latents, CE loss recovered), and an offline corpus (`python_docs_texts`, `text_files`). No
analyzers yet, so no plugin hook is registered.

Names are loaded on first use: importing the package does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SAEConfig": "model",
    "SparseAutoencoder": "model",
    "TrainSettings": "training",
    "TrainHistory": "training",
    "train_sae": "training",
    "geometric_median": "training",
    "sae_loss": "training",
    "explained_variance": "training",
    "shuffle_buffer": "training",
    "store_batches": "training",
    "norm_scaling_factor": "training",
    "fold_activation_scale": "training",
    "SyntheticDictionary": "synthetic",
    "dictionary_recovery": "synthetic",
    "SAEEvaluation": "evaluation",
    "python_docs_texts": "corpus",
    "text_files": "corpus",
    "count_tokens": "corpus",
    "evaluate_sae": "evaluation",
    "load_saelens": "saelens",
    "save_saelens": "saelens",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
