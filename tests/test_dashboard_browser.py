"""The dashboard in a real browser (Debian's chromium through playwright) against a real uvicorn
server on loopback, serving tiny_llama: what the page renders must be the numbers the API returns
for the same request (fetched again through httpx), the page must reach nothing but the server, and
it must raise no page or console error. Screenshots go to $INTERPSUITE_TEST_ARTIFACTS (default
test-artifacts/screenshots/ under the repo) as dashboard-<view>.png.

Skipped when playwright or /usr/bin/chromium is missing, or when chromium cannot start here.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402

from interpsuite.server.app import create_app  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402
from interpsuite.testing import cached_model  # noqa: E402
from tests.server_support import browser_or_skip  # noqa: E402

TEXT = "The cat sat on the mat."
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
SAE_FOLDER = "sae_tiny"
HOOK = "blocks.1.resid_post"
#: playwright's wait budget per step: a failing test fails instead of hanging (not a timing assertion)
WAIT_MS = 120_000
REPO = Path(__file__).resolve().parent.parent


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("INTERPSUITE_TEST_ARTIFACTS") or REPO / "test-artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- a real server in a thread ----------------------------------------------------------------------


@dataclass
class LiveServer:
    url: str
    root: Path
    server: uvicorn.Server
    thread: threading.Thread
    token: str | None = None

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def post(self, path: str, body: dict) -> dict:
        response = httpx.post(self.url + path, json=body, headers=self.headers(), timeout=120)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def get(self, path: str) -> dict:
        response = httpx.get(self.url + path, headers=self.headers(), timeout=120)
        assert response.status_code == 200, response.text
        return response.json()


def save_tiny_sae(folder: Path) -> None:
    """A relu SAE (seeded random init) on tiny_llama's last residual stream, with the model's fingerprint."""
    from interpsuite_plugins.sae import SAEConfig, SparseAutoencoder

    from interpsuite.artifacts import ModelFingerprint

    model = cached_model("tiny_llama")
    sae = SparseAutoencoder(SAEConfig(d_in=model.info.d_model, width=32, architecture="relu", hook=HOOK), seed=0)
    sae.save(folder, fingerprint=ModelFingerprint.of(model))


@contextmanager
def serve(root: Path, token: str | None = None) -> Iterator[LiveServer]:
    """uvicorn on a free loopback port (port 0: the OS picks it), in a thread, until the block ends."""
    artifacts = root / "artifacts"
    artifacts.mkdir()
    save_tiny_sae(artifacts / SAE_FOLDER)
    settings = ServerSettings(
        model="tiny_llama",
        host="127.0.0.1",
        token=token,
        runs_dir=root / "runs",
        cache_dir=root / "cache",
        artifact_dirs=(artifacts,),
        exports_dir=root / "exports",
        draw_figures=True,
        request_timeout_s=300.0,
    )
    app = create_app(settings, model=cached_model("tiny_llama"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", root, server, thread, token)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    with serve(tmp_path_factory.mktemp("dashboard-live")) as server:
        yield server


# --- the browser, with the no-network and no-error rules ---------------------------------------------


@dataclass
class Watch:
    """What the page did that fails a test: a request off loopback, a page error, a console error."""

    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: console errors that are the page's documented behaviour (GET /sae is 404 until an SAE is loaded)
    allowed_404: tuple[str, ...] = ("/sae",)
    #: (path, HTTP status) of refusals a test provokes on purpose (the page shows the server's line)
    allowed: tuple[tuple[str, int], ...] = ()

    def expected(self, text: str, path: str) -> bool:
        if "404" in text and path in self.allowed_404:
            return True
        return any(path == where and f"status of {code}" in text for where, code in self.allowed)

    def check(self) -> None:
        assert not self.foreign, f"requests off loopback: {self.foreign}"
        assert not self.errors, f"page errors: {self.errors}"


@pytest.fixture
def page() -> Iterator[tuple]:
    sync_api, chromium = browser_or_skip()
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        except Exception as err:  # a chromium that cannot start here (no display libraries, sandbox)
            pytest.skip(f"chromium does not start: {str(err).splitlines()[0]}")
        watch = Watch()
        context = browser.new_context(viewport={"width": 1400, "height": 1000})

        def route(route_, request):
            host = urlparse(request.url).hostname
            if request.url.startswith("data:") or host in ("127.0.0.1", "localhost"):
                route_.continue_()
            else:
                watch.foreign.append(request.url)
                route_.abort()

        context.route("**/*", route)
        page_ = context.new_page()
        page_.set_default_timeout(WAIT_MS)
        page_.on("pageerror", lambda err: watch.errors.append(f"pageerror: {err}"))

        def console(message):
            if message.type != "error":
                return
            url = (message.location or {}).get("url", "")
            if watch.expected(message.text, urlparse(url).path):
                return
            watch.errors.append(f"console: {message.text} ({url})")

        page_.on("console", console)
        try:
            yield page_, watch
        finally:
            context.close()
            browser.close()


def open_view(page_, live: LiveServer, view: str) -> None:
    query = f"?token={live.token}" if live.token else ""
    page_.goto(f"{live.url}/{query}#{view}")
    page_.wait_for_selector("body[data-ready='true']")
    page_.fill("#text", TEXT)


def shoot(page_, view: str) -> None:
    page_.screenshot(path=str(screenshot_dir() / f"dashboard-{view}.png"), full_page=True)


def shown_pairs(page_, selector: str) -> dict[str, str]:
    """A pairs() table of the page as {key: data-value}."""
    script = "els => els.map(e => [e.dataset.key, e.dataset.value])"
    cells = page_.eval_on_selector_all(f"{selector} td[data-key]", script)
    return dict(cells)


def number(value: str | None) -> float:
    assert value is not None
    return float(value)


# --- the tests --------------------------------------------------------------------------------------


def test_attention_heatmap_shows_the_api_weights(live, page):
    page_, watch = page
    open_view(page_, live, "attention")
    page_.click("#attention-run")
    page_.wait_for_selector("#attention-heatmap rect.cell")
    assert page_.get_attribute("#progress-box", "data-kind") == "done"
    assert int(page_.get_attribute("#progress-box", "data-events")) > 0  # progress came over the WebSocket
    result = live.post("/analyze", {"text": TEXT, "analyzers": {"attention_patterns": {"max_texts": 1}}})
    entry = result["analyzers"]["attention_patterns"]
    tokens = [t["token"] for t in entry["tables"]["tokens"] if t["text"] == 0]
    for layer, head in ((0, 0), (1, 2)):
        page_.select_option("#attention-layer", str(layer))
        page_.select_option("#attention-head", str(head))
        page_.wait_for_selector(f"#attention-heatmap >> title:text('attention L{layer}H{head}')", state="attached")
        cells = page_.eval_on_selector_all(
            "#attention-heatmap rect.cell", "els => els.map(e => [+e.dataset.row, +e.dataset.col, e.dataset.value])"
        )
        expected = {
            (r["query_pos"], r["key_pos"]): r["weight"]
            for r in entry["tables"]["patterns"]
            if r["text"] == 0 and r["layer"] == layer and r["head"] == head
        }
        shown = {(q, k): float(v) for q, k, v in cells}
        assert shown == expected  # exact: the same float64 through JSON both ways
        assert len(shown) == len(tokens) * (len(tokens) + 1) // 2  # causal: keys up to the query
        labels = page_.eval_on_selector_all("#attention-heatmap text.row-label", "els => els.map(e => e.textContent)")
        assert [label.split(":", 1)[1] for label in labels] == [t.replace(" ", "␣") for t in tokens]
    # clicking the overview picks that head
    page_.click("#attention-heads rect.cell[data-row='1'][data-col='3']")
    assert page_.input_value("#attention-layer") == "1" and page_.input_value("#attention-head") == "3"
    shoot(page_, "attention")
    watch.check()


def test_token_attributions_and_logit_lens_show_the_api_values(live, page):
    page_, watch = page
    open_view(page_, live, "attribution")
    page_.click("#attribution-run")
    page_.wait_for_selector("#attribution-tokens .token")
    result = live.post("/analyze", {"text": TEXT, "analyzers": {"token_attribution": {"max_texts": 1}}})
    rows = [r for r in result["analyzers"]["token_attribution"]["tables"]["token_scores"] if r["text_id"] == 0]
    for method in ("saliency", "integrated_gradients"):
        page_.select_option("#attribution-method", method)
        shown = page_.eval_on_selector_all(
            "#attribution-tokens .token", "els => els.map(e => [e.textContent, e.dataset.value, e.title])"
        )
        assert [s[0] for s in shown] == [r["token"] for r in rows]
        assert [float(s[1]) for s in shown] == [r[method] for r in rows]
        assert all(method in s[2] for s in shown)
    assert "".join(r["token"] for r in rows) == TEXT  # tiny_llama's tokenizer: one character per token
    shoot(page_, "attribution")

    page_.click("#tab-logitlens")
    page_.click("#logitlens-run")
    page_.wait_for_selector("#logitlens-grid td.lens-cell")
    result = live.post("/analyze", {"text": TEXT, "analyzers": {"logit_lens": {"max_positions": 64}}})
    top1 = {
        (r["layer"], r["position"]): (r["token"], r["prob"])
        for r in result["analyzers"]["logit_lens"]["tables"]["top_tokens"]
        if r["text_id"] == 0 and r["k"] == 1
    }
    cells = page_.eval_on_selector_all(
        "#logitlens-grid td.lens-cell",
        "els => els.map(e => [+e.dataset.layer, +e.dataset.position, e.dataset.token, e.dataset.value])",
    )
    assert {(layer, pos): (tok, float(v)) for layer, pos, tok, v in cells} == top1
    shoot(page_, "logitlens")
    watch.check()


def test_runs_view_lists_runs_and_loads_figures(live, page):
    page_, watch = page
    live.post("/analyze", {"text": TEXT, "analyzers": {"attention_entropy": None}})
    runs = live.get("/runs")["runs"]
    open_view(page_, live, "runs")
    page_.wait_for_selector("#runs-list li[data-run]")
    listed = page_.eval_on_selector_all("#runs-list li[data-run]", "els => els.map(e => e.dataset.run)")
    assert listed == [r["id"] for r in runs]
    run = next(r for r in runs if "attention_entropy" in r["analyzers"])
    page_.click(f"#runs-list li[data-run='{run['id']}']")
    page_.wait_for_selector("#run-detail .run-analyzer[data-analyzer='attention_entropy']")
    detail = live.get(f"/runs/{run['id']}")
    figures = detail["analyzers"]["attention_entropy"]["figures"].values()
    pngs = [p for paths in figures for p in paths if p.endswith(".png")]
    assert pngs, "attention_entropy draws figures when draw_figures is on"
    shown = page_.eval_on_selector_all("#run-detail img.run-figure", "els => els.map(e => e.dataset.path)")
    assert shown == pngs
    page_.wait_for_function(
        "() => [...document.querySelectorAll('#run-detail img.run-figure')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    shoot(page_, "runs")
    watch.check()


def _top1(page_) -> tuple[str, float]:
    row = page_.query_selector("#wb-top tr.top-row[data-rank='0']")
    assert row is not None
    return row.get_attribute("data-token"), number(row.get_attribute("data-value"))


def _wait_top1(page_, expected: dict) -> None:
    page_.wait_for_function(
        "([token, prob]) => { const r = document.querySelector(\"#wb-top tr.top-row[data-rank='0']\");"
        " return r && r.dataset.token === token && Number(r.dataset.value) === prob; }",
        arg=[expected["token"], expected["prob"]],
    )


def test_sae_workbench_slider_updates_the_live_prediction(live, page):
    if "/load-sae" not in live.get("/openapi.json")["paths"]:
        pytest.skip("the workbench routes (interpsuite/server/routes/workbench.py) are not there yet")
    page_, watch = page
    open_view(page_, live, "workbench")
    page_.fill("#wb-path", SAE_FOLDER)
    page_.click("#wb-load")
    page_.wait_for_selector("#wb-features li[data-feature]")
    sae = live.get("/sae")
    assert page_.get_attribute("#wb-info", "data-width") == str(sae["width"])
    clean = live.post("/inference", {"text": TEXT, "k": 10})
    _wait_top1(page_, clean["top"][0])

    feature = int(page_.get_attribute("#wb-features li[data-feature] >> nth=0", "data-feature"))
    page_.click(f"#wb-features li[data-feature='{feature}']")
    page_.wait_for_selector("#wb-add-patch")
    page_.select_option("#wb-kind", "set")
    page_.fill("#wb-value", "1")
    page_.click("#wb-add-patch")
    page_.wait_for_selector(f"#wb-patches .patch[data-feature='{feature}'] input.patch-value")
    slider = page_.locator(f"#wb-patches .patch[data-feature='{feature}'] input.patch-value")
    slider.fill(slider.get_attribute("max"))
    moved = float(slider.input_value())
    # the server holds the slider's value once the WebSocket patch message is answered
    page_.wait_for_function(
        "(v) => document.querySelector('#wb-patches .patch').dataset.value !== undefined"
        " && Number(document.querySelector('#wb-patches .patch').dataset.value) === v",
        arg=moved,
    )
    patches = live.get("/patches")["patches"]
    assert [(p["feature"], p["kind"], p["value"], p["enabled"]) for p in patches] == [(feature, "set", moved, True)]
    patched = live.post("/inference", {"text": TEXT, "k": 10})
    assert patched["patches"] == [patches[0]["id"]]
    before, after = clean["top"][0], patched["top"][0]
    assert (after["token"], after["prob"]) != (before["token"], before["prob"])
    _wait_top1(page_, patched["top"][0])
    shown = page_.eval_on_selector_all("#wb-top tr.top-row", "els => els.map(e => [e.dataset.token, +e.dataset.value])")
    assert shown == [[t["token"], t["prob"]] for t in patched["top"]]
    assert all(math.isfinite(p) for _, p in shown)
    shoot(page_, "workbench")

    # the toggle switches the patch off: the prediction is the clean one again
    page_.uncheck(f"#wb-patches .patch[data-feature='{feature}'] input.patch-enabled")
    _wait_top1(page_, clean["top"][0])
    assert live.get("/patches")["patches"][0]["enabled"] is False
    watch.check()


def test_analyze_picker_lists_every_analyzer_and_renders_its_metrics(live, page):
    page_, watch = page
    open_view(page_, live, "analyze")
    analyzers = live.get("/openapi.json")["components"]["schemas"]["Analyzers"]["properties"]
    page_.wait_for_selector("#analyzer-picker option[value='attention_entropy']", state="attached")
    listed = page_.eval_on_selector_all("#analyzer-picker option", "els => els.map(e => e.value)")
    assert listed == list(analyzers)
    page_.select_option("#analyzer-picker", "attention_entropy")
    page_.wait_for_function("() => document.querySelector('#analyzer-options').value.includes('{')")
    page_.click("#analyze-run")
    page_.wait_for_selector("#analyze-output table.data td[data-col='metric']")
    result = live.post("/analyze", {"text": TEXT, "analyzers": {"attention_entropy": {}}})
    metrics = result["analyzers"]["attention_entropy"]["metrics"]
    rows = page_.eval_on_selector_all(
        "#analyze-output table.data >> nth=0 >> tbody tr",
        "els => els.map(e => [e.children[0].dataset.value, +e.children[1].dataset.value])",
    )
    assert dict(rows) == metrics
    assert page_.get_attribute("#progress-box", "data-kind") == "done"
    shoot(page_, "analyze")
    watch.check()


def test_patching_and_head_ablation_heatmaps_show_the_api_values(live, page):
    page_, watch = page
    open_view(page_, live, "patching")
    page_.click("#ablation-run")
    page_.wait_for_selector("#ablation-heatmap rect.cell")
    result = live.post("/analyze", {"texts": [TEXT], "analyzers": {"head_ablation": {"strategies": ["zero", "mean"]}}})
    effects = result["analyzers"]["head_ablation"]["tables"]["effects"]
    for strategy in ("zero", "mean"):
        page_.select_option("#ablation-strategy", strategy)
        cells = page_.eval_on_selector_all(
            "#ablation-heatmap rect.cell", "els => els.map(e => [+e.dataset.row, +e.dataset.col, +e.dataset.value])"
        )
        expected = {(r["layer"], r["head"]): r["effect"] for r in effects if r["strategy"] == strategy}
        assert {(row, col): v for row, col, v in cells} == expected  # tiny_llama: rows are layers 0.., cols heads 0..

    page_.click("#patching-run")
    page_.wait_for_selector("#patching-heads rect.cell")
    result = live.post("/analyze", {"text": TEXT, "analyzers": {"activation_patching": None}})
    tables = result["analyzers"]["activation_patching"]["tables"]
    cells = page_.eval_on_selector_all(
        "#patching-heads rect.cell", "els => els.map(e => [+e.dataset.row, +e.dataset.col, +e.dataset.value])"
    )
    assert {(row, col): v for row, col, v in cells} == {(r["layer"], r["head"]): r["patched"] for r in tables["heads"]}
    page_.select_option("#patching-site", "attn_out")
    positions = sorted({r["position"] for r in tables["attn_out"]})
    cells = page_.eval_on_selector_all(
        "#patching-heatmap rect.cell", "els => els.map(e => [+e.dataset.row, +e.dataset.col, +e.dataset.value])"
    )
    shown = {(row, positions[col]): v for row, col, v in cells}
    assert shown == {(r["layer"], r["position"]): r["patched"] for r in tables["attn_out"]}
    shoot(page_, "patching")
    watch.check()


NORMAL = [f"The {a} sat on the {b}." for a in ("cat", "dog", "bird", "fox") for b in ("mat", "rug", "sofa", "bed")]


def test_anomaly_and_failure_views(live, page):
    page_, watch = page
    watch.allowed_404 = ("/sae", "/predict/failure")  # no predictor saved: the page shows the server's fix
    open_view(page_, live, "safety")
    texts = [TEXT, HOSTILE]
    page_.fill("#text", "\n".join(texts))
    page_.fill("#anomaly-normal", "\n".join(NORMAL))
    page_.check("#anomaly-per-token")
    page_.click("#anomaly-run")
    page_.wait_for_selector("#anomaly-box .anomaly-result")
    answer = live.post("/detect/anomaly", {"texts": texts, "normal": NORMAL, "per_token": True})
    shown = page_.eval_on_selector_all(
        "#anomaly-box .anomaly-result", "els => els.map(e => [+e.dataset.value, e.dataset.anomalous])"
    )
    assert shown == [[r["score"], str(r["anomalous"]).lower()] for r in answer["results"]]
    token_values = page_.eval_on_selector_all(
        "#anomaly-box .anomaly-result >> nth=1 >> .token", "els => els.map(e => [e.textContent, +e.dataset.value])"
    )
    second = answer["results"][1]
    assert token_values == [list(pair) for pair in zip(second["tokens"], second["token_scores"], strict=True)]
    # user text is shown as text, never parsed: no element came out of the hostile string
    assert page_.locator("#anomaly-box img").count() == 0 and page_.title() == "interpsuite dashboard"
    assert page_.locator("#anomaly-box .anomaly-result >> nth=1 >> .note").text_content() == HOSTILE
    shoot(page_, "safety")

    page_.click("#failure-run")
    page_.wait_for_selector("#status.error")
    assert "run the failure_prediction analyzer first" in page_.text_content("#status")
    watch.check()


def test_pruning_impact_curves_show_the_api_values(live, page):
    page_, watch = page
    open_view(page_, live, "pruning")
    page_.fill("#text", "\n".join(NORMAL[:4]))
    page_.select_option("#pruning-criterion", "activation")
    page_.select_option("#pruning-granularity", "neurons")
    page_.fill("#pruning-sparsities", "0.1, 0.3")
    page_.click("#pruning-run")
    page_.wait_for_selector("#pruning-curve-perplexity circle.point")
    answer = live.post(
        "/api/pruning/impact-analysis",
        {
            "texts": NORMAL[:4],
            "criterion": "activation",
            "granularity": "neurons",
            "sparsities": [0.1, 0.3],
            "tasks": ["perplexity"],
        },
    )
    points = page_.eval_on_selector_all(
        "#pruning-curve-perplexity circle.point", "els => els.map(e => [+e.dataset.x, +e.dataset.value])"
    )
    assert points == [[p["sparsity"], p["value"]] for p in answer["curves"]["perplexity"]]
    baseline = page_.get_attribute("#pruning-curve-perplexity line.baseline", "data-value")
    assert number(baseline) == answer["baseline"]["perplexity"]
    shoot(page_, "pruning")
    watch.check()


def test_with_a_token_the_page_sends_it_on_fetch_images_and_the_websocket(tmp_path, page):
    page_, watch = page
    with serve(tmp_path, token="browser-test-token") as live:
        assert httpx.get(live.url + "/runs").status_code == 401  # the API needs the token; the page does not
        live.post("/analyze", {"text": TEXT, "analyzers": {"attention_entropy": None}})
        run = live.get("/runs")["runs"][0]
        open_view(page_, live, "runs")
        page_.click(f"#runs-list li[data-run='{run['id']}']")
        page_.wait_for_selector("#run-detail img.run-figure")
        page_.wait_for_function(
            "() => [...document.querySelectorAll('#run-detail img.run-figure')]"
            ".every(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'))"
        )
        # an analysis over the WebSocket (?token= on the /ws URL), with its progress events
        page_.click("#tab-attention")
        page_.click("#attention-run")
        page_.wait_for_selector("#attention-heatmap rect.cell")
        assert page_.get_attribute("#progress-box", "data-kind") == "done"
        assert int(page_.get_attribute("#progress-box", "data-events")) > 0  # streamed, not the HTTP fallback
        assert "(run " in page_.text_content("#status")
        watch.check()


# --- second pass: workbench export/import/train, pruning plans/exports/batch, a real predictor ---------


def _routes(live: LiveServer) -> set[str]:
    return set(live.get("/openapi.json")["paths"])


def _refusal(live: LiveServer, path: str, body: dict, status: int) -> str:
    """The server's one line for a request it refuses with `status`."""
    response = httpx.post(live.url + path, json=body, headers=live.headers(), timeout=120)
    assert response.status_code == status, response.text
    return response.json()["message"]


