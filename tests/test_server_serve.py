"""`interpsuite serve`: refusals before binding (one line, exit 2), and the real server in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import httpx  # noqa: E402

from interpsuite.cli import main  # noqa: E402
from tests.server_support import free_port  # noqa: E402

TOKEN = "serve-test-token-0123456789"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("interpsuite: error: "), err
    return err


def test_refuses_unsafe_or_broken_settings(capsys, tmp_path):
    err = one_line_error(capsys, ["serve", "--host", "0.0.0.0", "--model", "tiny_llama"])
    assert "refusing to listen on 0.0.0.0 without a token" in err and "--token-file" in err
    err = one_line_error(capsys, ["serve", "--token-file", str(tmp_path / "missing")])
    assert "no such file" in err
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    assert "the file is empty" in one_line_error(capsys, ["serve", "--token-file", str(empty)])
    assert "cannot read it" in one_line_error(capsys, ["serve", "--token-file", str(tmp_path)])
    assert "--workers 0" in one_line_error(capsys, ["serve", "--workers", "0"])
    assert "--cors-origin" in one_line_error(capsys, ["serve", "--cors-origin", "evil.example"])


def test_serve_in_a_subprocess(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "import sys; from interpsuite.cli import main; sys.exit(main())",
        "serve",
        "--model",
        "tiny_llama",
        "--port",
        str(port),
        "--token-file",
        str(token_file),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                health = httpx.get(f"{base}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.status_code == 200
        assert health.json()["model"] == "tiny_llama" and health.json()["status"] == "ok"

        request = {"text": "The cat sat on the mat.", "analyzers": {"activation_stats": {}}}
        refused = httpx.post(f"{base}/analyze", json=request, timeout=60)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = httpx.post(f"{base}/analyze", json=request, headers=auth, timeout=120)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "complete" and body["analyzers"]["activation_stats"]["status"] == "ok"
        saved = httpx.get(f"{base}/runs/{body['run_id']}", headers=auth, timeout=30).json()
        assert saved["analyzers"]["activation_stats"]["metrics"] == body["analyzers"]["activation_stats"]["metrics"]

        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/ws", additional_headers=auth, open_timeout=30) as ws:
            ws.send('{"type": "ping", "id": 1}')
            assert ws.recv(timeout=30) == '{"type":"pong","id":1}'
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
    assert process.returncode == 0, err
    assert "interpsuite serve: stopped" in err and "Traceback" not in err + out
