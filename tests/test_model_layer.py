"""The model layer as a shared object: thread safety, a wrap that changes nothing, capture checks.

A server, a training monitor and live SAE patching all share one loaded model, so: passes
from different threads must give exactly what they give alone, wrapping a caller's model
must leave it as it was, and a capture that never happens must say so.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import interpsuite
from interpsuite import HookError, Intervention
from interpsuite.hooks import count_hooks
from interpsuite.models.sources import byte_tokenizer

TEXTS = ["When Mary and John went to the store, John gave a drink to", "The quick brown fox", "Hi there"]


def logit_diff(logits, rows):
    return logits[:, -1, 65] - logits[:, -1, 66]


def head_items(model):
    info = model.info
    return [
        [Intervention(f"blocks.{layer}.attn.z", "zero", heads=head)]
        for layer in range(info.n_layers)
        for head in range(info.n_heads)
    ]


def jobs(model):
    """Four kinds of work, each a function returning tensors to compare bitwise."""
    batch = model.tokenize(TEXTS)
    last = f"blocks.{model.info.n_layers - 1}"

    def forward():
        return [model.forward(batch).output]

    def capture():
        names = ["embed", f"{last}.attn.pattern", f"{last}.attn.k", "blocks.0.resid_mid", "final.scale"]
        cache = model.forward(batch, capture=names).cache
        return [cache[n] for n in names]

    def sweep():
        return [model.sweep(batch, head_items(model), logit_diff, batch_size=4, logits_to_keep=1)]

    def gradient():
        result = model.forward(batch, capture=["blocks.0.resid_post"], grad=True, logits_to_keep=1)
        resid = result.cache["blocks.0.resid_post"]
        (grad,) = torch.autograd.grad(result.output[:, -1, 65].sum(), resid)
        return [grad]

    return {"forward": forward, "capture": capture, "sweep": sweep, "gradient": gradient}


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_threads_sharing_one_model_get_exactly_their_sequential_results(tiny_models, name):
    model = tiny_models[name]
    work = jobs(model)
    expected = {kind: job() for kind, job in work.items()}
    schedule = [kind for _ in range(6) for kind in work]  # 24 tasks, every kind interleaved
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda kind: (kind, work[kind]()), schedule))
    for kind, tensors in results:
        for got, want in zip(tensors, expected[kind], strict=True):
            assert torch.equal(got, want), kind
    assert model.hooks_left() == 0


def test_a_forward_from_another_thread_during_a_sweep_runs_the_whole_model(tiny_models):
    """The landed main swapped the block list during sweeps: a concurrent forward saw a truncated model."""
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    reference = model.forward(batch).output
    items = [[Intervention("blocks.1.resid_pre", "zero", positions=[p])] for p in range(5)] * 20
    stop = threading.Event()
    seen = []

    def plain_forwards():
        while not stop.is_set():
            seen.append(float((model.forward(batch).output - reference).abs().max()))

    other = threading.Thread(target=plain_forwards)
    other.start()
    try:
        for _ in range(3):
            model.sweep(batch, items, logit_diff, batch_size=8, logits_to_keep=1)
    finally:
        stop.set()
        other.join()
    assert seen and max(seen) == 0.0


def _tiny_llama_for_training():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=258,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.1,
        pad_token_id=257,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).train()  # default attention implementation (sdpa)


def _snapshot(model, tokenizer) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "modules": [(name, type(m)) for name, m in model.named_modules()],
        "attn": model.config._attn_implementation,
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "own_forwards": [name for name, m in model.named_modules() if "forward" in m.__dict__],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        "device_dtype": {(p.device, p.dtype) for p in model.parameters()},
        "padding_side": tokenizer.padding_side,
        "pad_token": tokenizer.pad_token,
    }


def test_wrap_leaves_a_training_model_and_its_tokenizer_exactly_as_they_were():
    model, tokenizer = _tiny_llama_for_training(), byte_tokenizer()
    tokenizer.padding_side = "left"
    tokenizer.pad_token = None
    before = _snapshot(model, tokenizer)
    with interpsuite.wrap(model, tokenizer) as hooked:
        assert hooked.hf_model is model and hooked.tokenizer is tokenizer
        assert all(m.training for m in model.modules())  # train mode stays train mode
        batch = hooked.tokenize(TEXTS)
        result = hooked.forward(
            batch,
            capture=["blocks.1.resid_post"],
            interventions=[Intervention("blocks.0.mlp.out", "scale", factor=0.5)],
            grad=True,
        )
        result.output.float().pow(2).mean().backward()
        assert model.model.layers[0].mlp.down_proj.weight.grad is not None
        assert result.cache["blocks.1.resid_post"].requires_grad
        assert tokenizer.padding_side == "left" and tokenizer.pad_token is None
        assert int(batch.attention_mask[2].sum()) < batch.input_ids.shape[1]  # still right-padded for us
    after = _snapshot(model, tokenizer)
    for key in before:
        if key == "state":
            assert before[key].keys() == after[key].keys()
            assert all(torch.equal(before[key][k], after[key][k]) for k in before[key])
        else:
            assert before[key] == after[key], key
    assert count_hooks(model) == 0
    with pytest.raises(HookError, match="closed"):
        hooked.forward(batch)


def test_the_callers_own_forward_is_unchanged_while_wrapped(tiny_models):
    from transformers import LlamaForCausalLM

    source = tiny_models["tiny_llama"].hf_model
    model = LlamaForCausalLM(source.config.__class__.from_dict(source.config.to_dict())).eval()
    model.load_state_dict(source.state_dict())
    model.config._attn_implementation = "sdpa"
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    plain = model(input_ids=ids).logits
    with interpsuite.wrap(model, byte_tokenizer()) as hooked:
        assert torch.equal(model(input_ids=ids).logits, plain)
        batch = hooked.tokenize(["abcdef"])
        with_pattern = hooked.forward(batch, capture=["blocks.1.attn.pattern"]).output
        torch.testing.assert_close(with_pattern, hooked.forward(batch).output, atol=1e-5, rtol=0)
    assert torch.equal(model(input_ids=ids).logits, plain)


def test_a_capture_that_never_fires_is_an_error_naming_it(tiny_models):
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    with pytest.raises(HookError, match=r"logits never fired"):
        with model.hooks(capture=["logits"]):
            model.hf_model.model(input_ids=batch.input_ids)  # the body only: no unembedding
    with pytest.raises(HookError, match=r"blocks.0.resid_post never fired"):
        with model.hooks(capture=["blocks.0.resid_post"]):
            pass
    assert model.hooks_left() == 0


def test_a_row_restricted_intervention_leaves_other_rows_bitwise_alone(tiny_models):
    model = tiny_models["tiny_gpt2"]
    batch = model.tokenize(TEXTS)
    clean = model.forward(batch, capture=["blocks.1.resid_post"]).cache["blocks.1.resid_post"]
    cache = model.forward(
        batch,
        capture=["blocks.1.resid_post"],
        interventions=[Intervention("blocks.0.mlp.out", "zero", rows=[1])],
    ).cache["blocks.1.resid_post"]
    assert torch.equal(cache[[0, 2]], clean[[0, 2]])
    assert not torch.equal(cache[1], clean[1])


def test_positions_given_per_row(tiny_models):
    """Each row's own positions (e.g. each prompt's subject) in one intervention."""
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    per_row = [[0, 2], [1], [3]]
    cache = model.forward(
        batch, capture=["blocks.0.mlp.out"], interventions=[Intervention("blocks.0.mlp.out", "zero", positions=per_row)]
    ).cache["blocks.0.mlp.out"]
    clean = model.forward(batch, capture=["blocks.0.mlp.out"]).cache["blocks.0.mlp.out"]
    for row, positions in enumerate(per_row):
        for position in range(batch.input_ids.shape[1]):
            expected = torch.zeros_like(clean[row, position]) if position in positions else clean[row, position]
            assert torch.equal(cache[row, position], expected)
    with pytest.raises(HookError, match="per-row position lists"):
        Intervention("blocks.0.mlp.out", "zero", rows=[0, 1], positions=[[0], [1], [2]])


def test_key_value_patching_and_frozen_norms(tiny_models):
    """New hook points work for interventions: patch keys/values from another input; a norm
    scale written back unchanged changes nothing, a doubled one changes the logits."""
    model = tiny_models["tiny_llama"]
    clean = model.tokenize(["The cat sat on the mat"])
    other = model.tokenize(["The dog sat on the rug"])
    source = model.forward(other, capture=["blocks.1.attn.k", "blocks.1.attn.v"]).cache
    patched = model.forward(
        clean,
        interventions=[Intervention(f"blocks.1.attn.{s}", "replace", value=source[f"blocks.1.attn.{s}"]) for s in "kv"],
    ).output
    both = model.forward(other).output
    # with keys and values of layer 1 from `other`, the last layer's attention reads `other` entirely
    assert float((patched - model.forward(clean).output).abs().max()) > 1e-4
    assert patched.shape == both.shape
    scales = model.forward(clean, capture=["blocks.1.ln2.scale", "final.scale"]).cache
    frozen = model.forward(
        clean, interventions=[Intervention(n, "replace", value=v) for n, v in scales.items()]
    ).output
    torch.testing.assert_close(frozen, model.forward(clean).output, atol=1e-5, rtol=0)
    doubled = model.forward(clean, interventions=[Intervention("final.scale", "scale", factor=2.0)]).output
    assert float((doubled - model.forward(clean).output).abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_a_deep_copy_of_the_wrapped_model_computes_with_its_own_weights(tiny_models, name):
    """copy.deepcopy(model.hf_model) is what users (and the naive pruning baseline) do to edit
    weights safely. The copy must run its own blocks: before the fix its blocks' forward still
    called the original blocks, so zeroing the copy's weights changed nothing."""
    import copy
    import re

    model = tiny_models[name]
    batch = model.tokenize(["The quick brown fox jumps over the lazy dog."])
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    with torch.no_grad():
        original = model.hf_model(**inputs)[0]
        twin = copy.deepcopy(model.hf_model)
        torch.testing.assert_close(twin(**inputs)[0], original, rtol=0, atol=0)  # same weights, same numbers
        in_blocks = [p for n, p in twin.named_parameters() if re.search(r"\.\d+\.", n)]  # layers.0., h.1., ...
        assert in_blocks
        for parameter in in_blocks:  # only the blocks' weights: the wrapped part of the model
            parameter.mul_(0.5)
        halved = twin(**inputs)[0]
        assert (halved - original).abs().max() > 1e-3  # the copy's blocks use the copy's weights
        torch.testing.assert_close(model.hf_model(**inputs)[0], original, rtol=0, atol=0)  # original untouched
