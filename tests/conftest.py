"""Shared fixtures: tiny random models (fast, exact tests) and the embedded real models."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from interpsuite.models import load_model  # noqa: E402

pytest_plugins = ["tests.plugin_support"]

TINY = ("tiny_llama", "tiny_gpt2", "tiny_bert")
#: every built-in adapter on a tiny model (tests/test_reference.py). Not merged into TINY: on
#: tiny_gemma2 two analyzer-level assumptions fail (test_models' "no future attention" also at
#: padding queries, which eager attention fills uniformly once a sliding window holds only
#: padding; attention_gradients' finite-difference check, whose quantity the post-attention
#: norm makes ~0), and every tiny_model test would run seven times
TINY_ARCH = (*TINY, "tiny_mistral", "tiny_qwen2", "tiny_neox", "tiny_gemma2")


@pytest.fixture(scope="session", params=TINY)
def tiny_model(request):
    return load_model(request.param)


@pytest.fixture(scope="session", params=TINY_ARCH)
def tiny_arch_model(request):
    return load_model(request.param)


@pytest.fixture(scope="session")
def tiny_models():
    return {name: load_model(name) for name in TINY}


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2")


@pytest.fixture(scope="session")
def minilm():
    return load_model("minilm")
