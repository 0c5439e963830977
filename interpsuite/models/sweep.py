"""The batched sweep engine: N intervention sets on the same inputs as a few forward passes.

Every analyzer that runs many ablations, patches or restorations goes through `sweep`
(activation patching, head ablation, circuit discovery, causal tracing, ...). A pass starts
where its items first touch the model, from a reference run of the inputs (with the `base`
interventions every item shares, such as causal tracing's noise): nothing before that point
can differ from the reference, so recomputing it would be waste.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..hooks import Intervention, hook_layer, parse_hook_name, position_lists
from .hooked import PrefixCache, TokenBatch
from .info import ModelInfo

#: metric(output of a pass, the repeated batch) -> [rows] or [rows, m]
SweepMetric = Callable[[torch.Tensor, TokenBatch], torch.Tensor]
#: planning constants in parameter-tokens (one token through one parameter), measured on CPU for
#: SmolLM2 (3.5M parameters a layer; ~37 us per token and layer): a pass costs ~1.2 ms per layer it
#: runs (~33 tokens' worth) and ~9 ms on top (~240 token-layers), whatever its rows. Small models
#: pay the same fixed costs for far less compute, so for them fewer, fuller passes win.
LAYER_OVERHEAD_PARAMS = 117_000_000
PASS_OVERHEAD_PARAMS = 850_000_000
#: block sizes tried by the planner: every size up to this, then a geometric series (x1.25)
_DENSE_BLOCK_SIZES = 16

Start = tuple[int, int]  # (layer, position) a pass or an item starts at


def sweep(
    model,
    batch: TokenBatch,
    items: Sequence[Sequence[Intervention]],
    metric: SweepMetric,
    *,
    base: Sequence[Intervention] = (),
    batch_size: int = 32,
    logits_to_keep: int | torch.Tensor = 0,
    reuse_prefix: bool = True,
    stage_rows: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> torch.Tensor:
    """Run N intervention sets on the same inputs as batched passes: [N, B] (or [N, B, m]).

    Item i's interventions apply to its own copy of `batch` inside a pass of up to
    `batch_size` rows; their `rows` refer to rows of `batch`. `base` interventions apply to
    every row of every item, before the item's own (item i computes exactly
    `model.forward(batch, interventions=[*base, *items[i]])`; an empty item is the base-only
    run). `metric(output, repeated_batch)` returns one value per row ([k*B]) or m values
    ([k*B, m]) and sees exactly the `logits_to_keep` positions it asked for.

    With `reuse_prefix`, a pass starts where its items first touch the model, from the
    reference run (the inputs with `base`): at the earliest layer (fed the reference residual
    stream), and in causal LMs also at the earliest position (attending to the reference keys
    and values of the positions before it). Each item's rows join the pass at the item's own
    first layer (the pass's batch grows as it goes deeper), so no row computes a block
    before its item can change anything. This is exact, since nothing before that point
    can differ; base interventions computed before the start are already in what the pass
    is fed, so the base never forces a pass to start early. Items are grouped into passes by
    `plan_passes`. `reuse_prefix=False` runs every pass in full (the reference path);
    `stage_rows=False` starts every row of a pass at the pass's first layer (what the engine
    did before rows joined at their own layer; benchmarks measure the difference with it).
    """
    n_items, rows_per_item = len(items), batch.size
    items_per_pass = max(1, batch_size // rows_per_item)
    width = int(batch.input_ids.shape[1])
    n_layers = model.info.n_layers
    if n_items == 0:
        return torch.empty(0, rows_per_item, device=model.device)
    if reuse_prefix:
        last_start = _latest_start_position(model, batch, logits_to_keep, base)
        starts = [
            (min(first_layer(ivs, n_layers), n_layers - 1), min(first_position(model, ivs, width), last_start))
            for ivs in items
        ]
    else:
        starts = [(0, 0)] * n_items
    plan = plan_sweep(
        model.info, starts, items_per_pass, rows_per_item, width, reuse_prefix=reuse_prefix, stage_rows=stage_rows
    )
    longest = max((p.position for p in plan), default=0)
    resid, prefix = _reference(model, batch, base, reference_layers(plan), longest)
    results: torch.Tensor | None = None
    for planned in progress(plan) if progress else plan:
        chunk, layer, position, copy_layers = planned.items, planned.layer, planned.position, planned.entries
        copies = len(chunk)
        repeated = batch.repeat(copies)
        item_ivs = _per_copy(model, [items[i] for i in chunk], rows_per_item)
        if not planned.from_reference:
            base_ivs = _per_copy(model, [base] * copies, rows_per_item)
            out = model.forward(repeated, interventions=[*base_ivs, *item_ivs], logits_to_keep=logits_to_keep).output
        else:
            pending = [[iv for iv in base if not computed_before(iv.hook, at)] for at in copy_layers]
            base_ivs = _per_copy(model, pending, rows_per_item)
            shifted = [s for iv in (*base_ivs, *item_ivs) if (s := shift_positions(model, iv, position, width))]
            joining = planned.joining
            out = model.forward(
                repeated,
                interventions=shifted,
                logits_to_keep=_shift_keep(logits_to_keep, position),
                start_layer=layer,
                start_resid=resid[layer][:, position:].repeat(joining[layer], 1, 1),
                joins={at: resid[at][:, position:].repeat(n, 1, 1) for at, n in joining.items() if at != layer},
                prefix=prefix.truncated(position) if position > 0 and prefix is not None else None,
            ).output
        values = metric(out, repeated)
        if values.shape[0] != copies * rows_per_item:
            raise ValueError(
                f"sweep metric returned {tuple(values.shape)} for a pass of {copies * rows_per_item} rows; return one "
                "value per row ([rows]) or m values per row ([rows, m])"
            )
        values = values.reshape(copies, rows_per_item, *values.shape[1:])
        if results is None:
            results = torch.empty(n_items, *values.shape[1:], dtype=values.dtype, device=values.device)
        results[torch.as_tensor(chunk, device=results.device)] = values.to(results.dtype)
    assert results is not None
    return results


# --- where an item can first change anything -----------------------------------------------
def first_layer(interventions: Sequence[Intervention], n_layers: int) -> int:
    """The first block an item's interventions can change (n_layers: none, an empty item)."""
    return min((hook_layer(iv.hook) for iv in interventions), default=n_layers)


