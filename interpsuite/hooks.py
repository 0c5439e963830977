"""Capture and intervention over the hook-point vocabulary.

Analyzers never attach raw torch hooks. They name hook points (`blocks.3.attn.z`) and say
what to record or change; this module says how a named point reads and writes the host
model's tensors (`HookSite`), what an intervention does (`Intervention`), and what one
forward pass asked for (`PassState`).

Why per-pass state: one model is shared by threads (a server, a training monitor, live SAE
patching). The model layer installs its listeners once, when it wraps a model; each pass
publishes its plan in a context variable, which is private to the thread (and asyncio task)
that runs the pass. A listener whose thread has no plan does nothing, so two threads never
see each other's captures or interventions and no pass changes what another pass runs.

Every intervention may be restricted to a set of batch rows. That is what makes a sweep of
N interventions a handful of batched forward passes: row i of a batch carries intervention i.
A row-restricted intervention reads and writes only its rows (O(rows), no host sync).
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .errors import HookError

#: Per-layer hook points, in the order they occur inside one block.
BLOCK_HOOKS: tuple[str, ...] = (
    "resid_pre",
    "ln1.scale",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.scores",
    "attn.pattern",
    "attn.z",
    "attn.out",
    "resid_mid",
    "ln2.scale",
    "mlp.pre",
    "mlp.up",
    "mlp.post",
    "mlp.out",
    "resid_post",
)
#: Model-level hook points.
GLOBAL_HOOKS: tuple[str, ...] = ("embed", "final.scale", "final", "logits")
#: Hook points computed inside the attention function (not at a module boundary).
ATTENTION_SITES: tuple[str, ...] = ("attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern")

_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")

InterventionOp = Literal["replace", "add", "zero", "mean", "resample", "scale", "project_out", "map"]
INTERVENTION_OPS: tuple[str, ...] = ("replace", "add", "zero", "mean", "resample", "scale", "project_out", "map")

Index = int | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None


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


# --- where a hook point lives ---------------------------------------------------------
@dataclass
class SiteCall:
    """One firing of a listener: the raw tensor at the site and what else the site may need."""

    value: torch.Tensor  # the module's first input, or its (first) output
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    state: PassState | None = None


def _identity_read(call: SiteCall) -> torch.Tensor:
    return call.value


def _identity_write(call: SiteCall, canonical: torch.Tensor) -> torch.Tensor:
    return canonical


@dataclass(frozen=True)
class HookSite:
    """Where a hook point lives on the host model and how its tensor maps to the vocabulary.

    `kind`: the module's first `input`, its `output`, or `attention` (computed inside the
    attention function: q, k, v, scores, pattern). `read` gives the canonical tensor from a
    firing (e.g. [b, pos, h*d] viewed as [b, pos, h, d], or a norm's scale from its input);
    `write` turns a changed canonical tensor back into what the module passes on.
    `requires` names other hook points whose (post-intervention) values `read` uses, such as
    `resid_mid = resid_pre + attn.out`. `head_axis`/`pos_axis` locate heads and positions.
    """

    module: nn.Module | None
    kind: Literal["input", "output", "attention"]
    layer: int | None = None
    read: Callable[[SiteCall], torch.Tensor] = _identity_read
    write: Callable[[SiteCall, torch.Tensor], torch.Tensor] = _identity_write
    head_axis: int | None = None
    pos_axis: int | None = 1
    ndim: int = 3
    requires: tuple[str, ...] = ()
    #: with an output-kind site, the listener also needs the module's inputs
    needs_inputs: bool = False


# --- interventions ----------------------------------------------------------------------
def _normalise_index(index: Index, what: str) -> tuple | None:
    """A hashable, host-side form of an index: a tuple of ints, or (per-row positions) a
    tuple of tuples. Tensors are read once here, never again inside a pass."""
    if index is None:
        return None
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().tolist()
    if isinstance(index, int):
        return (int(index),)
    if isinstance(index, range):
        return tuple(index)
    items = list(index)
    if items and all(isinstance(i, (list, tuple, range, torch.Tensor)) for i in items):
        if what != "positions":
            raise HookError(f"per-row lists are supported for `positions` only, not `{what}`")
        return tuple(tuple(_normalise_index(i, "flat") or ()) for i in items)
    try:
        return tuple(int(i) for i in items)
    except (TypeError, ValueError) as err:
        raise HookError(f"intervention `{what}` must be ints (or per-row lists of ints), got {index!r}") from err


def per_row_positions(positions: Index) -> bool:
    """Whether `positions` is given per row (one list per selected row) rather than one flat
    list shared by every row."""
    normal = _normalise_index(positions, "positions")
    return bool(normal) and isinstance(normal[0], tuple)


def position_lists(positions: Index) -> list[list[int]]:
    """One position list per row in the per-row form, a single list in the flat form."""
    normal = _normalise_index(positions, "positions") or ()
    if normal and isinstance(normal[0], tuple):
        return [list(row) for row in normal]
    return [list(normal)]


@dataclass
class Intervention:
    """One change to the activation at a hook point.

    - `op`: replace (`value`), add (`value`), zero, mean (`value` = the mean activation to
      write; without `value`, the mean over the batch rows `mean_over`, default all rows;
      a sweep sets it to the item's own copy of the batch), resample (`value` =
      activations from other inputs, same shape), scale (`factor`), project_out (`value` =
      a direction over the last dimension, [d] or one per row: the component of the
      activation along it is removed, x - (x . u) u with u = value / |value|; directional
      ablation, Arditi et al. 2024), map (`fn`: a function of the activation, called with the
      selected rows' canonical tensor and returning one of the same shape; it is how an
      object such as a sparse autoencoder splice computes the new activation from the one
      the pass reaches, rather than from a value fixed before the pass; it must not change
      its argument in place, which may be the activation a capture records).
    - `rows`: batch rows it applies to (None: all rows). This is what batches a sweep.
    - `heads`, `positions`, `units`: restrict it to some heads, token positions, or entries
      of the last dimension (neurons, residual directions). None: all. `positions` may be
      given per row: one list per selected row (in `rows` order), e.g. each prompt's subject.

    `value` broadcasts against the activation; a value whose first dimension equals the
    number of `rows` (and not the batch) is written row by row into those rows, and a
    full-batch value into the selected rows is taken at those rows. Like every op, `map` is
    applied in order with the others at its hook point, and `heads`/`positions`/`units` keep
    its result only where they select (elsewhere the activation is unchanged).
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
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.op not in INTERVENTION_OPS:
            raise HookError(f"unknown intervention op {self.op!r}; choose one of {', '.join(INTERVENTION_OPS)}")
        if self.op in ("replace", "add", "resample", "project_out") and self.value is None:
            raise HookError(f"intervention {self.op!r} at {self.hook} needs a `value` tensor")
        if self.op == "scale" and self.factor is None:
            raise HookError(f"intervention 'scale' at {self.hook} needs a `factor`")
        if self.op == "map" and not callable(self.fn):
            raise HookError(f"intervention 'map' at {self.hook} needs a callable `fn` (activation -> activation)")
        self.rows = _normalise_index(self.rows, "rows")
        self.heads = _normalise_index(self.heads, "heads")
        self.positions = _normalise_index(self.positions, "positions")
        self.units = _normalise_index(self.units, "units")
        self.mean_over = _normalise_index(self.mean_over, "mean_over")
        if self.per_row_positions:
            n_rows = None if self.rows is None else len(self.rows)
            if n_rows is not None and len(self.positions) != n_rows:
                raise HookError(
                    f"intervention at {self.hook}: {len(self.positions)} per-row position lists for "
                    f"{n_rows} rows; give one list per row"
                )

    @property
    def per_row_positions(self) -> bool:
        return bool(self.positions) and isinstance(self.positions[0], tuple)

    def with_rows(self, rows: Index, mean_over: Index = None) -> Intervention:
        """The same intervention applied to other batch rows."""
        return dataclasses.replace(self, rows=rows, mean_over=mean_over)


def _checked(index: tuple[int, ...], size: int, label: str, hook: str) -> list[int]:
    """Bounds-checked, non-negative positions of an index (host ints: no device sync)."""
    out = []
    for i in index:
        if not -size <= i < size:
            raise HookError(f"{label} index {i} out of range at {hook}: the dimension has size {size}")
        out.append(i + size if i < 0 else i)
    return out


def _long(index: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(index, dtype=torch.long, device=device)


def _axis_mask(shape: torch.Size, axis: int, index: list[int], device: torch.device) -> torch.Tensor:
    mask = torch.zeros(shape[axis], dtype=torch.bool, device=device)
    mask[_long(index, device)] = True
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return mask.view(view)


def _selection(sub: torch.Tensor, iv: Intervention, site: HookSite, n_rows: int) -> torch.Tensor | None:
    """A boolean mask broadcastable to `sub` (the selected rows) over positions/heads/units."""
    mask: torch.Tensor | None = None
    for axis, index, label in (
        (site.pos_axis, iv.positions, "positions"),
        (site.head_axis, iv.heads, "heads"),
        (sub.ndim - 1, iv.units, "units"),
    ):
        if index is None:
            continue
        if axis is None:
            raise HookError(f"hook point {iv.hook} has no {label} dimension to select")
        if label == "positions" and iv.per_row_positions:
            if len(index) != n_rows:
                raise HookError(f"intervention at {iv.hook}: {len(index)} per-row position lists for {n_rows} rows")
            size = sub.shape[axis]
            part = torch.zeros(n_rows, size, dtype=torch.bool, device=sub.device)
            flat_rows = [r for r, row in enumerate(index) for _ in row]
            flat_pos = [p for row in index for p in _checked(row, size, label, iv.hook)]
            if flat_pos:
                part[_long(flat_rows, sub.device), _long(flat_pos, sub.device)] = True
            view = [1] * sub.ndim
            view[0], view[axis] = n_rows, size
            part = part.view(view)
        else:
            part = _axis_mask(sub.shape, axis, _checked(index, sub.shape[axis], label, iv.hook), sub.device)
        mask = part if mask is None else mask & part
    return mask


def _value_for(sub: torch.Tensor, iv: Intervention, rows: list[int] | None, batch: int) -> torch.Tensor:
    """The intervention's value aligned with the selected rows `sub`."""
    value = iv.value.to(device=sub.device, dtype=sub.dtype)  # type: ignore[union-attr]
    if rows is not None and value.ndim == sub.ndim and value.shape[0] == batch and len(rows) != batch:
        value = value.index_select(0, _long(rows, sub.device))
    try:
        return torch.broadcast_to(value, sub.shape)
    except RuntimeError as err:
        raise HookError(
            f"value of shape {tuple(iv.value.shape)} does not broadcast to the activation at "  # type: ignore[union-attr]
            f"{iv.hook} of shape {tuple(sub.shape)} (rows selected: {sub.shape[0]})"
        ) from err


def _mapped(sub: torch.Tensor, iv: Intervention) -> torch.Tensor:
    """`iv.fn` of the selected rows, checked to keep the activation's shape (a function that
    changed it would break the module the activation flows into, far from the cause)."""
    new = iv.fn(sub)  # type: ignore[misc]
    if not isinstance(new, torch.Tensor) or new.shape != sub.shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise HookError(
            f"the 'map' function at {iv.hook} returned {got} for an activation of shape {tuple(sub.shape)}; "
            "it must return a tensor of the same shape"
        )
    return new.to(sub.dtype)


def _new_values(sub: torch.Tensor, whole: torch.Tensor, iv: Intervention, rows: list[int] | None) -> torch.Tensor:
    if iv.op == "map":
        return _mapped(sub, iv)
    if iv.op == "zero":
        return torch.zeros_like(sub)
    if iv.op == "scale":
        return sub * iv.factor
    if iv.op == "add":
        return sub + _value_for(sub, iv, rows, whole.shape[0])
    if iv.op == "project_out":
        value = _value_for(sub, iv, rows, whole.shape[0])
        unit = value / value.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(value.dtype).tiny)
        return sub - (sub * unit).sum(-1, keepdim=True) * unit
    if iv.op in ("replace", "resample") or iv.value is not None:
        return _value_for(sub, iv, rows, whole.shape[0])
    # mean over the batch rows `mean_over` (all rows by default)
    if iv.mean_over is None:
        source = whole
    else:
        over = _checked(iv.mean_over, whole.shape[0], "mean_over", iv.hook)
        source = whole.index_select(0, _long(over, whole.device))
    return source.mean(dim=0, keepdim=True).expand_as(sub)


def apply_interventions(x: torch.Tensor, interventions: Sequence[Intervention], site: HookSite) -> torch.Tensor:
    """The canonical activation after the interventions, applied in order (x is untouched).

    At most one copy of x is made, then each intervention reads and writes only the rows it
    selects. Indices are host-side ints, so nothing here waits for the device.
    """
    working: torch.Tensor | None = None
    for iv in interventions:
        current = x if working is None else working
        rows = None if iv.rows is None else _checked(iv.rows, x.shape[0], "rows", iv.hook)
        sub = current if rows is None else current.index_select(0, _long(rows, x.device))
        new = _new_values(sub, current, iv, rows)
        mask = _selection(sub, iv, site, sub.shape[0])
        if mask is not None:
            new = torch.where(mask, new, sub)
        if rows is None:
            working = new if new.shape == x.shape else new.expand_as(x).clone()
        else:
            if working is None:
                working = x.clone()
            working.index_copy_(0, _long(rows, x.device), new.to(working.dtype))
    return x if working is None else working


def apply_intervention(x: torch.Tensor, iv: Intervention, site: HookSite) -> torch.Tensor:
    """The canonical activation `x` after one intervention (a new tensor; x is untouched)."""
    return apply_interventions(x, [iv], site)


# --- one pass's plan --------------------------------------------------------------------
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


class PassState:
    """What one forward pass asked for, published to the listeners of its own thread only.

    `owner` is the HookedModel the pass belongs to (two wrappers of one model ignore each
    other's passes); `start_layer` makes blocks below it hand their input through unchanged
    and `start_resid` is what the start block reads instead (a sweep resuming from a stored
    residual stream); `parent` is the enclosing `model.hooks(...)` block, if any.
    """

    def __init__(
        self,
        owner: object,
        sites: dict[str, HookSite],
        plan: HookPlan,
        start_layer: int = 0,
        parent: PassState | None = None,
    ):
        self.owner = owner
        self.plan = plan
        self.start_layer = start_layer
        self.start_resid: torch.Tensor | None = None
        #: rows joining the pass at later layers ({layer: their resid_pre}), appended after the
        #: running rows, and the batch's full row count (see `HookedModel.forward`)
        self.joins: dict[int, torch.Tensor] = {}
        self.full_rows = 0
        self.cache = plan.cache
        self.values: dict[str, torch.Tensor] = {}  # what `requires` asked for, post-intervention
        # a pass inside `model.hooks(...)` also does what the enclosing block asked for (first),
        # records the enclosing captures into the enclosing cache, and counts as its firing
        self.fired: set[str] = parent.fired if parent is not None else set()
        for iv in plan.interventions:
            if iv.hook not in sites:
                raise HookError(unknown_hook_message(iv.hook, sites))
        for name in plan.capture:
            if name not in sites:
                raise HookError(unknown_hook_message(name, sites))
        self.own_names = [*plan.capture, *(iv.hook for iv in plan.interventions)]
        self.by_name: dict[str, list[Intervention]] = {}
        for iv in [*(parent.all_interventions if parent is not None else ()), *plan.interventions]:
            self.by_name.setdefault(iv.hook, []).append(iv)
        self.all_interventions = [iv for ivs in self.by_name.values() for iv in ivs]
        self.sinks: dict[str, list[tuple[ActivationCache, bool]]] = {
            name: list(targets) for name, targets in (parent.sinks.items() if parent is not None else ())
        }
        for name in plan.capture:
            self.sinks.setdefault(name, []).append((plan.cache, plan.detach))
        self.capture = set(self.sinks)
        self.required: set[str] = set()
        for name in [*self.by_name, *self.capture]:
            self._require(name, sites)
        self.active = self.capture | set(self.by_name) | self.required
        self.attention_layers = {sites[n].layer for n in self.active if sites[n].kind == "attention"}

    def _require(self, name: str, sites: dict[str, HookSite]) -> None:
        for dependency in sites[name].requires:
            if dependency not in self.required:
                self.required.add(dependency)
                self._require(dependency, sites)

    def process(self, name: str, site: HookSite, call: SiteCall) -> torch.Tensor | None:
        """Read, intervene, record; the replacement raw value, or None if nothing changed."""
        self.fired.add(name)
        canonical = site.read(call)
        interventions = self.by_name.get(name)
        if interventions:
            canonical = apply_interventions(canonical, interventions, site)
        keep_graph = False
        for cache, detach in self.sinks.get(name, ()):
            cache[name] = canonical.detach() if detach else canonical
            keep_graph = keep_graph or not detach
        if name in self.required:
            self.values[name] = canonical
        if interventions or (keep_graph and site.read is not _identity_read):
            # with gradients, the model must compute on the captured (reshaped) tensor itself,
            # or autograd.grad with respect to it finds it unused
            return site.write(call, canonical)
        return None

    def check_fired(self) -> None:
        """A hook point asked for but never reached in the pass is an error naming it."""
        missing = [n for n in self.own_names if n not in self.fired]
        if missing:
            raise HookError(
                f"hook point(s) {', '.join(dict.fromkeys(missing))} never fired in this pass (a skipped layer, a "
                "module this call does not run, or logits not computed); capture/intervene where the pass computes"
            )


#: the pass running in this thread / task (None outside interpsuite passes)
CURRENT_PASS: contextvars.ContextVar[PassState | None] = contextvars.ContextVar("interpsuite_pass", default=None)


def current_pass(owner: object) -> PassState | None:
    state = CURRENT_PASS.get()
    if state is None or state.owner is not owner:
        return None
    return state


# --- listeners installed once per wrapped model ---------------------------------------
def _first_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first_output(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (new, *output[1:])
    return new


def _run_members(state: PassState, members, raw: torch.Tensor, args: tuple, kwargs: dict):
    """Process the hook points at one module boundary in order; (final raw value, changed)."""
    changed = False
    for name, site in members:
        if name not in state.active or (site.layer is not None and site.layer < state.start_layer):
            continue
        new = state.process(name, site, SiteCall(raw, args, kwargs, state))
        if new is not None:
            raw, changed = new, True
    return raw, changed


def install_listeners(owner: object, sites: dict[str, HookSite]) -> list:
    """One forward (pre-)hook per module boundary that carries hook points; returns handles.

    Each listener looks up the pass of its own thread and does nothing without one, so the
    listeners can stay on the model for as long as it is wrapped.
    """
    groups: dict[tuple[int, str], tuple[nn.Module, list[tuple[str, HookSite]]]] = {}
    for name, site in sites.items():
        if site.kind == "attention" or site.module is None:
            continue
        key = (id(site.module), site.kind)
        groups.setdefault(key, (site.module, []))[1].append((name, site))
    handles = []
    for (_, kind), (module, members) in groups.items():
        members = tuple(members)
        if kind == "input":

            def pre_hook(module, args, kwargs, members=members):
                state = current_pass(owner)
                if state is None:
                    return None
                first = args[0] if args else kwargs.get("hidden_states")
                raw, changed = _run_members(state, members, first, args, kwargs)
                if not changed:
                    return None
                if args:
                    return (raw, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": raw}

            pre_hook.interpsuite = True
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:

            def out_hook(module, args, kwargs, output, members=members):
                state = current_pass(owner)
                if state is None:
                    return None
                raw, changed = _run_members(state, members, _first_output(output), args, kwargs)
                return _replace_first_output(output, raw) if changed else None

            out_hook.interpsuite = True
            handles.append(module.register_forward_hook(out_hook, with_kwargs=True))
    return handles


def unknown_hook_message(name: str, sites: dict[str, HookSite]) -> str:
    layer, site = parse_hook_name(name)
    layers = [parse_hook_name(s)[0] for s in sites]
    n_layers = 1 + max((x for x in layers if x is not None), default=-1)
    block_sites = sorted(
        {parse_hook_name(s)[1] for s in sites if parse_hook_name(s)[0] is not None},
        key=lambda s: BLOCK_HOOKS.index(s) if s in BLOCK_HOOKS else 99,
    )
    if layer is not None and site in block_sites:
        return f"hook point {name!r}: layer {layer} out of range (the model has layers 0..{n_layers - 1})"
    global_sites = [s for s in GLOBAL_HOOKS if s in sites]
    available = ", ".join([*global_sites, *(f"blocks.{{L}}.{s}" for s in block_sites)])
    return f"unknown hook point {name!r} for this model; its hook points are: {available}"


def count_hooks(module: nn.Module) -> int:
    """How many interpsuite listeners are installed anywhere in a module tree.

    A wrapped model carries its listeners until `HookedModel.close()`; after it, 0. Hooks
    transformers or accelerate install for themselves do not count.
    """
    return sum(
        1
        for m in module.modules()
        for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
        if getattr(hook, "interpsuite", False)
    )
