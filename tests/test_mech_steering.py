"""steering: exact properties on tiny random models, a sentiment run on SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
from interpsuite_plugins.mechanistic.steering import (
    Steering,
    contrast_direction,
    greedy_generate,
)

from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.directions import read_direction, write_direction
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]
CAUSAL = ["tiny_llama", "tiny_gpt2"]
POSITIVE = ["I loved it. It was", "What a wonderful day"]
NEGATIVE = ["I hated it. It was", "What an awful day, sadly"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def run(model, texts=TEXTS, **options):
    analyzer = Steering(build_config(Steering, options))
    analyzer.validate(model.info, analyzer.cfg)
    ctx = RunContext(model=model, inputs=Inputs(list(texts), "test"), show_progress=False)
    result = analyzer.run(ctx)
    assert model.hooks_left() == 0
    return result


def last_probs(model, texts, interventions=(), ids=None):
    """Probabilities at each text's last token, one unpadded text at a time: [texts, V] (or [texts, ids])."""
    rows = []
    for text in texts:
        batch = model.tokenize([text])
        logits = model.forward(batch, interventions=list(interventions)).output[0, -1]
        rows.append(logits.softmax(-1))
    probs = torch.stack(rows)
    return probs if ids is None else probs[:, ids]


def table_probs(result, coefficient):
    """[prompt, target] probabilities of one coefficient from the `target_probs` table."""
    table = result.tables["target_probs"]
    frame = table[table.coefficient == coefficient].pivot(index="prompt_id", columns="target", values="prob")
    return torch.tensor(frame[result.summary["targets"]].to_numpy())


@pytest.mark.parametrize("name", CAUSAL)
def test_coefficient_zero_is_the_clean_model(tiny_models, name):
    model = tiny_models[name]
    result = run(model, n_generate=0)
    assert all(check.passed for check in result.checks.values()), result.checks
    assert result.checks["coefficient_zero_matches_clean"].value <= 1e-6
    ids = [model.tokenizer.convert_tokens_to_ids(t) for t in ("g", "t")]  # first pieces of great / terrible
    assert result.summary["targets"] == ["g", "t"] and result.summary["target_notes"]
    clean = last_probs(model, TEXTS, ids=ids).double()
    assert torch.allclose(table_probs(result, 0.0), clean, atol=1e-6)
    assert 0.0 in result.summary["coefficients"]


@pytest.mark.parametrize("name", CAUSAL)
def test_adding_the_direction_equals_feeding_the_shifted_residual(tiny_models, name, tmp_path):
    """add c*d at blocks.L.resid_post == replace it by clean + c*d, and the sweep reads exactly that."""
    model = tiny_models[name]
    hook = "blocks.1.resid_post"
    result = run(model, layer=1, coefficients=[-2.0, 3.0], n_generate=0, targets=["a", "e"])
    direction, meta = read_direction(result.summary["direction_file"])
    assert meta["hook"] == hook and meta["model"] == model.info.name
    batch = model.tokenize(TEXTS)
    clean = model.forward(batch, capture=[hook]).cache[hook]
    ids = [model.token_id(t)[0] for t in ("a", "e")]
    for c in (-2.0, 3.0):
        added = model.forward(batch, interventions=[Intervention(hook, "add", value=c * direction)]).output
        replaced = model.forward(batch, interventions=[Intervention(hook, "replace", value=clean + c * direction)])
        mask = batch.attention_mask.bool()
        assert torch.allclose(added[mask], replaced.output[mask], atol=1e-5)
        shifted = [Intervention(hook, "add", value=c * direction)]
        assert torch.allclose(table_probs(result, c), last_probs(model, TEXTS, shifted, ids).double(), atol=1e-6)


