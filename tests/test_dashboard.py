"""The dashboard's files as the server serves them (no browser): `/` is the page, every module it
imports (transitively) is served with a JavaScript type, nothing points at a CDN or uses innerHTML,
the page loads without the token while the API behind it does not, and `/static/` is confined to
its folder. The browser half is tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from interpsuite.server.app import create_app  # noqa: E402
from interpsuite.server.routes.dashboard import STATIC_DIR  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402
from interpsuite.testing import cached_model  # noqa: E402

TOKEN = "dashboard-test-token"
IMPORT = re.compile(r"""^\s*(?:import|export)\s[^;]*?\sfrom\s+["']([^"']+)["']""", re.MULTILINE)
ASSET = re.compile(r"""(?:src|href)="(/static/[^"]+)\"""")


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("dashboard")
    settings = ServerSettings(model="tiny_llama", runs_dir=tmp / "runs", cache_dir=tmp / "cache", draw_figures=False)
    with TestClient(create_app(settings, model=cached_model("tiny_llama"))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def token_client(tmp_path_factory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("dashboard-token")
    settings = ServerSettings(
        model="tiny_llama", runs_dir=tmp / "runs", cache_dir=tmp / "cache", token=TOKEN, draw_figures=False
    )
    with TestClient(create_app(settings, model=cached_model("tiny_llama"))) as test_client:
        yield test_client


def module_graph(client: TestClient) -> dict[str, str]:
    """URL -> body of every file reachable from index.html through <script>/<link> and ES imports."""
    index = client.get("/")
    seen: dict[str, str] = {"/": index.text}
    todo = ASSET.findall(index.text)
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        response = client.get(url)
        assert response.status_code == 200, url
        seen[url] = response.text
        if url.endswith(".js"):
            for spec in IMPORT.findall(response.text):
                assert spec.startswith("."), f"{url} imports {spec!r}: only relative modules (no CDN, no bare names)"
                todo.append(_normalise(f"{url.rsplit('/', 1)[0]}/{spec}"))
    return seen


def _normalise(url: str) -> str:
    parts: list[str] = []
    for part in url.split("/"):
        if part == "..":
            parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def test_the_page_is_served_as_html(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="/static/app.js">' in response.text
    assert 'id="text"' in response.text and 'id="tabs"' in response.text


def test_every_referenced_file_exists_and_has_its_type(client):
    graph = module_graph(client)
    expected_views = {p.name for p in (STATIC_DIR / "views").glob("*.js")}
    served_views = {Path(url).name for url in graph if url.startswith("/static/views/")}
    assert served_views == expected_views  # every view module is imported, none is missing
    assert {"/static/app.js", "/static/api.js", "/static/style.css"} <= set(graph)
    for url in graph:
        if url == "/":
            continue
        kind = client.get(url).headers["content-type"]
        if url.endswith(".js"):
            assert kind.startswith("text/javascript"), (url, kind)
        elif url.endswith(".css"):
            assert kind.startswith("text/css"), (url, kind)


def test_no_cdn_and_no_inner_html_in_any_static_file():
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".html", ".js", ".css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", "")), path
        assert "innerHTML" not in text and "outerHTML" not in text and "insertAdjacentHTML" not in text, path
        assert "eval(" not in text and "document.write" not in text, path


def test_static_paths_are_confined(client, tmp_path):
    for bad in (
        "/static/../routes/dashboard.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/nope.js",
        "/static/",
        "/static/views",
    ):
        response = client.get(bad)
        assert response.status_code == 404, bad
        assert response.json()["error"] == "not_found"
    # a symlink inside static/ that points outside is not followed out
    link = STATIC_DIR / "escape-test.js"
    target = tmp_path / "secret.js"
    target.write_text("secret", encoding="utf-8")
    try:
        link.symlink_to(target)
    except OSError:
        pytest.skip("cannot create a symlink here")
    try:
        assert client.get("/static/escape-test.js").status_code == 404
    finally:
        link.unlink()


def test_with_a_token_the_page_loads_but_the_api_needs_it(token_client):
    assert token_client.get("/").status_code == 200
    assert token_client.get("/static/app.js").status_code == 200
    assert token_client.get("/runs").status_code == 401
    assert token_client.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    api_js = (STATIC_DIR / "api.js").read_text(encoding="utf-8")
    assert "Authorization = `Bearer ${token}`" in api_js and "?token=${encodeURIComponent(token)}" in api_js


API_CALL = re.compile(r"""\bapi\(\s*(["`])(/.*?)\1""")


def test_every_api_path_the_page_calls_is_a_route(client):
    """The page is written against the agreed interfaces: each `api("/path")` it makes names a
    route of the app (templated segments match one path segment), so a renamed route fails here."""
    paths = [*client.get("/openapi.json").json()["paths"], "/openapi.json"]  # the schema itself is no path in it
    routes = [re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path)) for path in paths]
    called = set()
    for path in STATIC_DIR.rglob("*.js"):
        for _, target in API_CALL.findall(path.read_text(encoding="utf-8")):
            called.add(re.sub(r"\$\{[^}]+\}", "x", target.split("?", 1)[0]))
    assert {"/export-sae", "/import-patches", "/train-sae", "/api/pruning/candidates", "/api/pruning/export"} <= called
    missing = sorted(p for p in called if not any(r.fullmatch(p) for r in routes))
    assert not missing, f"the dashboard calls paths the server does not have: {missing}"
