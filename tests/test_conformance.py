"""Every registered analyzer (built-in and the example third-party plugin) on tiny models:
its result follows the contract, and no hook is left on the model, also after it raised."""

from __future__ import annotations

import pytest

from interpsuite import InterpretabilityPipeline
from interpsuite.plugins import get_registry, reset_registry
from interpsuite.results import contract_errors, read_results

MODELS = ("tiny_llama", "tiny_gpt2", "tiny_bert")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]


@pytest.fixture(scope="module")
def registry(example_plugin):
    reset_registry()
    registry = get_registry()
    assert "example_token_norms" in registry.analyzers  # the third-party plugin is part of the table
    return registry


def _run(model, analyzer_name, run_dir, registry):
    """One analyzer with its default options, results to a run dir only."""
    return InterpretabilityPipeline(
        model=model,
        data=TEXTS,
        analyzers={analyzer_name: {}},
        output_dir=run_dir,
        sinks=["rundir"],
        progress=False,
        registry=registry,
    ).run()


def pytest_generate_tests(metafunc):
    if "analyzer_name" in metafunc.fixturenames:
        # names are read at collection time from the installed built-ins plus the example plugin
        from interpsuite.plugins import get_registry as fresh

        names = sorted({*fresh().analyzers, "example_token_norms"})
        metafunc.parametrize("analyzer_name", names)


@pytest.mark.parametrize("model_name", MODELS)
def test_analyzer_result_follows_the_contract(registry, tiny_models, analyzer_name, model_name, tmp_path):
    cls = registry.analyzers[analyzer_name].obj
    model = tiny_models[model_name]
    if cls.requires_causal_lm and not model.info.is_causal:
        pytest.skip(f"{analyzer_name} needs a causal LM")
    before = model.hooks_left()
    report = _run(model, analyzer_name, tmp_path, registry)
    payload = read_results(tmp_path)
    assert contract_errors(payload, tmp_path) == []
    entry = payload["analyzers"][analyzer_name]
    assert entry["status"] == "ok", entry["error"]
    failed = [name for name, check in entry["checks"].items() if not check["passed"]]
    assert failed == [], f"{analyzer_name} failed its own checks {failed}: {entry['checks']}"
    assert report.results[analyzer_name].status == "ok"
    assert model.hooks_left() == before == 0


def test_no_hook_survives_an_analyzer_that_raised(registry, tiny_models, analyzer_name, tmp_path):
    """The last block raises mid-forward (after the analyzer's hooks are attached)."""
    model = tiny_models["tiny_llama"]
    last_block = model.adapter.blocks()[-1]

    def explode(module, args, kwargs):
        raise RuntimeError("injected failure inside the forward pass")

    handle = last_block.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        report = _run(model, analyzer_name, tmp_path, registry)
    finally:
        handle.remove()
    entry = read_results(tmp_path)["analyzers"][analyzer_name]
    assert entry["status"] == "failed" and "injected failure" in entry["error"]
    assert report.results[analyzer_name].status == "failed"
    assert model.hooks_left() == 0
