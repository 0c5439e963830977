"""head_ablation: exact properties on tiny random models, the IOI known answer on SmolLM2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interpsuite_plugins.mechanistic.head_ablation import (
    HeadAblation,
    ablation,
    derangement,
    loss_evaluation,
    reference_means,
    resample_values,
    token_nll,
    z_name,
)

from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]
IOI = "When Mary and John went to the store, John gave a drink to"
CAUSAL = ["tiny_llama", "tiny_gpt2"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def run(model, texts=TEXTS, **options):
    analyzer = HeadAblation(build_config(HeadAblation, options))
    analyzer.validate(model.info, analyzer.cfg)
    ctx = RunContext(model=model, inputs=Inputs(list(texts), "test"), show_progress=False)
    result = analyzer.run(ctx)
    assert model.hooks_left() == 0
    return result


@pytest.mark.parametrize("name", CAUSAL)
def test_zero_ablating_a_head_equals_the_manual_computation(tiny_models, name):
    """o_proj(z with head h's slice zeroed), added to resid_pre, is what the intervention feeds the model."""
    model = tiny_models[name]
    layer, head, dh = 1, 2, model.info.d_head
    batch = model.tokenize(TEXTS)
    names = [f"blocks.{layer}.{s}" for s in ("resid_pre", "attn.z", "attn.out", "mlp.out", "resid_post")]
    clean = model.forward(batch, capture=names).cache
    proj = model.adapter.attention_output_projection(layer)
    with torch.no_grad():
        assert torch.allclose(proj(clean[names[1]].flatten(-2)), clean[names[2]], atol=1e-6)
        z = clean[names[1]].clone()
        z[:, :, head] = 0.0
        manual_out = proj(z.flatten(-2))
    zero = Intervention(z_name(layer), "zero", heads=[head])
    ablated = model.forward(batch, capture=names, interventions=[zero])
    assert torch.equal(ablated.cache[names[1]][:, :, head], torch.zeros_like(z[:, :, head]))
    assert torch.allclose(ablated.cache[names[2]], manual_out, atol=1e-6)
    # the residual stream after attention: resid_pre + the hand-made attention output
    mask = batch.attention_mask.bool()
    resid_mid = ablated.cache[names[4]] - ablated.cache[names[3]]
    assert torch.allclose(resid_mid[mask], (clean[names[0]] + manual_out)[mask], atol=1e-5)
    # and the logits: the same as writing the hand-made attention output in place of attn.out
    by_hand = model.forward(batch, interventions=[Intervention(names[2], "replace", value=manual_out)])
    assert torch.allclose(ablated.output[mask], by_hand.output[mask], atol=1e-5)
    assert not torch.allclose(ablated.output[mask], model.forward(batch).output[mask], atol=1e-4)
    assert dh * model.info.n_heads == z.shape[-1] * z.shape[-2]


@pytest.mark.parametrize("name", CAUSAL)
def test_batched_sweep_equals_a_per_head_loop(tiny_models, name):
    model = tiny_models[name]
    result = run(model, sweep_batch_size=7)  # several items per pass, uneven last pass
    assert all(check.passed for check in result.checks.values()), result.checks
    assert result.checks["sweep_clean_matches_forward"].value <= 1e-6
    table = result.tables["effects"]
    info = model.info
    assert len(table) == 3 * info.n_layers * info.n_heads
    evaluation = loss_evaluation(model, TEXTS, 128)
    layers = list(range(info.n_layers))
    means, _ = reference_means(model, TEXTS, layers, 8, 128)
    means = {layer: m.float() for layer, m in means.items()}
    zs = model.forward(evaluation.batch, capture=[z_name(L) for L in layers]).cache
    resampled = {L: resample_values(zs[z_name(L)], evaluation.batch.lengths, derangement(3, 0)) for L in layers}
    clean = evaluation.value(model.forward(evaluation.batch).output)
    for row in table.itertuples():
        iv = ablation(row.strategy, row.layer, row.head, means, resampled)
        value = evaluation.value(model.forward(evaluation.batch, interventions=[iv]).output)
        assert row.ablated == pytest.approx(value, abs=1e-5)
        assert row.effect == pytest.approx(value - clean, abs=1e-5)
    for strategy in ("zero", "mean", "resample"):
        ranks = table[table.strategy == strategy].sort_values("rank")
        assert ranks["rank"].tolist() == list(range(1, len(ranks) + 1))
        assert np.all(np.diff(ranks.effect.abs().to_numpy()) <= 1e-12)


def test_loss_is_the_mean_next_token_nll_over_real_tokens(tiny_models):
    model = tiny_models["tiny_llama"]
    evaluation = loss_evaluation(model, TEXTS, None)
    total, count = 0.0, 0
    for text in TEXTS:  # unpadded, one text at a time
        single = model.tokenize([text])
        logits = model.forward(single).output[0]
        ids = single.input_ids[0]
        total += float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum"))
        count += len(ids) - 1
    assert evaluation.value(model.forward(evaluation.batch).output) == pytest.approx(total / count, rel=1e-5)
    sums, counts = token_nll(model.forward(evaluation.batch).output, evaluation.batch)
    assert int(counts.sum()) == count


def test_mean_ablation_with_the_same_texts_as_reference_is_the_batch_mean(tiny_models):
    model = tiny_models["tiny_llama"]
    layers = [0, 1]
    batch = model.tokenize(TEXTS)
    zs = model.forward(batch, capture=[z_name(L) for L in layers]).cache
    for layer in layers:
        real = torch.cat([zs[z_name(layer)][b, :n] for b, n in enumerate(batch.lengths.tolist())])
        by_hand = real.double().mean(0)  # [H, dh] over every real token of every text
        streamed, tokens = reference_means(model, TEXTS, [layer], 1, None)  # one text per batch
        assert tokens == batch.n_tokens
        assert torch.allclose(streamed[layer], by_hand, atol=1e-6)
    # reference: inputs (the run's texts, streamed) and reference: prompts (the evaluated batch) agree
    inputs = run(model, strategies=["mean"], reference="inputs").tables["effects"]
    prompts = run(model, strategies=["mean"], reference="prompts").tables["effects"]
    assert np.allclose(inputs.effect, prompts.effect, atol=1e-5)


def test_resampling_from_itself_is_a_no_op(tiny_models):
    model = tiny_models["tiny_gpt2"]
    evaluation = loss_evaluation(model, TEXTS, None)
    batch = evaluation.batch
    z = model.forward(batch, capture=[z_name(1)]).cache[z_name(1)]
    same = resample_values(z, batch.lengths, list(range(batch.size)))
    mask = batch.attention_mask.bool()
    assert torch.equal(same[mask], z[mask])
    items = [[]] + [[Intervention(z_name(1), "resample", value=same, heads=[h])] for h in range(model.info.n_heads)]
    values = evaluation.reduce(model.sweep(batch, items, evaluation.metric).double())
    assert torch.allclose(values, values[0].expand_as(values), atol=1e-6)
    # another row: same positions, clamped to the source's last real token where it is shorter
    perm = derangement(batch.size, 0)
    assert all(p != i for i, p in enumerate(perm))
    moved = resample_values(z, batch.lengths, perm)
    for b, source in enumerate(perm):
        last = int(batch.lengths[source]) - 1
        for t in range(z.shape[1]):
            assert torch.equal(moved[b, t], z[source, min(t, last)])


@pytest.mark.parametrize("name", CAUSAL)
def test_logit_diff_metric_on_ioi_pairs(tiny_models, name):
    result = run(tiny_models[name], metric="logit_diff", n_pairs=4, layers=[1, -2], top_k=3)
    assert all(check.passed for check in result.checks.values()), result.checks
    table = result.tables["effects"]
    assert result.summary["layers"] == [0, 1]  # resolved and sorted: heatmap rows follow the layers
    assert len(table) == 3 * 2 * tiny_models[name].info.n_heads
    critical = result.tables["critical_heads"]
    assert len(critical) == 9 and set(critical.strategy) == {"zero", "mean", "resample"}
    assert "spearman.zero_vs_mean" in result.metrics and "topk_overlap.mean_vs_resample" in result.metrics
    assert set(result.figures) == {"effects", "strategy_comparison"}
    assert result.summary["evaluated"] == "ioi: 4 pairs"


def test_bad_inputs_are_refused_with_a_clear_message(tiny_models, tmp_path):
    llama = tiny_models["tiny_llama"]
    analyzer = HeadAblation(build_config(HeadAblation, {}))
    with pytest.raises(ConfigError, match="encoder without a causal LM head"):
        analyzer.validate(tiny_models["tiny_bert"].info, analyzer.cfg)
    bad = [
        ({"strategies": ["zero", "median"]}, "strategies"),
        ({"strategies": []}, "strategies"),
        ({"metric": "accuracy"}, "metric='accuracy'"),
        ({"pairs": "ioi"}, "only used with metric: logit_diff"),
        ({"metric": "logit_diff", "pairs": str(tmp_path / "missing.jsonl")}, "not found"),
        ({"reference": "corpus"}, "reference"),
        ({"layers": [7]}, "layer 7 out of range"),
        ({"top_k": 0}, "top_k must be >= 1"),
        ({"metric": "logit_diff", "n_pairs": 1}, "n_pairs >= 2"),
    ]
    for options, message in bad:
        with pytest.raises(ConfigError, match=message):
            analyzer = HeadAblation(build_config(HeadAblation, options))
            analyzer.validate(llama.info, analyzer.cfg)
    with pytest.raises(ConfigError, match="at least 2 evaluated prompts"):
        run(llama, texts=["Only one text here."])
    with pytest.raises(ConfigError, match="single token"):
        run(llama, texts=["a", "b"], strategies=["zero"])
    assert llama.hooks_left() == 0


def test_smollm2_ioi_name_mover_heads(smollm2, tmp_path):
    """Known answer: on the IOI prompt, ablating a few late heads costs most of the logit difference."""
    pairs = tmp_path / "ioi.jsonl"
    record = {"clean": IOI, "corrupted": IOI.replace("John gave", "Mary gave"), "answer": " Mary", "wrong": " John"}
    pairs.write_text(json.dumps(record) + "\n")
    result = run(smollm2, texts=TEXTS[:2], metric="logit_diff", pairs=str(pairs), strategies=["zero"], top_k=5)
    assert all(check.passed for check in result.checks.values()), result.checks
    clean = result.metrics["clean.logit_diff"]
    assert clean == pytest.approx(6.12, abs=0.05)  # " Mary" is the clear answer
    table = result.tables["effects"]
    worst = table.sort_values("effect").iloc[0]
    # measured: zero-ablating L23H3 alone halves the logit difference (-3.04 of 6.12); like GPT-2's name
    # movers (L9H9, L10H0 of 12 layers) it sits late in the model
    assert (int(worst.layer), int(worst["head"])) == (23, 3)
    assert worst.effect == pytest.approx(-3.04, abs=0.2)
    top = result.summary["top_heads"]["zero"]
    assert [h["head"] for h in top[:3]] == ["L23H3", "L1H5", "L29H1"]


def test_smollm2_loss_metric(smollm2):
    result = run(smollm2, texts=TEXTS[:2], layers=[0, 1], top_k=3)
    assert all(check.passed for check in result.checks.values()), result.checks
    assert 1.0 < result.metrics["clean.loss"] < 8.0
    assert len(result.tables["effects"]) == 3 * 2 * smollm2.info.n_heads
    assert result.metrics["zero.max_abs_effect"] > 0.0
