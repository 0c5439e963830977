"""Workbench patches on disk (interpsuite_plugins.sae.patch_files): export/import and PEFT LoRA.

The LoRA test is the claim itself: a fresh copy of the HF model with the exported adapter
loaded by `peft.PeftModel.from_pretrained` gives the workbench's patched logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from interpsuite_plugins.sae.files import load_sae
from interpsuite_plugins.sae.model import SAEConfig, SparseAutoencoder
from interpsuite_plugins.sae.patch_files import (
    PATCHES_JSON,
    export,
    export_lora,
    export_patches,
    import_patches,
    lora_target,
)
from interpsuite_plugins.sae.workbench import Workbench

from interpsuite.errors import ConfigError
from interpsuite.testing import cached_model

peft = pytest.importorskip("peft")

WIDTH = 32
CORPUS = ["The cat sat on the mat.", "Paris is the capital of France."]
PROMPTS = ["The quick brown fox jumps over", "Hi"]
TOL = 1e-5


def make_sae(hook: str, d_in: int = 64, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=WIDTH, architecture="relu", hook=hook), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(WIDTH, generator=generator) * 0.5)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.3)
    return sae.eval()


def bench(model_name: str, hook: str, seed: int = 0) -> Workbench:
    return Workbench(cached_model(model_name), make_sae(hook, seed=seed), f"saes/{seed}", corpus=CORPUS)


def fresh_hf(model_name: str):
    """A plain transformers model (no interpsuite hooks) with the same weights."""
    from transformers import AutoModelForCausalLM

    source = cached_model(model_name).hf_model
    copy = AutoModelForCausalLM.from_config(source.config)
    copy.load_state_dict(source.state_dict())
    return copy.eval()


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")  # the base layer has no bias: fine unmerged
@pytest.mark.parametrize(
    ("model_name", "hook", "module"),
    [
        ("tiny_llama", "blocks.1.resid_post", "model.layers.1.mlp.down_proj"),
        ("tiny_llama", "blocks.1.resid_pre", "model.layers.0.mlp.down_proj"),
        ("tiny_llama", "blocks.0.attn.out", "model.layers.0.self_attn.o_proj"),
        ("tiny_llama", "blocks.1.resid_mid", "model.layers.1.self_attn.o_proj"),
        ("tiny_gpt2", "blocks.0.resid_post", "transformer.h.0.mlp.c_proj"),
    ],
)
def test_lora_export_reproduces_add_patches(tmp_path, model_name, hook, module):
    wb = bench(model_name, hook)
    assert lora_target(wb.model, hook)[0] == module
    wb.add_patch(2, "add", 3.0)
    wb.add_patch(5, "add", -1.5)
    wb.add_patch(9, "set", 4.0, enabled=False)  # disabled: not exported, not refused
    files = export_lora(wb, tmp_path / "lora")
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["lora_bias"] is True and config["target_modules"] == [module]
    steered = peft.PeftModel.from_pretrained(fresh_hf(model_name), str(tmp_path / "lora")).eval()
    plain = fresh_hf(model_name)
    for prompt in PROMPTS:
        ids = wb.model.tokenize([prompt]).input_ids
        with torch.no_grad():
            got = steered(input_ids=ids).logits[0, -1]
            clean = plain(input_ids=ids).logits[0, -1]
        expected = wb.logits(prompt)
        assert (got - expected).abs().max() < TOL, prompt
        assert (got - clean).abs().max() > 1e-3  # the adapter does something


def test_lora_export_refuses_set_and_scale_and_nothing(tmp_path):
    wb = bench("tiny_llama", "blocks.1.resid_post")
    with pytest.raises(ConfigError, match="no enabled 'add' patch"):
        export_lora(wb, tmp_path / "a")
    wb.add_patch(1, "add", 1.0)
    wb.add_patch(4, "set", 2.0)
    with pytest.raises(ConfigError, match=r"patch p2 \(set feature 4\) depends on the input activation"):
        export_lora(wb, tmp_path / "b")
    assert not (tmp_path / "b").exists()  # refused before anything is written
    wb.update("p2", kind="scale")
    with pytest.raises(ConfigError, match="scale feature 4"):
        export(wb, tmp_path / "c", "lora")
    with pytest.raises(ConfigError, match="format 'zip'"):
        export(wb, tmp_path / "d", "zip")


def test_lora_export_refuses_hooks_without_a_projection(tmp_path):
    for hook in ("blocks.0.resid_pre", "blocks.1.mlp.post"):
        model = cached_model("tiny_llama")
        with pytest.raises(ConfigError, match="no projection"):
            lora_target(model, hook)


def test_patches_round_trip_and_refuse_another_sae(tmp_path):
    wb = bench("tiny_llama", "blocks.1.resid_post")
    wb.add_patch(3, "set", 2.0)
    wb.add_patch(7, "add", -1.0, enabled=False)
    wb.add_patch(1, "scale", 0.5)
    before = [p.to_json() for p in wb.patches()]
    logits = wb.logits(PROMPTS[0])
    assert export_patches(wb, tmp_path / "p") == ["patches.json", "patches.safetensors"]
    record = json.loads((tmp_path / "p" / PATCHES_JSON).read_text())
    assert record["sae"]["hook"] == "blocks.1.resid_post" and record["sae"]["width"] == WIDTH
    assert [(p["feature"], p["kind"], p["value"], p["enabled"]) for p in record["patches"]] == [
        (3, "set", 2.0, True),
        (7, "add", -1.0, False),
        (1, "scale", 0.5, True),
    ]
    wb.clear()
    imported = import_patches(wb, tmp_path / "p")
    assert [p.to_json() for p in imported] == before == [p.to_json() for p in wb.patches()]
    assert torch.equal(wb.logits(PROMPTS[0]), logits)

    other = bench("tiny_llama", "blocks.1.resid_post", seed=5)  # same shape, other weights
    with pytest.raises(ConfigError, match="decoder rows"):
        import_patches(other, tmp_path / "p")
    elsewhere = bench("tiny_llama", "blocks.0.resid_post")
    with pytest.raises(ConfigError, match="made for an SAE at blocks.1.resid_post"):
        import_patches(elsewhere, tmp_path / "p")
    assert other.patches() == [] and elsewhere.patches() == []
    (tmp_path / "p" / PATCHES_JSON).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        import_patches(wb, tmp_path / "p")


def test_patches_refuse_another_model(tmp_path):
    wb = bench("tiny_llama", "blocks.1.resid_post")
    wb.add_patch(3, "add", 2.0)
    export_patches(wb, tmp_path / "p")
    path = tmp_path / "p" / PATCHES_JSON
    record = json.loads(path.read_text())
    record["model"]["weights_sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="weights of tiny_llama differ"):
        import_patches(wb, tmp_path / "p")


def test_saelens_export_loads_back(tmp_path):
    wb = bench("tiny_llama", "blocks.1.resid_post")
    files = export(wb, tmp_path / "s", "saelens")
    assert sorted(files) == ["cfg.json", "sae_weights.safetensors"]
    loaded = load_sae(tmp_path / "s")
    assert torch.equal(loaded.W_dec, wb.sae.W_dec) and loaded.cfg.hook == "blocks.1.resid_post"
