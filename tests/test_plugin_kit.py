"""The plugin author's kit: top-level imports, reductions, interpsuite.testing, the docs example.

The 30-line analyzer in docs/plugins.md is extracted from the doc and run here, so the doc
cannot drift from what works.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.figure
import pandas as pd
import pytest
import torch

import interpsuite
from interpsuite import (
    Analyzer,
    Check,
    ConfigError,
    InterpretabilityPipeline,
    PluginError,
    Result,
    RunContext,
    TokenMean,
    TokenMeans,
    hookspecs,
    layer_hooks,
    masked_mean,
    masked_sum,
    per_layer,
    plugins,
    real_tokens,
)
from interpsuite.results import contract_errors, read_results
from interpsuite.testing import DEFAULT_TEXTS, assert_result_contract, contract_problems, run_analyzer

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
DOC_MARKER = "<!-- tested: tests/test_plugin_kit.py"
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France, and Rome is the capital of Italy.", "Hi"]


# --- top-level imports ----------------------------------------------------------------------


def test_every_public_name_resolves_from_the_top_level():
    assert set(interpsuite.__all__) == {*interpsuite._EXPORTS, "__version__"}
    for name in interpsuite.__all__:
        value = getattr(interpsuite, name)
        if name != "__version__":
            module = importlib.import_module(f"interpsuite.{interpsuite._EXPORTS[name]}")
            assert getattr(module, name) is value, name
    assert interpsuite.hookimpl is hookspecs.hookimpl
    with pytest.raises(AttributeError, match="no_such_thing"):
        interpsuite.no_such_thing  # noqa: B018


def test_import_is_lazy_and_never_imports_pyplot():
    code = (
        "import sys, interpsuite, interpsuite.testing\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'eager import'\n"
        "from interpsuite import *\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr


def test_names_in_the_hookspecs_docs_exist():
    """What the plugin contract's docstrings tell authors to import must be importable."""
    hooks = [fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("interpsuite_")]
    texts = [inspect.getdoc(hookspecs)] + [inspect.getdoc(fn) for fn in hooks]
    dotted = set(re.findall(r"`(interpsuite(?:\.\w+)+)", "\n".join(t or "" for t in texts)))
    assert "interpsuite.hookspecs.hookimpl" in dotted
    for name in dotted:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"{name} (named in interpsuite/hookspecs.py) does not exist"
                obj = getattr(obj, attr)
            break


def test_pytest_plugin_entry_point_is_registered(request):
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert entry_points.get("interpsuite") == "interpsuite.testing"
    assert request.config.pluginmanager.has_plugin("interpsuite")


# --- reductions against a naive reference ----------------------------------------------------


def _padded_batches(seed: int, shape: tuple[int, ...] = (5,), offset: float = 0.0):
    """Batches of right-padded values with per-batch widths; padding is NaN (it must never count)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for lengths in ([3, 7, 1], [2], [6, 6, 4, 5]):
        width = max(lengths)
        values = torch.randn(len(lengths), width, *shape, generator=generator) + offset
        mask = torch.zeros(len(lengths), width, dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
            values[row, length:] = float("nan")
        batches.append((values, mask))
    return batches


def _naive_tokens(batches) -> torch.Tensor:
    """Every real token's values, by explicit loops over rows and positions, in float64."""
    rows = []
    for values, mask in batches:
        for b in range(values.shape[0]):
            for p in range(values.shape[1]):
                if mask[b, p] == 1:
                    rows.append(values[b, p].to(torch.float64))
    return torch.stack(rows)


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)], ids=["scalar", "vector", "matrix"])
def test_token_mean_equals_naive_reference_with_padding(shape):
    batches = _padded_batches(0, shape)
    reference = _naive_tokens(batches)
    acc = TokenMean(track_variance=True)
    for values, mask in batches:
        acc.add(values, mask)
    assert acc.count == reference.shape[0] == sum(int(m.sum()) for _, m in batches)
    tol = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(acc.sum, reference.sum(0), **tol)
    torch.testing.assert_close(acc.mean(), reference.mean(0), **tol)
    torch.testing.assert_close(acc.var(), reference.var(0, correction=0), **tol)
    torch.testing.assert_close(acc.var(correction=1), reference.var(0, correction=1), **tol)
    torch.testing.assert_close(acc.std(), reference.std(0, correction=0), **tol)
    assert acc.mean().dtype == torch.float64 and acc.mean().shape == torch.Size(shape)
    assert not torch.isnan(acc.mean()).any()  # the NaN padding never counted


