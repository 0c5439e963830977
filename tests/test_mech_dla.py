"""direct_logit_attribution: exact properties on tiny random models, the IOI known answer on SmolLM2."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from interpsuite_plugins.mechanistic.dla import (
    DirectLogitAttributionAnalyzer,
    capture_names,
    direct_logit_attribution,
    ioi_names,
)

from interpsuite import InterpretabilityPipeline
from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import describe_model, load_model
from interpsuite.results import read_results

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]
IOI = "When Mary and John went to the store, John gave a drink to"
CAUSAL = ["tiny_llama", "tiny_gpt2"]
#: every tiny decoder family: parallel blocks + LayerNorm (NeoX), soft-capping and heads that do not
#: sum to attn.out (Gemma-2), sliding windows (Mistral, Qwen2)
ALL_CAUSAL = [*CAUSAL, "tiny_neox", "tiny_gemma2", "tiny_mistral", "tiny_qwen2"]
#: token ids (of the 258-token byte-level vocabulary) used as per-row targets and contrasts on the tiny models
TARGETS, CONTRASTS = [65, 66, 67], [120, 121, 122]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def extra_models():
    return {name: load_model(name) for name in ALL_CAUSAL if name not in CAUSAL}


def causal(tiny_models, extra_models, name):
    return tiny_models[name] if name in tiny_models else extra_models[name]


def run(model, texts=TEXTS, **options):
    cls = DirectLogitAttributionAnalyzer
    analyzer = cls(build_config(cls, options))
    analyzer.validate(model.info, analyzer.cfg)
    ctx = RunContext(model=model, inputs=Inputs(list(texts), "test"), show_progress=False)
    result = analyzer.run(ctx)
    assert model.hooks_left() == 0
    return result


def failed(result):
    return [name for name, check in result.checks.items() if not check.passed]


def reference_terms(model, batch, target, contrast):
    """Each captured component pushed *forward* through the frozen final norm and the unembedding
    (no pull-back, no per-head algebra): the engine's terms must equal these."""
    adapter = model.adapter
    cache = model.forward(batch, capture=capture_names(model.info)).cache
    u = adapter.unembed_matrix()[target] - adapter.unembed_matrix()[contrast]  # [B, d_model]
    last = batch.last_index
    rows = torch.arange(batch.size)
    scale = cache["final.scale"]

    def term(component):
        with torch.no_grad():
            image = adapter.frozen_final_norm(component, scale)  # linear, no bias
        return (image[rows, last].double() * u.double()).sum(-1)

    terms = {"embed": term(cache["embed"])}
    for layer in range(model.info.n_layers):
        terms[f"attn{layer}"] = term(cache[f"blocks.{layer}.attn.out"])
        terms[f"mlp{layer}"] = term(cache[f"blocks.{layer}.mlp.out"])
    return terms


# --- the engine --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CAUSAL)
def test_components_sum_to_the_models_logit_difference(tiny_models, extra_models, name):
    model = causal(tiny_models, extra_models, name)
    batch = model.tokenize(TEXTS)
    dla = direct_logit_attribution(model, batch, TARGETS, CONTRASTS)
    with torch.no_grad():
        logits = model.forward(batch).output.double()
    target = torch.tensor(TARGETS)[:, None].expand(batch.input_ids.shape)
    contrast = torch.tensor(CONTRASTS)[:, None].expand(batch.input_ids.shape)
    diff = logits.gather(-1, target[..., None])[..., 0] - logits.gather(-1, contrast[..., None])[..., 0]
    mask = batch.attention_mask.bool()
    if model.info.logit_softcap is None:  # Gemma-2: the attribution explains the pre-cap logits
        assert torch.allclose(dla.logit_diff[mask], diff[mask], atol=1e-6)
    assert dla.sum_rel_err() <= 1e-5
    assert (dla.total - dla.logit_diff)[mask].abs().max() <= 1e-5
    if model.info.heads_sum_to_attn_out:
        assert dla.heads is not None and dla.heads.shape[2:] == (model.info.n_layers, model.info.n_heads)
        assert dla.heads_vs_attn_out_rel_err <= 1e-5
    else:
        assert dla.heads is None and any("per layer only" in n for n in dla.notes)
    if model.info.logit_softcap is not None:
        assert any("before the cap" in n for n in dla.notes)


