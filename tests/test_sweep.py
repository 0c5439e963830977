"""The batched sweep engine (`interpsuite.models.sweep`): exact properties on tiny models.

Every item of a sweep must compute exactly what one forward pass with the base and the
item's interventions computes, however the engine groups items, wherever passes start
(late layers, late positions from the reference run's keys and values) and whatever the
base holds. The reference is always that loop of single passes.
"""

from __future__ import annotations

import math

import pytest
import torch

from interpsuite.errors import HookError
from interpsuite.hooks import Intervention, hook_layer, per_row_positions, position_lists
from interpsuite.models.sweep import (
    PassCost,
    computed_before,
    first_position,
    plan_passes,
    shift_positions,
)

TEXTS = ["The quick brown fox jumps over", "Paris is the capital of France.", "So, Bob is in the"]
TOLERANCE = 1e-5
COST = PassCost(per_layer=33.0, per_pass=240.0)


def keep_argument(batch, keep):
    """(logits_to_keep, each row's column in the kept logits)."""
    if keep == "last":
        return batch.last_positions()
    if keep == 1:
        return 1, torch.zeros(batch.size, dtype=torch.long)
    return 0, batch.last_index


def log_probs(model, column):
    """A multi-value metric: log p(tokens 0..3) at each row's last kept position ([rows, 4]);
    for encoders the first 4 entries of the last real token's hidden state."""

    def metric(out, repeated):
        copies = out.shape[0] // column.shape[0]
        picked = out[torch.arange(out.shape[0]), column.repeat(copies).to(out.device)].double()
        if model.info.is_causal:
            picked = torch.log_softmax(picked, dim=-1)
        return picked[:, :4]

    return metric


def looped(model, batch, items, metric, base, keep):
    """The reference: one forward pass per item, base first."""
    values = []
    with torch.no_grad():
        for item in items:
            out = model.forward(batch, interventions=[*base, *item], logits_to_keep=keep).output
            values.append(metric(out, batch))
    return torch.stack(values)


def other_activations(model, batch):
    """Random activations to write in (seeded), keyed by hook point."""
    names = [f"blocks.{L}.{s}" for L in range(model.info.n_layers) for s in ("resid_pre", "resid_post", "mlp.out")]
    with torch.no_grad():
        cache = model.forward(batch, capture=names).cache
    generator = torch.Generator().manual_seed(0)
    return {k: v + torch.randn(v.shape, generator=generator) for k, v in cache.items()}


def varied_items(model, batch) -> list[list[Intervention]]:
    """Items at every layer and many positions: values with and without a batch axis, heads,
    units, batch means, two interventions at one hook (order matters), negative positions,
    attention patterns (never position-shifted), a row subset, and the empty item."""
    other = other_activations(model, batch)
    width = batch.input_ids.shape[1]
    items: list[list[Intervention]] = [[]]
    for layer in range(model.info.n_layers):
        at = f"blocks.{layer}."
        resid_pre, resid_post, mlp_out = (other[at + s] for s in ("resid_pre", "resid_post", "mlp.out"))
        items += [
            [Intervention(at + "resid_pre", "replace", value=resid_pre[0], positions=[p])]  # no batch axis
            for p in (0, 3, 9, width - 2)
        ]
        items += [[Intervention(at + "resid_post", "add", value=resid_post, positions=[p, p + 2])] for p in (5, 12)]
        items += [[Intervention(at + "attn.z", "zero", heads=[h], positions=[8])] for h in range(2)]
        items += [
            [Intervention(at + "mlp.post", "scale", factor=0.3, units=[1, 5])],
            [Intervention(at + "attn.z", "mean", heads=[1], positions=[10, 11])],
            [
                Intervention(at + "mlp.out", "replace", value=mlp_out, positions=[-1, 14]),
                Intervention(at + "mlp.out", "scale", factor=-2.0, positions=[14]),
            ],
            [Intervention(at + "attn.pattern", "scale", factor=0.5, heads=[0])],
            [Intervention(at + "resid_pre", "zero", rows=[1], positions=[6])],
        ]
    noise = torch.randn(1, width, model.info.d_model, generator=torch.Generator().manual_seed(1))
    items += [[Intervention("embed", "add", value=noise, positions=[4])]]
    return items