def test_apply_at_last_steers_only_the_last_token(tiny_models):
    model = tiny_models["tiny_llama"]
    hook = "blocks.0.resid_post"
    result = run(model, layer=0, coefficients=[5.0], apply_at="last", n_generate=0, targets=["a", "e"])
    direction, _ = read_direction(result.summary["direction_file"])
    ids = [model.token_id(t)[0] for t in ("a", "e")]
    for p, text in enumerate(TEXTS):
        last = len(model.tokenize([text]).tokens[0]) - 1
        iv = Intervention(hook, "add", value=5.0 * direction, positions=[last])
        expected = last_probs(model, [text], [iv], ids).double()[0]
        assert torch.allclose(table_probs(result, 5.0)[p], expected, atol=1e-6)


@pytest.mark.parametrize("position", ["last", "mean"])
def test_direction_is_the_mean_difference_computed_by_hand(tiny_models, position):
    model = tiny_models["tiny_gpt2"]
    hook = "blocks.1.attn.out"

    def pooled_mean(texts):
        rows = []
        for text in texts:  # unpadded, one text at a time
            acts = model.forward(model.tokenize([text]), capture=[hook]).cache[hook][0].double()
            rows.append(acts[-1] if position == "last" else acts.mean(0))
        return torch.stack(rows).mean(0)

    by_hand = pooled_mean(POSITIVE) - pooled_mean(NEGATIVE)
    direction = contrast_direction(model, POSITIVE, NEGATIVE, hook, position, batch_size=8)
    assert torch.allclose(direction.double(), by_hand, atol=1e-5)
    result = run(model, layer=1, hook="attn.out", position=position, positive=POSITIVE, negative=NEGATIVE, n_generate=0)
    saved, meta = read_direction(result.summary["direction_file"])
    assert meta["hook"] == hook
    assert torch.allclose(saved.double(), by_hand, atol=1e-5)
    assert result.metrics["direction_norm"] == pytest.approx(float(by_hand.norm()), rel=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_direction_file_round_trip(tiny_models, tmp_path, suffix):
    model = tiny_models["tiny_llama"]
    first = run(model, layer=1, n_generate=0)
    direction, _ = read_direction(first.summary["direction_file"])
    path = write_direction(tmp_path / f"d{suffix}", direction, "blocks.1.resid_post", source="test")
    again, meta = read_direction(path)
    assert torch.allclose(again, direction, atol=1e-7 if suffix == ".json" else 0.0)
    assert meta == {"hook": "blocks.1.resid_post", "source": "test"}
    # layer null: the file's hook point is used, and the probabilities are the same as the first run
    second = run(model, direction_path=str(path), n_generate=0)
    assert second.summary["hook"] == "blocks.1.resid_post"
    assert second.summary["direction"] == f"file {path}"
    for c in first.summary["coefficients"]:
        assert torch.allclose(table_probs(first, c), table_probs(second, c), atol=1e-6)
    # resid_norm units: the step is the unit direction times the typical activation norm
    scaled = run(model, direction_path=str(path), scale="resid_norm", n_generate=0)
    assert scaled.metrics["step_norm"] == pytest.approx(scaled.metrics["typical_norm"], rel=1e-5)


def test_greedy_generation_matches_a_plain_loop(tiny_models):
    """Row (prompt, coefficient 0) of the batched, padded, steered generation = unsteered greedy decoding."""
    model = tiny_models["tiny_llama"]
    prompts = ["Paris is", "The quick brown fox"]
    direction = torch.randn(model.info.d_model, generator=torch.Generator().manual_seed(0))
    hook = "blocks.0.resid_post"
    tokens = greedy_generate(model, prompts, hook, direction, [-3.0, 0.0, 3.0], "all", 6)
    for p, prompt in enumerate(prompts):
        ids = model.tokenize([prompt]).input_ids
        for c_index, c in enumerate([-3.0, 0.0, 3.0]):
            current = ids.clone()
            for _ in range(6):
                batch = model.tokenize([prompt])
                batch.input_ids, batch.attention_mask = current, torch.ones_like(current)
                ivs = [Intervention(hook, "add", value=c * direction)] if c else []
                nxt = model.forward(batch, interventions=ivs).output[0, -1].argmax()
                current = torch.cat([current, nxt.view(1, 1)], 1)
            assert tokens[p * 3 + c_index] == current[0, ids.shape[1] :].tolist()
    assert model.hooks_left() == 0


@pytest.mark.parametrize("name", CAUSAL)
def test_generations_and_figures(tiny_models, name):
    result = run(tiny_models[name], n_generate=2, max_new_tokens=4, coefficients=[-1.0, 1.0])
    table = result.tables["generations"]
    assert len(table) == 2 * 3 and set(table.coefficient) == {-1.0, 0.0, 1.0}
    assert set(result.figures) == {"target_probs", "generations"}
    assert set(result.tables) == {"target_probs", "by_coefficient", "generations"}
    assert "log_odds.coef_+1" in result.metrics and "monotonic.g" in result.metrics


def test_bad_inputs_are_refused_with_a_clear_message(tiny_models, tmp_path):
    llama = tiny_models["tiny_llama"]
    analyzer = Steering(build_config(Steering, {}))
    with pytest.raises(ConfigError, match="encoder without a causal LM head"):
        analyzer.validate(tiny_models["tiny_bert"].info, analyzer.cfg)
    wrong_size = write_direction(tmp_path / "small.safetensors", torch.ones(3), "blocks.0.resid_post")
    at_layer_0 = write_direction(tmp_path / "l0.json", torch.ones(llama.info.d_model), "blocks.0.resid_post")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"vector": [1.0]}))
    bad = [
        ({"hook": "attn.z"}, "hook='attn.z'"),
        ({"layer": 9}, "layer 9 out of range"),
        ({"position": "first"}, "position='first'"),
        ({"scale": "huge"}, "scale='huge'"),
        ({"coefficients": []}, "coefficients is empty"),
        ({"positive": []}, "positive must be a non-empty list"),
        ({"direction_path": str(tmp_path / "none.safetensors")}, "not found"),
        ({"direction_path": str(tmp_path / "d.npy")}, "must be .safetensors"),
        ({"direction_path": str(wrong_size)}, "has 3 entries but tiny_llama has d_model=64"),
        ({"direction_path": str(bad_json)}, 'list "direction"'),
        ({"direction_path": str(at_layer_0), "layer": 1}, "set layer: null"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ]
    for options, message in bad:
        with pytest.raises(ConfigError, match=message):
            analyzer = Steering(build_config(Steering, options))
            analyzer.validate(llama.info, analyzer.cfg)
    # target tokens are checked against the vocabulary before any forward pass
    with pytest.raises(ConfigError, match=r"target ' wonderful' is split by the tokenizer into 10 pieces"):
        run(llama, targets=[" wonderful"])
    with pytest.raises(ConfigError, match="repeated token ids"):
        run(llama, targets=["a", "a"])
    assert llama.hooks_left() == 0


def test_smollm2_unknown_target_is_refused(smollm2):
    with pytest.raises(ConfigError, match="is split by the tokenizer into .* pieces"):
        run(smollm2, targets=[" great", " xqzvwplk"])


def test_smollm2_sentiment_steering(smollm2):
    """Known answer: the sentiment direction at layer 10 raises p(' great') and lowers p(' terrible')."""
    prompts = ["I think the movie was", "The food at this restaurant is", "Honestly, my day has been"]
    result = run(smollm2, texts=prompts, coefficients=[-4.0, 4.0], n_generate=1, max_new_tokens=6)
    assert all(check.passed for check in result.checks.values()), result.checks
    assert result.summary["hook"] == "blocks.10.resid_post"
    great, terrible = result.summary["mean_prob"][" great"], result.summary["mean_prob"][" terrible"]
    assert great[0] < great[1] < great[2]  # coefficients -4, 0, +4
    assert great[2] > 5 * great[0]
    assert terrible[0] > terrible[1] > terrible[2]
    assert result.metrics["monotonic.log_odds"] == 1.0
    generations = result.tables["generations"]
    assert generations[generations.coefficient == 0.0].generation.iloc[0].startswith(" a great")
