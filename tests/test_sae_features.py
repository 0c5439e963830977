"""feature_report: exact answers for an SAE whose latents are known by construction.

The identity SAE (latent i = relu(x[:, i]) for i < d_model, W_dec = I, PAD more latents that
never fire) makes every number checkable against the captured activations directly: top
contexts are the largest values of relu(x[:, i]), densities are the fraction of positive
entries, co-firing is a dense boolean matmul. Logit effects are checked against
(W_dec[f] * gamma) @ W_U.T on a random SAE (the identity decoder would test only one column of
W_U per feature).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interpsuite_plugins.sae import SAEConfig, SparseAutoencoder
from interpsuite_plugins.sae.feature_plots import plot_feature_cards, plot_feature_density
from interpsuite_plugins.sae.features import FeatureReport, feature_report

from interpsuite.errors import ConfigError
from interpsuite.figures import FIGURE_FUNCTION_MARK, FigureStyle

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Hi there",
    "A",
    "Sparse autoencoders find features in the residual stream.",
]
HOOK = "blocks.0.resid_post"
PAD = 8  # latents past d_model: never active


def identity_sae(d: int, hook: str = HOOK) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d, width=d + PAD, architecture="relu", hook=hook))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        sae.W_enc[:, :d].copy_(torch.eye(d))
        sae.W_dec[:d].copy_(torch.eye(d))
    return sae


def captured(model, texts=TEXTS, batch_size=2, hook=HOOK) -> tuple[torch.Tensor, np.ndarray, list[tuple[int, int]]]:
    """Every real token's activation (same batches as the report), its token id and (text, position)."""
    xs, ids, where = [], [], []
    with torch.no_grad():
        for batch in model.batches(texts, batch_size, 128):
            x = model.forward(batch, capture=[hook]).cache[hook]
            real = batch.attention_mask.bool()
            xs.append(x[real])
            ids.append(batch.input_ids[real])
            for text_id, length in zip(batch.text_ids, batch.lengths.tolist(), strict=True):
                where.extend((text_id, p) for p in range(length))
    return torch.cat(xs), torch.cat(ids).numpy(), where


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["tiny_llama"]


@pytest.fixture(scope="module")
def exact(llama):
    """(report over all d_model latents, relu(x) [tokens, width], token ids, (text, position) per token)."""
    d = llama.info.d_model
    sae = identity_sae(d)
    report = feature_report(
        llama, sae, TEXTS, features=list(range(d)), n_contexts=6, n_cofiring=d + PAD, batch_size=2, n_quantiles=4
    )
    x, ids, where = captured(llama)
    acts = torch.relu(torch.cat([x, torch.zeros(x.shape[0], PAD)], dim=1)).numpy()
    return report, acts, ids, where


def test_top_contexts_are_the_largest_captured_activations(exact, llama):
    report, acts, ids, where = exact
    assert report.n_tokens == acts.shape[0] and report.n_texts == len(TEXTS)
    for f in report.features:
        entry = report.entries[f]
        expected = np.sort(acts[:, f])[::-1][: len(entry.top_contexts)]
        expected = expected[expected > 0]
        assert [c.activation for c in entry.top_contexts] == [float(v) for v in expected]  # exact
        for c in entry.top_contexts:
            # the window is the right slice of the right text, with the feature's value on every token
            row = where.index((c.text_id, c.position))
            lo = row - c.focus
            assert c.activation == float(acts[row, f]) == c.acts[c.focus]
            assert c.acts == [float(v) for v in acts[lo : lo + len(c.acts), f]]
            assert c.token_ids == [int(i) for i in ids[lo : lo + len(c.acts)]]
            assert all(where[lo + j][0] == c.text_id for j in range(len(c.acts)))
            assert c.focus <= 12 and len(c.acts) - c.focus - 1 <= 4  # context_window (12, 4)
            assert c.tokens == [
                llama.tokenizer.decode([i]) or llama.tokenizer.convert_ids_to_tokens(i) for i in c.token_ids
            ]
            assert c.max_activation == max(c.acts)


def test_global_statistics_equal_a_direct_computation(exact):
    report, acts, _, _ = exact
    np.testing.assert_array_equal(report.density, (acts > 0).mean(0))
    np.testing.assert_array_equal(report.max_activation, acts.max(0))
    active = (acts > 0).sum(0)
    mean = np.divide(acts.astype(np.float64).sum(0), active, out=np.zeros(acts.shape[1]), where=active > 0)
    np.testing.assert_allclose(report.mean_active, mean, rtol=1e-12)
    assert report.n_dead == int((acts.max(0) == 0).sum()) >= PAD


