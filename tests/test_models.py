"""The model layer: hook points equal Hugging Face's own tensors; interventions are exact."""

from __future__ import annotations

import pytest
import torch

from interpsuite.errors import ConfigError, HookError, ModelNotFoundError
from interpsuite.hooks import Intervention
from interpsuite.models import describe_model, load_model

TEXTS = ["When Mary and John went to the store, John gave a drink to", "A short one."]


def _hidden_states(model, batch):
    with torch.no_grad():
        out = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    return out.hidden_states


def _resid_names(model):
    return ["embed", *(f"blocks.{layer}.resid_post" for layer in range(model.info.n_layers)), "final"]


def _assert_resid_matches_hf(model, texts, tol):
    batch = model.tokenize(texts)
    cache = model.forward(batch, capture=_resid_names(model)).cache
    hidden = _hidden_states(model, batch)
    mask = batch.attention_mask.bool()
    n = model.info.n_layers
    assert len(hidden) == n + 1
    torch.testing.assert_close(cache["embed"][mask], hidden[0][mask], atol=tol, rtol=0)
    # transformers reports the last entry after the final norm (decoders); so do we as `final`
    for layer in range(n - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.resid_post"][mask], hidden[layer + 1][mask], atol=tol, rtol=0)
    torch.testing.assert_close(cache["final"][mask], hidden[n][mask], atol=tol, rtol=0)


def test_residual_stream_equals_output_hidden_states(tiny_model):
    _assert_resid_matches_hf(tiny_model, TEXTS, 1e-5)


def test_every_hook_point_has_its_documented_shape(tiny_model):
    info = tiny_model.info
    batch = tiny_model.tokenize(TEXTS)
    b, pos = batch.input_ids.shape
    names = [f"blocks.0.{s}" for s in info.block_sites()] + ["embed", "final"]
    cache = tiny_model.forward(batch, capture=names).cache
    expected = {
        "resid_pre": (b, pos, info.d_model),
        "ln1.scale": (b, pos, 1),
        "attn.q": (b, pos, info.n_heads, info.d_head),
        "attn.k": (b, pos, info.n_kv_heads, info.d_head),
        "attn.v": (b, pos, info.n_kv_heads, info.d_head),
        "attn.scores": (b, info.n_heads, pos, pos),
        "attn.pattern": (b, info.n_heads, pos, pos),
        "attn.z": (b, pos, info.n_heads, info.d_head),
        "attn.out": (b, pos, info.d_model),
        "resid_mid": (b, pos, info.d_model),
        "ln2.scale": (b, pos, 1),
        "mlp.pre": (b, pos, info.d_mlp),
        "mlp.up": (b, pos, info.d_mlp),
        "mlp.post": (b, pos, info.d_mlp),
        "mlp.out": (b, pos, info.d_model),
        "resid_post": (b, pos, info.d_model),
    }
    assert set(info.block_sites()) <= set(expected)
    for site in info.block_sites():
        assert tuple(cache[f"blocks.0.{site}"].shape) == expected[site], site
    assert ("blocks.0.mlp.up" in tiny_model.hook_names()) == info.gated_mlp
    assert ("final.scale" in tiny_model.hook_names()) == info.has_final_norm
    if info.is_causal:
        logits = tiny_model.forward(batch, capture=["logits"]).cache["logits"]
        assert tuple(logits.shape) == (b, pos, info.vocab_size)
    else:
        assert "logits" not in tiny_model.hook_names()


def test_attention_rows_sum_to_one_and_respect_the_mask(tiny_model):
    batch = tiny_model.tokenize(TEXTS)
    names = [f"blocks.{layer}.attn.pattern" for layer in range(tiny_model.info.n_layers)]
    cache = tiny_model.forward(batch, capture=names).cache
    mask = batch.attention_mask.bool()
    for name in names:
        pattern = cache[name]
        sums = pattern.sum(-1)  # [b, head, q]
        real_queries = mask[:, None, :].expand_as(sums)
        torch.testing.assert_close(sums[real_queries], torch.ones_like(sums[real_queries]), atol=1e-5, rtol=0)
        # no attention to padding keys from real queries
        pad_keys = ~mask[:, None, None, :]
        assert float(pattern.masked_select(pad_keys & real_queries[..., None]).abs().max()) < 1e-6
        if tiny_model.info.is_causal:
            future = torch.ones(pattern.shape[-2:], dtype=torch.bool).triu(1)
            assert float(pattern[..., future].abs().max()) < 1e-7


def test_watching_the_pattern_does_not_change_the_output(tiny_model):
    """The explicit (hooked) attention path equals the fused SDPA path."""
    batch = tiny_model.tokenize(TEXTS)
    plain = tiny_model.forward(batch).output
    watched = tiny_model.forward(batch, capture=["blocks.0.attn.pattern", "blocks.1.attn.pattern"]).output
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(watched[mask], plain[mask], atol=1e-5, rtol=1e-5)


def test_zero_ablating_a_head_equals_zeroing_its_slice_by_hand(tiny_model):
    info = tiny_model.info
    batch = tiny_model.tokenize(TEXTS)
    layer, head, d_head = 1, 2, info.d_head
    projection = tiny_model.adapter.attention_output_projection(layer)

    def zero_slice(module, args):
        x = args[0].clone()
        x[..., head * d_head : (head + 1) * d_head] = 0
        return (x,)

    handle = projection.register_forward_pre_hook(zero_slice)
    try:
        with torch.no_grad():
            manual = tiny_model.forward(batch).output
    finally:
        handle.remove()
    ours = tiny_model.forward(batch, interventions=[Intervention(f"blocks.{layer}.attn.z", "zero", heads=head)]).output
    clean = tiny_model.forward(batch).output
    torch.testing.assert_close(ours, manual, atol=0, rtol=0)
    assert float((ours - clean).abs().max()) > 1e-4  # the ablation did something


def test_interventions_touch_only_their_rows_positions_and_units(tiny_model):
    batch = tiny_model.tokenize(TEXTS)
    name = "blocks.0.resid_post"
    clean = tiny_model.forward(batch, capture=[name]).cache[name]
    value = torch.full_like(clean, 3.0)
    cases = {
        "zero": Intervention(name, "zero", rows=[1], positions=[0, 2], units=[5]),
        "replace": Intervention(name, "replace", value=value, rows=[0], positions=[1]),
        "add": Intervention(name, "add", value=torch.ones(clean.shape[-1]), rows=[0]),
        "scale": Intervention(name, "scale", factor=2.0, positions=[3]),
    }
    captured = {}
    for op, iv in cases.items():
        # capture at the same hook sees the value after the intervention
        captured[op] = tiny_model.forward(batch, capture=[name], interventions=[iv]).cache[name]
    expected = clean.clone()
    expected[1, [0, 2], 5] = 0
    torch.testing.assert_close(captured["zero"], expected)
    expected = clean.clone()
    expected[0, 1] = 3.0
    torch.testing.assert_close(captured["replace"], expected)
    expected = clean.clone()
    expected[0] += 1
    torch.testing.assert_close(captured["add"], expected)
    expected = clean.clone()
    expected[:, 3] *= 2
    torch.testing.assert_close(captured["scale"], expected)


def test_project_out_removes_exactly_the_direction(tiny_model):
    """Directional ablation: the activation loses its component along the direction (any
    length), keeps everything orthogonal to it, and one direction per row applies row by row."""
    batch = tiny_model.tokenize(TEXTS)
    name = "blocks.0.resid_post"
    clean = tiny_model.forward(batch, capture=[name]).cache[name].double()
    direction = torch.randn(clean.shape[-1], generator=torch.Generator().manual_seed(0))
    ablated = tiny_model.forward(
        batch, capture=[name], interventions=[Intervention(name, "project_out", value=7.0 * direction)]
    ).cache[name].double()
    unit = (direction / direction.norm()).double()
    expected = clean - (clean @ unit)[..., None] * unit
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=1e-5)
    assert float((ablated @ unit).abs().max()) < 1e-4
    per_row = torch.stack([direction, torch.roll(direction, 1)])[:, None, :]  # TEXTS: two rows
    rows = tiny_model.forward(
        batch, capture=[name], interventions=[Intervention(name, "project_out", value=per_row)]
    ).cache[name].double()
    torch.testing.assert_close(rows[0], ablated[0], atol=1e-5, rtol=1e-5)
    other = (per_row[1, 0] / per_row[1, 0].norm()).double()
    torch.testing.assert_close(rows[1], clean[1] - (clean[1] @ other)[..., None] * other, atol=1e-5, rtol=1e-5)
    with pytest.raises(HookError, match="needs a `value`"):
        Intervention(name, "project_out")


