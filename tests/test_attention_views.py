"""Attention rollout / flow, comparison across inputs and models, and the interactive HTML view.

Exact tests on hand-built patterns and tiny random models; the HTML page is parsed back.
"""

from __future__ import annotations

import html
import math
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch
from interpsuite_plugins.attention.compare import (
    LN2,
    distance_distribution,
    js_divergence,
    offset_bucket,
    prefix_js,
    row_entropy,
)
from interpsuite_plugins.attention.html_view import (
    SCALE,
    ViewText,
    attention_view_html,
    display_token,
    embedded_row_sum_error,
    extract_view_data,
    quantise_rows,
    render_attention_view,
    render_attention_views,
)
from interpsuite_plugins.attention.rollout import (
    attention_flow,
    capture_text_patterns,
    flow_graph,
    mix_residual,
    reference_flow,
    resolve_positions,
    rollout,
)

from interpsuite import InterpretabilityPipeline, Intervention
from interpsuite.errors import ConfigError
from interpsuite.results import read_results

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]


def _run(model, analyzer, options, tmp_path, texts=TEXTS):
    report = InterpretabilityPipeline(
        model=model,
        data=texts,
        analyzers={analyzer: options},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    ).run()
    entry = read_results(tmp_path)["analyzers"][analyzer]
    assert entry["status"] == "ok", entry["error"]
    assert all(c["passed"] for c in entry["checks"].values()), entry["checks"]
    return report.results[analyzer], entry


def _random_causal(rng, layers, n, heads=None):
    shape = (layers, n, n) if heads is None else (layers, heads, n, n)
    a = np.tril(rng.random(shape) ** 3)
    return a / a.sum(-1, keepdims=True)


# --- rollout ------------------------------------------------------------------------------------


def test_rollout_of_identity_attention_is_identity():
    eye = np.broadcast_to(np.eye(5), (3, 5, 5))
    mixed = mix_residual(eye)
    np.testing.assert_array_equal(mixed, eye)
    cumulative = rollout(mixed)
    for layer in range(3):
        np.testing.assert_allclose(cumulative[layer], np.eye(5), atol=0)


def test_mix_residual_and_rollout_by_hand():
    a = np.array([[[1.0, 0.0], [0.25, 0.75]], [[1.0, 0.0], [1.0, 0.0]]])
    mixed = mix_residual(a)
    np.testing.assert_allclose(mixed[0], [[1.0, 0.0], [0.125, 0.875]])
    np.testing.assert_allclose(mixed[1], [[1.0, 0.0], [0.5, 0.5]])
    cumulative = rollout(mixed)
    np.testing.assert_allclose(cumulative[0], mixed[0])
    np.testing.assert_allclose(cumulative[1], mixed[1] @ mixed[0])
    np.testing.assert_allclose(cumulative[1][1], [0.5625, 0.4375])
    # residual weight 1: attention is ignored; 0: plain product of attention
    np.testing.assert_allclose(mix_residual(a, 1.0), np.broadcast_to(np.eye(2), a.shape))
    np.testing.assert_allclose(rollout(mix_residual(a, 0.0))[1], a[1] @ a[0])


def test_rollout_rows_sum_to_one_and_causal_is_lower_triangular():
    rng = np.random.default_rng(0)
    cumulative = rollout(mix_residual(_random_causal(rng, 6, 9)))
    np.testing.assert_allclose(cumulative.sum(-1), 1.0, atol=1e-12)
    assert np.abs(np.triu(cumulative, k=1)).max() == 0.0
    dense = rng.random((4, 7, 7))
    cumulative = rollout(mix_residual(dense / dense.sum(-1, keepdims=True)))
    np.testing.assert_allclose(cumulative.sum(-1), 1.0, atol=1e-12)


