"""evaluate_sae: exact answers for SAEs whose quality is known by construction.

- A perfect SAE (width 2d, latents relu(x) and relu(-x), decoder [I; -I]) reconstructs every
  activation: MSE 0, EV 1, spliced CE = clean CE, CE loss recovered 1.
- A null SAE (all weights zero) reconstructs nothing: spliced CE = zero-ablation CE (recovered
  0), every latent dead, L0 0, and EV <= 0 (the reconstruction is 0, not the mean, so
  EV = 1 - sum x^2 / sum (x - mean)^2).
- Streamed sums equal the same metrics computed on all tokens at once, and the clean CE equals
  Hugging Face's own loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interpsuite_plugins.sae import SAEConfig, SparseAutoencoder
from interpsuite_plugins.sae.evaluation import evaluate_sae
from interpsuite_plugins.sae.training import explained_variance

from interpsuite.errors import ConfigError

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi there", "A"]
HOOK = "blocks.0.resid_post"


def perfect_sae(d: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d, width=2 * d, architecture="relu", hook=HOOK))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def null_sae(d: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d, width=8, architecture="relu", hook=HOOK))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["tiny_llama"]


def test_a_perfect_sae_recovers_everything(llama):
    result = evaluate_sae(llama, perfect_sae(llama.info.d_model), TEXTS, batch_size=2)
    assert result.mse == pytest.approx(0.0, abs=1e-10)
    assert result.explained_variance == pytest.approx(1.0, abs=1e-10)
    assert result.ce_spliced == pytest.approx(result.ce_clean, abs=1e-5)
    assert result.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert result.ce_zero_ablation > result.ce_clean  # deleting the residual stream costs
    assert all(passed for passed in _passed(result))


def test_a_null_sae_recovers_nothing(llama):
    result = evaluate_sae(llama, null_sae(llama.info.d_model), TEXTS, batch_size=3)
    assert result.ce_spliced == pytest.approx(result.ce_zero_ablation, abs=1e-6)
    assert result.ce_loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert result.l0 == 0 and result.dead_fraction == 1.0 and result.dense_fraction == 0.0
    assert result.explained_variance <= 0.0


def test_streamed_metrics_equal_all_tokens_at_once(llama):
    """Batching (and padding) does not change the numbers; they equal a direct computation."""
    sae = SparseAutoencoder(SAEConfig(d_in=llama.info.d_model, width=96, architecture="topk", k=5, hook=HOOK))
    one = evaluate_sae(llama, sae, TEXTS, batch_size=1)
    many = evaluate_sae(llama, sae, TEXTS, batch_size=4)
    for name in ("mse", "explained_variance", "l0", "dead_fraction", "ce_clean", "ce_spliced", "ce_zero_ablation"):
        assert getattr(one, name) == pytest.approx(getattr(many, name), rel=1e-5, abs=1e-6), name
    assert one.l0 == pytest.approx(5.0)  # topk: exactly k active per token (random latents are positive here)
    tokens = []
    for text in TEXTS:
        batch = llama.tokenize([text])
        tokens.append(llama.forward(batch, capture=[HOOK]).cache[HOOK][0])
    x = torch.cat(tokens)
    with torch.no_grad():
        x_hat = sae(x)
    assert one.n_tokens == x.shape[0]
    assert one.explained_variance == pytest.approx(explained_variance(x, x_hat), abs=1e-9)
    assert one.mse == pytest.approx(float((x - x_hat).double().pow(2).sum(-1).mean()), rel=1e-9)
    density = (sae.encode(x) > 0).double().mean(0).numpy()
    assert np.allclose(one.density, density)


def test_clean_ce_is_the_models_own_loss(llama):
    sae = perfect_sae(llama.info.d_model)
    text = TEXTS[0]
    result = evaluate_sae(llama, sae, [text])
    ids = llama.tokenize([text]).input_ids
    with torch.no_grad():
        hf_loss = llama.hf_model(input_ids=ids, labels=ids).loss
    assert result.ce_clean == pytest.approx(float(hf_loss), rel=1e-5)


def test_encoders_get_reconstruction_metrics_without_ce(tiny_models):
    bert = tiny_models["tiny_bert"]
    result = evaluate_sae(bert, perfect_sae(bert.info.d_model), TEXTS)
    assert result.explained_variance == pytest.approx(1.0, abs=1e-10)
    assert result.ce_clean is None and result.ce_loss_recovered is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hook": "blocks.9.resid_post"}, "blocks.9.resid_post"),
        ({"texts": []}, "no texts"),
        ({"dense_threshold": 0.0}, "dense_threshold"),
    ],
)
def test_bad_inputs_are_one_line(llama, kwargs, message):
    options = {"texts": TEXTS, **kwargs}
    texts = options.pop("texts")
    with pytest.raises(ConfigError, match=message):
        evaluate_sae(llama, perfect_sae(llama.info.d_model), texts, **options)


def test_an_sae_for_another_width_is_refused(llama):
    sae = perfect_sae(llama.info.d_model + 1)
    with pytest.raises(ConfigError, match="d_in is 65"):
        evaluate_sae(llama, sae, TEXTS)


def _passed(result) -> list[bool]:
    from interpsuite.results import Check

    return [Check(value, threshold, mode).passed for value, threshold, mode in result.sanity().values()]
