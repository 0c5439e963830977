"""Server benchmark: live SAE patching, the result cache and /inference throughput of `interpsuite serve`.

Three measurements, side by side in one run (SmolLM2 by default, `--model` for another):

1. **Live patch -> new logits.** A slider on one SAE feature: the patch value changes every time
   and the new next-token logits of a fixed 32-token prompt are awaited. Timed at four levels on
   the same SAE, prompt and values, so the server's own overhead shows:
   - `splice`: the core, `model.sae_splice(sae)`: `set_feature(f, v)` + `run(prompt)`;
   - `workbench`: the engine the server calls, `Workbench.update(patch, value)` + `inference(prompt)`
     (adds the top-k, token strings and active features of the JSON answer);
   - `websocket`: a real server in its own process, a client on /ws sending
     `{"type": "patch", "patch_id", "value"}` and waiting for the pushed `{"type": "logits"}`;
   - `browser`: Debian's chromium (playwright) on the dashboard's SAE workbench view, same server:
     the slider's input event to the prediction table showing the new top-10, timed inside the
     page with performance.now() (`browser_patch_to_logits`; skipped, with the reason, without
     playwright or /usr/bin/chromium, or with --no-browser).
   The SAE is random (relu, `--sae-width` latents at `blocks.{L}.resid_post`, L the middle
   layer): latency depends on the width and the hook point, not on what the SAE learned. The
   JSON says so (`sae.weights: "random"`). Target: median < 100 ms (the spec asks < 400 ms).
2. **/analyze cached vs uncached.** For several analyzers: a request on a new text (uncached: a
   forward pass, the analyzer, figures as `interpsuite serve` draws them), then the same request
   again (cached: read back from the result cache, a new run folder written).
3. **/inference throughput** with 1, 4 and 16 concurrent clients, each sending requests one after
   another (the SAE loaded, one patch on, the prompt changing every request so no clean run is
   reused): requests per second and per-request p50/p95 latency.

The engine timings run in this process before the server starts; the server runs alone in a child
process (`interpsuite serve`, loopback, a free port, temporary runs/cache folders), so client and
server do not share an interpreter lock. Results: benchmarks/results/server.json and server.md
(`server_quick.*` with --quick; `server_<model>.*` for another model).

    python benchmarks/bench_server.py                      # SmolLM2: a few minutes on 2 cores
    python benchmarks/bench_server.py --quick              # smoke run: tiny sizes
    python benchmarks/bench_server.py --model tiny_llama --quick
    python benchmarks/bench_server.py --no-browser         # without chromium
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, write_report  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROMPT_TOKENS = 32
#: the analyzers timed cached vs uncached (each runs on one text with its defaults)
ANALYZERS = ("logit_lens", "activation_stats", "attention_entropy", "direct_logit_attribution")
CLIENTS = (1, 4, 16)
TARGET_MS = 100.0  # median patch -> logits
SPEC_MS = 400.0  # the bound, on p95
FEATURE = 7
SAE_FOLDER = "bench-sae"


@dataclass
class Sizes:
    patches: int
    repeats: int  # /analyze pairs per analyzer
    requests: int  # /inference requests per client
    sae_width: int
    corpus_tokens: int


FULL = Sizes(patches=100, repeats=5, requests=24, sae_width=4096, corpus_tokens=2048)
QUICK = Sizes(patches=10, repeats=2, requests=4, sae_width=256, corpus_tokens=256)


# --- small helpers -------------------------------------------------------------------------------------


def stats_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, p95, min and max in milliseconds (p95 by nearest rank)."""
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * (len(ordered) - 1))))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(p95 * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def slider(n: int) -> list[float]:
    """n patch values, each different from the one before: a slider swept 1.0 -> 10.5 -> 1.0 ... in 0.5 steps."""
    steps = [i % 38 if i % 38 <= 19 else 38 - i % 38 for i in range(n)]
    return [1.0 + 0.5 * step for step in steps]


def exact_prompt(model: Any, n_tokens: int) -> str:
    """A text from the built-in English corpus that tokenizes to exactly n_tokens (as the server does)."""
    from interpsuite_plugins.datasets import english_sentences

    corpus = " ".join(english_sentences())
    ids = model.tokenizer.encode(corpus, add_special_tokens=False)
    for n in range(n_tokens, 0, -1):
        text = model.tokenizer.decode(ids[:n])
        if int(model.tokenize([text]).input_ids.shape[1]) == n_tokens:
            return text
    raise RuntimeError(f"no prefix of the corpus tokenizes to {n_tokens} tokens")


def random_sae(model: Any, width: int, folder: Path) -> Any:
    """A random relu SAE at the middle layer's resid_post, saved where the server can load it."""
    from interpsuite_plugins.sae.model import SAEConfig, SparseAutoencoder

    hook = f"blocks.{model.info.n_layers // 2}.resid_post"
    cfg = SAEConfig(d_in=model.info.d_model, width=width, architecture="relu", hook=hook, model_name=model.info.name)
    sae = SparseAutoencoder(cfg, seed=0)
    sae.save(folder / SAE_FOLDER)
    return sae


def top_ids(entries: list[dict]) -> list[int]:
    return [entry["id"] for entry in entries]


# --- 1a. the engine, in this process ------------------------------------------------------------------


def engine_latency(model: Any, sae: Any, prompt: str, values: list[float], corpus_tokens: int) -> dict[str, Any]:
    """splice and Workbench timings over the same slider values; the last answers for comparison."""
    import torch
    from interpsuite_plugins.sae.workbench import Workbench

    out: dict[str, Any] = {}
    with torch.no_grad(), model.sae_splice(sae) as splice:
        splice.run(prompt)  # the clean run: cached for every later patch
        splice.set_feature(FEATURE, values[0])
        splice.run(prompt)  # warm-up of the patched path
        times = []
        for value in values:
            start = time.perf_counter()
            splice.set_feature(FEATURE, value)
            result = splice.run(prompt, top_k=10)
            times.append(time.perf_counter() - start)
        out["splice"] = stats_ms(times)
        out["splice_last_top"] = result.top_ids[0].tolist()

    setup = time.perf_counter()
    bench = Workbench(model, sae, corpus=None, max_corpus_tokens=corpus_tokens)
    out["workbench_setup_s"] = round(time.perf_counter() - setup, 2)
    patch = bench.add_patch(FEATURE, "set", values[0])
    bench.inference(prompt)
    times, served = [], []
    for value in values:
        start = time.perf_counter()
        bench.update(patch.id, value=value)
        answer = bench.inference(prompt, 10)
        times.append(time.perf_counter() - start)
        served.append(answer["latency_ms"] / 1000)
    bench.close()
    out["workbench"] = stats_ms(times)
    out["workbench_forward"] = stats_ms(served)
    out["workbench_last_top"] = top_ids(answer["top"])
    return out


# --- the server, in its own process -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(model_name: str, root: Path, limit_s: float = 600.0):
    """`interpsuite serve` in a child process on a free loopback port; yields its base URL."""
    import httpx

    port = free_port()
    command = [
        sys.executable,
        "-c",
        "import sys; from interpsuite.cli import main; sys.exit(main())",
        "serve",
        "--model",
        model_name,
        "--port",
        str(port),
        "--runs-dir",
        str(root / "runs"),
        "--cache-dir",
        str(root / "cache"),
        "--exports-dir",
        str(root / "exports"),
        "--artifact-dir",
        str(root / "artifacts"),
        "--queue",
        "64",
        "--timeout",
        "1800",  # /load-sae computes feature statistics of a wide SAE: minutes on a slow CPU
        "--log-level",
        "warning",
    ]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below, after the child
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + limit_s
        while True:
            if child.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({child.returncode}): {(root / 'server.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > end:
                raise RuntimeError("the server did not answer /health in time")
            time.sleep(0.2)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def check(response: Any, status: int = 200) -> dict:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()


# --- 1b. patch -> logits through the WebSocket --------------------------------------------------------


async def websocket_latency(url: str, prompt: str, values: list[float]) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    async with connect(url.replace("http://", "ws://") + "/ws", max_size=1 << 24) as ws:

        async def until(predicate: Callable[[dict], bool]) -> dict:
            while True:
                message = json.loads(await ws.recv())
                if message.get("type") == "error":
                    raise RuntimeError(f"the server answered an error: {message}")
                if predicate(message):
                    return message

        await ws.send(json.dumps({"type": "inference", "id": "live", "text": prompt, "k": 10}))
        await until(lambda m: m["type"] == "logits" and m.get("id") == "live")
        await ws.send(json.dumps({"type": "patch", "id": "new", "feature": FEATURE, "kind": "set", "value": values[0]}))
        patch = (await until(lambda m: m["type"] == "patch"))["patch"]
        await until(lambda m: m["type"] == "logits" and m.get("reason") == "patch")
        times, forward = [], []
        for i, value in enumerate(values):
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "patch", "id": f"s{i}", "patch_id": patch["id"], "value": value}))
            logits = await until(lambda m: m["type"] == "logits" and m.get("reason") == "patch")
            times.append(time.perf_counter() - start)
            forward.append(logits["latency_ms"] / 1000)
    return {
        "websocket": stats_ms(times),
        "websocket_forward": stats_ms(forward),
        "websocket_last_top": top_ids(logits["top"]),
    }