def _wait_state(page_, selector: str, state: str) -> None:
    page_.wait_for_selector(f"{selector}[data-state='{state}']")


def test_sae_workbench_exports_imports_and_deletes_patches(live, page):
    if not {"/export-sae", "/import-patches"} <= _routes(live):
        pytest.skip("the workbench export routes are not there yet")
    page_, watch = page
    watch.allowed = (("/export-sae", 400), ("/import-patches", 404))
    live.post("/load-sae", {"path": SAE_FOLDER})  # clears the patches
    patch = live.post("/patch", {"feature": 0, "kind": "set", "value": 3.0, "enabled": True})
    clean_top = live.post("/inference", {"text": TEXT, "k": 10})["clean_top"]
    open_view(page_, live, "workbench")
    page_.wait_for_selector(f"#wb-patches .patch[data-patch-id='{patch['id']}']")

    # LoRA cannot express a "set" patch: the page shows the server's one line, as it is
    page_.fill("#wb-export-name", "dash-lora")
    page_.select_option("#wb-export-format", "lora")
    page_.click("#wb-export")
    _wait_state(page_, "#wb-export-result", "error")
    refusal = _refusal(live, "/export-sae", {"name": "api-lora", "format": "lora"}, 400)
    assert page_.text_content("#wb-export-result .refusal") == refusal
    assert page_.get_attribute("#wb-export-result .refusal", "data-status") == "400"
    assert page_.text_content("#status") == refusal and "LoRA" in refusal

    for fmt in ("patches", "saelens"):
        page_.fill("#wb-export-name", f"dash-{fmt}")
        page_.select_option("#wb-export-format", fmt)
        page_.click("#wb-export")
        page_.wait_for_selector(f"#wb-export-result[data-state='ok'][data-format='{fmt}']")
        api = live.post("/export-sae", {"name": f"api-{fmt}", "format": fmt})
        files = page_.eval_on_selector_all("#wb-export-result li[data-file]", "els => els.map(e => e.dataset.file)")
        assert files == api["files"]
        written = Path(page_.text_content("#wb-export-result .export-path"))
        assert written == Path(api["path"]).parent / f"dash-{fmt}"
        assert sorted(p.name for p in written.iterdir()) == sorted(files)
    assert page_.input_value("#wb-import-path") == "dash-patches"  # a patches export is ready to import
    shoot(page_, "workbench-export")

    # the delete button removes the patch on the server; the prediction is the clean one again
    page_.click(f"#wb-patches button.patch-delete[data-patch='{patch['id']}']")
    page_.wait_for_selector("#wb-patches .patch", state="detached")
    assert live.get("/patches")["patches"] == []
    _wait_top1(page_, clean_top[0])

    # a folder that is not there: the server's 404 line; then the export brings the same patch back
    page_.fill("#wb-import-path", "no-such-export")
    page_.click("#wb-import")
    _wait_state(page_, "#wb-import-result", "error")
    missing = _refusal(live, "/import-patches", {"path": "no-such-export"}, 404)
    assert page_.text_content("#wb-import-result .refusal") == missing
    page_.fill("#wb-import-path", "dash-patches")
    page_.click("#wb-import")
    _wait_state(page_, "#wb-import-result", "ok")
    patches = live.get("/patches")["patches"]
    assert [(p["feature"], p["kind"], p["value"], p["enabled"]) for p in patches] == [(0, "set", 3.0, True)]
    shown = page_.eval_on_selector_all(
        "#wb-patches .patch",
        "els => els.map(e => [e.dataset.patchId, +e.dataset.feature, e.dataset.kind, +e.dataset.value])",
    )
    assert shown == [[p["id"], p["feature"], p["kind"], p["value"]] for p in patches]
    assert page_.get_attribute("#wb-import-result p", "data-count") == "1"
    watch.check()


