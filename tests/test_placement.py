"""Devices and device maps: offloaded models compute exactly what in-memory ones do; bad placements fail early.

The SmolLM2 test forces about half of the model to disk on a CPU-only machine (`max_memory`
smaller than the model), which exercises the same accelerate hooks that move weights between
GPUs; the bad-input tests pin the key phrases of each one-line error.
"""

from __future__ import annotations

import time

import pytest
import torch

from interpsuite.errors import ConfigError
from interpsuite.models import load_model
from interpsuite.models.placement import Placement, available_devices, parse_memory, resolve_dtype, resolve_placement

TEXTS = ["When Mary and John went to the store, John gave a drink to", "Paris is the capital of"]
SMOLLM2_CAPTURES = ["blocks.3.resid_post", "blocks.20.attn.pattern", "blocks.25.mlp.post"]
TINY_CAPTURES = ["blocks.0.resid_post", "blocks.1.attn.pattern", "blocks.1.mlp.post"]
# SmolLM2 in float32: 108 MiB embedding (tied to lm_head) + 13.5 MiB per layer. accelerate keeps
# room for one layer beside what it places, so 330 MiB holds the embedding and 15 of the 30 layers.
SMOLLM2_HALF = "330MiB"


def _assert_same_outputs(offloaded, reference, captures):
    batch = reference.tokenize(TEXTS)
    got = offloaded.forward(batch.to(offloaded.device), capture=captures)
    want = reference.forward(batch, capture=captures)
    torch.testing.assert_close(got.output, want.output, atol=1e-5, rtol=0)
    for name in captures:
        torch.testing.assert_close(got.cache[name], want.cache[name], atol=1e-5, rtol=0, msg=name)
    assert offloaded.hooks_left() == 0


@pytest.mark.slow
def test_smollm2_half_offloaded_to_disk_equals_the_in_memory_model(smollm2, tmp_path):
    started = time.perf_counter()
    offloaded = load_model("smollm2", device_map="auto", max_memory={"cpu": SMOLLM2_HALF}, offload_dir=tmp_path)
    print(f"offloaded load: {time.perf_counter() - started:.2f} s")
    device_map = offloaded.hf_model.hf_device_map
    on_disk = [module for module, device in device_map.items() if device == "disk"]
    assert "model.layers.20" in on_disk and "model.layers.25" in on_disk
    assert device_map["model.layers.3"] == "cpu"
    assert 10 <= sum(module.startswith("model.layers.") for module in on_disk) <= 20
    # the weights of a disk layer really are not in memory: accelerate loads them per forward pass
    assert offloaded.hf_model.model.layers[20].mlp.down_proj.weight.device.type == "meta"
    _assert_same_outputs(offloaded, smollm2, SMOLLM2_CAPTURES)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_tiny_model_with_a_disk_layer_equals_the_in_memory_model(tiny_models, tmp_path, name):
    blocks = {"tiny_llama": "model.layers.1", "tiny_gpt2": "transformer.h.1", "tiny_bert": "encoder.layer.1"}
    offloaded = load_model(name, device_map={blocks[name]: "disk", "": "cpu"}, offload_dir=tmp_path)
    assert offloaded.hf_model.hf_device_map[blocks[name]] == "disk"
    _assert_same_outputs(offloaded, tiny_models[name], TINY_CAPTURES)


def test_embedding_on_disk_still_takes_inputs_on_the_cpu(tiny_models, tmp_path):
    offloaded = load_model("tiny_llama", device_map={"model.embed_tokens": "disk", "": "cpu"}, offload_dir=tmp_path)
    assert offloaded.hf_model.get_input_embeddings().weight.device.type == "meta"
    assert offloaded.device == torch.device("cpu")
    _assert_same_outputs(offloaded, tiny_models["tiny_llama"], ["embed", *TINY_CAPTURES])


def test_tiny_model_auto_device_map_with_max_memory(tiny_models, tmp_path):
    # tiny_llama: 64.5 KiB embedding + 144.5 KiB per layer in float32
    offloaded = load_model("tiny_llama", device_map="auto", max_memory={"cpu": "300KiB"}, offload_dir=tmp_path)
    assert "disk" in offloaded.hf_model.hf_device_map.values()
    assert offloaded.hf_model.hf_device_map["model.embed_tokens"] == "cpu"
    _assert_same_outputs(offloaded, tiny_models["tiny_llama"], TINY_CAPTURES)


def test_two_offloaded_models_do_not_share_offloaded_weights(tmp_path):
    """accelerate reuses an offload folder's index.json; each dispatch gets its own subfolder."""
    first = load_model("tiny_llama", seed=0, device_map={"model.layers.1": "disk", "": "cpu"}, offload_dir=tmp_path)
    second = load_model("tiny_llama", seed=1, device_map={"model.layers.1": "disk", "": "cpu"}, offload_dir=tmp_path)
    batch = first.tokenize(TEXTS)
    assert not torch.allclose(first.forward(batch).output, second.forward(batch).output)
    assert torch.equal(second.forward(batch).output, load_model("tiny_llama", seed=1).forward(batch).output)


def test_auto_without_limits_keeps_everything_on_one_device():
    model = load_model("tiny_gpt2", device_map="auto")
    assert set(model.hf_model.hf_device_map.values()) == {"cpu"}
    assert model.device == torch.device("cpu")


# --- bad input: one-line ConfigErrors that name the problem and the fix ----------------------