def test_mean_and_resample_ablation(tiny_model):
    batch = tiny_model.tokenize(["one two three four", "five six seven eight"])
    name = "blocks.0.mlp.out"
    clean = tiny_model.forward(batch, capture=[name]).cache[name]
    batch_mean = tiny_model.forward(batch, capture=[name], interventions=[Intervention(name, "mean")]).cache[name]
    torch.testing.assert_close(batch_mean, clean.mean(0, keepdim=True).expand_as(clean))
    reference = torch.randn(clean.shape[-1])
    supplied = tiny_model.forward(
        batch, capture=[name], interventions=[Intervention(name, "mean", value=reference, rows=[1])]
    ).cache[name]
    torch.testing.assert_close(supplied[1], reference.expand_as(clean[1]))
    torch.testing.assert_close(supplied[0], clean[0])
    swapped = clean.flip(0)
    resampled = tiny_model.forward(
        batch, capture=[name], interventions=[Intervention(name, "resample", value=swapped)]
    ).cache[name]
    torch.testing.assert_close(resampled, swapped)


def test_batched_sweep_equals_one_pass_per_intervention(tiny_model):
    info = tiny_model.info
    batch = tiny_model.tokenize(TEXTS)
    items = [
        [Intervention(f"blocks.{layer}.attn.z", "zero", heads=head)]
        for layer in range(info.n_layers)
        for head in range(info.n_heads)
    ]
    items += [
        [Intervention("blocks.1.mlp.post", "zero", units=[3, 4])],
        [],
        [Intervention("embed", "scale", factor=0.5)],
        # batch-mean ablations must average over the item's own copy only
        [Intervention("blocks.0.attn.z", "mean", heads=1)],
        [Intervention("blocks.0.mlp.out", "zero"), Intervention("blocks.1.attn.z", "mean", heads=0)],
    ]

    def metric(out, rows):
        last = rows.last_index
        return out[torch.arange(out.shape[0]), last].pow(2).sum(-1)

    looped = torch.stack([metric(tiny_model.forward(batch, interventions=ivs).output, batch) for ivs in items])
    for reuse in (True, False):
        swept = tiny_model.sweep(batch, items, metric, batch_size=5, reuse_prefix=reuse)
        assert swept.shape == (len(items), batch.size)
        torch.testing.assert_close(swept, looped, atol=1e-4, rtol=1e-5)
    assert tiny_model.hooks_left() == 0