def test_train_a_small_sae_from_a_fresh_workbench(tmp_path, page):
    page_, watch = page
    watch.allowed = (("/train-sae", 409),)
    with serve(tmp_path) as live:
        if "/train-sae" not in _routes(live):
            pytest.skip("POST /train-sae (interpsuite/server/routes/sae_training.py) is not registered yet")
        info = live.get("/model/info")
        open_view(page_, live, "workbench")
        page_.wait_for_selector("#wb-train-box[open]")  # no SAE loaded: the form is open
        page_.wait_for_selector("#wb-train-hook option[value='blocks.1.resid_post']", state="attached")
        hooks = page_.eval_on_selector_all("#wb-train-hook option", "els => els.map(e => e.value)")
        sites = ["resid_post", "resid_mid", "resid_pre", "attn.out", "mlp.out", "mlp.post"]
        assert hooks == [""] + [f"blocks.{i}.{s}" for i in range(info["n_layers"]) for s in sites]
        page_.select_option("#wb-train-hook", HOOK)
        page_.fill("#wb-train-width", "32")
        page_.fill("#wb-train-tokens", "1000")
        page_.select_option("#wb-train-corpus", "english")
        page_.fill("#wb-train-name", "dash-sae")
        with page_.expect_response(lambda r: urlparse(r.url).path == "/train-sae") as answered:
            page_.click("#wb-train")
        answer = answered.value.json()
        _wait_state(page_, "#wb-train-result", "ok")
        assert answer["path"] == "saes/dash-sae" and answer["hook"] == HOOK and answer["width"] == 32
        train, held = answer["train"], answer["train"]["held_out"]
        shown = shown_pairs(page_, "#wb-train-summary")
        assert shown["path"] == answer["path"] and shown["hook"] == HOOK
        assert int(shown["steps"]) == train["steps"] and int(shown["tokens"]) == train["tokens"]
        assert number(shown["final_loss"]) == train["final_loss"]
        assert number(shown["held_out_explained_variance"]) == held["explained_variance"]
        assert number(shown["held_out_fvu"]) == held["fvu"]
        assert page_.get_attribute("#progress-box", "data-kind") == "done"
        # ... and it is the loaded SAE: the workbench lists its features
        sae = live.get("/sae")
        assert sae == answer["loaded"] and sae["path"] == "saes/dash-sae"
        assert (tmp_path / "runs" / "saes" / "dash-sae").is_dir()
        page_.wait_for_selector("#wb-info[data-width='32']")
        page_.wait_for_function("() => document.querySelectorAll('#wb-features li[data-feature]').length === 32")
        assert page_.input_value("#wb-path") == "saes/dash-sae"
        shoot(page_, "workbench-train")

        # the same name again: the server's 409 line in the form
        page_.click("#wb-train")
        _wait_state(page_, "#wb-train-result", "error")
        body = {"hook": HOOK, "width": 32, "tokens": 1000, "corpus": "english", "name": "dash-sae"}
        assert page_.text_content("#wb-train-result .refusal") == _refusal(live, "/train-sae", body, 409)
        assert page_.get_attribute("#progress-box", "data-kind") == "error"
        watch.check()


