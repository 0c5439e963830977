"""Live SAE patching (interpsuite.models.splice): the splice, its edits and the layer-skipping cache.

Every expected value is computed independently of SAESplice: the activation at the hook point
is captured in a plain forward pass, the spliced activation is built from it by hand, and a
plain `replace` intervention writes it, so a splice that wrote the wrong thing would differ.
"""

from __future__ import annotations

import pytest
import torch

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention, count_hooks
from interpsuite.models import load_model
from interpsuite.models.splice import SAESplice

TEXTS = ["The quick brown fox jumps over", "Hi"]  # right-padded batch: the rows end at different positions
WIDTH = 48
TOL = 1e-5

try:
    from interpsuite_plugins.sae.model import SAEConfig, SparseAutoencoder

    def make_sae(d_in: int, hook: str, width: int = WIDTH, seed: int = 0):
        sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=width, architecture="relu", hook=hook), seed=seed)
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():  # biases away from zero, so the reconstruction error is not trivial
            sae.b_enc.copy_(torch.randn(width, generator=generator) * 0.5)
            sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.3)
        return sae.eval()

except ImportError:  # the SAE plugin is not installed: a minimal SAE with the same interface

    class _Cfg:
        def __init__(self, d_in: int, width: int, hook: str):
            self.d_in, self.width, self.hook = d_in, width, hook

    class _SAE(torch.nn.Module):
        def __init__(self, d_in: int, width: int, hook: str, seed: int):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.cfg = _Cfg(d_in, width, hook)
            self.W_enc = torch.nn.Parameter(torch.randn(d_in, width, generator=g) / d_in**0.5)
            self.b_enc = torch.nn.Parameter(torch.randn(width, generator=g) * 0.5)
            self.W_dec = torch.nn.Parameter(torch.randn(width, d_in, generator=g) / width**0.5)
            self.b_dec = torch.nn.Parameter(torch.randn(d_in, generator=g) * 0.3)

        def encode(self, x):
            return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

        def decode(self, acts):
            return acts @ self.W_dec + self.b_dec

    def make_sae(d_in: int, hook: str, width: int = WIDTH, seed: int = 0):
        return _SAE(d_in, width, hook, seed)


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def model(request):
    return load_model(request.param)


def _last(output: torch.Tensor, batch) -> torch.Tensor:
    return output[torch.arange(output.shape[0]), batch.last_index]


def _reference(model, batch, hook: str, sae, edit=None, keep_error: bool = True) -> torch.Tensor:
    """Last-token logits with the hand-built spliced activation written by a `replace`."""
    x = model.forward(batch, capture=[hook]).cache[hook]
    with torch.no_grad():
        clean = sae.encode(x)
        edited = edit(clean.clone()) if edit is not None else clean
        value = sae.decode(edited) + (x - sae.decode(clean)) if keep_error else sae.decode(edited)
    out = model.forward(batch, interventions=[Intervention(hook, "replace", value=value)]).output
    return _last(out, batch)