def test_histograms_and_quantile_samples(exact):
    report, acts, _, where = exact
    for f in report.features:
        entry = report.entries[f]
        nonzero = acts[:, f][acts[:, f] > 0]
        assert entry.n_active == nonzero.size
        assert int(entry.histogram_counts.sum()) == nonzero.size
        assert len(entry.histogram_edges) == len(entry.histogram_counts) + 1 == 41
        assert sum(q.count for q in entry.quantiles) == nonzero.size
        assert len(entry.quantiles) == 4
        assert entry.quantiles[0].low == nonzero.min() and entry.quantiles[-1].high == nonzero.max()
        for i, q in enumerate(entry.quantiles):
            last = i == len(entry.quantiles) - 1
            assert len(q.samples) == min(3, q.count)
            for s in q.samples:
                assert q.low <= s.activation and (s.activation <= q.high if last else s.activation < q.high)
                assert s.activation == float(acts[where.index((s.text_id, s.position)), f])


def test_cofiring_is_jaccard_of_active_token_sets(exact):
    report, acts, _, _ = exact
    on = torch.from_numpy(acts > 0).double()
    both = (on.T @ on).numpy()
    fires = on.sum(0).numpy()
    jaccard = np.divide(both, fires[:, None] + fires[None, :] - both, out=np.zeros_like(both), where=both > 0)
    listed = {}
    for f in report.features:
        cofiring = report.entries[f].cofiring
        if report.entries[f].n_active == 0:
            assert cofiring == []
            continue
        expected = {g for g in range(acts.shape[1]) if g != f and both[f, g] > 0}
        assert {c.feature for c in cofiring} == expected  # n_cofiring = width: every co-firing latent
        values = [c.jaccard for c in cofiring]
        assert values == sorted(values, reverse=True)
        for c in cofiring:
            assert c.feature != f
            assert c.count == both[f, c.feature]
            assert c.jaccard == pytest.approx(jaccard[f, c.feature], rel=1e-12)
            listed[(f, c.feature)] = (c.count, c.jaccard)
    for (f, g), value in listed.items():
        assert listed[(g, f)] == value  # symmetric


