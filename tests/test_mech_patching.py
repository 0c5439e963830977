"""Activation patching and the sweep engine under it: exact properties on tiny models, known answers on SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
from interpsuite_plugins.mechanistic.metrics import last_positions, sweep_logit_diff
from interpsuite_plugins.mechanistic.pairs import PromptPair, ioi_pairs, load_pairs, read_pairs, tokenize_pairs
from interpsuite_plugins.mechanistic.patching import ActivationPatching, head_items, prepare

from interpsuite import InterpretabilityPipeline
from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

CAUSAL = ["tiny_llama", "tiny_gpt2"]


def run(model, **options):
    analyzer = ActivationPatching(build_config(ActivationPatching, options))
    analyzer.validate(model.info, analyzer.cfg)
    return analyzer.run(RunContext(model=model, inputs=Inputs(["Hi"], "test"), show_progress=False))


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("keep", ["last", 2, 0])
def test_sweep_skipping_layers_and_positions_changes_nothing(tiny_models, name, keep):
    """Starting passes late (layer) and after a clean key/value prefix (position) is exact."""
    model = tiny_models[name]
    batch = model.tokenize(["The quick brown fox jumps over", "Paris is the capital of France."])
    width = batch.input_ids.shape[1]
    names = [f"blocks.{L}.{s}" for L in range(model.info.n_layers) for s in ("resid_pre", "attn.z")]
    cache = model.forward(batch, capture=names).cache
    torch.manual_seed(0)
    other = {k: v + torch.randn_like(v) for k, v in cache.items()}
    items = [[]]
    for layer in range(model.info.n_layers):
        resid, z = other[f"blocks.{layer}.resid_pre"], other[f"blocks.{layer}.attn.z"]
        items += [
            [Intervention(f"blocks.{layer}.resid_pre", "replace", value=resid, positions=[p])] for p in range(width)
        ]
        items += [[Intervention(f"blocks.{layer}.mlp.out", "zero", positions=[p, -1])] for p in range(0, width, 3)]
        items += [
            [Intervention(f"blocks.{layer}.attn.z", "replace", value=z, heads=[h], positions=list(range(4, width)))]
            for h in range(model.info.n_heads)
        ]
        items += [[Intervention(f"blocks.{layer}.attn.z", "mean", heads=[h], positions=[5, 6])] for h in range(2)]
    logits_to_keep = last_positions(batch)[0] if keep == "last" else keep

    def metric(out, repeated):
        return out[:, :, :7].sum((1, 2))

    fast = model.sweep(batch, items, metric, batch_size=12, logits_to_keep=logits_to_keep)
    plain = model.sweep(batch, items, metric, batch_size=12, logits_to_keep=logits_to_keep, reuse_prefix=False)
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)
    assert model.hooks_left() == 0


@pytest.mark.parametrize("name", CAUSAL)
def test_patching_the_whole_clean_residual_at_the_last_layer_gives_the_clean_logits(tiny_models, name):
    model = tiny_models[name]
    pairs = tokenize_pairs(model, ioi_pairs(4, 0, model.tokenizer))
    last = f"blocks.{model.info.n_layers - 1}.resid_post"
    clean = model.forward(pairs.clean, capture=[last])
    patched = model.forward(pairs.corrupted, interventions=[Intervention(last, "replace", value=clean.cache[last])])
    assert torch.allclose(patched.output, clean.output, atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_batched_head_patching_equals_one_pass_per_head(tiny_models, name):
    model = tiny_models[name]
    pairs = tokenize_pairs(model, ioi_pairs(3, 1, model.tokenizer))
    layers = list(range(model.info.n_layers))
    run_ = prepare(model, pairs, [f"blocks.{L}.attn.z" for L in layers])
    batched = run_.sweep(head_items(run_, layers), batch_size=5)
    keep, column = last_positions(pairs.corrupted)
    metric = sweep_logit_diff(column, pairs.answer_ids, pairs.wrong_ids)
    loop = []
    for layer in layers:
        for h in range(model.info.n_heads):
            z = run_.clean[f"blocks.{layer}.attn.z"]
            patch = Intervention(f"blocks.{layer}.attn.z", "replace", value=z, heads=[h])
            out = model.forward(pairs.corrupted, interventions=[patch], logits_to_keep=keep).output
            loop.append(metric(out, pairs.corrupted).double().mean())
    assert torch.allclose(batched, torch.stack(loop), atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_analyzer_endpoints_tables_and_untouched_prefix(tiny_models, name):
    model = tiny_models[name]
    result = run(model, n_pairs=4)
    assert result.failed_checks == []
    for check in ("endpoint_corrupted_is_0", "endpoint_clean_is_1_first_layer", "endpoint_clean_is_1_last_layer"):
        assert result.checks[check].value <= 1e-4
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    assert len(result.tables["heads"]) == n_layers * n_heads
    resid = result.tables["resid_pre"]
    first = result.summary["position_group"]["filled_zero_before"]
    assert (resid[resid.position < first].patched == 0).all()
    # the position-resolved patch of the last layer's input at the last token matches an explicit forward
    group = result.summary["position_group"]
    assert group["pairs"] >= 1 and len(group["tokens"]) == resid.position.max() + 1
    assert set(result.figures) == {"heads", "layer_position", "heads_by_position"}
    assert model.hooks_left() == 0


def test_user_pairs_position_map_and_bad_inputs(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    with pytest.raises(ConfigError, match="patching needs equal lengths.*position_map"):
        tokenize_pairs(model, [PromptPair("abcd", "abc", "x", "y")])
    mapped = tokenize_pairs(model, [PromptPair("abcd", "abd", "x", "y", position_map=(0, 1, 3))])
    assert mapped.clean_index[0, :3].tolist() == [0, 1, 3] and mapped.first_diff == 2
    with pytest.raises(ConfigError, match="position_map has 2 entries"):
        tokenize_pairs(model, [PromptPair("abcd", "abd", "x", "y", position_map=(0, 1))])
    with pytest.raises(ConfigError, match="split by the tokenizer"):
        tokenize_pairs(model, [PromptPair("abcd", "abce", " Mary", "y")])
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"clean": "abcd", "corrupted": "abce", "answer": "x", "wrong": "y"}) + "\n{broken\n")
    with pytest.raises(ConfigError, match="pairs.jsonl:2: not valid JSON"):
        read_pairs(path)
    with pytest.raises(ConfigError, match="choose one of ioi, factual or a .jsonl"):
        run(model, pairs="nonsense")
    with pytest.raises(ConfigError, match="unknown or no sites"):
        run(model, sites=["heads", "mlp"])


def test_encoders_are_refused_before_any_work(tiny_models, tmp_path):
    report = InterpretabilityPipeline(
        model=tiny_models["tiny_bert"],
        data=["Hi"],
        analyzers={"activation_patching": {}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    )
    with pytest.raises(ConfigError, match="causal"):
        report.run()


def test_smollm2_ioi_patching_known_answers(smollm2):
    """Endpoints exactly 0 and 1 on the IOI prompt, and the heads that carry the name are late heads."""
    pair = PromptPair(
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
        " Mary",
        " John",
    )
    pairs = tokenize_pairs(smollm2, [pair])
    assert pairs.first_diff == 9
    result = run(smollm2, pairs="ioi", n_pairs=4, sites=["heads"])
    assert result.failed_checks == []
    assert result.metrics["clean_logit_diff"] > 0 > result.metrics["corrupted_logit_diff"]
    assert abs(result.metrics["endpoint_corrupted"]) <= 1e-4
    assert abs(result.metrics["endpoint_clean_last_layer"] - 1) <= 1e-4
    heads = result.tables["heads"]
    best = heads.loc[heads.patched.idxmax()]
    assert best.layer >= smollm2.info.n_layers // 2  # the name is moved to the answer late in the network


def test_factual_pairs_come_from_the_shipped_facts(smollm2):
    pairs = load_pairs("factual", smollm2.tokenizer, 6)
    batch = tokenize_pairs(smollm2, pairs)
    assert batch.size == len(pairs) >= 2
    assert all(p.answer != p.wrong for p in pairs)