def base_interventions(model, batch, kind: str) -> list[Intervention]:
    """Base sets: none; embedding noise on a few positions (causal tracing); interventions at
    several layers (some before, some after where passes start); a non-shiftable one."""
    width, d_model = batch.input_ids.shape[1], model.info.d_model
    generator = torch.Generator().manual_seed(2)
    noise = torch.zeros(1, width, d_model)
    noise[0, 2:5] = torch.randn(3, d_model, generator=generator)
    embed_noise = Intervention("embed", "add", value=noise, positions=[2, 3, 4])
    if kind == "none":
        return []
    if kind == "noise":
        return [embed_noise]
    if kind == "layers":
        last = model.info.n_layers - 1
        return [
            embed_noise,
            Intervention("blocks.0.mlp.out", "scale", factor=0.5),
            Intervention(
                f"blocks.{last}.resid_pre",
                "add",
                value=torch.randn(width, d_model, generator=generator),
                positions=[5, 13],
            ),
            Intervention(f"blocks.{last}.attn.z", "mean", heads=[2]),
            Intervention(f"blocks.{last}.resid_post", "zero", rows=[0], positions=[3]),
        ]
    if kind == "pattern":
        return [embed_noise, Intervention(f"blocks.{model.info.n_layers - 1}.attn.pattern", "scale", factor=0.7)]
    raise ValueError(kind)


# --- sweep == one pass per item ------------------------------------------------------------------
@pytest.mark.parametrize("base_kind", ["none", "noise", "layers", "pattern"])
def test_sweep_with_base_equals_one_pass_per_item(tiny_model, base_kind):
    model = tiny_model
    batch = model.tokenize(TEXTS)
    items = varied_items(model, batch)
    base = base_interventions(model, batch, base_kind)
    for keep in (0, 1, "last") if model.info.is_causal else (0,):
        logits_to_keep, column = keep_argument(batch, keep)
        metric = log_probs(model, column)
        expected = looped(model, batch, items, metric, base, logits_to_keep)
        for reuse, stage in ((True, True), (True, False), (False, True)):
            with torch.no_grad():
                swept = model.sweep(
                    batch,
                    items,
                    metric,
                    base=base,
                    batch_size=7,
                    logits_to_keep=logits_to_keep,
                    reuse_prefix=reuse,
                    stage_rows=stage,
                )
            assert swept.shape == (len(items), batch.size, 4)
            message = f"keep={keep} reuse={reuse} stage={stage}"
            torch.testing.assert_close(swept, expected, atol=TOLERANCE, rtol=0, msg=message)
    assert model.hooks_left() == 0