def test_token_mean_variance_is_stable_far_from_zero():
    """Chan's merge keeps the variance where a sum-of-squares formula would cancel to noise."""
    batches = _padded_batches(1, (4,), offset=1e8)
    reference = _naive_tokens(batches)
    acc = TokenMean(track_variance=True)
    for values, mask in batches:
        acc.add(values, mask)
    centred = reference - reference.mean(0)
    torch.testing.assert_close(acc.var(), centred.pow(2).mean(0), rtol=1e-9, atol=0.0)


def test_single_batch_helpers_equal_reference():
    values, mask = _padded_batches(2)[2]
    reference = _naive_tokens([(values, mask)])
    torch.testing.assert_close(real_tokens(values, mask).double(), reference, rtol=0, atol=0)
    torch.testing.assert_close(masked_sum(values, mask), reference.sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(masked_mean(values, mask), reference.mean(0), rtol=1e-12, atol=1e-12)
    assert masked_sum(values, mask.bool()).dtype == torch.float64


def test_token_means_by_key_and_table():
    batches = _padded_batches(3, ())
    means = TokenMeans()
    for values, mask in batches:
        means["b"].add(values, mask)
        means["a"].add(values * 2, mask)
    reference = _naive_tokens(batches)
    assert list(means) == ["b", "a"]  # insertion order
    table = means.table("key", "mean")
    assert isinstance(table, pd.DataFrame) and list(table.columns) == ["key", "mean", "n_tokens"]
    assert table["key"].tolist() == ["b", "a"]
    assert table["mean"].tolist() == pytest.approx([float(reference.mean()), float(2 * reference.mean())], rel=1e-12)
    assert table["n_tokens"].tolist() == [reference.shape[0]] * 2
    assert means.means()["a"] == pytest.approx(float(2 * reference.mean()), rel=1e-12)
    vectors = TokenMeans()
    vectors[0].add(*_padded_batches(4, (3,))[0])
    with pytest.raises(ValueError, match="not a scalar"):
        vectors.table()


def test_reduction_errors_are_clear():
    values, mask = _padded_batches(5)[0]
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        TokenMean().add(values[:, :-1], mask)
    with pytest.raises(ValueError, match="no real tokens"):
        TokenMean().mean()
    with pytest.raises(ValueError, match="track_variance"):
        TokenMean().add(values, mask).var()
    acc = TokenMean().add(values, mask)
    with pytest.raises(ValueError, match="changed shape"):
        acc.add(values[..., :2], mask)
    empty = TokenMean().add(values, torch.zeros_like(mask))
    assert empty.count == 0  # a batch of padding only adds nothing


def test_layer_hooks_and_per_layer():
    assert layer_hooks("resid_post", [0, 2]) == ["blocks.0.resid_post", "blocks.2.resid_post"]
    cache = {"blocks.10.mlp.out": 10, "blocks.2.mlp.out": 2, "blocks.2.resid_post": -2, "final": 0}
    assert list(per_layer(cache, "mlp.out")) == [(2, 2), (10, 10)]  # numeric layer order
    assert list(per_layer(cache, "mlp.out", [10])) == [(10, 10)]
    with pytest.raises(KeyError, match="no blocks.{L}.attn.out"):
        list(per_layer(cache, "attn.out"))
    with pytest.raises(KeyError, match="blocks.3.mlp.out was not captured"):
        list(per_layer(cache, "mlp.out", [3]))


# --- the 30-line analyzer of docs/plugins.md ------------------------------------------------------


def _doc_example() -> str:
    text = DOC.read_text()
    start = text.index(DOC_MARKER)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match, "no python block after the marker in docs/plugins.md"
    return match.group(1)


@pytest.fixture(scope="module")
def doc_module() -> Iterator[types.ModuleType]:
    """The doc's block as a module of its own (not inheriting this file's `__future__` imports)."""
    module = types.ModuleType("plugins_md_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(_doc_example(), str(DOC), "exec", dont_inherit=True), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


def _direct_mean_norms(model, texts: list[str], layers: list[int]) -> dict[int, float]:
    batch = model.tokenize(texts)
    hooks = [f"blocks.{layer}.resid_post" for layer in layers]
    cache = model.forward(batch, capture=hooks).cache
    mask = batch.attention_mask.bool()
    return {layer: float(cache[f"blocks.{layer}.resid_post"].norm(dim=-1)[mask].double().mean()) for layer in layers}


def test_doc_example_fits_in_30_lines():
    lines = _doc_example().rstrip("\n").splitlines()
    assert len(lines) <= 30, f"docs/plugins.md example has {len(lines)} lines"
    assert lines[0].startswith("from ") and "import" in lines[0]  # imports are counted


def test_doc_example_runs_meets_contract_and_matches_direct(doc_module, interpsuite_tiny_model, tmp_path):
    model = interpsuite_tiny_model
    # batch_size 2: three texts of different lengths make two batches with different padding
    result = run_analyzer(doc_module.ResidNorm, model, texts=TEXTS, run_dir=tmp_path, batch_size=2)
    assert_result_contract(result, all_checks_passed=True, run_dir=tmp_path)
    assert result.checks["norms_positive"].passed and result.checks["norms_positive"].mode == "min"
    table = result.tables["norms"]
    layers = list(range(model.info.n_layers))
    assert table["layer"].tolist() == layers
    expected = _direct_mean_norms(model, TEXTS, layers)
    assert table["mean_norm"].tolist() == pytest.approx([expected[layer] for layer in layers], rel=1e-5)
    assert table["n_tokens"].tolist() == [model.tokenize(TEXTS).n_tokens] * len(layers)
    assert isinstance(result.figures["norms"], matplotlib.figure.Figure)
    assert (tmp_path / "tables" / "resid_norm" / "norms.csv").is_file()


def test_doc_example_registers_and_runs_through_pipeline(doc_module, tmp_path):
    """In-process registration, and the pipeline hands run() the config validate() resolved."""
    registry = plugins.get_registry(extra_plugins=[doc_module])
    assert registry.analyzers["resid_norm"].obj is doc_module.ResidNorm
    assert registry.analyzers["resid_norm"].distribution == plugins.IN_PROCESS
    report = InterpretabilityPipeline(
        model="tiny_llama",
        data=TEXTS,
        analyzers={"resid_norm": {"layers": [-1]}},  # only runs if run() sees the resolved [1]
        sinks=["rundir"],
        output_dir=tmp_path,
        progress=False,
        registry=registry,
    ).run()
    result = report.results["resid_norm"]
    assert result.status == "ok", result.error
    assert result.tables["norms"]["layer"].tolist() == [1]
    payload = read_results(tmp_path)
    assert contract_errors(payload, tmp_path) == []
    assert payload["analyzers"]["resid_norm"]["checks"]["norms_positive"]["passed"] is True


# --- run_analyzer ---------------------------------------------------------------------------------


@dataclass
class _Layers:
    layers: list[int] | None = None


class _Boom(Analyzer):
    name = "kit_boom"
    Config = _Layers

    def run(self, ctx: RunContext) -> Result:
        raise RuntimeError("boom")


class _NotAResult(Analyzer):
    name = "kit_not_a_result"

    def run(self, ctx: RunContext):
        return {"metrics": {}}


class _WrongResolve(Analyzer):
    name = "kit_wrong_resolve"
    Config = _Layers

    def validate(self, info, cfg):
        return {"layers": [0]}

    def run(self, ctx: RunContext) -> Result:
        return Result()


class _CausalOnly(Analyzer):
    name = "kit_causal_only"
    requires_causal_lm = True

    def run(self, ctx: RunContext) -> Result:
        return Result()


class _Seen(Analyzer):
    """Records what run() saw: the resolved config, the inputs and the seed."""

    name = "kit_seen"
    Config = _Layers

    def validate(self, info, cfg: _Layers) -> _Layers:
        return _Layers(layers=[info.n_layers - 1])

    def run(self, ctx: RunContext) -> Result:
        return Result(
            metrics={"first_random": float(torch.rand(()))},
            summary={"layers": self.cfg.layers, "texts": ctx.inputs.texts, "batch_size": ctx.batch_size},
        )


def test_run_analyzer_hands_run_the_resolved_config_and_defaults():
    result = run_analyzer(_Seen, "tiny_gpt2", batch_size=3)
    assert result.status == "ok" and result.error is None and result.duration_s > 0
    assert result.summary == {"layers": [1], "texts": list(DEFAULT_TEXTS), "batch_size": 3}
    torch.manual_seed(0)
    assert result.metrics["first_random"] == float(torch.rand(()))  # seeded as the pipeline seeds
    lengths = [len(t) for t in DEFAULT_TEXTS]
    assert len(set(lengths)) == len(lengths)  # the default texts pad


def test_run_analyzer_by_registered_name(tmp_path):
    result = run_analyzer("activation_stats", "tiny_llama", options={"layers": [0]}, run_dir=tmp_path)
    assert_result_contract(result, run_dir=tmp_path)


def test_run_analyzer_records_failures_like_the_pipeline(tmp_path):
    result = run_analyzer(_Boom, run_dir=tmp_path)
    assert result.status == "failed" and result.error == "RuntimeError: boom"
    assert "RuntimeError: boom" in (tmp_path / "logs" / "kit_boom.traceback.txt").read_text()
    entry = read_results(tmp_path)["analyzers"]["kit_boom"]
    assert entry["status"] == "failed" and entry["error"] == "RuntimeError: boom"
    with pytest.raises(RuntimeError, match="boom"):
        run_analyzer(_Boom, reraise=True)
    result = run_analyzer(_NotAResult)
    assert result.status == "failed" and "returned dict, not Result" in result.error
    with pytest.raises(AssertionError, match="status is 'failed': RuntimeError: boom"):
        assert_result_contract(run_analyzer(_Boom))


def test_run_analyzer_validates_like_the_pipeline():
    with pytest.raises(ConfigError, match="no_such_option"):
        run_analyzer(_Boom, options={"no_such_option": 1})
    with pytest.raises(ConfigError, match="needs a causal LM"):
        run_analyzer(_CausalOnly, "tiny_bert")
    with pytest.raises(PluginError, match=r"kit_wrong_resolve.validate\(\) returned dict"):
        run_analyzer(_WrongResolve)
    with pytest.raises(ConfigError, match="unknown analyzer"):
        run_analyzer("no_such_analyzer")


# --- assert_result_contract -----------------------------------------------------------------------


def _good_result() -> Result:
    import matplotlib.figure as mfigure

    result = Result(
        metrics={"a": 1.0, "b": None, "c": 3},
        tables={"t": pd.DataFrame({"x": [1]})},
        figures={"f": mfigure.Figure()},
        summary={"n": 1, "v": torch.tensor([1.0, 2.0]), "nested": {"s": "x", "l": [1, 2.5, None]}},
    )
    result.add_check("ok", 0.1, 1.0)
    return result


def test_contract_accepts_a_good_result():
    assert contract_problems(_good_result()) == []
    assert_result_contract(_good_result(), all_checks_passed=True)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.metrics.update(x=float("nan")), "metric x is nan: not finite"),
        (lambda r: r.metrics.update(x="1.0"), "metric x is a str, not a number"),
        (lambda r: r.tables.update(t=[1, 2]), "table 't' is a list, not a pandas DataFrame"),
        (lambda r: r.figures.update(f="plot.png"), "figure 'f' is a str, not a matplotlib Figure"),
        (lambda r: r.checks.update(c=0.5), "check 'c' is a float, not a Check"),
        (lambda r: r.checks.update(c=Check(0.5, 1.0, "at_most")), "mode 'at_most'"),
        (lambda r: r.summary.update(obj=object()), r"summary\['obj'\] is a object"),
        (lambda r: setattr(r, "summary", [1]), "summary is a list, not a dict"),
        (lambda r: r.artifacts.update(page=b"<html>"), "artifact 'page' is a bytes"),
        (lambda r: setattr(r, "status", "failed"), "status is 'failed'"),
    ],
)
def test_contract_names_each_problem(mutate, message):
    result = _good_result()
    mutate(result)
    with pytest.raises(AssertionError, match=message):
        assert_result_contract(result)


def test_contract_optionally_requires_passed_checks():
    result = _good_result()
    result.add_check("too_big", 2.0, 1.0)  # mode max: fails
    assert_result_contract(result)
    with pytest.raises(AssertionError, match=r"check too_big failed: value 2.0 vs threshold 1.0 \(mode max\)"):
        assert_result_contract(result, all_checks_passed=True)
    with pytest.raises(AssertionError, match="expected a Result"):
        assert_result_contract({"metrics": {}})