@pytest.mark.parametrize("name", ALL_CAUSAL)
def test_the_top1_default_and_no_contrast_also_sum_exactly(tiny_models, extra_models, name):
    model = causal(tiny_models, extra_models, name)
    batch = model.tokenize(TEXTS)
    dla = direct_logit_attribution(model, batch)
    with torch.no_grad():
        top1 = model.forward(batch).output.argmax(-1)
    assert torch.equal(dla.target_ids, top1) and dla.contrast_ids is None
    assert dla.sum_rel_err() <= 1e-5


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_neox"])
def test_every_term_equals_the_component_pushed_through_the_frozen_norm(tiny_models, extra_models, name):
    """Per-head terms sum to each layer's attn.out term; embed and MLP terms match a forward computation."""
    model = causal(tiny_models, extra_models, name)
    batch = model.tokenize(TEXTS)
    dla = direct_logit_attribution(model, batch, TARGETS, CONTRASTS)
    ref = reference_terms(model, batch, torch.tensor(TARGETS), torch.tensor(CONTRASTS))
    rows, last = torch.arange(batch.size), batch.last_index

    def close(a, b):
        return torch.allclose(a, b, atol=1e-6, rtol=1e-5)

    assert close(dla.embed[rows, last], ref["embed"])
    for layer in range(model.info.n_layers):
        heads = dla.heads[rows, last, layer].sum(-1) + dla.attn_bias[rows, last, layer]
        assert close(heads, ref[f"attn{layer}"])
        assert close(dla.attn[rows, last, layer], ref[f"attn{layer}"])
        assert close(dla.mlp[rows, last, layer], ref[f"mlp{layer}"])


def test_bias_terms_are_attributed_and_the_sum_stays_exact():
    """GPT-2 with random LayerNorm, attention-output and MLP biases, and an lm_head bias added."""
    model = load_model("tiny_gpt2")  # a fresh copy: its weights are changed here
    torch.manual_seed(0)
    hf = model.hf_model
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.5)
        hf.lm_head.bias = torch.nn.Parameter(torch.randn(hf.lm_head.out_features))
    batch = model.tokenize(TEXTS)
    dla = direct_logit_attribution(model, batch, TARGETS, CONTRASTS)
    mask = dla.mask
    assert dla.final_norm_bias[mask].abs().min() > 0
    assert dla.attn_bias[mask].abs().min() > 0
    expected = hf.lm_head.bias[torch.tensor(TARGETS)] - hf.lm_head.bias[torch.tensor(CONTRASTS)]
    assert torch.allclose(dla.unembed_bias[:, 0], expected.double(), atol=1e-6)
    assert dla.sum_rel_err() <= 1e-5
    assert dla.heads_vs_attn_out_rel_err <= 1e-5


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("layer", [0, 1])
def test_zero_ablating_a_head_with_everything_downstream_frozen_removes_exactly_its_term(tiny_models, name, layer):
    """Only the direct path changes when every later sublayer output and the final scale are frozen."""
    model = tiny_models[name]
    head = 2
    batch = model.tokenize(TEXTS)
    dla = direct_logit_attribution(model, batch, TARGETS, CONTRASTS)
    n_layers = model.info.n_layers
    frozen = [f"blocks.{layer}.mlp.out", "final.scale"]
    frozen += [f"blocks.{later}.{site}" for later in range(layer + 1, n_layers) for site in ("attn.out", "mlp.out")]
    clean = model.forward(batch, capture=frozen).cache
    interventions = [Intervention(f"blocks.{layer}.attn.z", "zero", heads=[head])]
    interventions += [Intervention(n, "replace", value=clean[n]) for n in frozen]
    with torch.no_grad():
        logits = model.forward(batch, interventions=interventions).output.double()
    rows, last = torch.arange(batch.size), batch.last_index
    ablated = logits[rows, last, TARGETS] - logits[rows, last, CONTRASTS]
    change = ablated - dla.logit_diff[rows, last]
    assert torch.allclose(change, -dla.heads[rows, last, layer, head], atol=1e-5)


