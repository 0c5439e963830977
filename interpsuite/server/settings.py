"""ServerSettings: everything `interpsuite serve` can be told, validated once, before any model loads.

The defaults are the safe ones (loopback only, no CORS, bounded bodies, texts, queue and time),
so a server started without options cannot be reached from another machine or overloaded
by one request. `check()` raises a one-line ConfigError for a value that cannot work.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); False for 0.0.0.0 and names."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_runs_dir() -> Path:
    return Path("interpsuite-runs")


def default_cache_dir() -> Path:
    from ..models.cache import cache_dir

    return cache_dir() / "results"


@dataclass
class ServerSettings:
    """How the server runs. `token` None: no authentication (allowed on loopback hosts only)."""

    model: str = "smollm2"
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    runs_dir: Path = field(default_factory=default_runs_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: analyses run at once (each on its own thread, all on the one shared HookedModel)
    workers: int = 1
    #: analyses that may wait for a worker; one more answers 503 with Retry-After
    queue: int = 8
    #: browser origins allowed by CORS; empty: no CORS headers at all (closed)
    cors_origins: tuple[str, ...] = ()
    #: request bodies larger than this answer 413 (Content-Length and the streamed body)
    max_body_bytes: int = 1 << 20
    #: characters per text; longer texts answer 413
    max_text_chars: int = 20_000
    #: texts per request (all items of a batch together); more answer 413
    max_texts: int = 64
    #: seconds an analysis may take, queue wait included; past it the analysis is cancelled (504)
    request_timeout_s: float = 300.0
    #: seconds a client is told to wait after a 503 (Retry-After)
    retry_after_s: int = 5
    #: size bound of the on-disk result cache (LRU eviction past it)
    cache_max_bytes: int = 1 << 30
    batch_size: int = 8
    max_length: int | None = 128
    draw_figures: bool = True
    #: model names POST /models/switch accepts besides the embedded ones (the startup model is always one)
    extra_models: tuple[str, ...] = ()
    #: folders (besides runs_dir) that saved artifacts may be loaded from by a relative path:
    #: SAEs (POST /load-sae), failure predictors, anomaly detectors, patch files
    artifact_dirs: tuple[Path, ...] = ()
    #: where export endpoints write (pruned models, SAE patches, LoRA adapters); names are confined to it
    exports_dir: Path = field(default_factory=lambda: Path("interpsuite-exports"))

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir)
        self.cache_dir = Path(self.cache_dir)
        self.cors_origins = tuple(self.cors_origins)
        self.extra_models = tuple(self.extra_models)
        self.artifact_dirs = tuple(Path(folder) for folder in self.artifact_dirs)
        self.exports_dir = Path(self.exports_dir)

    def check(self) -> ServerSettings:
        """Refuse settings that cannot work or are unsafe (one line each); returns self."""
        if self.token is not None and not self.token:
            raise ConfigError("the token is empty; put a long random string in the token file")
        if not is_loopback(self.host) and self.token is None:
            raise ConfigError(
                f"refusing to listen on {self.host} without a token: anyone who can reach it could run the model; "
                "pass --token-file PATH (a file holding a secret) or use --host 127.0.0.1"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is out of range; give 0..65535 (0: any free port)")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: give at least 1 worker")
        if self.queue < 0:
            raise ConfigError(f"--queue {self.queue}: give 0 or more waiting places")
        for name in ("max_body_bytes", "max_text_chars", "max_texts", "cache_max_bytes", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: give a positive number")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s={self.request_timeout_s}: give a positive number of seconds")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"--cors-origin {origin!r}: give an origin like http://localhost:5173")
        return self