def first_position(model, interventions: Sequence[Intervention], width: int) -> int:
    """The earliest position an item can change: `width` for an empty item, 0 where it may
    touch every position (encoders, position-less or non-shiftable interventions)."""
    if not interventions:
        return width  # changes nothing: may start as late as any pass
    if not model.info.is_causal:
        return 0
    first = width
    for iv in interventions:
        if iv.positions is None or not _shiftable(model, iv):
            return 0
        touched = [p for row in position_lists(iv.positions) for p in _non_negative(row, width)]
        first = min(first, min(touched, default=width))
    return first


def _shiftable(model, iv: Intervention) -> bool:
    """Whether a pass computing positions p.. only can apply the intervention (position axis 1:
    attention patterns and scores index query and key positions and always see every position)."""
    site = model.adapter.sites.get(iv.hook)
    return site is not None and site.pos_axis == 1


def _latest_start_position(
    model, batch: TokenBatch, logits_to_keep: int | torch.Tensor, base: Sequence[Intervention]
) -> int:
    """A pass may skip positions only while every row's last token and every kept logit lie
    after, and only where every base intervention can be shifted."""
    if not model.info.is_causal or not all(_shiftable(model, iv) for iv in base):
        return 0
    width = int(batch.input_ids.shape[1])
    if isinstance(logits_to_keep, torch.Tensor):
        kept = int(logits_to_keep.min()) if logits_to_keep.numel() else 0
    elif logits_to_keep > 0:
        kept = width - logits_to_keep
    else:
        return 0
    return max(0, min(kept, int(batch.last_index.min())))


def start_point(layer: int) -> str:
    """The hook point whose reference value a pass starting at `layer` is fed: the first one
    an item starting there can touch (`embed` comes before `blocks.0.resid_pre`)."""
    return "embed" if layer == 0 else f"blocks.{layer}.resid_pre"


