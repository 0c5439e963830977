"""The batched sweep engine: N intervention sets on the same inputs as a few forward passes.

Every analyzer that runs many ablations or patches goes through `sweep`; so does causal
tracing. A pass starts where its items first touch the model, from a clean (or `base`)
reference run: nothing before that point can differ, so recomputing it would be waste.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import torch

from ..hooks import Intervention, hook_layer
from .hooked import TokenBatch

SweepMetric = Callable[[torch.Tensor, TokenBatch], torch.Tensor]


def sweep(
    model,
    batch: TokenBatch,
    items: Sequence[Sequence[Intervention]],
    metric: SweepMetric,
    *,
    batch_size: int = 32,
    logits_to_keep: int | torch.Tensor = 0,
    reuse_prefix: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> torch.Tensor:
    """Run N intervention sets on the same inputs as batched passes: [N, batch.size].

    Item i's interventions apply to its own copy of `batch` inside a pass of up to
    `batch_size` rows; their `rows` refer to rows of `batch`. With `reuse_prefix`, a pass
    starts where its items first touch the model, from the clean run (exact, since nothing
    before that point can change): at the earliest layer (from the clean residual stream),
    and in causal LMs also at the earliest position (attending to the clean keys and
    values of the positions before it). Items are grouped into passes that share a late
    start: by layer, and by (layer block, position block) when positions differ.
    `metric(output, repeated_batch)` sees exactly the `logits_to_keep` positions it asked for.
    """
    n_items, base = len(items), batch.size
    per_pass = max(1, batch_size // base)
    width = batch.input_ids.shape[1]
    first_layer = [min(_first_layer(model, ivs), model.info.n_layers - 1) for ivs in items]
    max_position = _max_start_position(model, batch, logits_to_keep) if reuse_prefix else 0
    first_position = [min(_first_position(model, ivs, width), max_position) for ivs in items]
    chunks = _group_items(first_layer, first_position, per_pass)
    starts = [(min(first_layer[i] for i in c), min(first_position[i] for i in c)) for c in chunks]
    if not reuse_prefix:
        starts = [(0, 0)] * len(chunks)
    clean_resid, prefix = _clean_prefix(model, batch, starts)
    results = torch.empty(n_items, base, device=model.device)
    for chunk, (layer, position) in zip(progress(chunks) if progress else chunks, starts, strict=True):
        k = len(chunk)
        repeated = batch.repeat(k)
        interventions = [iv for copy, item in enumerate(chunk) for iv in _rows_of_copy(items[item], copy, base)]
        if layer == 0 and position == 0:
            out = model.forward(repeated, interventions=interventions, logits_to_keep=logits_to_keep).output
        else:
            resid = clean_resid[layer][:, position:].repeat(k, 1, 1)
            out = model.forward(
                repeated,
                interventions=[_shift_positions(model, iv, position, width) for iv in interventions],
                logits_to_keep=_shift_keep(logits_to_keep, position),
                start_layer=layer,
                start_resid=resid,
                prefix=prefix.truncated(position) if position > 0 else None,
            ).output
        values = metric(out, repeated)
        results[torch.as_tensor(chunk, device=model.device)] = values.reshape(k, base).to(results.dtype)
    return results

def _first_layer(model, interventions: Sequence[Intervention]) -> int:
    return min((hook_layer(iv.hook) for iv in interventions), default=model.info.n_layers)

def _first_position(model, interventions: Sequence[Intervention], width: int) -> int:
    """The earliest position an item can change (0 where it may touch every position)."""
    if not interventions:
        return width  # changes nothing: may start as late as any pass
    if not model.info.is_causal:
        return 0
    first = width
    for iv in interventions:
        site = model.adapter.sites.get(iv.hook)
        if iv.positions is None or site is None or site.pos_axis != 1 or iv.hook.endswith("attn.pattern"):
            return 0
        positions = [p + width if p < 0 else p for p in _index_list(iv.positions)]
        first = min(first, min(positions, default=width))
    return first

def _max_start_position(model, batch: TokenBatch, logits_to_keep: int | torch.Tensor) -> int:
    """A pass may skip positions only while every row's last token and every kept logit lie after."""
    if not model.info.is_causal:
        return 0
    width = batch.input_ids.shape[1]
    if isinstance(logits_to_keep, torch.Tensor):
        kept = int(logits_to_keep.min()) if logits_to_keep.numel() else 0
    elif logits_to_keep > 0:
        kept = width - logits_to_keep
    else:
        return 0
    return max(0, min(kept, int(batch.last_index.min())))