def _hook(model, site: str = "resid_post") -> str:
    return f"blocks.{model.info.n_layers - 1}.{site}" if site != "resid_pre" else f"blocks.1.{site}"


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "mlp.out"])
def test_splice_alone_changes_nothing_and_edits_match_the_hand_built_activation(model, site):
    hook = _hook(model, site)
    sae = make_sae(model.info.d_model, hook)
    batch = model.tokenize(TEXTS)
    clean = _last(model.forward(batch).output, batch)
    with model.sae_splice(sae) as s:
        assert s.hook == hook and s.start_layer == (1 if site == "resid_pre" else model.info.n_layers - 1)
        alone = s.run(TEXTS)
        assert (alone.logits - clean).abs().max() <= TOL
        assert (alone.clean_logits - clean).abs().max() <= TOL
        x = model.forward(batch, capture=[hook]).cache[hook]
        with torch.no_grad():
            assert torch.allclose(alone.clean_features, sae.encode(x), atol=1e-6)
        assert torch.equal(alone.features, alone.clean_features)

        # the two most active features: an edit of a feature that is 0 everywhere would test less
        f_set, f_scale = alone.clean_features.sum((0, 1)).topk(2).indices.tolist()
        s.set_feature(f_set, 4.0).scale_feature(f_scale, 3.0)

        def edit(acts):
            acts[..., f_set] = 4.0
            acts[..., f_scale] *= 3.0
            return acts

        edited = s.run(TEXTS, top_k=3)
        assert s._linear_decoder is not None  # decode() is affine: the few-rows update was used
        expected = _reference(model, batch, hook, sae, edit)
        assert (edited.logits - clean).abs().max() > 1e-3  # the edit does something
        assert (edited.logits - expected).abs().max() <= TOL
        assert torch.all(edited.features[..., f_set] == 4.0)
        assert torch.allclose(edited.features[..., f_scale], 3.0 * edited.clean_features[..., f_scale])
        probs = torch.softmax(edited.logits, dim=-1)
        top_probs, top_ids = probs.topk(3, dim=-1)
        assert torch.equal(edited.top_ids, top_ids) and torch.allclose(edited.top_probs, top_probs)
        assert len(edited.top_tokens) == 2 and all(len(row) == 3 for row in edited.top_tokens)
    assert model.hooks_left() == 0


def test_ablating_every_feature_leaves_only_the_error_term(model):
    hook = _hook(model)
    sae = make_sae(model.info.d_model, hook)
    batch = model.tokenize(TEXTS)
    with model.sae_splice(sae) as s:
        for i in range(WIDTH):
            s.ablate(i)
        out = s.run(batch)
    assert torch.count_nonzero(out.features) == 0 and torch.count_nonzero(out.clean_features) > 0
    expected = _reference(model, batch, hook, sae, edit=torch.zeros_like)
    assert (out.logits - expected).abs().max() <= TOL
    assert (out.logits - out.clean_logits).abs().max() > 1e-3


def test_without_the_error_term_the_reconstruction_replaces_the_activation(model):
    hook = _hook(model)
    sae = make_sae(model.info.d_model, hook)
    batch = model.tokenize(TEXTS)
    with model.sae_splice(sae, keep_error=False) as s:
        out = s.run(batch)
        s.ablate(2)
        ablated = s.run(batch)
    assert (out.logits - _reference(model, batch, hook, sae, keep_error=False)).abs().max() <= TOL
    assert (out.logits - out.clean_logits).abs().max() > 1e-3  # a random SAE reconstructs badly

    def edit(acts):
        acts[..., 2] = 0.0
        return acts

    assert (ablated.logits - _reference(model, batch, hook, sae, edit, keep_error=False)).abs().max() <= TOL


class _Rescaled:
    """An SAE whose decode() is not acts @ W_dec + b_dec (it rescales, as SAEs with activation
    normalisation do), though it has both: the splice must decode it in full."""

    def __init__(self, sae):
        self.inner, self.cfg, self.W_dec, self.b_dec = sae, sae.cfg, sae.W_dec, sae.b_dec

    def encode(self, x):
        return self.inner.encode(x / 2)

    def decode(self, acts):
        return 2 * self.inner.decode(acts)


def test_a_decoder_that_is_not_the_plain_affine_map_is_decoded_in_full(model):
    hook = _hook(model)
    sae = _Rescaled(make_sae(model.info.d_model, hook))
    batch = model.tokenize(TEXTS)

    def edit(acts):
        acts[..., 4] = 7.0
        acts[..., 6] *= 0.25
        return acts

    with model.sae_splice(sae) as s:
        s.set_feature(4, 7.0).scale_feature(6, 0.25)
        out = s.run(batch)
        assert s._linear_decoder is None
    assert (out.logits - out.clean_logits).abs().max() > 1e-3
    assert (out.logits - _reference(model, batch, hook, sae, edit)).abs().max() <= TOL