def test_starting_at_a_layer_skips_the_blocks_below(tiny_models):
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    resid = model.forward(batch, capture=["blocks.1.resid_pre"]).cache["blocks.1.resid_pre"]
    calls = []  # the block below the start hands its input through without computing anything
    handle = model.adapter.blocks()[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    try:
        resumed = model.forward(batch, start_layer=1, start_resid=resid).output
    finally:
        handle.remove()
    assert calls == []
    torch.testing.assert_close(resumed, model.forward(batch).output, atol=1e-6, rtol=1e-6)
    with pytest.raises(HookError, match="before start_layer"):
        model.forward(batch, capture=["blocks.0.resid_post"], start_layer=1, start_resid=resid)


def test_hooks_are_removed_after_an_error(tiny_model):
    batch = tiny_model.tokenize(TEXTS)
    before = tiny_model.hooks_left()
    bad = Intervention("blocks.0.resid_post", "replace", value=torch.zeros(7, 7, 7))
    with pytest.raises(HookError, match="does not broadcast"):
        tiny_model.forward(batch, capture=["blocks.1.resid_post"], interventions=[bad])
    assert tiny_model.hooks_left() == before
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_model.hooks(capture=["blocks.0.attn.pattern"]):
            raise RuntimeError("boom")
    assert tiny_model.hooks_left() == before


def test_unknown_hook_points_and_bad_interventions_are_clear(tiny_models):
    model = tiny_models["tiny_gpt2"]
    batch = model.tokenize(TEXTS)
    with pytest.raises(HookError, match=r"layer 9 out of range \(the model has layers 0..1\)"):
        model.forward(batch, capture=["blocks.9.resid_post"])
    with pytest.raises(HookError, match=r"unknown hook point 'blocks.0.mlp.up'.*blocks.\{L\}.mlp.pre"):
        model.forward(batch, capture=["blocks.0.mlp.up"])  # GPT-2 has no gated MLP
    with pytest.raises(HookError, match="unknown hook point 'blocks.0.attn.query'"):
        model.forward(batch, capture=["blocks.0.attn.query"])
    with pytest.raises(HookError, match="needs a `value`"):
        Intervention("embed", "replace")
    with pytest.raises(HookError, match="unknown intervention op"):
        Intervention("embed", "erase")
    with pytest.raises(HookError, match="no heads dimension"):
        model.forward(batch, interventions=[Intervention("blocks.0.resid_post", "zero", heads=1)])


def test_unknown_model_lists_embedded_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="Embedded models: smollm2, minilm, tiny_llama"):
        describe_model("no-such-org/no-such-model")


def test_local_path_models_load_through_the_hub_loader(tmp_path, tiny_models):
    source = tiny_models["tiny_gpt2"]
    source.hf_model.save_pretrained(tmp_path)
    source.tokenizer.save_pretrained(tmp_path)
    info = describe_model(str(tmp_path))
    assert (info.architecture, info.n_layers) == ("gpt2", 2)
    loaded = load_model(str(tmp_path))
    batch = loaded.tokenize(TEXTS)
    torch.testing.assert_close(loaded.forward(batch).output, source.forward(source.tokenize(TEXTS)).output)


def test_multi_token_targets_are_refused(tiny_models):
    model = tiny_models["tiny_llama"]
    assert model.to_single_token("a") == model.tokenizer("a", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(ConfigError, match="not one"):
        model.to_single_token(" Mary")