def test_pruning_plan_export_and_batch_curves_show_the_api_values(live, page):
    page_, watch = page
    watch.allowed = (("/api/pruning/export", 409),)
    texts = NORMAL[:4]
    open_view(page_, live, "pruning")
    page_.fill("#text", "\n".join(texts))

    # a plan at one sparsity
    page_.select_option("#pruning-cand-granularity", "neurons")
    page_.select_option("#pruning-cand-criterion", "activation")
    page_.fill("#pruning-cand-sparsity", "0.2")
    with page_.expect_response(lambda r: urlparse(r.url).path == "/api/pruning/candidates") as answered:
        page_.click("#pruning-cand-run")
    plan = answered.value.json()
    _wait_state(page_, "#pruning-plan", "ok")
    again = live.post(
        "/api/pruning/candidates",
        {"texts": texts, "criterion": "activation", "granularity": "neurons", "sparsity": 0.2},
    )
    assert again["summary"] == plan["summary"]  # the same request makes the same plan
    shown = shown_pairs(page_, "#pruning-plan-summary")
    summary = plan["summary"]
    assert shown["plan_id"] == plan["plan_id"] == page_.get_attribute("#pruning-plan", "data-plan-id")
    assert number(shown["achieved_sparsity"]) == summary["achieved_sparsity"]
    assert int(shown["pruned"]) == summary["pruned"] and int(shown["total"]) == summary["total"]
    assert {k: int(v) for k, v in shown.items() if k.startswith("layer ")} == {
        f"layer {layer}": n for layer, n in summary["per_layer"].items()
    }
    assert page_.input_value("#pruning-export-plan") == plan["plan_id"]
    shoot(page_, "pruning-plan")

    # its export: the ExportReport the server answered
    page_.fill("#pruning-export-name", "dash-pruned")
    with page_.expect_response(lambda r: urlparse(r.url).path == "/api/pruning/export") as answered:
        page_.click("#pruning-export-run")
    report = answered.value.json()
    _wait_state(page_, "#pruning-export-result", "ok")
    api = live.post("/api/pruning/export", {"plan_id": plan["plan_id"], "name": "api-pruned"})
    assert (api["passed"], api["max_abs_logit_diff"], api["files"]) == (
        report["passed"],
        report["max_abs_logit_diff"],
        report["files"],
    )
    shown = shown_pairs(page_, "#pruning-export-report")
    assert number(shown["max_abs_logit_diff"]) == report["max_abs_logit_diff"]
    assert int(shown["parameters_after"]) == report["parameters_after"] < report["parameters_before"]
    assert page_.get_attribute("#pruning-export-result", "data-passed") == str(report["passed"]).lower()
    assert page_.get_attribute("#pruning-export-result .export-passed", "data-value") == str(report["passed"]).lower()
    files = page_.eval_on_selector_all("#pruning-export-result li[data-file]", "els => els.map(e => e.dataset.file)")
    assert files == report["files"] and "model.safetensors" in files
    # the same name again: the server's 409 line
    page_.click("#pruning-export-run")
    _wait_state(page_, "#pruning-export-result", "error")
    refusal = _refusal(live, "/api/pruning/export", {"plan_id": plan["plan_id"], "name": "dash-pruned"}, 409)
    assert page_.text_content("#pruning-export-result .refusal") == refusal

    # batch analysis: one curve per criterion on one chart (the criteria follow the granularity)
    page_.select_option("#pruning-granularity", "heads")
    assert page_.input_value("#pruning-batch-criteria") == "taylor, ablation"
    options = page_.eval_on_selector_all("#pruning-criterion option", "els => els.map(e => e.value)")
    assert options == ["taylor", "ablation"]
    page_.select_option("#pruning-granularity", "neurons")
    page_.fill("#pruning-sparsities", "0.1, 0.3")
    page_.fill("#pruning-batch-criteria", "activation, taylor")
    page_.click("#pruning-batch-run")
    page_.wait_for_selector("#pruning-batch-perplexity circle.point")
    batch = live.post(
        "/api/pruning/batch-analysis",
        {
            "texts": texts,
            "criteria": ["activation", "taylor"],
            "granularity": "neurons",
            "sparsities": [0.1, 0.3],
            "tasks": ["perplexity"],
        },
    )
    points = page_.eval_on_selector_all(
        "#pruning-batch-perplexity circle.point",
        "els => els.map(e => [e.dataset.series, +e.dataset.x, +e.dataset.value])",
    )
    expected = [
        [criterion, p["sparsity"], p["value"]]
        for criterion in ("activation", "taylor")
        for p in batch["results"][criterion]["curves"]["perplexity"]
    ]
    assert points == expected
    legend = page_.eval_on_selector_all("#pruning-batch-perplexity text.legend", "els => els.map(e => e.textContent)")
    assert legend == ["activation", "taylor"]
    baseline = page_.get_attribute("#pruning-batch-perplexity line.baseline", "data-value")
    assert number(baseline) == batch["results"]["activation"]["baseline"]["perplexity"]
    shoot(page_, "pruning-batch")
    watch.check()