def computed_before(hook: str, layer: int) -> bool:
    """Whether a base intervention is already part of the reference value a pass starting at
    `layer` is fed (a capture sees its own hook point's interventions), so the pass must not
    apply it again. Base interventions come before an item's at the same hook point."""
    if hook == "embed":
        return True
    hook_at, site = parse_hook_name(hook)
    if hook_at is None:
        return False
    return hook_at < layer or (hook_at == layer and layer > 0 and site == "resid_pre")


# --- positions: flat or per row ------------------------------------------------------------
def _non_negative(positions: list[int], width: int) -> list[int]:
    return [p + width if p < 0 else p for p in positions]


def shift_positions(model, iv: Intervention, start: int, width: int) -> Intervention | None:
    """The intervention as seen by a pass that computes positions start.. only.

    Positions move down by `start` (in the flat and the per-row form); positions before
    `start` are dropped (the pass is fed their reference states, which include base
    interventions); None if nothing is left. A `value` spanning every position is cut to
    the computed span.
    """
    if start == 0:
        return iv
    positions = iv.positions
    if positions is not None:
        lists = [[p - start for p in _non_negative(row, width) if p >= start] for row in position_lists(positions)]
        if iv.per_row_positions:
            if not any(lists):
                return None
            positions = lists
        else:
            if not lists[0]:
                return None
            positions = lists[0]
    return dataclasses.replace(iv, positions=positions, value=_value_from(model, iv, start, width))


def _value_from(model, iv: Intervention, start: int, width: int) -> torch.Tensor | None:
    """`iv.value` from position `start` on, where it has a position axis spanning the input.

    The value broadcasts against the canonical activation, so its position axis is the
    activation's counted from the right; a value without one (or of size 1 there) applies
    to every position unchanged."""
    value = iv.value
    site = model.adapter.sites.get(iv.hook)
    if value is None or site is None or site.pos_axis is None:
        return value
    axis = value.ndim - (site.ndim - site.pos_axis)
    if axis < 0 or value.shape[axis] != width:
        return value
    return value.narrow(axis, start, width - start)


def _shift_keep(logits_to_keep: int | torch.Tensor, start: int) -> int | torch.Tensor:
    return logits_to_keep - start if isinstance(logits_to_keep, torch.Tensor) else logits_to_keep


# --- items onto the rows of a pass -----------------------------------------------------------
def _per_copy(model, per_copy: Sequence[Sequence[Intervention]], rows_per_item: int) -> list[Intervention]:
    """Copy j's interventions moved to its rows (j*B .. j*B+B-1) of a pass over the repeated
    batch, merged across copies where they are the same intervention (same hook, op, value
    object, heads, units and positions, and a value that does not depend on the row): one
    intervention covering many rows applies much faster than one per row. Per row, the
    interventions at a hook keep their order (groups are ordered by their rank within an
    item's interventions at that hook)."""
    groups: dict[tuple, tuple[int, Intervention, list[int]]] = {}
    singles: list[tuple[int, Intervention]] = []
    for copy, interventions in enumerate(per_copy):
        offset = copy * rows_per_item
        ranks: dict[str, int] = {}
        for iv in interventions:
            rank = ranks[iv.hook] = ranks.get(iv.hook, -1) + 1
            rows = list(range(rows_per_item)) if iv.rows is None else list(iv.rows)
            moved = [offset + r for r in rows]
            key = _merge_key(model, iv)
            if key is None:
                own = list(range(offset, offset + rows_per_item))
                mean_over = own if iv.mean_over is None else [offset + r for r in iv.mean_over]
                value = _value_at_rows(model, iv, rows, rows_per_item)
                singles.append((rank, dataclasses.replace(iv, rows=moved, mean_over=mean_over, value=value)))
            else:
                groups.setdefault((rank, *key), (rank, iv, []))[2].extend(moved)
    total = len(per_copy) * rows_per_item
    merged = [(rank, iv.with_rows(None if rows == list(range(total)) else rows)) for rank, iv, rows in groups.values()]
    ordered = sorted([*merged, *singles], key=lambda pair: pair[0])
    return [iv for _, iv in ordered]