class _Counting:
    """An SAE that counts its encode() calls."""

    def __init__(self, sae):
        self.inner, self.cfg, self.W_dec, self.b_dec = sae, sae.cfg, sae.W_dec, sae.b_dec
        self.encodes = 0

    def encode(self, x):
        self.encodes += 1
        return self.inner.encode(x)

    def decode(self, acts):
        return self.inner.decode(acts)


def test_patches_of_one_prompt_rerun_only_the_layers_from_the_spliced_one(model):
    hook = _hook(model)  # the last layer
    sae = _Counting(make_sae(model.info.d_model, hook))
    first_attention = model.adapter.attention_module(0)
    calls = []
    handle = first_attention.register_forward_hook(lambda *args: calls.append(1))
    try:
        with model.sae_splice(sae) as s:
            s.run(TEXTS)  # the clean run (every layer), then the spliced pass from the last layer
            assert sae.encodes == 1 and len(calls) == 1
            for i in range(3):
                s.set_feature(i, 1.0 + i)
                s.run(TEXTS)
            assert sae.encodes == 1 and len(calls) == 1  # layer 0 not run again, nothing encoded again
            s.run(TEXTS[:1])  # a new prompt: a new clean run
            assert sae.encodes == 2 and len(calls) == 2
    finally:
        handle.remove()


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "mlp.post"])
def test_the_layer_skipping_path_equals_a_full_forward(model, site):
    hook = _hook(model, site)
    d_in = model.info.d_mlp if site == "mlp.post" else model.info.d_model
    sae = make_sae(d_in, hook)
    fast = SAESplice(model, sae)
    full = SAESplice(model, sae, reuse_prefix=False)
    assert fast.start_layer > 0 and full.start_layer == 0
    for splice in (fast, full):
        splice.set_feature(1, 2.5).scale_feature(3, -1.0).ablate(4)
    for all_positions in (False, True):
        a = fast.run(TEXTS, all_positions=all_positions)
        b = full.run(TEXTS, all_positions=all_positions)
        assert a.logits.shape == b.logits.shape
        assert (a.logits - b.logits).abs().max() <= TOL
        assert (a.features - b.features).abs().max() <= 1e-6
    assert a.logits.ndim == 3 and a.logits.shape[1] == model.tokenize(TEXTS).input_ids.shape[1]
    fast.close()
    full.close()


def test_toggling_an_edit_off_restores_the_clean_logits(model):
    hook = _hook(model)
    sae = make_sae(model.info.d_model, hook)
    with model.sae_splice(sae) as s:
        s.set_feature(0, 6.0)
        on = s.run(TEXTS)
        s.toggle(0)
        assert not s.edits[0].enabled and s.edits[0].value == 6.0
        off = s.run(TEXTS)
        s.toggle(0)
        again = s.run(TEXTS)
        s.clear()
        assert dict(s.edits) == {}
        cleared = s.run(TEXTS)
    assert (on.logits - on.clean_logits).abs().max() > 1e-3
    assert torch.equal(off.logits, off.clean_logits) or (off.logits - off.clean_logits).abs().max() <= TOL
    assert (again.logits - on.logits).abs().max() <= TOL
    assert (cleared.logits - on.clean_logits).abs().max() <= TOL
    with pytest.raises(TypeError):
        s.edits[1] = None  # a read-only view


def test_a_new_prompt_replaces_the_cached_clean_run(model):
    hook = _hook(model, "resid_pre")
    sae = make_sae(model.info.d_model, hook)
    other = ["A different prompt entirely", "and a second row"]
    with model.sae_splice(sae) as s:
        s.set_feature(9, 3.0)
        s.run(TEXTS)
        switched = s.run(other)
        back = s.run(TEXTS)
    with model.sae_splice(sae) as fresh:
        fresh.set_feature(9, 3.0)
        expected = fresh.run(other)
        expected_back = fresh.run(model.tokenize(TEXTS))  # a TokenBatch of the same texts
    assert torch.equal(switched.logits, expected.logits)
    assert torch.equal(switched.clean_features, expected.clean_features)
    assert torch.equal(back.logits, expected_back.logits)