def test_failure_view_shows_a_real_predictors_probabilities(tmp_path, page):
    """A FailurePredictor fitted on tiny_llama (real features of 16 prompts, alternating labels: cheap)
    saved where the server looks by default (a run's data/failure_prediction/predictor)."""
    from tests.test_server_safety import fit_predictor

    predictor = fit_predictor(cached_model("tiny_llama"))
    predictor.save(tmp_path / "runs" / "fitted" / "data" / "failure_prediction" / "predictor")
    page_, watch = page
    with serve(tmp_path) as live:
        texts = [TEXT, "Paris is a city in", "zq xj vv kk pp"]
        open_view(page_, live, "safety")
        page_.fill("#text", "\n".join(texts))
        page_.click("#failure-run")  # no predictor typed: the server's newest one
        page_.wait_for_selector("#failure-box .failure-result")
        answer = live.post("/predict/failure", {"texts": texts, "top": 5})
        assert answer["predictor"]["path"] == "fitted/data/failure_prediction/predictor"
        shown = page_.eval_on_selector_all(
            "#failure-box .failure-result", "els => els.map(e => +e.querySelector('.probability').dataset.value)"
        )
        assert shown == [r["probability"] for r in answer["results"]]
        assert all(0.0 <= p <= 1.0 for p in shown)
        for i, result in enumerate(answer["results"]):
            bars = page_.eval_on_selector_all(
                f"#failure-features-{i} rect.bar", "els => els.map(e => [e.dataset.label, +e.dataset.value])"
            )
            assert bars == [[f["name"], f["contribution"]] for f in result["top_features"]]
            assert len(bars) == 5
        assert answer["predictor"]["path"] in page_.text_content("#failure-box")
        shoot(page_, "safety-failure")
        watch.check()


def test_the_api_docs_render_the_schema_offline(live, page):
    """Swagger UI (/docs) loads only from this server and shows the schema's route groups
    (Swagger UI 4 could not read FastAPI's OpenAPI 3.1 and showed an error instead)."""
    page_, watch = page
    page_.goto(f"{live.url}/docs")
    page_.wait_for_selector(".swagger-ui .info .title")
    assert "interpsuite" in page_.inner_text(".swagger-ui .info .title")
    for tag in ("analyze", "workbench", "pruning"):
        assert page_.locator(f"#operations-tag-{tag}").count() == 1, tag
    assert page_.locator(".opblock-summary-path[data-path='/inference']").count() >= 1
    page_.screenshot(path=str(screenshot_dir() / "api-docs.png"))
    watch.allowed_404 = (*watch.allowed_404, "/redoc")
    assert page_.goto(f"{live.url}/redoc").status == 404  # ReDoc would fetch its logo from a CDN
    watch.check()