def test_attention_flow_equals_a_hand_computed_max_flow():
    """2 layers, 2 tokens. Mixed edges (level 2 -> 1): row 1 = [0.4, 0.6];
    (level 1 -> 0): row 0 = [1, 0], row 1 = [0.2, 0.8].

    From output node (2, 1): to input 0 the paths carry min(0.4, 1) + min(0.6, 0.2) = 0.6;
    to input 1 only the path via (1, 1) exists: min(0.6, 0.8) = 0.6.
    From output node (2, 0): (2,0)->(1,0) has capacity 1, then (1,0)->(0,0) capacity 1.
    """
    mixed = np.array([[[1.0, 0.0], [0.2, 0.8]], [[1.0, 0.0], [0.4, 0.6]]])
    flows = attention_flow(mixed, [1, 0])
    np.testing.assert_allclose(flows, [[0.6, 0.6], [1.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(reference_flow(mixed, 1), [0.6, 0.6], atol=1e-7)
    graph = flow_graph(mixed)
    assert graph.number_of_nodes() == 6 and graph.number_of_edges() == 6
    assert graph[(2, 1)][(1, 0)]["capacity"] == 0.4
    # rollout of the same graph differs: it multiplies instead of taking bottlenecks
    np.testing.assert_allclose(rollout(mixed)[-1][1], [0.52, 0.48])


def test_attention_flow_agrees_with_scipy_on_a_random_graph():
    rng = np.random.default_rng(1)
    mixed = mix_residual(_random_causal(rng, 4, 6))
    flows = attention_flow(mixed, [5])
    np.testing.assert_allclose(flows[0], reference_flow(mixed, 5), atol=1e-6)
    assert (flows <= 1.0 + 1e-12).all() and (flows >= 0).all()


def test_resolve_positions():
    assert resolve_positions("last", 4) == ([3], [])
    assert resolve_positions("all", 3) == ([0, 1, 2], [])
    assert resolve_positions([0, -1, 7], 4) == ([0, 3], [7])


def test_rollout_analyzer_with_identity_attention_at_every_layer(tiny_model, tmp_path):
    """Replace every layer's pattern with the identity: rollout and flow become the identity."""
    text = "Hello there"
    n = len(tiny_model.tokenize([text]).tokens[0])
    eye = torch.eye(n)
    interventions = [
        Intervention(f"blocks.{layer}.attn.pattern", "replace", value=eye) for layer in range(tiny_model.info.n_layers)
    ]
    with tiny_model.hooks(interventions=interventions):
        result, entry = _run(tiny_model, "attention_rollout", {"output_positions": "all"}, tmp_path, [text])
    table = result.tables["text0"]
    assert len(table) == n * n
    expected = (table["output_position"] == table["input_position"]).astype(float)
    np.testing.assert_allclose(table["rollout"], expected, atol=1e-6)
    np.testing.assert_allclose(table["raw_attention_last_layer"], expected, atol=0)
    np.testing.assert_allclose(table["flow"], expected, atol=1e-6)
    by_layer = result.tables["text0_by_layer"]
    np.testing.assert_allclose(by_layer["rollout"], (by_layer["input_position"] == n - 1).astype(float), atol=1e-6)
    assert tiny_model.hooks_left() == 0


def test_rollout_analyzer_on_tiny_models(tiny_model, tmp_path):
    result, entry = _run(tiny_model, "attention_rollout", {"flow_max_tokens": 12}, tmp_path)
    assert set(entry["checks"]) >= {"rollout_row_sum_error"}
    if tiny_model.info.is_causal:
        assert "rollout_upper_triangle_max" in entry["checks"]
    for t in range(3):
        text_table = result.tables[f"text{t}"]
        assert np.isclose(text_table["rollout"].sum(), 1.0)  # one output position (the last token)
        if len(text_table) > 12:
            assert text_table["flow"].isna().all()
        else:
            assert np.isclose(text_table["flow"].sum(), 1.0)
    notes = entry["summary"]["notes"]
    assert any("flow skipped" in note for note in notes)
    # the analyzer's rollout equals the pure function applied to captured patterns
    captured = capture_text_patterns(tiny_model, TEXTS[:1])[0]
    final = rollout(mix_residual(captured.patterns.mean(axis=1)))[-1]
    np.testing.assert_allclose(result.tables["text0"]["rollout"], final[-1], atol=1e-12)
    assert result.figures and all(name.startswith("rollout_") for name in result.figures)


def test_rollout_validation():
    from interpsuite_plugins.attention.rollout import AttentionRollout, AttentionRolloutConfig

    from interpsuite.models import describe_model

    info = describe_model("tiny_gpt2")
    with pytest.raises(ConfigError, match="output_positions"):
        AttentionRollout().validate(info, AttentionRolloutConfig(output_positions="first"))
    with pytest.raises(ConfigError, match="max_texts"):
        AttentionRollout().validate(info, AttentionRolloutConfig(max_texts=0))


# --- comparison ---------------------------------------------------------------------------------


def test_js_divergence_properties():
    rng = np.random.default_rng(2)
    p, q = rng.random((50, 7)), rng.random((50, 7))
    js = js_divergence(p, q)
    assert (js >= 0).all() and (js <= LN2).all()
    np.testing.assert_allclose(js, js_divergence(q, p), atol=1e-15)
    np.testing.assert_allclose(js_divergence(p, p), 0.0, atol=1e-15)
    # disjoint supports reach the maximum ln 2; a known value by hand
    assert math.isclose(float(js_divergence([1.0, 0.0], [0.0, 1.0])), LN2, rel_tol=1e-12)
    by_hand = 0.5 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) + 0.5 * (1.0 * math.log(1.0 / 0.75))
    assert math.isclose(float(js_divergence([0.5, 0.5], [0.0, 1.0])), by_hand, rel_tol=1e-12)
    # unnormalised inputs are renormalised
    assert math.isclose(float(js_divergence([2.0, 2.0], [0.0, 3.0])), by_hand, rel_tol=1e-12)


def test_prefix_js_and_distance_distributions():
    rng = np.random.default_rng(3)
    a = _random_causal(rng, 1, 6, heads=3)[0]
    b = _random_causal(rng, 1, 4, heads=3)[0]
    np.testing.assert_allclose(prefix_js(a, a, causal=True), 0.0, atol=1e-15)
    # shared prefix of 4: a's rows q < 4 live on keys < 4, so this is b against a's top-left block
    expected = js_divergence(a[:, 1:4, :4], b[:, 1:4, :4]).mean(-1)
    np.testing.assert_allclose(prefix_js(a, b, causal=True), expected)
    assert np.isnan(prefix_js(a[:, :1, :1], b, causal=True)).all()
    # previous-token attention: all mass at offset 1 (query 0 has only offset 0)
    prev = np.zeros((5, 5))
    prev[0, 0] = 1.0
    prev[np.arange(1, 5), np.arange(4)] = 1.0
    dist = distance_distribution(prev[None])[0]
    from interpsuite_plugins.attention.compare import MAX_BUCKET

    assert math.isclose(dist[MAX_BUCKET + 1], 0.8) and math.isclose(dist[MAX_BUCKET], 0.2)
    assert math.isclose(dist.sum(), 1.0)
    assert offset_bucket(np.array([0, 1, 2, 3, 4, 5, 8, 9, -3, 1000])).tolist() == [0, 1, 2, 3, 3, 4, 4, 5, -3, 8]


def test_row_entropy():
    uniform = np.tril(np.ones((4, 4)))
    uniform /= uniform.sum(-1, keepdims=True)
    h, hn = row_entropy(uniform, causal=True)
    np.testing.assert_allclose(h, np.log([1, 2, 3, 4]))
    assert np.isnan(hn[0]) and np.allclose(hn[1:], 1.0)


def test_comparison_analyzer_on_tiny_models(tiny_model, tmp_path):
    result, entry = _run(tiny_model, "attention_comparison", {}, tmp_path)
    assert {"js_self_divergence_max", "js_range_violation", "js_symmetry_error"} <= set(entry["checks"])
    by_head = result.tables["js_by_head"]
    assert len(by_head) == tiny_model.info.n_layers * tiny_model.info.n_heads
    assert by_head["js_distance_mean"].between(0, LN2).all()
    assert len(result.tables["js_pairs"]) == 3
    profiles = result.tables["entropy_profiles"]
    assert profiles["relative_depth"].tolist() == [0.0, 1.0]
    assert profiles["mean_normalised_entropy"].between(0, 1 + 1e-9).all()


def test_comparison_across_models(tiny_models, tmp_path):
    result, entry = _run(
        tiny_models["tiny_llama"], "attention_comparison", {"models": ["tiny_gpt2", "tiny_bert"]}, tmp_path
    )
    profiles = result.tables["entropy_profiles"]
    assert set(profiles["model"]) == {"tiny_llama", "tiny_gpt2", "tiny_bert"}
    assert result.tables["models"]["model"].tolist() == ["tiny_llama", "tiny_gpt2", "tiny_bert"]
    assert "entropy_by_depth" in result.figures


def test_comparison_with_one_text_and_unknown_model(tiny_models, tmp_path):
    result, entry = _run(tiny_models["tiny_gpt2"], "attention_comparison", {}, tmp_path, ["Only one text"])
    assert result.tables["js_pairs"].empty
    assert any("one text only" in note for note in entry["summary"]["notes"])
    with pytest.raises(ConfigError, match="no_such_model"):
        InterpretabilityPipeline(
            model=tiny_models["tiny_gpt2"],
            data=["x"],
            analyzers={"attention_comparison": {"models": ["./no_such_model"]}},
            sinks=["rundir"],
        ).validate()


# --- HTML view ----------------------------------------------------------------------------------

VOID = {"meta", "br", "input", "img", "hr", "link", "wbr", "source", "area", "base", "col", "embed", "track"}


class BalanceChecker(HTMLParser):
    """Every opened (non-void) tag is closed in order; collects text and attributes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.seen: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.seen.add(tag)
        self.attributes += attrs
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.errors.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag for void element {tag}")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def _check_page(page: str, tokens: list[str]) -> BalanceChecker:
    assert page.startswith("<!DOCTYPE html>")
    checker = BalanceChecker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == [], (checker.errors, checker.stack)
    assert {"html", "head", "body", "title", "style", "script", "canvas", "select"} <= checker.seen
    for token in tokens:
        assert html.escape(display_token(token)) in page, token
    assert "http://" not in page and "https://" not in page
    for name, value in checker.attributes:
        assert name not in ("src", "href"), (name, value)
    assert not re.search(r"\bsrc\s*=", page) and "@import" not in page and "url(" not in page
    return checker


def test_rendered_page_is_valid_self_contained_and_escaped():
    tokens = ["<s>", " Tom", " &", "</script>", ' "quoted"', "a\nb", "<b>bold</b>"]
    n = len(tokens)
    rng = np.random.default_rng(4)
    patterns = {layer: _random_causal(rng, 1, n, heads=2)[0] for layer in (0, 1, 2)}
    page = render_attention_view(tokens, patterns, title="Test <view> & more")
    _check_page(page, tokens)
    assert "<b>bold</b>" not in page and "</script>" not in page.split('id="attention-data">')[1].split("</script>")[0]
    assert "Test &lt;view&gt; &amp; more" in page
    data = extract_view_data(page)
    assert data["texts"][0]["tokens"] == tokens and data["texts"][0]["layers"] == [0, 1, 2]
    assert embedded_row_sum_error(data) == 0.0
    embedded = np.asarray(data["texts"][0]["patterns"], dtype=float).reshape(3, 2, n, n) / SCALE
    assert np.abs(embedded - np.stack([patterns[layer] for layer in (0, 1, 2)])).max() < 1.0 / SCALE


def test_quantise_rows_sums_exactly():
    rng = np.random.default_rng(5)
    w = rng.random((20, 9)) ** 4
    w /= w.sum(-1, keepdims=True)
    q = quantise_rows(w)
    assert (q.sum(-1) == SCALE).all()
    assert np.abs(q / SCALE - w).max() < 1.0 / SCALE
    assert (quantise_rows(np.zeros((2, 3))) == 0).all()


def test_multi_text_page_and_python_entry_point(tiny_models):
    model = tiny_models["tiny_gpt2"]
    page = attention_view_html(model, ["Tom & <Jerry>", "Hi"], max_tokens=8)
    batch = model.tokenize(["Tom & <Jerry>", "Hi"], max_length=8)
    _check_page(page, [t for row in batch.tokens for t in row])
    data = extract_view_data(page)
    assert [t["n"] for t in data["texts"]] == [8, 2]
    assert data["texts"][0]["heads"] == model.info.n_heads
    assert len(data["texts"][0]["layers"]) == model.info.n_layers
    assert embedded_row_sum_error(data) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        render_attention_views([])
    with pytest.raises(ValueError, match="expected"):
        render_attention_views([ViewText(["a", "b"], {0: np.ones((1, 3, 3)) / 3})])


def test_view_analyzer(tiny_model, tmp_path):
    text = "The <quick> & brown fox"
    result, entry = _run(tiny_model, "attention_view", {"max_tokens": 16}, tmp_path, [text, "unused"])
    page = result.artifacts["attention_view.html"]
    tokens = tiny_model.tokenize([text], max_length=16).tokens[0]
    _check_page(page, tokens)
    assert (tmp_path / "artifacts" / "attention_view" / "attention_view.html").read_text() == page
    assert entry["checks"]["embedded_row_sum_error"]["value"] == 0.0
    assert len(extract_view_data(page)["texts"]) == 1  # max_texts = 1
    texts = result.tables["texts"]
    assert texts["truncated"].tolist() == [True] and isinstance(texts, pd.DataFrame)


# --- SmolLM2 (embedded real model) ----------------------------------------------------------------

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.mark.slow
def test_smollm2_rollout_and_view(smollm2, tmp_path):
    """Known answer: SmolLM2's first token is an attention sink, so the rollout from the last
    position puts almost all its weight there (measured 0.9996); flow spreads it out."""
    result, entry = _run(smollm2, "attention_rollout", {"max_texts": 1}, tmp_path / "rollout", [IOI])
    table = result.tables["text0"]
    assert table["rollout"].iloc[0] > 0.99
    assert table["flow"].notna().all() and table["flow"].iloc[0] < 0.5
    assert entry["checks"]["flow_matches_scipy_reference"]["value"] < 1e-5
    page = attention_view_html(smollm2, IOI)
    tokens = smollm2.tokenize([IOI]).tokens[0]
    assert " Mary" in tokens
    _check_page(page, tokens)
    data = extract_view_data(page)
    assert len(data["texts"][0]["layers"]) == 30 and data["texts"][0]["heads"] == 9
    assert embedded_row_sum_error(data) == 0.0