def _value_at_rows(model, iv: Intervention, rows: list[int], rows_per_item: int) -> torch.Tensor | None:
    """A value holding every row of the item's batch, taken at the intervention's `rows`:
    in a pass over k copies the batch axis no longer matches, but one entry per selected
    row still does."""
    value = iv.value
    site = model.adapter.sites.get(iv.hook)
    if value is None or site is None or value.ndim < site.ndim:
        return value
    if value.shape[0] == rows_per_item != len(rows):
        return value.index_select(0, torch.as_tensor(rows, device=value.device))
    return value


def _merge_key(model, iv: Intervention) -> tuple | None:
    """What makes two copies of an intervention one intervention over their rows (None: it
    depends on its copy's rows: a batch mean, per-row positions or a value with a batch axis)."""
    if iv.op == "mean" and iv.value is None:
        return None
    if iv.per_row_positions:
        return None
    value = iv.value
    site = model.adapter.sites.get(iv.hook)
    if value is not None and (site is None or value.ndim >= site.ndim) and value.shape[0] != 1:
        return None  # one entry per row of the batch (or of `rows`)
    positions = None if iv.positions is None else tuple(position_lists(iv.positions)[0])
    return (iv.hook, iv.op, id(value), id(iv.fn), iv.factor, positions, iv.heads, iv.units)


# --- the reference run -----------------------------------------------------------------------
def _reference(
    model, batch: TokenBatch, base: Sequence[Intervention], layers: Sequence[int], longest: int
) -> tuple[dict[int, torch.Tensor], PrefixCache | None]:
    """The reference run (inputs with `base`): the residual stream entering every layer rows
    start at (`start_point`), and the keys/values of the first `longest` positions."""
    if not layers:
        return {}, None
    names = [start_point(layer) for layer in layers]
    out, prefix = model.reference_run(batch, names, interventions=base, keep_prefix=longest > 0)
    resid = {layer: out.cache[start_point(layer)] for layer in layers}
    if prefix is not None:
        prefix = prefix.truncated(longest)
    return resid, prefix


# --- grouping items into passes --------------------------------------------------------------
@dataclass(frozen=True)
class PlannedPass:
    """One pass of a sweep: its items (in the order their rows join), the layer and position it
    starts at, the layer each item's rows join at, and whether it is fed from the reference run
    (False: a pass from the token ids). The sweep runs these; the estimate counts them."""

    items: list[int]
    layer: int
    position: int
    entries: list[int]
    from_reference: bool

    @property
    def joining(self) -> dict[int, int]:
        """How many items' rows join at each layer (the first: the pass's start)."""
        return dict(collections.Counter(self.entries))


def reference_layers(plan: Sequence[PlannedPass]) -> list[int]:
    """The layers whose reference resid_pre the passes of `plan` are fed."""
    return sorted({layer for p in plan if p.from_reference for layer in p.entries})


def plan_sweep(
    info: ModelInfo,
    starts: Sequence[Start],
    items_per_pass: int,
    rows_per_item: int,
    width: int,
    *,
    reuse_prefix: bool = True,
    stage_rows: bool = True,
) -> list[PlannedPass]:
    """The passes of a sweep whose items start at `starts` (all (0, 0) without `reuse_prefix`)."""
    staged = reuse_prefix and stage_rows
    chunks = plan_passes(starts, items_per_pass, rows_per_item, info.n_layers, width, PassCost.of(info), staged=staged)
    plan = []
    for chunk in chunks:
        ordered = sorted(chunk, key=lambda i: starts[i][0])
        layer, position = starts[ordered[0]][0], min(starts[i][1] for i in ordered)
        entries = [starts[i][0] if staged else layer for i in ordered]
        from_reference = reuse_prefix and ((layer, position) != (0, 0) or entries[-1] > 0)
        plan.append(PlannedPass(ordered, layer, position, entries, from_reference))
    return plan


