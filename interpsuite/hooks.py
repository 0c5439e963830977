"""Capture and intervention over the hook-point vocabulary.

Analyzers never attach raw torch hooks. They name hook points (`blocks.3.attn.z`) and say
what to record or change; this module turns that into torch hooks on the modules an
architecture adapter maps each name to, and always removes them again, also after an error.

Every intervention may be restricted to a set of batch rows. That is what makes a sweep of
N interventions a handful of batched forward passes: row i of a batch carries intervention i.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .errors import HookError

#: Per-layer hook points, in the order they occur inside one block.
BLOCK_HOOKS: tuple[str, ...] = (
    "resid_pre",
    "attn.pattern",
    "attn.z",
    "attn.out",
    "mlp.post",
    "mlp.out",
    "resid_post",
)
#: Model-level hook points.
GLOBAL_HOOKS: tuple[str, ...] = ("embed", "final", "logits")

_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")

InterventionOp = Literal["replace", "add", "zero", "mean", "resample", "scale"]
INTERVENTION_OPS: tuple[str, ...] = ("replace", "add", "zero", "mean", "resample", "scale")

Index = int | Sequence[int] | torch.Tensor | None


def parse_hook_name(name: str) -> tuple[int | None, str]:
    """Split `blocks.L.site` into (L, site); model-level names give (None, name)."""
    match = _BLOCK_NAME.match(name)
    if match:
        return int(match.group(1)), match.group(2)
    return None, name


def hook_layer(name: str) -> int:
    """The first block whose computation a hook point can influence (embed counts as 0)."""
    layer, site = parse_hook_name(name)
    if layer is not None:
        return layer
    return 0 if site == "embed" else 10**9


class HookPoint(nn.Module):
    """An identity module placed where the host model has no module of its own.

    The attention pattern lives inside a function, not a module, so adapters add one of
    these to each attention module; hooks on it see (and may replace) the pattern.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        return bool(self._forward_hooks) or bool(self._forward_pre_hooks)


@dataclass(frozen=True)
class HookSite:
    """Where a hook point lives on the host model and how its tensor maps to the vocabulary.

    `kind` says whether the tensor is the module's first input or its output. `to_canonical`
    reshapes the raw tensor into the vocabulary's shape (for example [b, pos, h*d] into
    [b, pos, h, d]); `from_canonical` undoes it. `head_axis`/`pos_axis` locate the head and
    position dimensions in the canonical shape (None where there is none).
    """

    module: nn.Module
    kind: Literal["input", "output"]
    to_canonical: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    from_canonical: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda c, raw: c
    head_axis: int | None = None
    pos_axis: int | None = 1


@dataclass
class Intervention:
    """One change to the activation at a hook point.

    - `op`: replace (`value`), add (`value`), zero, mean (`value` = the mean activation to
      write; without `value`, the mean over the batch rows `mean_over`, default all rows;
      a sweep sets it to the item's own copy of the batch), resample (`value` =
      activations from other inputs, same shape), scale (`factor`).
    - `rows`: batch rows it applies to (None: all rows). This is what batches a sweep.
    - `heads`, `positions`, `units`: restrict it to some heads, token positions, or entries
      of the last dimension (neurons, residual directions). None: all.

    `value` broadcasts against the full canonical activation; a value whose first dimension
    equals the number of `rows` (and not the batch) is written row by row into those rows.
    """

    hook: str
    op: InterventionOp = "zero"
    value: torch.Tensor | None = None
    factor: float | None = None
    rows: Index = None
    heads: Index = None
    positions: Index = None
    units: Index = None
    mean_over: Index = None

    def __post_init__(self) -> None:
        if self.op not in INTERVENTION_OPS:
            raise HookError(f"unknown intervention op {self.op!r}; choose one of {', '.join(INTERVENTION_OPS)}")
        if self.op in ("replace", "add", "resample") and self.value is None:
            raise HookError(f"intervention {self.op!r} at {self.hook} needs a `value` tensor")
        if self.op == "scale" and self.factor is None:
            raise HookError(f"intervention 'scale' at {self.hook} needs a `factor`")

    def with_rows(self, rows: Index, mean_over: Index = None) -> Intervention:
        """The same intervention applied to other batch rows."""
        return dataclasses.replace(self, rows=rows, mean_over=mean_over)


def _as_index(index: Index, size: int, device: torch.device) -> torch.Tensor | None:
    if index is None:
        return None
    if isinstance(index, int):
        index = [index]
    idx = torch.as_tensor(index, dtype=torch.long, device=device).flatten()
    if idx.numel() and (int(idx.max()) >= size or int(idx.min()) < -size):
        raise HookError(f"index {idx.tolist()} out of range for a dimension of size {size}")
    return idx


def _axis_mask(shape: torch.Size, axis: int, index: Index, device: torch.device) -> torch.Tensor | None:
    idx = _as_index(index, shape[axis], device)
    if idx is None:
        return None
    mask = torch.zeros(shape[axis], dtype=torch.bool, device=device)
    mask[idx] = True
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return mask.view(view)


def _selection_mask(x: torch.Tensor, iv: Intervention, site: HookSite) -> torch.Tensor | None:
    """A boolean mask broadcastable to x marking the entries the intervention touches."""
    parts: list[torch.Tensor] = []
    for axis, index, label in (
        (0, iv.rows, "rows"),
        (site.pos_axis, iv.positions, "positions"),
        (site.head_axis, iv.heads, "heads"),
        (x.ndim - 1, iv.units, "units"),
    ):
        if index is None:
            continue
        if axis is None:
            raise HookError(f"hook point {iv.hook} has no {label} dimension to select")
        mask = _axis_mask(x.shape, axis, index, x.device)
        if mask is not None:
            parts.append(mask)
    if not parts:
        return None
    mask = parts[0]
    for part in parts[1:]:
        mask = mask & part
    return mask