def test_no_hooks_are_left_on_the_model(model):
    hook = _hook(model)
    sae = make_sae(model.info.d_model, hook)
    listeners = count_hooks(model.hf_model)
    with pytest.raises(RuntimeError, match="inside"):
        with model.sae_splice(sae) as s:
            s.ablate(1).run(TEXTS)
            assert model.hooks_left() == 0
            raise RuntimeError("an error inside the block")
    assert model.hooks_left() == 0
    assert count_hooks(model.hf_model) == listeners  # the wrapper's own listeners only, none added
    with pytest.raises(ConfigError, match="closed"):
        s.run(TEXTS)


def test_bad_inputs_are_one_line_config_errors(model):
    d_model, n_layers = model.info.d_model, model.info.n_layers
    hook = _hook(model)
    sae = make_sae(d_model, hook)
    cases = [
        (lambda: model.sae_splice(sae, "blocks.0.nope"), "unknown hook point"),
        (lambda: model.sae_splice(sae, f"blocks.{n_layers}.resid_post"), "out of range"),
        (lambda: model.sae_splice(sae, "blocks.0.resid_post"), f"trained on {hook}"),
        (lambda: model.sae_splice(make_sae(d_model + 1, hook)), "d_in is"),
        (lambda: model.sae_splice(make_sae(d_model, "")), "cfg.hook is not set"),
        (lambda: model.sae_splice(object(), hook), r"no encode\(\) method"),
        (lambda: model.sae_splice(make_sae(d_model, "blocks.0.attn.pattern")), "not laid out"),
        (lambda: model.sae_splice(sae).set_feature(WIDTH, 1.0), "out of range"),
        (lambda: model.sae_splice(sae).set_feature(-1, 1.0), "out of range"),
        (lambda: model.sae_splice(sae).set_feature(0, float("nan")), "not a finite"),
        (lambda: model.sae_splice(sae).scale_feature(0, float("inf")), "not a finite"),
        (lambda: model.sae_splice(sae).toggle(3), "no edit to toggle"),
        (lambda: model.sae_splice(sae).run(TEXTS, top_k=0), "top_k"),
        (lambda: model.sae_splice(sae).run([]), "give the prompt"),
    ]
    for call, words in cases:
        with pytest.raises(ConfigError, match=words) as info:
            call()
        assert "\n" not in str(info.value)
    # another hook point on purpose
    with model.sae_splice(sae, "blocks.0.resid_post", allow_other_hook=True) as s:
        assert s.run(TEXTS).features.shape[-1] == WIDTH
    # a width only a pass can tell (keys: [b, pos, kv_head, d_head]) is checked at the first run
    k_hook = "blocks.0.attn.k"
    with model.sae_splice(make_sae(d_model + 3, k_hook)) as s:
        with pytest.raises(ConfigError, match="d_in is"):
            s.run(TEXTS)
    assert model.hooks_left() == 0


def test_an_sae_over_heads_sees_them_flattened():
    """attn.z is [b, pos, head, d_head]; an SAE trained on it reads head * d_head entries."""
    model = load_model("tiny_llama")
    hook = "blocks.1.attn.z"
    d_in = model.info.n_heads * model.info.d_head
    sae = make_sae(d_in, hook)
    batch = model.tokenize(TEXTS)
    clean = _last(model.forward(batch).output, batch)
    with model.sae_splice(sae) as s:
        assert (s.run(batch).logits - clean).abs().max() <= TOL
        s.set_feature(2, 5.0)
        out = s.run(batch)
    z = model.forward(batch, capture=[hook]).cache[hook]
    with torch.no_grad():
        flat = z.flatten(2)
        acts = sae.encode(flat)
        edited = acts.clone()
        edited[..., 2] = 5.0
        value = (sae.decode(edited) + flat - sae.decode(acts)).view(z.shape)
    expected = _last(model.forward(batch, interventions=[Intervention(hook, "replace", value=value)]).output, batch)
    assert (out.logits - expected).abs().max() <= TOL
    assert (out.logits - clean).abs().max() > 1e-3


