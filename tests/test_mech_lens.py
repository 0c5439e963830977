"""Logit lens and tuned lens: exact properties on tiny random models, known answers on SmolLM2."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest
import torch
from interpsuite_plugins.mechanistic.lens import LogitLens, kl_to_final, settle
from interpsuite_plugins.mechanistic.tuned_lens import (
    TunedLens,
    TunedLensAnalyzer,
    build_objective,
    collect_residuals,
    heldout_kl,
    split_texts,
)

from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.errors import ConfigError
from interpsuite.hookspecs import hookimpl

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]
CAUSAL = ["tiny_llama", "tiny_gpt2"]
#: tuned-lens options that keep tiny-model runs fast
QUICK = {"max_train_tokens": 512, "steps": 5}


def run(cls, model, texts=TEXTS, **options):
    analyzer = cls(build_config(cls, options))
    analyzer.validate(model.info, analyzer.cfg)
    ctx = RunContext(model=model, inputs=Inputs(list(texts), "test"), show_progress=False)
    result = analyzer.run(ctx)
    assert model.hooks_left() == 0
    for figure in result.figures.values():
        plt.close(figure)
    return result


def failed(result):
    return [name for name, check in result.checks.items() if not check.passed]


def direct_layer_logp(model, texts, layer):
    """Reference: hidden states from transformers itself, final norm + lm_head by hand."""
    batch = model.tokenize(texts)
    with torch.no_grad():
        out = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        final = model.adapter.final_module()
        hidden = out.hidden_states[layer + 1]  # hidden_states[0] = embeddings, [L + 1] = after block L
        logp = torch.log_softmax(model.adapter.unembed_module()(final(hidden)), -1)
    return batch, logp, torch.log_softmax(out.logits, -1)


# --- logit lens -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CAUSAL)
def test_logit_lens_last_layer_is_the_model(tiny_models, name):
    model = tiny_models[name]
    result = run(LogitLens, model)
    assert failed(result) == []
    assert result.checks["last_layer_matches_logits_max_abs"].value <= 1e-5
    layers = result.tables["layers"].set_index("layer")
    last = model.info.n_layers - 1
    assert layers.loc[last, "kl_to_final"] == pytest.approx(0.0, abs=1e-6)
    assert layers.loc[last, "top1_agreement"] == 1.0
    assert list(layers.index) == [-1, *range(model.info.n_layers)]
    assert {"top_token_grid", "target_by_layer", "kl_by_layer"} <= set(result.figures)


@pytest.mark.parametrize("name", CAUSAL)
def test_logit_lens_kl_and_top_tokens_equal_a_direct_computation(tiny_models, name):
    model = tiny_models[name]
    result = run(LogitLens, model, top_k=3)
    batch, logp, final_logp = direct_layer_logp(model, TEXTS, 0)
    mask = batch.attention_mask.bool()
    kl = kl_to_final(final_logp, logp)[mask].mean()
    torch_kl = torch.nn.functional.kl_div(logp[mask], final_logp[mask], log_target=True, reduction="batchmean")
    assert float(kl) == pytest.approx(float(torch_kl), rel=1e-5)
    layers = result.tables["layers"].set_index("layer")
    assert layers.loc[0, "kl_to_final"] == pytest.approx(float(kl), rel=1e-5)
    top = result.tables["top_tokens"]
    row = top[(top.text_id == 1) & (top.position == 4) & (top.layer == 0)].sort_values("k")
    probs, ids = logp[1, 4].exp().topk(3)
    assert row.token_id.tolist() == ids.tolist()
    assert row.prob.to_numpy() == pytest.approx(probs.numpy(), abs=1e-6)


def test_logit_lens_target_probability_and_rank(tiny_models):
    model = tiny_models["tiny_llama"]
    result = run(LogitLens, model, target="a", layers=[0])
    target = model.token_id("a")[0]
    batch, logp, _ = direct_layer_logp(model, TEXTS, 0)
    frame = result.tables["target_by_layer"]
    for r in range(batch.size):
        last = logp[r, int(batch.last_index[r])]
        got = frame[(frame.text_id == r) & (frame.layer == 0)].iloc[0]
        assert got["prob"] == pytest.approx(float(last[target].exp()), rel=1e-5)
        assert got["rank"] == int((last > last[target]).sum()) + 1


def test_settle_layer_is_the_start_of_the_final_run_of_matches():
    assert settle([-1, 0, 1, 2], [True, False, True, True]) == 1
    assert settle([-1, 0, 1, 2], [True, True, True, True]) == -1
    assert settle([-1, 0, 1, 2], [True, True, True, False]) is None


def test_logit_lens_bad_inputs(tiny_models):
    info = tiny_models["tiny_llama"].info
    with pytest.raises(ConfigError, match="out of range"):
        LogitLens().validate(info, build_config(LogitLens, {"layers": [5]}))
    with pytest.raises(ConfigError, match="top_k"):
        LogitLens().validate(info, build_config(LogitLens, {"top_k": 0}))
    with pytest.raises(ConfigError, match="5 pieces"):  # byte-level tokenizer: " Mary" is 5 tokens
        run(LogitLens, tiny_models["tiny_llama"], target=" Mary")
    assert LogitLens.requires_causal_lm and TunedLensAnalyzer.requires_causal_lm


# --- tuned lens -----------------------------------------------------------------------------------
def random_lens(info, seed=0) -> TunedLens:
    lens = TunedLens.identity(info)
    generator = torch.Generator().manual_seed(seed)
    lens.weight = 0.1 * torch.randn(lens.weight.shape, generator=generator)
    lens.bias = torch.randn(lens.bias.shape, generator=generator)
    return lens


@pytest.mark.parametrize("name", CAUSAL)
def test_tuned_lens_save_load_round_trip_is_exact(tiny_models, name, tmp_path):
    model = tiny_models[name]
    lens = random_lens(model.info)
    lens.meta = {"steps": 3}
    folder = lens.save(tmp_path / "lens")
    meta = json.loads((folder / "tuned_lens.json").read_text())
    assert meta["model_name"] == name and meta["training"] == {"steps": 3}
    for path in (folder, folder / "tuned_lens.safetensors", folder / "tuned_lens.json"):
        loaded = TunedLens.load(path, model.info)
        assert torch.equal(loaded.weight, lens.weight) and torch.equal(loaded.bias, lens.bias)
    resid = torch.randn(2, 5, model.info.d_model)
    for layer in (-1, 0, model.info.n_layers - 1):
        assert torch.equal(lens.logits(model, layer, resid), loaded.logits(model, layer, resid))
    # the analyzer's round-trip check: 0 for the reloaded lens, not for another one
    assert heldout_kl(model, lens, TEXTS, 8, None, reloaded=loaded)[2] == 0.0
    assert heldout_kl(model, lens, TEXTS, 8, None, reloaded=random_lens(model.info, seed=1))[2] > 0.1


def test_tuned_lens_refuses_a_lens_of_another_model(tiny_models, tmp_path):
    folder = random_lens(tiny_models["tiny_gpt2"].info).save(tmp_path / "gpt2_lens")
    llama = tiny_models["tiny_llama"].info
    with pytest.raises(ConfigError, match="trained for model 'tiny_gpt2', not 'tiny_llama'"):
        TunedLens.load(folder, llama)
    with pytest.raises(ConfigError, match="trained for model 'tiny_gpt2'"):  # before any weights load
        TunedLensAnalyzer().validate(llama, build_config(TunedLensAnalyzer, {"load_path": str(folder)}))


@pytest.mark.parametrize("name", CAUSAL)
def test_tuned_lens_with_zero_steps_from_identity_is_the_logit_lens(tiny_models, name):
    model = tiny_models[name]
    result = run(TunedLensAnalyzer, model, init="identity", steps=0, max_train_tokens=64)
    table = result.tables["heldout_kl"]
    assert (table.tuned_lens_kl - table.logit_lens_kl).abs().max() == 0.0
    logit = run(LogitLens, model).tables["layers"]
    assert table.logit_lens_kl.to_numpy() == pytest.approx(logit.kl_to_final.to_numpy(), rel=1e-5)
    # not better than the logit lens: the check says so
    assert failed(result) == ["early_half_heldout_kl_tuned_over_logit"]


@pytest.mark.parametrize("name", CAUSAL)
def test_tuned_lens_training_lowers_the_training_kl(tiny_models, name):
    model = tiny_models[name]
    result = run(TunedLensAnalyzer, model, init="identity", steps=40, max_train_tokens=512)
    metrics = result.metrics
    assert metrics["train.objective_init"] == pytest.approx(metrics["train.objective_logit_lens"])
    assert metrics["train.objective_final"] < 0.97 * metrics["train.objective_init"]
    # each translator keeps its best monitored point: never worse than the best mean along the curve
    assert metrics["train.objective_final"] <= result.tables["training"].objective.min() + 1e-9
    default = run(TunedLensAnalyzer, model, **QUICK)
    assert default.metrics["train.objective_init"] < default.metrics["train.objective_logit_lens"]
    assert failed(default) == []
    assert default.summary["early_half"]["tuned_lens_kl_mean"] < default.summary["early_half"]["logit_lens_kl_mean"]


def test_tuned_lens_evaluates_a_saved_lens_without_training(tiny_models):
    model = tiny_models["tiny_llama"]
    trained = run(TunedLensAnalyzer, model, **QUICK)
    folder = trained.summary["saved_to"]
    loaded = run(TunedLensAnalyzer, model, load_path=folder)
    assert "training" not in loaded.tables and loaded.summary["lens"].startswith("loaded from")
    assert loaded.tables["heldout_kl"].equals(trained.tables["heldout_kl"])
    assert loaded.checks["save_load_max_abs_diff"].value == 0.0


def test_training_and_heldout_never_overlap(tiny_models, tmp_path):
    lines = [f"Line number {i} of a small training file about nothing much." for i in range(20)]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    model = tiny_models["tiny_llama"]
    # run data = the training file: the file is split
    result = run(TunedLensAnalyzer, model, texts=lines, train_path=str(path), **QUICK)
    assert "split: 4 of 20 lines held out" in result.summary["heldout"]
    assert result.checks["train_heldout_overlap_texts"].value == 0
    # run data overlapping a little: those lines leave the training set
    split = split_texts(lines, lines[:3] + ["something else"], 0.2, 0, "file")
    assert split.dropped == 3 and not set(split.train) & set(split.heldout)


def test_objective_rest_bucket_holds_the_remaining_final_mass(tiny_models):
    model = tiny_models["tiny_gpt2"]
    acts = collect_residuals(model, TEXTS, 100, 8, 64)
    assert acts.shape == (model.info.n_layers + 1, 77, model.info.d_model)
    subset = build_objective(model, acts, vocab_top=16, vocab_sample=8)
    total = subset.final_logp_top.exp().sum(-1) + subset.p_rest
    assert total.numpy() == pytest.approx(1.0, abs=1e-5)
    assert 0 < subset.mass_covered < 1 and len(subset.rest_ids) == model.info.vocab_size - 16
    exact = build_objective(model, acts, vocab_top=None, vocab_sample=8)
    assert exact.top_ids is None and exact.final_logp_top.shape == (77, model.info.vocab_size)


def test_tuned_lens_bad_inputs(tiny_models, tmp_path):
    info = tiny_models["tiny_llama"].info

    def validate(**options):
        TunedLensAnalyzer().validate(info, build_config(TunedLensAnalyzer, options))

    with pytest.raises(ConfigError, match="is not a file"):
        validate(train_path=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="no non-empty lines"):
        validate(train_path=str(empty))
    with pytest.raises(ConfigError, match="not found"):
        validate(load_path=str(tmp_path))
    with pytest.raises(ConfigError, match="init 'random'"):
        validate(init="random")
    with pytest.raises(ConfigError, match="steps"):
        validate(steps=-1)
    with pytest.raises(ConfigError, match="heldout_fraction"):
        validate(heldout_fraction=1.5)
    with pytest.raises(ConfigError, match="too few to split"):
        split_texts(["only one line"], ["only one line"], 0.2, 0, "one.txt")


# --- through the pipeline -------------------------------------------------------------------------
class LensPlugin:
    @hookimpl
    def interpsuite_analyzers(self):
        return [LogitLens, TunedLensAnalyzer]


@pytest.fixture(scope="module")
def registry():
    from interpsuite.plugins import get_registry

    registry = get_registry()
    if "logit_lens" not in registry.analyzers:  # the family does not list the lens modules yet
        registry = get_registry(extra_plugins=[LensPlugin()])
    return registry


def test_pipeline_runs_both_lenses_and_refuses_encoders(tiny_models, registry, tmp_path):
    from interpsuite import InterpretabilityPipeline
    from interpsuite.results import contract_errors, read_results

    def pipeline(model, run_dir):
        return InterpretabilityPipeline(
            model=model,
            data=TEXTS,
            analyzers={"logit_lens": {}, "tuned_lens": QUICK},
            output_dir=run_dir,
            sinks=["rundir"],
            progress=False,
            registry=registry,
        )

    pipeline(tiny_models["tiny_llama"], tmp_path).run()
    payload = read_results(tmp_path)
    assert contract_errors(payload, tmp_path) == []
    for name in ("logit_lens", "tuned_lens"):
        entry = payload["analyzers"][name]
        assert entry["status"] == "ok", entry["error"]
        assert all(check["passed"] for check in entry["checks"].values()), entry["checks"]
    assert (tmp_path / "data" / "tuned_lens" / "tuned_lens.safetensors").is_file()
    with pytest.raises(ConfigError, match="needs a causal LM"):
        pipeline(tiny_models["tiny_bert"], tmp_path / "bert").validate()


# --- SmolLM2 ----------------------------------------------------------------------------------------
EIFFEL = "The Eiffel Tower is located in the city of"


@pytest.mark.slow
def test_smollm2_logit_lens_finds_paris_in_the_late_layers(smollm2):
    result = run(LogitLens, smollm2, texts=[EIFFEL], target=" Paris")
    assert failed(result) == []
    text = result.tables["texts"].iloc[0]
    assert text.final_top1 == " Paris" and text.final_top1_prob == pytest.approx(0.70, abs=0.02)
    top = result.tables["top_tokens"]
    last = top[(top.position == top.position.max()) & (top.k == 1)].set_index("layer")
    assert (last.loc[27:29, "token"] == " Paris").all()  # top-1 in the last three layers
    assert (last.loc[-1:20, "token"] != " Paris").all()  # and not before the last third
    assert text.settle_layer == 27
    by_layer = result.tables["target_by_layer"].set_index("layer")
    assert by_layer.loc[29, "rank"] == 1 and by_layer.loc[10, "rank"] > 100


@pytest.mark.slow
def test_smollm2_tuned_lens_beats_the_logit_lens_on_heldout_text(smollm2):
    heldout = [EIFFEL, "When Mary and John went to the store, John gave a drink to", "The capital of France is"]
    # fewer tokens and steps than the defaults, to keep the test short
    result = run(TunedLensAnalyzer, smollm2, texts=heldout, max_train_tokens=1024, steps=10)
    assert failed(result) == []
    early = result.summary["early_half"]
    assert early["tuned_lens_kl_mean"] < 0.5 * early["logit_lens_kl_mean"]
    table = result.tables["heldout_kl"].set_index("layer")
    assert (table.loc[0:14, "tuned_lens_kl"] < table.loc[0:14, "logit_lens_kl"]).all()  # every early layer