# --- validation ----------------------------------------------------------------------------------
def test_encoders_and_post_norm_models_are_refused_before_weights_load():
    cls = DirectLogitAttributionAnalyzer
    analyzer = cls(build_config(cls, {}))
    for name in ("tiny_bert", "minilm"):
        with pytest.raises(ConfigError, match="encoder without an unembedding") as err:
            analyzer.validate(describe_model(name), analyzer.cfg)
        assert "\n" not in str(err.value)
    post_norm = dataclasses.replace(describe_model("tiny_llama"), post_norm=True)
    with pytest.raises(ConfigError, match="post-norm"):
        analyzer.validate(post_norm, analyzer.cfg)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"positions": "first"}, "positions"),
        ({"target": " a", "targets": [" a"]}, "not both"),
        ({"contrast": " a", "contrasts": [" a"]}, "not both"),
        ({"pairs": "ioi", "target": " a"}, "brings its own"),
        ({"pairs": "nope"}, "pairs"),
        ({"target": ""}, "empty"),
        ({"targets": []}, "non-empty"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_bad_options_are_refused_in_validate(options, message):
    cls = DirectLogitAttributionAnalyzer
    analyzer = cls(build_config(cls, options))
    with pytest.raises(ConfigError, match=message):
        analyzer.validate(describe_model("tiny_llama"), analyzer.cfg)


def test_per_text_targets_must_match_the_texts(tiny_models):
    with pytest.raises(ConfigError, match="one per text"):
        run(tiny_models["tiny_llama"], targets=["a", "b"])
    with pytest.raises(ConfigError, match="pieces"):
        run(tiny_models["tiny_llama"], target=" Mary")  # byte-level: five pieces


def test_ioi_names_finds_the_indirect_object_and_the_subject():
    assert ioi_names(IOI) == ("Mary", "John")
    assert ioi_names("Then, Kate and Paul had a long day at school. Paul gave a pencil to") == ("Kate", "Paul")
    assert ioi_names("The quick brown fox jumps over the lazy dog.") is None
    assert ioi_names("Mary and John went home") is None


# --- the analyzer --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CAUSAL)
def test_analyzer_outputs_and_checks(tiny_models, name):
    model = tiny_models[name]
    info = model.info
    result = run(model, target="A", contrast="x")
    assert failed(result) == []
    assert result.checks["components_sum_to_logit_diff_rel_err"].value <= 1e-5
    assert set(result.checks) == {"components_sum_to_logit_diff_rel_err", "heads_sum_to_attn_out_rel_err"}
    assert {"heads", "layers", "positions", "position_layers", "terms"} <= set(result.tables)
    assert set(result.figures) == {"heads", "layers", "positions"}
    heads, layers = result.tables["heads"], result.tables["layers"]
    assert len(heads) == info.n_layers * info.n_heads
    per_layer = heads.groupby("layer")["mean"].sum().to_numpy() + layers["attn_bias"].to_numpy()
    assert per_layer == pytest.approx(layers["attn"].to_numpy(), abs=1e-9)
    terms = result.tables["terms"].set_index("term")["mean"]
    assert terms["total"] == pytest.approx(terms["logit_diff"], abs=1e-5)
    assert layers["cumulative"].iloc[-1] + terms["final_norm_bias"] + terms["unembed_bias"] == pytest.approx(
        terms["logit_diff"], abs=1e-5
    )
    positions = result.tables["positions"]
    assert int(positions["evaluated"].sum()) == len(TEXTS) == result.metrics["positions"]
    assert set(positions["target"]) == {"A"} and set(positions["contrast"]) == {"x"}
    top = heads.sort_values("rank").iloc[0]
    assert result.summary["top_heads"][0]["head"] == f"L{int(top.layer)}H{int(top['head'])}"
    assert len(result.summary["top_heads"]) == min(10, info.n_layers * info.n_heads)


def test_all_positions_and_the_top1_default(tiny_models):
    model = tiny_models["tiny_llama"]
    result = run(model, positions="all")
    assert failed(result) == []
    assert result.metrics["positions"] == model.tokenize(TEXTS).n_tokens
    assert "contrast" not in result.tables["positions"] and "logit_diff.positive_fraction" not in result.metrics
    assert "top-1" in result.summary["target"]


def test_ioi_pairs_and_ioi_texts_give_the_indirect_object_minus_the_subject(tiny_models):
    model = tiny_models["tiny_gpt2"]
    result = run(model, pairs="ioi", n_pairs=4)
    assert failed(result) == [] and result.metrics["positions"] == 4
    assert "indirect object - subject" in result.summary["target"]
    # byte-level names are not one token: IOI texts fall back to the top-1, and say so
    texts = run(model, texts=[IOI])
    assert "top-1" in texts.summary["target"] and texts.summary["notes"]


def test_gemma2_reports_attention_per_layer_only(extra_models):
    result = run(extra_models["tiny_gemma2"], target="A", contrast="x")
    assert failed(result) == []
    assert "heads" not in result.tables and "heads" not in result.figures
    assert set(result.checks) == {"components_sum_to_logit_diff_rel_err"}
    assert result.summary["per_head"] is False
    notes = " ".join(result.summary["notes"])
    assert "per layer only" in notes and "before the cap" in notes


def test_pipeline_writes_tables_and_figures(tiny_models, tmp_path):
    InterpretabilityPipeline(
        model=tiny_models["tiny_llama"],
        data=TEXTS,
        analyzers={"direct_logit_attribution": {"target": "A"}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    ).run()
    entry = read_results(tmp_path)["analyzers"]["direct_logit_attribution"]
    assert entry["status"] == "ok", entry["error"]
    assert all(check["passed"] for check in entry["checks"].values())
    assert set(entry["figures"]) == {"heads", "layers", "positions"}
    for paths in entry["figures"].values():
        assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["pdf", "png"]
    assert {"heads", "layers", "positions", "position_layers", "terms"} <= set(entry["tables"])


# --- SmolLM2 (slow) ------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_ioi_known_answer(smollm2):
    """' Mary' - ' John' on the IOI prompt: positive, explained exactly; the top heads are reported."""
    result = run(smollm2, texts=[IOI], target=" Mary", contrast=" John")
    assert failed(result) == []
    assert result.metrics["logit_diff.mean"] > 0
    assert result.checks["components_sum_to_logit_diff_rel_err"].value <= 1e-4
    heads = result.tables["heads"].sort_values("mean", ascending=False)
    print("SmolLM2 IOI logit diff", result.metrics["logit_diff.mean"], "top heads", result.summary["top_heads"][:5])
    # name movers sit in late layers in the IOI literature: the strongest positive head is in the second half
    assert int(heads.iloc[0]["layer"]) >= smollm2.info.n_layers // 2
    # the default on IOI texts is the same difference (indirect object - subject)
    default = run(smollm2, texts=[IOI])
    assert default.metrics["logit_diff.mean"] == pytest.approx(result.metrics["logit_diff.mean"], abs=1e-6)