@dataclass(frozen=True)
class PassCost:
    """The planner's cost model of one pass, in token-layers of the model's compute: a pass
    starting at layer L over positions p.. costs (n_layers - L) x (rows x (width - p) + per_layer)
    + per_pass."""

    per_layer: float
    per_pass: float

    @classmethod
    def of(cls, info: ModelInfo) -> PassCost:
        attention = 2 * info.d_model * info.n_heads * info.d_head + 2 * info.d_model * info.n_kv_heads * info.d_head
        params = attention + 3 * info.d_model * info.d_mlp
        return cls(max(1.0, LAYER_OVERHEAD_PARAMS / params), max(1.0, PASS_OVERHEAD_PARAMS / params))


def plan_passes(
    starts: Sequence[Start],
    items_per_pass: int,
    rows_per_item: int,
    n_layers: int,
    width: int,
    cost: PassCost,
    *,
    staged: bool = False,
) -> list[list[int]]:
    """Group items into passes of up to `items_per_pass`, by estimated cost.

    A pass starting at (layer L, position p) costs about (n_layers - L) x (rows x (width - p)
    + cost.per_layer) + cost.per_pass token-layers: every row is computed from the earliest
    item's start, and running a layer, or a pass, at all has a fixed cost. With `staged`, a
    row joins the pass at its own item's layer instead (`HookedModel.forward(joins=...)`), so
    item i costs (n_layers - L_i) x rows x (width - p) and only positions and the fixed costs
    make grouping matter. Items are tiled
    into blocks of (distinct) layers x positions, each tile sorted by (layer, position) and
    cut into passes; the tiling with the smallest estimated cost wins. Tiles shaped like the
    spread of the starts keep the waste of a pass on its later items small; larger tiles mean
    fewer, fuller passes. (Measured against a fixed rule of thumb for the tile shape, this is
    as fast on patching grids and faster on causal traces, whose starts spread unevenly.)
    """
    n_items = len(starts)
    if n_items == 0:
        return []
    layer = np.array([s[0] for s in starts], dtype=np.int64)
    position = np.array([s[1] for s in starts], dtype=np.int64)
    layer_rank = np.unique(layer, return_inverse=True)[1].reshape(-1)
    position_rank = np.unique(position, return_inverse=True)[1].reshape(-1)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for layer_block in _block_sizes(int(layer_rank.max()) + 1):
        for position_block in _block_sizes(int(position_rank.max()) + 1):
            tile = (layer_rank // layer_block) * n_items + position_rank // position_block
            order = np.lexsort((position, layer, tile))
            sorted_tile = tile[order]
            new_tile = np.empty(n_items, dtype=bool)
            new_tile[0], new_tile[1:] = True, sorted_tile[1:] != sorted_tile[:-1]
            tile_begin = np.maximum.accumulate(np.where(new_tile, np.arange(n_items), 0))
            bounds = np.flatnonzero((np.arange(n_items) - tile_begin) % items_per_pass == 0)
            sizes = np.diff(np.append(bounds, n_items))
            first_layers = np.minimum.reduceat(layer[order], bounds)
            first_positions = np.minimum.reduceat(position[order], bounds)
            layers = n_layers - first_layers
            if staged:
                item_layers = np.add.reduceat(n_layers - layer[order], bounds)
                per_pass = item_layers * rows_per_item * (width - first_positions) + layers * cost.per_layer
                compute = float(np.sum(per_pass))
            else:
                rows = sizes * rows_per_item
                compute = float(np.sum(layers * (rows * (width - first_positions) + cost.per_layer)))
            total = compute + cost.per_pass * len(sizes)
            if best is None or total < best[0]:
                best = (total, order, bounds)
    assert best is not None
    _, order, bounds = best
    return [chunk.tolist() for chunk in np.split(order, bounds[1:])]


def _block_sizes(n: int) -> list[int]:
    """Tile sizes tried along an axis with n distinct values: all small ones, then ~x1.25 steps."""
    sizes = set(range(1, min(n, _DENSE_BLOCK_SIZES) + 1))
    size = _DENSE_BLOCK_SIZES
    while size < n:
        size = min(n, math.ceil(size * 1.25))
        sizes.add(size)
    return sorted(sizes)
