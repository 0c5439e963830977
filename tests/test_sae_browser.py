"""The offline feature browser: one self-contained, injection-safe, small HTML file.

A synthetic 1,000-feature report (20 top contexts and 15 quantile samples of 17 tokens each,
the defaults) whose vocabulary holds hostile strings: the file must parse, embed JSON that
round-trips to `to_json()`, never contain those strings unescaped, reach nothing over the
network, and stay small. With playwright and Debian's chromium installed, a headless browser
also opens it, searches, clicks and checks what it renders (skipped otherwise).
"""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from interpsuite_plugins.sae.browser import LIST_LIMIT, embed_json, feature_browser_html, write_feature_browser
from interpsuite_plugins.sae.features import (
    CoFiring,
    FeatureContext,
    FeatureEntry,
    FeatureReport,
    LogitEffects,
    QuantileGroup,
)

from tests.server_support import browser_or_skip

HOSTILE = "<img src=x onerror=alert(1)>"
CLOSER = "</script><script>alert(2)</script>"
WORDS = [" the", " cat", " sat", "ing", "\n", " café", "🙂", '"q"', "\\", "<!--", "&amp;", " $", CLOSER, HOSTILE]
N_FEATURES = 1000
#: measured: 4.6 MB for this report (1,000 features x 35 contexts x 17 tokens); the bound leaves room
SIZE_BOUND = 6_000_000
#: a feature whose top token is unique, for the search test
NEEDLE_FEATURE, NEEDLE = 123, " zebra"


def _context(rng: np.random.Generator, text_id: int, peak: float, focus_token: str | None = None) -> FeatureContext:
    tokens = [WORDS[i] for i in rng.integers(0, len(WORDS), 17)]
    if focus_token is not None:
        tokens[12] = focus_token
    acts = np.where(rng.random(17) < 0.3, rng.random(17) * peak, 0.0)
    acts[12] = peak
    return FeatureContext(text_id, 40, 12, tokens, list(range(17)), acts.tolist(), peak, float(acts.max()))


def synthetic_report(n_features: int = N_FEATURES, width: int = 16384) -> FeatureReport:
    rng = np.random.default_rng(0)
    density = rng.random(width) * 0.01
    density[::7] = 0.0
    entries = {}
    features = [f for f in range(width) if density[f] > 0][:n_features]
    if NEEDLE_FEATURE not in features:
        features[-1] = NEEDLE_FEATURE
    for f in features:
        peak = float(rng.random() * 10 + 1)
        focus = NEEDLE if f == NEEDLE_FEATURE else (HOSTILE if f == features[0] else None)
        top = [_context(rng, int(t), peak * (1 - 0.02 * j), focus) for j, t in enumerate(rng.integers(0, 500, 20))]
        quantiles = [
            QuantileGroup(
                peak * q / 5, peak * (q + 1) / 5, 100, [_context(rng, 3, peak * (q + 0.5) / 5) for _ in range(3)]
            )
            for q in range(5)
        ]
        counts, edges = np.histogram(rng.random(200) * peak, bins=40)
        pairs = [
            (WORDS[i], float(v)) for i, v in zip(rng.integers(0, len(WORDS), 10), rng.normal(size=10), strict=True)
        ]
        effects = LogitEffects(top=pairs, bottom=pairs[::-1], top_ids=list(range(10)), bottom_ids=list(range(10)))
        cofiring = [CoFiring(int(g), 10, 0.5) for g in rng.choice(features, 10, replace=False)]
        entries[f] = FeatureEntry(
            f, float(density[f]), peak, peak / 3, 200, top, quantiles, counts, edges, effects, cofiring
        )
    return FeatureReport(
        model_name="synthetic<b>", hook="blocks.3.resid_post", width=width, n_tokens=100_000, n_texts=500,
        density=density, max_activation=density * 100, mean_active=density * 30, features=features, entries=entries,
    )  # fmt: skip


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._in_script: dict | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


@pytest.fixture(scope="module")
def report():
    return synthetic_report()


@pytest.fixture(scope="module")
def page(report, tmp_path_factory) -> tuple[str, Path]:
    path = write_feature_browser(report, tmp_path_factory.mktemp("browser") / "sub" / "features.html")
    return path.read_text(encoding="utf-8"), path


def test_the_page_parses_and_embeds_the_report(report, page):
    text, _ = page
    parser = _Collector()
    parser.feed(text)
    parser.close()
    data = [body for attrs, body in parser.scripts if attrs.get("type") == "application/json"]
    assert len(data) == 1 and [attrs.get("id") for attrs, _ in parser.scripts] == ["data", None]
    assert json.loads(data[0]) == report.to_json()  # round-trips
    assert "</script" not in data[0].lower() and "<" not in data[0]
    assert "</" not in data[0]


def test_hostile_token_strings_appear_only_escaped(page):
    text, _ = page
    assert HOSTILE not in text and CLOSER not in text and "<!--" not in text
    assert json.dumps(HOSTILE)[1:-1].replace("<", "\\u003c").replace(">", "\\u003e") in text
    assert text.count("</script>") == 2  # the data element's and the code's own
    assert "synthetic&lt;b&gt;" in text  # the title is HTML-escaped
    assert ".innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text


