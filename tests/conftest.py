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


#: fixtures that load an embedded real model. A test that uses one, directly or through another
#: fixture (`smollm2_heads`, `smollm2_pair`), is marked `slow` when collected, so
#: `pytest -m "not slow"` is a fast tier without anyone having to remember the marker. Tests
#: that load a real model some other way (`load_model("smollm2")`, a pipeline or CLI run with
#: the default model) carry an explicit `@pytest.mark.slow`.
REAL_MODEL_FIXTURES = frozenset({"smollm2", "minilm"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2")


@pytest.fixture(scope="session")
def minilm():
    return load_model("minilm")