def _error(**kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load_model(kwargs.pop("name", "tiny_llama"), **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps"])
def test_missing_devices_are_refused_listing_the_ones_that_exist(device):
    if device in available_devices() or (device == "cuda" and torch.cuda.is_available()):
        pytest.skip(f"this machine has {device}")
    message = _error(device=device)
    assert f"device={device!r} does not exist on this machine" in message
    assert "devices here: cpu" in message


def test_unparsable_device_names_are_refused():
    assert "device='gpu' is not a device name; devices here: cpu" in _error(device="gpu")


def test_device_map_naming_a_missing_device_is_refused():
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has cuda:7")
    message = _error(device_map={"model.layers.1": "cuda:7", "": "cpu"})
    assert "device_map['model.layers.1']='cuda:7' does not exist on this machine" in message
    assert "devices here: cpu" in message
    message = _error(device_map="auto", max_memory={"cuda:7": "1GiB", "cpu": "1GiB"})
    assert "max_memory key='cuda:7' does not exist on this machine" in message


def test_unknown_device_map_strings_are_refused():
    message = _error(device_map="fastest")
    assert "device_map='fastest' is not a placement strategy" in message
    assert "'auto', 'balanced', 'balanced_low_0', 'sequential'" in message
    assert "use device='cpu'" in _error(device_map="cpu")


def test_device_map_module_names_are_checked():
    assert "device_map names 'model.layer.1', which is not a module of tiny_llama" in _error(
        device_map={"model.layer.1": "cpu", "": "cpu"}
    )
    message = _error(device_map={"model": "cpu"})
    assert "device_map places no device for 1 weight(s) of tiny_llama (lm_head.weight)" in message


def test_max_memory_too_small_for_one_layer_says_what_one_layer_needs():
    message = _error(device_map="auto", max_memory={"cpu": "100KiB"})
    assert "too small to hold even one layer of tiny_llama" in message
    assert "one LlamaDecoderLayer needs 144.5 KiB in float32" in message
    # the size is per dtype: half precision halves it
    assert "needs 72.2 KiB in float16" in _error(device_map="auto", max_memory={"cpu": "50KiB"}, dtype="float16")


def test_max_memory_that_would_put_everything_on_disk_is_refused(tmp_path):
    message = _error(device_map="auto", max_memory={"cpu": "150KiB"}, offload_dir=tmp_path)
    assert "would put all of tiny_llama on disk" in message
    assert "model.embed_tokens" in message


def test_offloading_to_disk_needs_offload_dir():
    message = _error(device_map="auto", max_memory={"cpu": "300KiB"})
    assert "to disk" in message and "give offload_dir=" in message
    assert "give offload_dir=" in _error(device_map={"model.layers.1": "disk", "": "cpu"})


@pytest.mark.parametrize("value", ["lots", "12 parsecs", "-5MiB", -1, 1.5])
def test_unparsable_max_memory_is_refused(value):
    message = _error(device_map="auto", max_memory={"cpu": value})
    assert f"max_memory['cpu']={value!r} is not a size" in message
    assert "'200MiB'" in message


def test_placement_options_without_a_device_map_are_refused(tmp_path):
    assert "max_memory only applies with a device_map" in _error(max_memory={"cpu": "1GiB"})
    assert "offload_dir only applies with a device_map" in _error(offload_dir=tmp_path)


@pytest.mark.parametrize(
    ("dtype", "phrase"),
    [
        ("float7", "dtype='float7' is not a torch dtype"),
        ("int8", "dtype='int8' is not a floating-point dtype"),
        ("float64", "dtype='float64' is not supported"),
        (torch.int32, "is not a floating-point dtype"),
    ],
)
def test_unsupported_dtypes_are_refused_naming_the_supported_ones(dtype, phrase):
    message = _error(dtype=dtype)
    assert phrase in message
    assert "supported dtypes: float32, float16, bfloat16" in message


def test_names_parse_to_what_accelerate_expects():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    assert parse_memory("200MiB") == 200 * 2**20 and parse_memory("1.5GB") == 1_500_000_000
    assert parse_memory(1024) == 1024 and parse_memory("2 gib") == 2 * 2**30
    placement = resolve_placement(device_map={"model.layers.1": "disk", "": "cpu"}, offload_dir="~/x")
    assert placement.device_map == {"model.layers.1": "disk", "": "cpu"} and placement.offload_dir.is_absolute()
    assert resolve_placement(device_map="auto", max_memory={"cpu": "1KiB"}).max_memory == {"cpu": 1024}
    assert resolve_placement() == Placement()


@pytest.mark.slow
def test_smollm2_placement_errors_come_before_any_weight_is_read(tmp_path):
    started = time.perf_counter()
    message = _error(name="smollm2", device_map="auto", max_memory={"cpu": "10MiB"})
    assert "too small to hold even one layer of smollm2: one LlamaDecoderLayer needs 13.5 MiB in float32" in message
    message = _error(name="smollm2", device_map="auto", max_memory={"cpu": SMOLLM2_HALF})
    assert "sends 17 module(s) of smollm2 to disk" in message and "give offload_dir=" in message
    message = _error(name="smollm2", device_map="auto", max_memory={"cpu": "120MiB"}, offload_dir=tmp_path)
    assert "would put all of smollm2 on disk: its first module (model.embed_tokens) needs 108.0 MiB" in message
    assert time.perf_counter() - started < 5, "planning should read the config only, never the weights"
