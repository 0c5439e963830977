"""`interpsuite serve`: the REST/WebSocket API (FastAPI + uvicorn) over the analyzers.

Everything that can be wrong is found before the port is bound, each as one line and exit 2: an
unsafe host without a token, a missing/unreadable/empty token file, an unknown model, fastapi or
uvicorn not installed. The model is loaded before uvicorn starts, so the server answers as soon
as it listens. SIGINT and SIGTERM stop it gracefully (running analyses are cancelled at their next
progress item) and the command exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--model", default="smollm2", help="model to load (default smollm2; `interpsuite models`)")
    parser.add_argument("--token-file", default=None, help="file holding the bearer token every request must send")
    parser.add_argument("--runs-dir", default=None, help="run folders go here (default ./interpsuite-runs)")
    parser.add_argument("--cache-dir", default=None, help="result cache folder (default <interpsuite cache>/results)")
    parser.add_argument("--workers", type=int, default=1, help="analyses that run at once (default 1)")
    parser.add_argument("--queue", type=int, default=8, help="analyses that may wait; one more gets 503 (default 8)")
    parser.add_argument(
        "--cors-origin", action="extend", nargs="+", default=[], metavar="URL", help="allow these browser origins"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds an analysis may take (default 300)")
    parser.add_argument(
        "--artifact-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder SAEs, failure predictors and anomaly detectors may be loaded from (repeatable; runs-dir always)",
    )
    parser.add_argument("--exports-dir", default=None, help="exports go here (default ./interpsuite-exports)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def settings_from_args(args: argparse.Namespace):
    from .server.security import read_token_file
    from .server.settings import ServerSettings

    settings = ServerSettings(
        model=args.model,
        host=args.host,
        port=args.port,
        token=read_token_file(args.token_file) if args.token_file else None,
        workers=args.workers,
        queue=args.queue,
        cors_origins=tuple(args.cors_origin),
        request_timeout_s=args.timeout,
        artifact_dirs=tuple(Path(folder) for folder in args.artifact_dir),
    )
    if args.exports_dir:
        settings.exports_dir = Path(args.exports_dir)
    if args.runs_dir:
        settings.runs_dir = Path(args.runs_dir)
    if args.cache_dir:
        settings.cache_dir = Path(args.cache_dir)
    return settings.check()


#: seconds a stopping server waits for open requests before it cancels them and their analyses
GRACEFUL_S = 10


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """SIGINT/SIGTERM after uvicorn's graceful shutdown (uvicorn re-raises the signal it caught)."""


def _raise_stop(signum, frame) -> None:
    raise _Stop(signum)


def serve_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise ConfigError(f"`interpsuite serve` needs {err.name}: pip install 'interpsuite[server]'") from None
    from .models import load_model
    from .result_cache import ResultCache
    from .server.app import create_app
    from .settings import check_writable_dir

    # folders first (a second), then the model: each mistake is one line before anything binds
    check_writable_dir(settings.runs_dir, "runs directory (--runs-dir)")
    ResultCache(settings.cache_dir, max_bytes=settings.cache_max_bytes)
    print(f"interpsuite serve: loading {settings.model} ...", file=sys.stderr, flush=True)
    model = load_model(settings.model)
    app = create_app(settings, model=model)
    auth = "bearer token required" if settings.token else "no token (loopback only)"
    print(
        f"interpsuite serve: http://{settings.host}:{settings.port} (model {settings.model}, {auth}; docs at /docs)",
        file=sys.stderr,
        flush=True,
    )
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=args.log_level,
            ws_max_size=settings.max_body_bytes,  # WebSocket messages obey the body limit too
            timeout_graceful_shutdown=GRACEFUL_S,  # then open requests are cancelled (and their analyses)
        )
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("interpsuite serve: stopped", file=sys.stderr, flush=True)
    return 0