def test_multi_value_metric_equals_single_value_metrics(tiny_models):
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    items = varied_items(model, batch)
    base = base_interventions(model, batch, "layers")
    keep, column = keep_argument(batch, "last")
    multi = log_probs(model, column)
    with torch.no_grad():
        together = model.sweep(batch, items, multi, base=base, batch_size=9, logits_to_keep=keep)
        for j in range(4):
            column_j = lambda out, rows, j=j: multi(out, rows)[:, j]  # noqa: E731
            single = model.sweep(batch, items, column_j, base=base, batch_size=9, logits_to_keep=keep)
            assert single.shape == (len(items), batch.size)
            torch.testing.assert_close(together[..., j], single, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("base_kind", ["none", "noise", "layers"])
def test_empty_item_is_the_base_only_run(tiny_model, base_kind):
    model = tiny_model
    batch = model.tokenize(TEXTS)
    base = base_interventions(model, batch, base_kind)
    keep, column = keep_argument(batch, "last" if model.info.is_causal else 0)
    metric = log_probs(model, column)
    with torch.no_grad():
        expected = metric(model.forward(batch, interventions=base, logits_to_keep=keep).output, batch)
        for reuse in (True, False):
            swept = model.sweep(batch, [[], []], metric, base=base, logits_to_keep=keep, reuse_prefix=reuse)
            torch.testing.assert_close(swept[0], expected, atol=TOLERANCE, rtol=0)
            torch.testing.assert_close(swept[1], expected, atol=TOLERANCE, rtol=0)


def test_sweep_without_items_and_a_wrong_metric_shape(tiny_models):
    model = tiny_models["tiny_gpt2"]
    batch = model.tokenize(TEXTS)
    assert model.sweep(batch, [], lambda out, rows: out[:, -1, 0]).shape == (0, batch.size)
    with pytest.raises(ValueError, match="one value per row"):
        model.sweep(batch, [[]], lambda out, rows: out[:1, -1, 0], logits_to_keep=1)


# --- positions given per row ---------------------------------------------------------------------
def test_per_row_positions_in_sweep_equal_one_pass_per_item(tiny_models):
    """Per-row positions (one list per selected row): in items, in the base, with row subsets."""
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    other = other_activations(model, batch)
    resid = other["blocks.1.resid_pre"]
    items = [
        [Intervention("blocks.0.resid_post", "zero", positions=[[3], [7, 9], [12]])],
        [Intervention("blocks.1.resid_pre", "replace", value=resid, rows=[2, 0], positions=[[6, 8], [11]])],
        [Intervention("blocks.1.attn.z", "zero", heads=[1], positions=[[14], [], [10, -1]])],
        [Intervention("blocks.0.mlp.out", "add", value=other["blocks.0.mlp.out"][0], positions=[[5], [5], [9]])],
        [],
    ]
    base = [
        Intervention("embed", "add", value=torch.ones(1, 1, model.info.d_model), positions=[[1, 2], [4], [2, 3]]),
        Intervention("blocks.1.mlp.out", "scale", factor=0.5, rows=[1], positions=[[4, 12]]),
    ]
    keep, column = keep_argument(batch, "last")
    metric = log_probs(model, column)
    expected = looped(model, batch, items, metric, base, keep)
    for reuse in (True, False):
        with torch.no_grad():
            swept = model.sweep(batch, items, metric, base=base, batch_size=6, logits_to_keep=keep, reuse_prefix=reuse)
        torch.testing.assert_close(swept, expected, atol=TOLERANCE, rtol=0)


def test_position_helpers_handle_flat_and_per_row_positions(tiny_models):
    model = tiny_models["tiny_llama"]
    width = 20
    assert not per_row_positions(None) and not per_row_positions([3, 4]) and not per_row_positions(torch.tensor([1]))
    assert per_row_positions([[3], [4, 5]]) and per_row_positions(((3,), ()))
    assert position_lists([3, -1]) == [[3, -1]]
    assert position_lists([[3], [], [-2, 7]]) == [[3], [], [-2, 7]]
    # the earliest position over every row (negative positions count from the end)
    flat = Intervention("blocks.1.resid_pre", "zero", positions=[9, 12])
    per_row = Intervention("blocks.1.resid_pre", "zero", positions=[[11], [], [-12, 15]])
    assert first_position(model, [flat], width) == 9
    assert first_position(model, [per_row], width) == 8
    assert first_position(model, [flat, per_row], width) == 8
    assert first_position(model, [Intervention("blocks.1.resid_pre", "zero")], width) == 0
    assert first_position(model, [Intervention("blocks.1.attn.pattern", "zero", positions=[9])], width) == 0
    assert first_position(model, [], width) == width
    # shifting: positions move down, those before the start are dropped (base interventions)
    value = torch.arange(width * 3.0).reshape(1, width, 3).expand(2, width, 3)
    shifted = shift_positions(
        model, Intervention("blocks.1.resid_pre", "add", value=value, positions=[5, 9, -1]), 8, width
    )
    assert list(position_lists(shifted.positions)) == [[1, 11]]
    assert shifted.value.shape == (2, width - 8, 3) and float(shifted.value[0, 0, 0]) == 24.0
    no_batch_axis = shift_positions(
        model, Intervention("blocks.1.resid_pre", "add", value=value[0], positions=[9]), 8, width
    )
    assert no_batch_axis.value.shape == (width - 8, 3)
    rows = shift_positions(model, per_row, 8, width)
    assert position_lists(rows.positions) == [[3], [], [0, 7]]
    assert shift_positions(model, Intervention("blocks.1.resid_pre", "zero", positions=[2, 3]), 8, width) is None
    assert shift_positions(model, Intervention("blocks.1.resid_pre", "zero", positions=[[2], [3]]), 8, width) is None
    everywhere = shift_positions(model, Intervention("blocks.1.resid_pre", "zero"), 8, width)
    assert everywhere.positions is None


def test_base_interventions_baked_into_a_start():
    """A pass starting at layer L is fed the reference `embed` (L = 0) or resid_pre L."""
    assert computed_before("embed", 0) and computed_before("embed", 3)
    assert not computed_before("blocks.0.resid_pre", 0)  # an item's `embed` comes before it
    assert computed_before("blocks.2.resid_pre", 2) and computed_before("blocks.1.mlp.out", 2)
    assert not computed_before("blocks.2.attn.z", 2) and not computed_before("blocks.3.resid_pre", 2)
    assert not computed_before("final", 5) and not computed_before("logits", 5)


# --- grouping items into passes --------------------------------------------------------------------
def test_planner_partitions_items_into_full_passes():
    starts = [(layer, position) for layer in range(6) for position in range(3, 11)] * 2
    passes = plan_passes(starts, 7, 2, 6, 12, cost=COST)
    assert sorted(i for p in passes for i in p) == list(range(len(starts)))
    assert all(1 <= len(p) <= 7 for p in passes)
    same = plan_passes([(2, 4)] * 30, 8, 1, 6, 12, cost=COST)
    assert len(same) == math.ceil(30 / 8) and sorted(i for p in same for i in p) == list(range(30))
    assert plan_passes([], 8, 1, 6, 12, cost=COST) == []


def test_planner_does_not_start_late_items_early():
    """Two far-apart groups of starts that each fill a pass are not mixed."""
    starts = [(0, 0)] * 4 + [(5, 10)] * 4
    passes = plan_passes(starts, 4, 1, 6, 12, cost=PassCost(1.0, 1.0))
    assert sorted(map(sorted, passes)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


# --- rows join a pass at their own layer ----------------------------------------------------------
def rows_per_block(model):
    """Hooks counting the rows each block's MLP computes (blocks a pass skips compute nothing)."""
    counts = [0] * model.info.n_layers
    handles = []
    for layer in range(model.info.n_layers):
        mlp = model.adapter.sites[f"blocks.{layer}.mlp.out"].module

        def count(module, args, layer=layer):
            counts[layer] += int(args[0].shape[0])

        handles.append(mlp.register_forward_pre_hook(count))
    return counts, handles


def test_no_row_computes_a_block_before_its_item_can_change_it(tiny_arch_model):
    """The whole point of staged passes: the rows of an item starting at layer L are computed
    by blocks L.. only, however the items are grouped (padding and the batch's own masks
    included), and the numbers equal one pass per item, for every adapter."""
    model = tiny_arch_model
    batch = model.tokenize(TEXTS)
    n_layers = model.info.n_layers
    items = [[Intervention(f"blocks.{layer}.attn.z", "zero", heads=[h])] for layer in range(n_layers) for h in (0, 1)]
    keep, column = keep_argument(batch, 0)
    metric = log_probs(model, column)
    expected = looped(model, batch, items, metric, [], keep)
    for batch_size in (3 * 2 * batch.size, 5 * batch.size, 64 * batch.size):
        counts, handles = rows_per_block(model)
        try:
            with torch.no_grad():
                swept = model.sweep(batch, items, metric, batch_size=batch_size, logits_to_keep=keep)
        finally:
            for handle in handles:
                handle.remove()
        torch.testing.assert_close(swept, expected, atol=TOLERANCE, rtol=0)
        # the reference run computes every block once; item rows only from their own layer on
        started = [sum(1 for item in items if hook_layer(item[0].hook) <= layer) for layer in range(n_layers)]
        assert counts == [batch.size * (1 + n) for n in started], f"batch_size={batch_size}"


def test_forward_with_joining_rows_equals_each_row_alone(tiny_models):
    """`forward(joins=...)`: one copy entering at layer 0 and two at layer 1 (after a prefix of
    4 clean positions, with padded rows), each with an intervention at its own layer (and
    positions after the prefix), equal
    three ordinary passes; malformed joins are refused before anything runs."""
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    rows, width = batch.size, batch.input_ids.shape[1]
    out, prefix = model.reference_run(batch, ["embed", "blocks.1.resid_pre"])
    start = 4
    own = [
        Intervention("blocks.0.mlp.out", "scale", factor=0.5, positions=[start, 9]),
        Intervention("blocks.1.mlp.out", "scale", factor=-1.5, positions=[start + 2]),
        Intervention("blocks.1.attn.z", "zero", heads=[1], positions=[7, 12]),
    ]
    expected = [model.forward(batch, interventions=[iv]).output[:, start:] for iv in own]
    moved = [iv.with_rows(list(range(j * rows, (j + 1) * rows))) for j, iv in enumerate(own)]
    resid = {0: out.cache["embed"][:, start:], 1: out.cache["blocks.1.resid_pre"][:, start:]}
    joined = model.forward(
        batch.repeat(3),
        interventions=[shift_positions(model, iv, start, width) for iv in moved],
        start_layer=0,
        start_resid=resid[0],
        joins={1: resid[1].repeat(2, 1, 1)},
        prefix=prefix.truncated(start),
    ).output
    assert joined.shape == (3 * rows, width - start, model.info.vocab_size)
    for j in range(3):
        torch.testing.assert_close(joined[j * rows : (j + 1) * rows], expected[j], atol=TOLERANCE, rtol=0)
    with pytest.raises(HookError, match="join only at layers 1..1"):
        model.forward(batch.repeat(2), start_layer=0, start_resid=resid[0], joins={0: resid[0]})
    with pytest.raises(HookError, match="hold 6 rows for a batch of 9"):
        model.forward(batch.repeat(3), start_layer=0, start_resid=resid[0], joins={1: resid[1]})
    assert model.hooks_left() == 0


def test_staged_planner_fills_passes_across_layers():
    """Rows join at their own layer, so mixing layers in a pass wastes nothing and the planner
    fills every pass; without staging it keeps each layer's items apart."""
    starts = [(layer, 0) for layer in range(6) for _ in range(3)]
    cost = PassCost(per_layer=1.0, per_pass=1.0)
    staged = plan_passes(starts, 4, 1, 6, 12, cost, staged=True)
    assert [len(p) for p in staged] == [4, 4, 4, 4, 2]
    assert len(plan_passes(starts, 4, 1, 6, 12, cost)) > len(staged)
