"""Apply a PruningPlan to a shared model in place, and restore it exactly on exit.

Why not `torch.nn.utils.prune`: it reparametrises each module (the weight becomes
`weight_orig` plus a `weight_mask` buffer and a forward pre-hook recomputes `weight` on every
call). That is the right tool for a model that stays pruned (fine-tuning with a fixed mask),
but the models here are shared (a HookedModel may be serving other analyzers or a server):
reparametrising changes the model's parameter names and state dict for everyone, doubles the
memory of every pruned weight (`weight_orig` + the mask + the recomputed weight), and
`prune.remove` makes the pruning permanent instead of undoing it. An impact curve applies
dozens of (criterion, level) settings to one model, so what it needs is a temporary edit that
costs only the entries it removes and leaves bit-identical weights behind. So `masked` zeroes
the pruned entries in place under `torch.no_grad`, keeping a copy of only those entries
(`saved = W[~keep].clone()`, or `index_select` of the pruned rows/columns for neurons and
heads), and writes them back on exit, also when the body raises.

While a plan is applied, every pass on that model (any thread, any HookedModel wrapping it)
sees the pruned weights: the model is shared, and that is the point (no copy). Nested or
overlapping applications on one model are refused, since restoring them out of order would
not give the original weights back.

Layouts: `nn.Linear` stores weight as [out, in]; GPT-2's `Conv1D` stores [in, out].
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from interpsuite.errors import ConfigError

if TYPE_CHECKING:
    from interpsuite.models.hooked import HookedModel

    from .plan import PruningPlan

__all__ = ["active_plan", "head_columns", "in_dim", "is_conv1d", "masked", "out_dim", "unit_modules"]

_LOCK = threading.Lock()
#: id(hf_model) -> a description of the plan applied to it now
_ACTIVE: dict[int, str] = {}


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's transformers Conv1D (weight [in, out]); matched by name like the adapters do."""
    return type(module).__name__ == "Conv1D"


def out_dim(module: nn.Module) -> int:
    """The weight dimension that indexes output features (rows of the [out, in] matrix)."""
    return 1 if is_conv1d(module) else 0


def in_dim(module: nn.Module) -> int:
    """The weight dimension that indexes input features."""
    return 0 if is_conv1d(module) else 1


def head_columns(heads: list[int], d_head: int, device: torch.device | None = None) -> torch.Tensor:
    """Input features of the attention output projection that carry the given heads (attn.z is [.., h, d_head])."""
    if not heads:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat([torch.arange(h * d_head, (h + 1) * d_head, device=device) for h in heads])


@dataclass
class _Edit:
    """One in-place zeroing: a boolean drop mask, or an index set along one dimension."""

    tensor: torch.Tensor
    drop: torch.Tensor | None = None  # bool, same shape as tensor
    dim: int = 0
    index: torch.Tensor | None = None

    def zero(self) -> torch.Tensor:
        if self.drop is not None:
            saved = self.tensor[self.drop].clone()
            self.tensor[self.drop] = 0
            return saved
        saved = self.tensor.index_select(self.dim, self.index)  # a new tensor: only the pruned slices
        self.tensor.index_fill_(self.dim, self.index, 0)
        return saved

    def restore(self, saved: torch.Tensor) -> None:
        if self.drop is not None:
            self.tensor[self.drop] = saved
        else:
            self.tensor.index_copy_(self.dim, self.index, saved)


def unit_modules(model: HookedModel, layer: int) -> tuple[list[nn.Module], nn.Module]:
    """(modules whose OUTPUT features are MLP neurons, module whose INPUT features are neurons) of one layer."""
    adapter = model.adapter
    writers = [adapter.mlp_input_projection(layer)]
    up = adapter.mlp_up_projection(layer)
    if up is not None:
        writers.append(up)
    return writers, adapter.mlp_output_projection(layer)


def _check_width(module: nn.Module, dim: int, expected: int, what: str) -> None:
    size = module.weight.shape[dim]
    if size != expected:
        raise ConfigError(
            f"{type(module).__name__} has {size} {what} where the model describes {expected}; this architecture's "
            f"layout is not supported for pruning (use unstructured pruning)"
        )


def _edits(model: HookedModel, plan: PruningPlan) -> list[_Edit]:
    """Every zeroing the plan needs, validated against the model before anything changes."""
    plan.validate_for(model)
    edits: list[_Edit] = []
    if plan.granularity == "unstructured":
        parameters = dict(model.hf_model.named_parameters())
        for name, keep in plan.masks.items():
            tensor = parameters[name]
            edits.append(_Edit(tensor, drop=~keep.to(device=tensor.device, dtype=torch.bool)))
        return edits
    info = model.info
    for layer, units in sorted(plan.units.items()):
        if not units:
            continue
        if plan.granularity == "neurons":
            writers, reader = unit_modules(model, layer)
            for module in writers:
                _check_width(module, out_dim(module), info.d_mlp, "output features (MLP neurons)")
                index = torch.tensor(units, dtype=torch.long, device=module.weight.device)
                edits.append(_Edit(module.weight, dim=out_dim(module), index=index))
                if getattr(module, "bias", None) is not None:
                    edits.append(_Edit(module.bias, dim=0, index=index))
            _check_width(reader, in_dim(reader), info.d_mlp, "input features (MLP neurons)")
            index = torch.tensor(units, dtype=torch.long, device=reader.weight.device)
            edits.append(_Edit(reader.weight, dim=in_dim(reader), index=index))
        else:  # heads: the head writes nothing into the residual stream
            projection = model.adapter.attention_output_projection(layer)
            _check_width(projection, in_dim(projection), info.n_heads * info.d_head, "input features (heads)")
            index = head_columns(units, info.d_head, projection.weight.device)
            edits.append(_Edit(projection.weight, dim=in_dim(projection), index=index))
    for edit in edits:
        if edit.tensor.device.type == "meta":
            raise ConfigError("the model's weights are offloaded (meta device); load it on one device to prune it")
    return edits


def active_plan(model: HookedModel) -> str | None:
    """A description of the plan applied to this model now (None when none is)."""
    with _LOCK:
        return _ACTIVE.get(id(model.hf_model))


@contextlib.contextmanager
def masked(model: HookedModel, plan: PruningPlan) -> Iterator[HookedModel]:
    """Zero what `plan` prunes in `model.hf_model`'s weights for the duration of the block.

    Memory: the values of the pruned entries (plus, for unstructured plans, one byte per
    weight entry for the drop mask), never a copy of the model. On exit, also after an
    exception, every parameter is bit-identical to before.
    """
    edits = _edits(model, plan)
    key = id(model.hf_model)
    with _LOCK:
        if key in _ACTIVE:
            raise ConfigError(
                f"a pruning plan ({_ACTIVE[key]}) is already applied to this model; exit its `with` block before "
                f"applying another"
            )
        _ACTIVE[key] = plan.describe()
    done: list[tuple[_Edit, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for edit in edits:
                done.append((edit, edit.zero()))
        yield model
    finally:
        try:
            with torch.no_grad():
                for edit, saved in reversed(done):
                    edit.restore(saved)
        finally:
            with _LOCK:
                _ACTIVE.pop(key, None)
