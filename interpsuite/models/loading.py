"""`load_model`: a model by name, placed on a device (or across devices), ready for hooks."""

from __future__ import annotations

import torch

from .hooked import HookedModel
from .sources import load_weights


def load_model(
    name: str = "smollm2", *, device: str = "cpu", dtype: str | torch.dtype = "float32", seed: int = 0
) -> HookedModel:
    """Load a model by embedded name, hub name or local path, ready for hooks."""
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    loaded = load_weights(name, seed=seed, dtype=torch_dtype)
    return HookedModel(loaded.hf_model.to(device).eval(), loaded.tokenizer, loaded.info)