def test_cofiring_keeps_the_top_n(llama):
    sae = identity_sae(llama.info.d_model)
    full = feature_report(llama, sae, TEXTS, top_n=5, n_cofiring=200)
    short = feature_report(llama, sae, TEXTS, top_n=5, n_cofiring=3)
    for f in full.features:
        assert short.entries[f].cofiring == full.entries[f].cofiring[:3]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_logit_effects_are_the_decoder_rows_through_the_unembedding(tiny_models, name):
    model = tiny_models[name]
    d = model.info.d_model
    sae = SparseAutoencoder(SAEConfig(d_in=d, width=48, architecture="topk", k=6, hook=HOOK), seed=3)
    report = feature_report(model, sae, TEXTS, top_n=10, n_logit_tokens=5)
    gamma = model.adapter.final_module().weight.detach()
    reference = (sae.W_dec.detach() * gamma) @ model.adapter.unembed_matrix().detach().T
    for f in report.features:
        effects = report.entries[f].logit_effects
        top, bottom = reference[f].topk(5), (-reference[f]).topk(5)
        assert effects.top_ids == top.indices.tolist() and effects.bottom_ids == bottom.indices.tolist()
        np.testing.assert_allclose([v for _, v in effects.top], top.values.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([v for _, v in effects.bottom], -bottom.values.numpy(), rtol=1e-5, atol=1e-6)
        tokenizer = model.tokenizer
        readable = [tokenizer.decode([i]) or tokenizer.convert_ids_to_tokens(i) for i in effects.top_ids]
        assert [t for t, _ in effects.top] == readable
        assert report.entries[f].top_logit == effects.top[0][0]


def test_encoders_have_no_logit_effects(tiny_models):
    bert = tiny_models["tiny_bert"]
    report = feature_report(bert, identity_sae(bert.info.d_model), TEXTS, top_n=4)
    assert report.features and all(report.entries[f].logit_effects is None for f in report.features)
    assert report.summary_table()["top_logit"].isna().all()
    assert report.to_json()["entries"][0]["logits"] is None


def test_selection_modes(exact, llama):
    report, acts, _, _ = exact
    sae = identity_sae(llama.info.d_model)
    alive = set(np.flatnonzero(acts.max(0) > 0).tolist())
    by_density = feature_report(llama, sae, TEXTS, top_n=7, batch_size=2)
    density = (acts > 0).mean(0)
    assert by_density.features == sorted(alive, key=lambda f: (-density[f], f))[:7]
    by_max = feature_report(llama, sae, TEXTS, top_n=7, selection="max", batch_size=2)
    assert by_max.features == sorted(alive, key=lambda f: (-acts.max(0)[f], f))[:7]
    first = feature_report(llama, sae, TEXTS, top_n=7, selection="random", seed=4)
    again = feature_report(llama, sae, TEXTS, top_n=7, selection="random", seed=4)
    assert first.features == again.features and set(first.features) <= alive
    assert first.to_json() == again.to_json()  # deterministic, sampled quantiles included
    everything = feature_report(llama, sae, TEXTS, top_n=10_000)
    assert set(everything.features) == alive  # dead latents are never browsed by top-N


def test_a_dead_feature_asked_for_says_it_never_fired(llama):
    d = llama.info.d_model
    report = feature_report(llama, identity_sae(d), TEXTS, features=[d + 1, 0])
    assert report.features == [d + 1, 0] and report.selection == "explicit"
    dead = report.entries[d + 1]
    assert dead.dead and dead.n_active == 0 and dead.density == 0.0
    assert dead.top_contexts == [] and dead.quantiles == [] and dead.cofiring == []
    assert "never fired" in dead.note and dead.top_token is None
    assert int(dead.histogram_counts.sum()) == 0
    assert dead.logit_effects is not None  # the decoder row (zero here) still has an effect to show
    json.dumps(report.to_json(), allow_nan=False)


def test_batching_and_max_tokens(llama):
    sae = identity_sae(llama.info.d_model)
    one = feature_report(llama, sae, TEXTS, top_n=8, batch_size=1)
    many = feature_report(llama, sae, TEXTS, top_n=8, batch_size=5)
    np.testing.assert_allclose(one.density, many.density)
    np.testing.assert_allclose(one.max_activation, many.max_activation, rtol=1e-5)
    capped = feature_report(llama, sae, TEXTS, top_n=8, batch_size=2, max_tokens=20)
    assert capped.n_tokens == 20
    x, _, where = captured(llama)
    assert capped.n_texts == len({t for t, _ in where[:20]})
    np.testing.assert_array_equal(capped.density, (torch.relu(x[:20]).numpy() > 0).mean(0).tolist() + [0.0] * PAD)


def test_json_and_summary_table(exact):
    report, _, _, _ = exact
    data = report.to_json()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data
    assert [e["id"] for e in data["entries"]] == report.features
    entry = data["entries"][0]
    first = report.entries[report.features[0]]
    context = entry["top"][0]
    assert [data["tokens"][k] for k in context["k"]] == first.top_contexts[0].tokens
    assert context["a"][context["i"]] == pytest.approx(first.top_contexts[0].activation, rel=1e-3)
    assert entry["hist"]["counts"] == first.histogram_counts.tolist()
    table = report.summary_table()
    assert list(table["feature"]) == report.features
    for column in ("density", "max_activation", "mean_active", "top_token", "top_logit", "top_cofiring"):
        assert column in table.columns
    assert table.loc[0, "top_token"] == first.top_token


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": [10_000]}, r"feature 10000 is not a latent of this SAE \(width 72"),
        ({"features": [-1]}, "width 72"),
        ({"hook": "blocks.9.resid_post"}, "blocks.9.resid_post"),
        ({"texts": []}, "no texts"),
        ({"selection": "best"}, "selection 'best' is unknown"),
        ({"top_n": 0}, "top_n must be an integer >= 1"),
        ({"context_window": (3,)}, "context_window"),
    ],
)
def test_bad_inputs_are_one_line(llama, kwargs, message):
    options = {"texts": TEXTS, **kwargs}
    texts = options.pop("texts")
    with pytest.raises(ConfigError, match=message) as info:
        feature_report(llama, identity_sae(llama.info.d_model), texts, **options)
    assert "\n" not in str(info.value)


def test_an_sae_for_another_width_is_refused(llama):
    with pytest.raises(ConfigError, match="d_in is 65"):
        feature_report(llama, identity_sae(llama.info.d_model + 1), TEXTS)


def test_an_sae_without_a_hook_needs_one(llama):
    with pytest.raises(ConfigError, match="cfg.hook is not set"):
        feature_report(llama, identity_sae(llama.info.d_model, hook=""), TEXTS)
    report = feature_report(llama, identity_sae(llama.info.d_model, hook=""), TEXTS, HOOK, top_n=2)
    assert report.hook == HOOK


def test_figures(exact):
    report, _, _, _ = exact
    assert getattr(plot_feature_density, FIGURE_FUNCTION_MARK) and getattr(plot_feature_cards, FIGURE_FUNCTION_MARK)
    style = FigureStyle()
    fig = plot_feature_density(report.density, style)
    assert "dead (never active): " in fig.axes[0].texts[0].get_text()
    cards = report.cards(limit=8)
    assert len(cards) == 8 and json.loads(json.dumps(cards)) == cards  # plain data the recipe codec saves
    cards[0]["top_logits"] = ["$x$", "a$b"]
    fig = plot_feature_cards(cards, style)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 8
    fig.canvas.draw()  # token text with "$" must not be parsed as mathtext
    assert isinstance(report, FeatureReport)
