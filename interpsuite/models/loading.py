"""`load_model`: a model by name, placed on a device (or across devices), ready for hooks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .hooked import HookedModel
from .placement import resolve_placement
from .sources import load_weights


def load_model(
    name: str = "smollm2",
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
    device_map: str | Mapping | None = None,
    max_memory: Mapping | None = None,
    offload_dir: str | Path | None = None,
) -> HookedModel:
    """Load a model by embedded name, hub name or local path, ready for hooks.

    Without `device_map` the whole model goes to `device`. With it ("auto", "balanced",
    "balanced_low_0", "sequential", or a dict module name -> device / "cpu" / "disk"),
    accelerate spreads the modules over devices: `max_memory` (device -> bytes or "200MiB")
    caps each device and modules that fit nowhere are offloaded to `offload_dir`. `dtype` is
    one of float32, float16, bfloat16. Placement mistakes raise a `ConfigError` before any
    weight is read (see docs/model-layer.md, "Devices, device maps and precision").
    """
    placement = resolve_placement(device, dtype, device_map, max_memory, offload_dir)
    loaded = load_weights(name, seed=seed, placement=placement)
    return HookedModel(loaded.hf_model, loaded.tokenizer, loaded.info)