def test_nothing_is_fetched_from_the_network(page):
    text, _ = page
    parser = _Collector()
    parser.feed(text)
    for tag, attrs in parser.tags:
        assert tag not in ("link", "img", "iframe", "object", "embed")
        for name in ("src", "href", "action"):
            assert name not in attrs, (tag, attrs)
    assert not re.search(r"url\(|@import|fetch\(|XMLHttpRequest", text)
    # the one URL in the file is the SVG namespace name (an identifier, never requested)
    assert re.findall(r"https?://[^\"' ]+", text) == ["http://www.w3.org/2000/svg"]


def test_the_page_stays_small(page):
    text, _ = page
    size = len(text.encode("utf-8"))
    assert size < SIZE_BOUND, size


def test_embed_json_and_title_edge_cases():
    hostile = {"a": "</script><!-- & -->", "b": [1.5, None]}
    text = embed_json(hostile)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == hostile
    with pytest.raises(ValueError):
        embed_json({"x": float("nan")})
    html = feature_browser_html({"tokens": [], "entries": []}, "a __DATA__ title")
    assert html.count('"entries"') == 1 and "a __DATA__ title" in html


def test_a_headless_browser_searches_clicks_and_renders(page, report):
    sync_api, chromium = browser_or_skip()
    _, path = page
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        except Exception as err:  # a chromium that cannot start here (no display libraries, sandbox)
            pytest.skip(f"chromium does not start: {str(err).splitlines()[0]}")
        try:
            tab = browser.new_page()
            errors: list[str] = []
            tab.on("pageerror", lambda err: errors.append(str(err)))
            tab.on("request", lambda req: errors.append(req.url) if not req.url.startswith("file:") else None)
            start = time.perf_counter()
            tab.goto(path.as_uri())
            tab.wait_for_selector("#main h1")
            load_s = time.perf_counter() - start
            first = report.features[0]
            assert tab.inner_text("#main h1") == f"Feature {first}"
            assert tab.locator("#list .item").count() == LIST_LIMIT
            assert f"{len(report.features) - LIST_LIMIT} more" in tab.inner_text("#list")
            # the hostile token is rendered as text, never as an element
            assert tab.locator("#main img").count() == 0
            assert HOSTILE in tab.locator("#main .tok.focus").first.text_content()

            tab.fill("#search", NEEDLE.strip())
            tab.wait_for_function("document.querySelectorAll('#list .item').length === 1")
            tab.click("#list .item")
            tab.wait_for_function(f"document.querySelector('#main h1').textContent === 'Feature {NEEDLE_FEATURE}'")
            assert tab.evaluate("location.hash") == f"#f={NEEDLE_FEATURE}"
            focus = tab.locator("#main .ctx .tok.focus")
            assert focus.count() == 20 + 15
            assert focus.first.text_content() == NEEDLE
            assert tab.locator("#main svg rect").count() == 40
            entry = report.entries[NEEDLE_FEATURE]
            style = tab.locator("#main .ctx .tok.focus").first.get_attribute("style")
            assert style == "background-color: rgb(255, 120, 0);"  # the feature's max: alpha 1
            title = tab.locator("#main .ctx .tok.focus").first.get_attribute("title")
            assert title.startswith(f"activation {float(f'{entry.top_contexts[0].activation:.4g}')}")

            tab.fill("#search", "7")
            tab.wait_for_function("document.querySelectorAll('#list .item').length <= 1")
            co = entry.cofiring[0].feature
            tab.click("#main a.co >> nth=0")
            tab.wait_for_function(f"document.querySelector('#main h1').textContent === 'Feature {co}'")
            tab.goto(path.as_uri() + "#f=999999")
            tab.wait_for_selector("#main .note")
            assert "not in this report" in tab.inner_text("#main")
            assert errors == []
        finally:
            browser.close()
    print(f"browser load time for {len(report.features)} features: {load_s:.2f} s")
    assert load_s < 10


def test_a_real_report_round_trips(tiny_models, tmp_path):
    """A report from a model (byte-level GPT-2 tokens, markup in the texts) embeds losslessly."""
    from interpsuite_plugins.sae import SAEConfig, SparseAutoencoder
    from interpsuite_plugins.sae.features import feature_report

    model = tiny_models["tiny_gpt2"]
    sae = SparseAutoencoder(
        SAEConfig(d_in=model.info.d_model, width=40, architecture="topk", k=4, hook="blocks.1.resid_post")
    )
    texts = ["déjà vu </script> <b>bold</b>", "x = 1 + 2\n  y", "Hello, world!"]
    report = feature_report(model, sae, texts, top_n=40, n_contexts=3)
    path = write_feature_browser(report, tmp_path / "f.html", title="gpt2 </title><script>")
    text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    data = next(body for attrs, body in parser.scripts if attrs.get("id") == "data")
    assert json.loads(data) == report.to_json()
    assert "<" not in data and "&lt;/title&gt;&lt;script&gt;" in text
