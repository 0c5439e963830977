"""`representation_similarity` on tiny models: the analyzer's numbers are the engine's on the
same captured representations, its checks hold, and bad options fail before weights load."""

from __future__ import annotations

import pandas as pd
import pytest
from interpsuite_plugins.probing.similarity import cka_matrix

from interpsuite.errors import ConfigError
from interpsuite.testing import assert_result_contract, run_analyzer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "One two three four."]


def _captured(model, layers, pooling):
    """Representations captured the plain way: one forward per text, real tokens only."""
    rows = {layer: [] for layer in layers}
    for text in TEXTS:
        batch = model.tokenize([text])
        cache = model.forward(batch, capture=[f"blocks.{layer}.resid_post" for layer in layers]).cache
        for layer in layers:
            acts = cache[f"blocks.{layer}.resid_post"][0].float()
            rows[layer].append({"tokens": acts, "mean": acts.mean(0, keepdim=True), "last": acts[-1:]}[pooling])
    import torch

    return [torch.cat(rows[layer]) for layer in layers]


@pytest.mark.parametrize("pooling", ["tokens", "last"])
def test_layer_cka_is_the_engines_on_the_captured_representations(tiny_model, pooling):
    options = {"pooling": pooling, "rbf": True} if pooling == "tokens" else {"pooling": pooling, "rsa": False}
    texts = TEXTS if pooling == "tokens" else TEXTS + ["A fourth text.", "And a fifth one here."]
    result = run_analyzer("representation_similarity", model=tiny_model, texts=texts, options=options)
    assert_result_contract(result, all_checks_passed=True)
    table = result.tables["layer_similarity"]
    layers = list(range(tiny_model.info.n_layers))
    assert len(table) == len(layers) ** 2
    if pooling == "tokens":
        expected = cka_matrix(_captured(tiny_model, layers, "tokens"), debiased=True)
        got = table.pivot(index="layer_a", columns="layer_b", values="cka").to_numpy()
        assert got == pytest.approx(expected.numpy(), abs=1e-6)  # batched vs one-text float32 forwards
        assert {"rsa", "rbf_cka"} <= set(table.columns)
    assert result.checks["self_similarity_error"].value <= 1e-9


def test_models_are_compared_text_by_text(tmp_path):
    result = run_analyzer(
        "representation_similarity",
        model="tiny_llama",
        texts=TEXTS + ["A fourth text.", "And a fifth one here."],
        options={"pooling": "mean", "models": ["tiny_gpt2"], "rsa": False},
    )
    assert_result_contract(result, all_checks_passed=True)
    cross = result.tables["model_similarity"]
    assert isinstance(cross, pd.DataFrame) and set(cross.model_b) == {"tiny_gpt2"}
    assert len(cross) == 2 * 2  # tiny_llama's 2 layers x tiny_gpt2's 2 layers
    assert "cka_vs_tiny_gpt2" in result.figures


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pooling": "max"}, "pooling: 'max' is not one of tokens, mean, last"),
        ({"models": ["tiny_gpt2"]}, "comparing models needs pooling: mean or last"),
        ({"pooling": "mean", "models": ["no_such_model"]}, "model 'no_such_model' is not embedded"),
        ({"layers": [7]}, "layer 7 out of range"),
        ({"hook_point": "mlp.up"}, "has no per-block site 'mlp.up'"),
    ],
)
def test_bad_options_fail_before_weights_load(options, message):
    from interpsuite_plugins.probing.representation import RepresentationSimilarity

    from interpsuite.models import describe_model

    analyzer = RepresentationSimilarity()
    with pytest.raises(ConfigError, match=message):
        analyzer.validate(describe_model("tiny_gpt2"), RepresentationSimilarity.Config(**options))