def _broadcast_value(x: torch.Tensor, iv: Intervention) -> torch.Tensor:
    value = iv.value.to(device=x.device, dtype=x.dtype)  # type: ignore[union-attr]
    if iv.rows is not None and value.ndim == x.ndim:
        rows = _as_index(iv.rows, x.shape[0], x.device)
        if rows is not None and value.shape[0] == rows.numel() and value.shape[0] != x.shape[0]:
            full = x.clone()
            full[rows] = value.expand(rows.numel(), *x.shape[1:])
            return full
    try:
        return value.expand_as(x)
    except RuntimeError as err:
        raise HookError(
            f"value of shape {tuple(value.shape)} does not broadcast to the activation at "
            f"{iv.hook} of shape {tuple(x.shape)}"
        ) from err


def apply_intervention(x: torch.Tensor, iv: Intervention, site: HookSite) -> torch.Tensor:
    """The canonical activation `x` after the intervention (a new tensor; x is untouched)."""
    if iv.op == "zero":
        new = torch.zeros_like(x)
    elif iv.op == "scale":
        new = x * iv.factor
    elif iv.op == "add":
        new = x + _broadcast_value(x, iv)
    elif iv.op in ("replace", "resample"):
        new = _broadcast_value(x, iv)
    elif iv.value is not None:  # mean with a supplied reference mean
        new = _broadcast_value(x, iv)
    else:  # mean over the batch rows `mean_over` (all rows by default)
        over = _as_index(iv.mean_over, x.shape[0], x.device)
        source = x if over is None else x.index_select(0, over)
        new = source.mean(dim=0, keepdim=True).expand_as(x)
    mask = _selection_mask(x, iv, site)
    if mask is None:
        return new
    return torch.where(mask, new, x)


class ActivationCache(dict):
    """Captured activations by hook-point name (canonical shapes, detached unless asked)."""

    def stack(self, site: str, layers: Sequence[int]) -> torch.Tensor:
        """Stack one per-layer site over layers: [layer, ...]."""
        return torch.stack([self[f"blocks.{layer}.{site}"] for layer in layers])


@dataclass
class HookPlan:
    """Everything to do at the hook points during one forward pass."""

    capture: Sequence[str] = ()
    interventions: Sequence[Intervention] = ()
    detach: bool = True
    cache: ActivationCache = field(default_factory=ActivationCache)


@contextlib.contextmanager
def attach(sites: dict[str, HookSite], plan: HookPlan) -> Iterator[ActivationCache]:
    """Install the plan's hooks for the duration of the block; they are always removed."""
    by_name: dict[str, list[Intervention]] = {}
    for iv in plan.interventions:
        if iv.hook not in sites:
            raise HookError(_unknown_hook_message(iv.hook, sites))
        by_name.setdefault(iv.hook, []).append(iv)
    for name in plan.capture:
        if name not in sites:
            raise HookError(_unknown_hook_message(name, sites))
    names = list(dict.fromkeys([*by_name, *plan.capture]))
    handles = []
    try:
        for name in names:
            site = sites[name]
            ivs = by_name.get(name, [])
            capture = name in plan.capture

            def process(raw: torch.Tensor, site=site, ivs=ivs, capture=capture, name=name):
                canonical = site.to_canonical(raw)
                for iv in ivs:
                    canonical = apply_intervention(canonical, iv, site)
                if capture:
                    plan.cache[name] = canonical.detach() if plan.detach else canonical
                if ivs or (capture and not plan.detach and canonical is not raw):
                    # with gradients, the model must compute on the captured (reshaped) tensor itself,
                    # or autograd.grad with respect to it finds it unused
                    return site.from_canonical(canonical, raw)
                return None

            if site.kind == "output":

                def out_hook(module, args, output, process=process):
                    raw = output[0] if isinstance(output, tuple) else output
                    new = process(raw)
                    if new is None:
                        return None
                    if isinstance(output, tuple):
                        return (new, *output[1:])
                    return new

                out_hook.interpsuite = True
                handles.append(site.module.register_forward_hook(out_hook))
            else:

                def pre_hook(module, args, kwargs, process=process):
                    raw = args[0] if args else kwargs["hidden_states"]
                    new = process(raw)
                    if new is None:
                        return None
                    if args:
                        return (new, *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": new}

                pre_hook.interpsuite = True
                handles.append(site.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield plan.cache
    finally:
        for handle in handles:
            handle.remove()


def _unknown_hook_message(name: str, sites: dict[str, HookSite]) -> str:
    layer, site = parse_hook_name(name)
    n_layers = 1 + max((parse_hook_name(s)[0] or 0) for s in sites)
    if layer is not None and site in BLOCK_HOOKS:
        return f"hook point {name!r}: layer {layer} out of range (the model has layers 0..{n_layers - 1})"
    available = ", ".join([*GLOBAL_HOOKS, *(f"blocks.{{L}}.{s}" for s in BLOCK_HOOKS)])
    return f"unknown hook point {name!r} for this model; hook points are: {available}"


def count_hooks(module: nn.Module) -> int:
    """How many interpsuite hooks remain anywhere in a module tree (0 between calls).

    Only hooks installed by `attach` count: transformers installs hooks of its own (for
    `output_hidden_states`), which are not ours to remove.
    """
    return sum(
        1
        for m in module.modules()
        for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
        if getattr(hook, "interpsuite", False)
    )