# --- 1c. patch -> logits in the browser (the dashboard's SAE workbench) --------------------------------

CHROMIUM = Path("/usr/bin/chromium")
#: the most a single slider step may wait for its answer: a broken page fails instead of hanging
STEP_TIMEOUT_MS = 60_000
#: probabilities shown by the page and returned by POST /inference are the same float64 through JSON;
#: the tolerance only guards against a last-bit difference between two identical forward passes
PROB_TOL = 1e-6

# One slider step, timed inside the page: set the value, dispatch the `input` event the dashboard
# listens to, and resolve from a MutationObserver on the prediction box as soon as the table shows
# the expected top-10 (ids and probabilities) for that value. Only `performance.now()` inside the
# page is counted, never playwright's own round trips.
_STEP_JS = """
async ({patchId, value, expected, tol, timeoutMs}) => {
  const slider = document.querySelector(`#wb-patches input.patch-value[data-patch="${CSS.escape(patchId)}"]`);
  if (!slider) throw new Error(`no slider for patch ${patchId}`);
  const box = document.getElementById("wb-top-box");
  const shown = () => [...box.querySelectorAll("#wb-top tr.top-row")]
    .map((r) => [Number(r.dataset.id), Number(r.dataset.value), r.dataset.token]);
  const matches = () => {
    const rows = shown();
    return rows.length === expected.length
      && rows.every(([id, p], i) => id === expected[i][0] && Math.abs(p - expected[i][1]) <= tol);
  };
  if (matches()) throw new Error(`the page already shows the answer for ${value}: nothing to time`);
  return await new Promise((resolve, reject) => {
    let start = 0;
    const observer = new MutationObserver(() => {
      if (!matches()) return;
      const ms = performance.now() - start;
      observer.disconnect();
      clearTimeout(timer);
      resolve({ms, sent: Number(slider.value), shown: shown()});
    });
    const timer = setTimeout(() => {
      observer.disconnect();
      reject(new Error(`no answer for ${value} within ${timeoutMs} ms; shown ${JSON.stringify(shown())}`));
    }, timeoutMs);
    observer.observe(box, {childList: true, subtree: true, attributes: true, characterData: true});
    slider.value = String(value);
    if (Number(slider.value) !== value) {
      observer.disconnect();
      clearTimeout(timer);
      reject(new Error(`the slider holds ${slider.value}, not ${value}`));
      return;
    }
    start = performance.now();
    slider.dispatchEvent(new Event("input", {bubbles: true}));
  });
}
"""