def test_the_map_op_applies_a_function_where_the_intervention_selects():
    """The `map` intervention (what the splice is built on) respects rows and positions and
    composes in order with the other ops at its hook point."""
    from interpsuite.errors import HookError

    model = load_model("tiny_llama")
    hook = "blocks.0.resid_post"
    batch = model.tokenize(TEXTS)
    x = model.forward(batch, capture=[hook]).cache[hook]
    seen = []

    def double(a):
        seen.append(tuple(a.shape))
        return 2 * a

    iv = Intervention(hook, "map", fn=double, rows=[1], positions=[0, 1])
    got = model.forward(batch, capture=[hook], interventions=[iv]).cache[hook]
    expected = x.clone()
    expected[1, :2] *= 2
    assert torch.equal(got, expected)
    assert seen == [(1, *x.shape[1:])]  # the function sees the selected rows only
    ordered = [Intervention(hook, "add", value=torch.ones(x.shape[-1])), Intervention(hook, "map", fn=double)]
    got = model.forward(batch, capture=[hook], interventions=ordered).cache[hook]
    assert torch.allclose(got, 2 * (x + 1))
    with pytest.raises(HookError, match="callable `fn`"):
        Intervention(hook, "map")
    with pytest.raises(HookError, match="same shape"):
        model.forward(batch, interventions=[Intervention(hook, "map", fn=lambda a: a[..., :3])])
    assert model.hooks_left() == 0


def test_an_encoder_gives_its_last_hidden_state_and_skips_layers_too():
    """BERT has no logits: `logits` is the last hidden state at each row's last token, no top-k."""
    model = load_model("tiny_bert")
    hook = "blocks.1.resid_pre"
    sae = make_sae(model.info.d_model, hook)
    batch = model.tokenize(TEXTS)
    clean = _last(model.forward(batch).output, batch)
    fast, full = SAESplice(model, sae), SAESplice(model, sae, reuse_prefix=False)
    assert (fast.run(batch).logits - clean).abs().max() <= TOL
    for splice in (fast, full):
        splice.set_feature(3, 4.0)
    a, b = fast.run(batch), full.run(batch)
    assert a.top_ids.shape == (2, 0) and a.top_tokens == [[], []]
    assert (a.logits - clean).abs().max() > 1e-3
    assert (a.logits - b.logits).abs().max() <= TOL

    def edit(acts):
        acts[..., 3] = 4.0
        return acts

    assert (a.logits - _reference(model, batch, hook, sae, edit)).abs().max() <= TOL


def test_a_sweep_keeps_different_map_functions_apart(tiny_models):
    """Two items with the same hook and op but different functions are two interventions."""
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(["The quick brown fox", "Hello"])
    items = [
        [Intervention("blocks.0.resid_post", "map", fn=lambda x: 2 * x)],
        [Intervention("blocks.0.resid_post", "map", fn=lambda x: -x)],
    ]

    def metric(logits, rows):
        return logits[:, -1, :5]

    swept = model.sweep(batch, items, metric, batch_size=8, logits_to_keep=1)
    for item, got in zip(items, swept, strict=True):
        alone = model.forward(batch, interventions=item, logits_to_keep=1).output
        assert torch.allclose(got, metric(alone, batch), atol=1e-5)
    assert not torch.allclose(swept[0], swept[1])