def _clean_prefix(model, batch: TokenBatch, starts: list[tuple[int, int]]):
    """Clean resid_pre at every start layer, and clean keys/values where passes skip positions."""
    layers = sorted({layer for layer, position in starts if layer > 0 or position > 0})
    longest = max((position for _, position in starts), default=0)
    if not layers:
        return {}, None
    names = [f"blocks.{layer}.resid_pre" for layer in layers]
    out, prefix = model.reference_run(batch, names, keep_prefix=longest > 0)
    clean_resid = {layer: out.cache[f"blocks.{layer}.resid_pre"] for layer in layers}
    if prefix is not None:
        prefix = prefix.truncated(longest)
    return clean_resid, prefix

def _shift_positions(model, iv: Intervention, start: int, width: int) -> Intervention:
    """The intervention as seen by a pass that computes positions start.. only."""
    if start == 0:
        return iv
    positions = [p + width if p < 0 else p for p in _index_list(iv.positions)]
    value = iv.value
    if value is not None and value.ndim >= 2 and value.shape[1] == width:
        value = value[:, start:]
    return dataclasses.replace(iv, positions=[p - start for p in positions], value=value)


def _index_list(index) -> list[int]:
    return torch.as_tensor(index).flatten().tolist()


def _rows_of_copy(interventions: Sequence[Intervention], copy: int, base: int) -> list[Intervention]:
    """An item's interventions moved to its copy of the batch (rows copy*base .. copy*base+base-1)."""
    offset = copy * base
    moved = []
    for iv in interventions:
        rows = range(base) if iv.rows is None else _index_list(iv.rows)
        own = list(range(offset, offset + base))
        mean_over = own if iv.mean_over is None else [offset + r for r in _index_list(iv.mean_over)]
        moved.append(iv.with_rows([offset + r for r in rows], mean_over))
    return moved


def _shift_keep(logits_to_keep: int | torch.Tensor, start: int) -> int | torch.Tensor:
    return logits_to_keep - start if isinstance(logits_to_keep, torch.Tensor) else logits_to_keep


def _group_items(layers: list[int], positions: list[int], per_pass: int) -> list[list[int]]:
    """Passes of up to `per_pass` items whose starts (layer, position) lie close together.

    A pass costs about (layers after its start) x (positions after its start) per row, paid
    for its earliest item; tiles of the (layer, position) plane shaped like the spread of the
    items keep that waste small. With one start position this is simply sorting by layer.
    """
    layer_rank = {value: rank for rank, value in enumerate(sorted(set(layers)))}
    position_rank = {value: rank for rank, value in enumerate(sorted(set(positions)))}
    layer_block = max(1, round(math.sqrt(per_pass * len(layer_rank) / max(1, len(position_rank)))))
    position_block = max(1, per_pass // layer_block)
    tiles: dict[tuple[int, int], list[int]] = {}
    for i in sorted(range(len(layers)), key=lambda i: (layers[i], positions[i])):
        key = (layer_rank[layers[i]] // layer_block, position_rank[positions[i]] // position_block)
        tiles.setdefault(key, []).append(i)
    chunks = []
    for key in sorted(tiles):
        members = tiles[key]
        chunks.extend(members[j : j + per_pass] for j in range(0, len(members), per_pass))
    return chunks