# The dashboard's slider steps by range/200 (range: ten times the feature's max activation); the
# benchmark sends exactly the values the other levels use, so the slider takes any value in their span.
_WIDEN_JS = """
([patchId, low, high]) => {
  const slider = document.querySelector(`#wb-patches input.patch-value[data-patch="${CSS.escape(patchId)}"]`);
  if (!slider) throw new Error(`no slider for patch ${patchId}`);
  const before = {min: slider.min, max: slider.max, step: slider.step, value: slider.value};
  slider.step = "any";
  slider.min = String(Math.min(Number(slider.min), low));
  slider.max = String(Math.max(Number(slider.max), high));
  return before;
}
"""

_SHOWS_JS = """
([expected, tol]) => {
  const rows = [...document.querySelectorAll("#wb-top tr.top-row")];
  return rows.length === expected.length && rows.every((r, i) =>
    Number(r.dataset.id) === expected[i][0] && Math.abs(Number(r.dataset.value) - expected[i][1]) <= tol);
}
"""


def browser_missing() -> str | None:
    """Why the browser part cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not CHROMIUM.exists():
        return f"no {CHROMIUM} (apt-get install chromium)"
    return None


def expected_answers(client: Any, patch_id: str, prompt: str, values: Sequence[float]) -> dict[float, dict]:
    """POST /inference for each distinct value (the patch set through REST first): the top-10 the page
    must show for it. Run while no browser watches, so no push competes with it."""
    answers = {}
    for value in dict.fromkeys(values):
        check(client.patch(f"/patch/{patch_id}", json={"value": value}))
        answers[value] = check(client.post("/inference", json={"text": prompt, "k": 10}))
    return answers


def _pairs(answer: dict) -> list[list]:
    return [[entry["id"], entry["prob"]] for entry in answer["top"]]


def _same_pairs(a: list[list], b: list[list]) -> bool:
    """The same top-k ids in order, probabilities within PROB_TOL (what the page check tests)."""
    return len(a) == len(b) and all(x[0] == y[0] and abs(x[1] - y[1]) <= PROB_TOL for x, y in zip(a, b, strict=True))


def browser_latency(url: str, client: Any, prompt: str, values: list[float]) -> dict[str, Any]:
    """Patch -> displayed logits in Debian's chromium driving the dashboard's SAE workbench view, on
    the server the websocket part used (SAE loaded, the patch on FEATURE at values[-1])."""
    missing = browser_missing()
    if missing is not None:
        return {"status": "skipped", "reason": missing}
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    patch = next(p for p in check(client.get("/patches"))["patches"] if p["feature"] == FEATURE)
    start_value = values[-1]  # where the websocket part left the slider; values[0] differs from it
    if values[0] == start_value:
        raise RuntimeError("the slider's first value must differ from where the websocket part left it")
    answers = expected_answers(client, patch["id"], prompt, [start_value, *values])
    check(client.patch(f"/patch/{patch['id']}", json={"value": start_value}))
    for before, after in zip([start_value, *values[:-1]], values, strict=True):
        if _same_pairs(_pairs(answers[before]), _pairs(answers[after])):
            raise RuntimeError(f"values {before} and {after} give the same top-10: the page change cannot be seen")

    problems: list[str] = []
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        except PlaywrightError as err:
            return {"status": "skipped", "reason": f"chromium did not start: {str(err).splitlines()[0]}"}
        try:
            page = browser.new_page()
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='true']")
            page.fill("#text", prompt)  # the analyze view is shown: no live prompt is sent yet
            page.evaluate("() => { window.location.hash = 'workbench'; }")
            page.wait_for_selector(f"#wb-patches input.patch-value[data-patch='{patch['id']}']")
            page.wait_for_function(_SHOWS_JS, arg=[_pairs(answers[start_value]), PROB_TOL])
            slider_before = page.evaluate(_WIDEN_JS, [patch["id"], min(values), max(values)])
            steps = []
            for value in values:
                steps.append(
                    page.evaluate(
                        _STEP_JS,
                        {
                            "patchId": patch["id"],
                            "value": value,
                            "expected": _pairs(answers[value]),
                            "tol": PROB_TOL,
                            "timeoutMs": STEP_TIMEOUT_MS,
                        },
                    )
                )
            user_agent = page.evaluate("() => navigator.userAgent")
        finally:
            browser.close()

    final = check(client.post("/inference", json={"text": prompt, "k": 10}))
    server_value = next(p for p in check(client.get("/patches"))["patches"] if p["id"] == patch["id"])["value"]
    shown_id, shown_prob, shown_token = steps[-1]["shown"][0]
    api_top = final["top"][0]
    final_equal = (
        shown_id == api_top["id"] and shown_token == api_top["token"] and abs(shown_prob - api_top["prob"]) <= PROB_TOL
    )
    timing = stats_ms([step["ms"] / 1000 for step in steps])
    return {
        "status": "ok",
        **timing,
        "what": "slider input event -> the prediction table shows the expected top-10 (MutationObserver, "
        "performance.now() in the page)",
        "browser": user_agent,
        "patch": patch["id"],
        "values": [step["sent"] for step in steps],
        "slider_as_drawn": slider_before,
        "last_top": [row[0] for row in steps[-1]["shown"]],
        "final_check": {
            "value": values[-1],
            "server_patch_value": server_value,
            "shown_top1": {"id": shown_id, "token": shown_token, "prob": shown_prob},
            "inference_top1": {"id": api_top["id"], "token": api_top["token"], "prob": api_top["prob"]},
            "equal": final_equal and server_value == values[-1],
        },
        "page_problems": problems,
        "targets": {
            "patch_median": {
                "bound": f"< {TARGET_MS:g} ms",
                "value": timing["median_ms"],
                "met": timing["median_ms"] < TARGET_MS,
            },
            "patch_p95_spec": {
                "bound": f"< {SPEC_MS:g} ms",
                "value": timing["p95_ms"],
                "met": timing["p95_ms"] < SPEC_MS,
            },
        },
    }


# --- 2. /analyze cached vs uncached -------------------------------------------------------------------


def analyze_latency(client: Any, prompt: str, analyzers: Sequence[str], repeats: int) -> dict[str, Any]:
    out = {}
    for name in analyzers:
        uncached, cached = [], []
        for i in range(repeats):
            request = {"text": f"{prompt} (variant {name} {i})", "analyzers": {name: {}}}
            for times, expect in ((uncached, False), (cached, True)):
                start = time.perf_counter()
                body = check(client.post("/analyze", json=request))
                times.append(time.perf_counter() - start)
                entry = body["analyzers"][name]
                if entry["status"] != "ok" or entry["cached"] is not expect:
                    raise RuntimeError(f"/analyze {name}: status {entry['status']}, cached {entry['cached']}")
        u, c = stats_ms(uncached), stats_ms(cached)
        out[name] = {"uncached": u, "cached": c, "speedup": round(u["median_ms"] / max(c["median_ms"], 1e-6), 1)}
    return out


# --- 3. /inference throughput -------------------------------------------------------------------------


async def throughput(url: str, prompts: list[str], clients: int, requests: int) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600.0) as http:
        check(await http.post("/inference", json={"text": prompts[0], "k": 10}))  # warm the connection

        forward: list[float] = []

        async def client(c: int) -> list[float]:
            times = []
            for r in range(requests):
                text = prompts[(c * requests + r) % len(prompts)]
                start = time.perf_counter()
                body = check(await http.post("/inference", json={"text": text, "k": 10}))
                times.append(time.perf_counter() - start)
                forward.append(body["latency_ms"] / 1000)
            return times

        start = time.perf_counter()
        per_client = await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - start
    latencies = [t for times in per_client for t in times]
    return {
        "clients": clients,
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 2),
        **stats_ms(latencies),
        "forward_median_ms": stats_ms(forward)["median_ms"],
    }


# --- the report ---------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    patch, sae, loads = report["live_patch"], report["sae"], report["load_average"]
    lines = [
        f"# Server benchmark ({report['model']}{', quick' if report['quick'] else ''})",
        "",
        f"{report['when']}; {report['machine']['processor']}, {report['machine']['cpu_count']} CPUs; "
        f"load average at start {loads['start'][0]:.1f}, at end {loads['end'][0]:.1f}.",
        "",
        f"## Live patch -> new logits ({report['prompt_tokens']}-token prompt, "
        f"{sae['weights']} {sae['architecture']} SAE, "
        f"width {sae['width']} at {sae['hook']}, {patch['splice']['n']} slider values)",
        "",
        "| level | median ms | p95 ms | min ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for level in ("splice", "workbench", "workbench_forward", "websocket", "websocket_forward"):
        s = patch[level]
        lines.append(f"| {level} | {s['median_ms']} | {s['p95_ms']} | {s['min_ms']} | {s['max_ms']} |")
    browser = report["browser_patch_to_logits"]
    if browser["status"] == "ok":
        lines.append(
            f"| browser | {browser['median_ms']} | {browser['p95_ms']} | {browser['min_ms']} | {browser['max_ms']} |"
        )
    lines += [
        "",
        "`*_forward`: the `latency_ms` the engine reports (the spliced forward alone); `websocket`: send of the",
        "patch message to receipt of the pushed logits. Same top-10 at every level for the last value: "
        f"{patch['same_top']}.",
    ]
    if browser["status"] == "ok":
        check = browser["final_check"]
        lines += [
            "`browser`: chromium on the dashboard's SAE workbench, from the slider's input event to the prediction",
            f"table showing the expected top-10 (performance.now() in the page, {browser['n']} values). Shown top-1 at "
            f"the end {check['shown_top1']['token']!r} {check['shown_top1']['prob']:.6g}, POST /inference "
            f"{check['inference_top1']['token']!r} {check['inference_top1']['prob']:.6g}: equal {check['equal']}; "
            f"same top-10 as the websocket: {browser['same_top_as_websocket']}.",
        ]
        if browser["page_problems"]:
            lines.append(f"The page reported {len(browser['page_problems'])} errors: {browser['page_problems'][0]}")
    else:
        lines.append(f"`browser`: skipped ({browser['reason']}).")
    lines += [
        "",
        "## /analyze: uncached vs cached (same request twice)",
        "",
        "| analyzer | uncached median ms | cached median ms | speedup |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in report["analyze"].items():
        lines.append(f"| {name} | {row['uncached']['median_ms']} | {row['cached']['median_ms']} | {row['speedup']}x |")
    lines += [
        "",
        "## /inference throughput (SAE loaded, one patch on, a new prompt every request)",
        "",
        "| clients | requests | requests/s | p50 ms | p95 ms | forward median ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["inference"]:
        lines.append(
            f"| {row['clients']} | {row['requests']} | {row['requests_per_s']} | {row['median_ms']} | {row['p95_ms']} "
            f"| {row['forward_median_ms']} |"
        )
    lines += ["", "## Targets", "", "| target | bound | value | met |", "| --- | --- | ---: | --- |"]
    for name, t in report["targets"].items():
        lines.append(f"| {name} | {t['bound']} | {t['value']} | {t['met']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="model to serve (default smollm2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--patches", type=int, default=None, help="slider values timed per level")
    parser.add_argument("--sae-width", type=int, default=None, help="SAE latents")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in this process (engine timings)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (the .md goes next to it)")
    parser.add_argument("--no-browser", action="store_true", help="skip the browser part (chromium via playwright)")
    args = parser.parse_args(argv)
    sizes = dataclasses.replace(
        QUICK if args.quick else FULL,
        patches=args.patches or (QUICK if args.quick else FULL).patches,
        sae_width=args.sae_width or (QUICK if args.quick else FULL).sae_width,
    )
    stem = "server" + ("" if args.model == "smollm2" else f"_{args.model}") + ("_quick" if args.quick else "")
    out = args.out or RESULTS_DIR / f"{stem}.json"

    import httpx
    import torch

    from interpsuite.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    (root / "artifacts").mkdir()
    model = load_model(args.model)
    prompt = exact_prompt(model, PROMPT_TOKENS)
    sae = random_sae(model, sizes.sae_width, root / "artifacts")
    values = slider(sizes.patches)
    print(f"engine: {args.model}, SAE width {sizes.sae_width} at {sae.cfg.hook}, {len(values)} patches", flush=True)
    live = engine_latency(model, sae, prompt, values, sizes.corpus_tokens)
    words = prompt.split()
    prompts = [" ".join(words[i:] + words[:i]) for i in range(16)]  # 16 different prompts, the same words
    del model  # the server loads its own copy

    with served(args.model, root) as url:
        with httpx.Client(base_url=url, timeout=600.0) as client:
            start = time.perf_counter()
            loaded = check(
                client.post("/load-sae", json={"path": SAE_FOLDER, "max_corpus_tokens": sizes.corpus_tokens})
            )
            load_s = time.perf_counter() - start
            print("server: websocket patches", flush=True)
            live.update(asyncio.run(websocket_latency(url, prompt, values)))
            if args.no_browser:
                browser = {"status": "skipped", "reason": "--no-browser"}
            else:
                print("server: browser patches (chromium, the dashboard's SAE workbench)", flush=True)
                browser = browser_latency(url, client, prompt, values)
            print("server: /analyze cached vs uncached", flush=True)
            analyze = analyze_latency(client, prompt, ANALYZERS, sizes.repeats)
            print("server: /inference throughput", flush=True)
            inference = [asyncio.run(throughput(url, prompts, n, sizes.requests)) for n in CLIENTS]
    live["same_top"] = live["splice_last_top"] == live["workbench_last_top"] == live["websocket_last_top"]
    if browser["status"] == "ok":
        browser["same_top_as_websocket"] = browser["last_top"] == live["websocket_last_top"]

    ws = live["websocket"]
    report = {
        "benchmark": "server",
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "quick": args.quick,
        "sizes": dataclasses.asdict(sizes),
        "prompt_tokens": PROMPT_TOKENS,
        "sae": {
            "weights": "random",
            "why": "latency depends on the width and the hook point, not on training",
            "architecture": "relu",
            "width": sizes.sae_width,
            "hook": sae.cfg.hook,
            "feature": FEATURE,
            "server_load_s": round(load_s, 2),
            "server_load": loaded,
        },
        "live_patch": live,
        "browser_patch_to_logits": browser,
        "analyze": analyze,
        "inference": inference,
        "server": {"command": "interpsuite serve", "workers": 1, "queue": 64, "timeout_s": 1800, "draw_figures": True},
        "targets": {
            "patch_median": {
                "bound": f"< {TARGET_MS:g} ms",
                "value": ws["median_ms"],
                "met": ws["median_ms"] < TARGET_MS,
            },
            "patch_p95_spec": {"bound": f"< {SPEC_MS:g} ms", "value": ws["p95_ms"], "met": ws["p95_ms"] < SPEC_MS},
            "same_top": {"bound": "equal", "value": live["same_top"], "met": live["same_top"]},
        },
        "machine": machine_info(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
    }
    if browser["status"] == "ok":
        for name, target in browser["targets"].items():
            report["targets"][f"browser_{name}"] = target
        final, same = browser["final_check"]["equal"], browser["same_top_as_websocket"]
        report["targets"]["browser_final_top1"] = {"bound": "equal", "value": final, "met": final}
        report["targets"]["browser_same_top"] = {"bound": "equal", "value": same, "met": same}
    write_report(report, out)
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
