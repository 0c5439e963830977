"""The result cache (interpsuite/result_cache.py): keys, round trips, LRU eviction, damage, concurrency.

Module-level imports stay free of torch: the two-process test spawns workers that import this module.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from interpsuite.errors import ConfigError
from interpsuite.result_cache import CacheKey, ResultCache, default_result_cache_root

#: every test entry carries one file of this size, so an entry's bytes are FILE_BYTES plus about
#: 500 bytes of entry.json, and max_bytes = 3 * FILE_BYTES + 3000 holds exactly three entries
FILE_BYTES = 10_000
THREE = 3 * FILE_BYTES + 3000


def _key(i: int | str, analyzer: str = "activation_stats") -> CacheKey:
    """A key built directly (no model): enough for everything but the fingerprint tests."""
    return CacheKey(model=f"{'ab' * 32}:tiny", analyzer=analyzer, options="{}", texts_sha256=str(i), version="0.1.0/x")


def _blob(folder: Path, name: str, seed: int, size: int = FILE_BYTES) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((seed * 31 + k) % 251 for k in range(size)))
    return path


def _put(cache: ResultCache, i: int | str, src: Path, size: int = FILE_BYTES):
    seed = i if isinstance(i, int) else len(i)
    return cache.put(_key(i), {"i": str(i)}, {"data.bin": _blob(src, f"{i}.bin", seed, size)})


def _on_disk(root: Path) -> set[str]:
    return {p.name for p in (root / "entries").glob("*/*") if p.is_dir()}


def _index(root: Path) -> dict:
    return json.loads((root / "index.json").read_text())


def _assert_consistent(root: Path, max_bytes: int) -> dict:
    """The index names exactly the entry folders, with their true sizes, within the bound; no leftovers."""
    index = _index(root)
    entries = index["entries"]
    assert set(entries) == _on_disk(root)
    for digest, meta in entries.items():
        folder = root / "entries" / digest[:2] / digest
        assert meta["bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        record = json.loads((folder / "entry.json").read_text())
        assert record["digest"] == digest == CacheKey(**record["key"]).digest()
    assert sum(meta["bytes"] for meta in entries.values()) <= max_bytes
    seqs = [meta["seq"] for meta in entries.values()]
    assert len(set(seqs)) == len(seqs) and max(seqs, default=0) <= index["seq"]
    assert list((root / "tmp").iterdir()) == []
    return entries


@pytest.fixture()
def fingerprint():
    from interpsuite.artifacts import ModelFingerprint

    return ModelFingerprint("tiny_llama", "llama", 2, 64, 1000, "0" * 64)


# --- keys -------------------------------------------------------------------------------------


def test_key_is_the_same_in_any_dict_order(fingerprint):
    a = CacheKey.of(fingerprint, "attn", {"layers": [0, 1], "nested": {"x": 1, "y": "é"}, "k": 2}, ["hi", "yo"], "v")
    b = CacheKey.of(fingerprint, "attn", {"k": 2, "nested": {"y": "é", "x": 1}, "layers": [0, 1]}, ["hi", "yo"], "v")
    assert a == b and a.digest() == b.digest()
    assert a.options == '{"k":2,"layers":[0,1],"nested":{"x":1,"y":"é"}}'
    assert a.model == "0" * 64 + ":tiny_llama"
    assert len(a.digest()) == 64 and int(a.digest(), 16) >= 0
    assert CacheKey.of(fingerprint, "attn", None, ["hi"], "v") == CacheKey.of(fingerprint, "attn", {}, ["hi"], "v")


def test_key_changes_with_every_field(fingerprint):
    base = dict(fingerprint=fingerprint, analyzer="attn", options={"k": 2, "layers": [0]}, texts=["ab", "c"])
    variants = {
        "base": base,
        "weights": {**base, "fingerprint": replace(fingerprint, weights_sha256="1" + "0" * 63)},
        "model name": {**base, "fingerprint": replace(fingerprint, name="tiny_llama2")},
        "analyzer": {**base, "analyzer": "attn2"},
        "option value": {**base, "options": {"k": 3, "layers": [0]}},
        "option list": {**base, "options": {"k": 2, "layers": [1]}},
        "option added": {**base, "options": {"k": 2, "layers": [0], "extra": None}},
        "option type": {**base, "options": {"k": 2.0, "layers": [0]}},
        "one character": {**base, "texts": ["ab", "d"]},
        "split": {**base, "texts": ["a", "bc"]},
        "order": {**base, "texts": ["c", "ab"]},
        "one more text": {**base, "texts": ["ab", "c", ""]},
    }
    digests = {name: CacheKey.of(version="0.1.0/1.0", **kw).digest() for name, kw in variants.items()}
    digests["version"] = CacheKey.of(version="0.1.0/1.1", **base).digest()
    assert len(set(digests.values())) == len(digests), digests


def test_key_of_loaded_tiny_models():
    from interpsuite.artifacts import ModelFingerprint
    from interpsuite.models import load_model

    llama, gpt2 = ModelFingerprint.of(load_model("tiny_llama")), ModelFingerprint.of(load_model("tiny_gpt2"))
    again = ModelFingerprint.of(load_model("tiny_llama"))
    key = CacheKey.of(llama, "attn", {}, ["x"], "v")
    assert key.digest() == CacheKey.of(again, "attn", {}, ["x"], "v").digest()
    assert key.digest() != CacheKey.of(gpt2, "attn", {}, ["x"], "v").digest()
    assert key.model == f"{llama.weights_sha256}:tiny_llama"


def test_key_refuses_what_is_not_json(fingerprint):
    with pytest.raises(ConfigError, match="options of attn is not JSON"):
        CacheKey.of(fingerprint, "attn", {"k": object()}, ["x"], "v")
    with pytest.raises(ConfigError, match="not JSON"):
        CacheKey.of(fingerprint, "attn", {"k": float("nan")}, ["x"], "v")
    with pytest.raises(ConfigError, match="list of strings"):
        CacheKey.of(fingerprint, "attn", {}, "one text", "v")
    path_key = CacheKey.of(fingerprint, "attn", {"file": Path("/a/b")}, ["x"], "v")
    assert path_key == CacheKey.of(fingerprint, "attn", {"file": "/a/b"}, ["x"], "v")


def test_default_root_follows_the_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERPSUITE_CACHE", str(tmp_path / "c"))
    assert default_result_cache_root() == tmp_path / "c" / "results"


# --- storing and reading ----------------------------------------------------------------------


def test_round_trip_entry_and_files_byte_equal(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    png = _blob(tmp_path / "src", "fig.png", 1, 5000)
    csv = tmp_path / "src" / "t.csv"
    csv.write_text("layer,value\n0,1.5\n1,-2\n")
    entry = {"status": "ok", "metrics": {"a": 1.5, "b": [1, 2]}, "summary": "ünïcode", "none": None}
    put = cache.put(_key(1), entry, {"figures/attn.png": png, "tables/t.csv": csv})
    got = cache.get(_key(1))
    assert got is not None and put.stored and got.stored
    assert got.digest == put.digest == _key(1).digest()
    assert got.entry == entry == put.entry
    assert set(got.files) == {"figures/attn.png", "tables/t.csv"}
    assert got.files["figures/attn.png"].read_bytes() == png.read_bytes()
    assert got.files["tables/t.csv"].read_bytes() == csv.read_bytes()
    assert got.files == put.files
    root = (tmp_path / "cache").resolve()
    folder = root / "entries" / put.digest[:2] / put.digest
    assert got.files["tables/t.csv"] == folder / "files" / "tables" / "t.csv"
    assert cache.file(put.digest, "tables/t.csv") == got.files["tables/t.csv"]
    assert got.bytes == put.bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert got.created == put.created and got.last_used >= put.last_used
    # the caller's files are copied, not moved or linked
    png.write_bytes(b"changed")
    assert cache.get(_key(1)).files["figures/attn.png"].read_bytes() != b"changed"
    _assert_consistent(root, 1 << 30)


def test_put_replaces_an_entry_with_the_same_key(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    cache.put(_key(1), {"v": 1}, {"a.txt": _blob(tmp_path, "a.txt", 1, 10)})
    cache.put(_key(1), {"v": 2}, {"b.txt": _blob(tmp_path, "b.txt", 2, 20)})
    got = cache.get(_key(1))
    assert got.entry == {"v": 2} and set(got.files) == {"b.txt"}
    assert cache.stats().entries == 1
    with pytest.raises(ConfigError, match="has no file 'a.txt'"):
        cache.file(got.digest, "a.txt")
    _assert_consistent(cache.root, 1 << 30)


def test_put_refuses_bad_input_before_writing(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    src = _blob(tmp_path, "x.bin", 1, 10)
    for name in ("../x", "/etc/x", "a/../../x", "a//b", "./a", "a\\b", ""):
        with pytest.raises(ConfigError, match="must be relative"):
            cache.put(_key(1), {}, {name: src})
    with pytest.raises(ConfigError, match="is not a file"):
        cache.put(_key(1), {}, {"x": tmp_path / "missing"})
    with pytest.raises(ConfigError, match="not JSON"):
        cache.put(_key(1), {"x": object()})
    with pytest.raises(ConfigError, match="JSON object"):
        cache.put(_key(1), [1, 2])  # type: ignore[arg-type]
    assert cache.get(_key(1)) is None and _on_disk(cache.root) == set()
    assert list((cache.root / "tmp").iterdir()) == []


def test_file_refuses_names_outside_the_entry(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    outside = _blob(tmp_path / "cache" / "entries", "secret.txt", 1, 10)
    digest = cache.put(_key(1), {}, {"a.txt": _blob(tmp_path, "a.txt", 1, 10)}).digest
    for name in ("../x", "../entry.json", "../../../secret.txt", "/etc/passwd", str(outside), "a/../../x", "a\\b"):
        with pytest.raises(ConfigError, match="result cache:"):
            cache.file(digest, name)
    with pytest.raises(ConfigError, match="has no file 'b.txt'"):
        cache.file(digest, "b.txt")
    for bad in ("../" + digest[3:], digest.upper(), "ab", "x" * 64):
        with pytest.raises(ConfigError, match="not an entry digest"):
            cache.file(bad, "a.txt")
    with pytest.raises(ConfigError, match="has no file"):
        cache.file("f" * 64, "a.txt")
    assert cache.file(digest, "a.txt").read_bytes() == (tmp_path / "a.txt").read_bytes()


# --- size bound and LRU -----------------------------------------------------------------------


def test_lru_eviction_keeps_exactly_the_most_recently_used(tmp_path):
    cache = ResultCache(tmp_path / "cache", max_bytes=THREE)
    src = tmp_path / "src"
    digests = {i: _put(cache, i, src).digest for i in range(3)}
    assert _on_disk(cache.root) == set(digests.values())
    assert cache.get(_key(0)) is not None  # 0 becomes the most recently used: 1 is now the oldest
    digests[3] = _put(cache, 3, src).digest
    assert _on_disk(cache.root) == {digests[0], digests[2], digests[3]}
    assert cache.stats().evictions == 1
    digests[4] = _put(cache, 4, src).digest  # oldest now: 2
    assert _on_disk(cache.root) == {digests[0], digests[3], digests[4]}
    assert cache.get(_key(1)) is None and cache.get(_key(2)) is None
    assert [cache.get(_key(i)) is not None for i in (0, 3, 4)] == [True, True, True]
    stats = cache.stats()
    assert (stats.entries, stats.evictions, stats.hits, stats.misses) == (3, 2, 4, 2)
    assert stats.bytes <= THREE
    _assert_consistent(cache.root, THREE)


def test_entry_larger_than_the_bound_is_not_stored(tmp_path):
    cache = ResultCache(tmp_path / "cache", max_bytes=THREE)
    src = tmp_path / "src"
    kept = _put(cache, 0, src).digest
    big = _blob(src, "big.bin", 9, THREE + 1)
    result = cache.put(_key("big"), {"v": 1}, {"big.bin": big})
    assert not result.stored and result.bytes > THREE
    assert result.files == {"big.bin": big.resolve()} and result.entry == {"v": 1}
    assert _on_disk(cache.root) == {kept}  # nothing stored, nothing evicted for it
    assert cache.get(_key("big")) is None
    stats = cache.stats()
    assert (stats.entries, stats.evictions) == (1, 0)
    _assert_consistent(cache.root, THREE)


def test_bad_max_bytes_is_a_config_error(tmp_path):
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ConfigError, match="max_bytes must be a positive integer"):
            ResultCache(tmp_path, max_bytes=bad)  # type: ignore[arg-type]


# --- statistics, clear, restart ---------------------------------------------------------------


def test_stats_count_exactly(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    assert cache.stats().to_dict() == {
        "entries": 0,
        "bytes": 0,
        "max_bytes": 1 << 30,
        "hits": 0,
        "misses": 0,
        "evictions": 0,
        "hit_rate": None,
    }
    a, b = _put(cache, 0, tmp_path), _put(cache, 1, tmp_path)
    assert cache.get(_key(0)) is not None and cache.get(_key(1)) is not None
    assert cache.get(_key(2)) is None
    stats = cache.stats()
    assert stats.to_dict() == {
        "entries": 2,
        "bytes": a.bytes + b.bytes,
        "max_bytes": 1 << 30,
        "hits": 2,
        "misses": 1,
        "evictions": 0,
        "hit_rate": 2 / 3,
    }
    assert json.loads(json.dumps(stats.to_dict())) == stats.to_dict()


def test_contains_is_a_peek(tmp_path):
    """contains() answers without counting a hit or miss and without changing the LRU order."""
    cache = ResultCache(tmp_path / "cache")
    _put(cache, 0, tmp_path)
    _put(cache, 1, tmp_path)
    order = cache._read_index().entries  # noqa: SLF001 - the order itself is what is checked
    before = {d: m["seq"] for d, m in order.items()}
    assert cache.contains(_key(0)) and not cache.contains(_key(2))
    assert {d: m["seq"] for d, m in cache._read_index().entries.items()} == before
    assert (cache.stats().hits, cache.stats().misses) == (0, 0)


def test_clear_removes_every_entry(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    for i in range(3):
        _put(cache, i, tmp_path)
    assert cache.clear() == 3
    assert _on_disk(cache.root) == set() and cache.stats().entries == 0 and cache.stats().bytes == 0
    assert cache.get(_key(0)) is None
    assert cache.clear() == 0
    _put(cache, 5, tmp_path)
    assert cache.get(_key(5)) is not None
    _assert_consistent(cache.root, 1 << 30)


def test_a_new_cache_on_the_same_root_keeps_entries_and_lru_order(tmp_path):
    root = tmp_path / "cache"
    first = ResultCache(root, max_bytes=THREE)
    digests = {i: _put(first, i, tmp_path).digest for i in range(3)}
    assert first.get(_key(0)) is not None  # order now, oldest first: 1, 2, 0
    before = first.stats()
    second = ResultCache(root, max_bytes=THREE)
    after = second.stats()
    assert (after.entries, after.bytes) == (3, before.bytes)
    assert (after.hits, after.misses, after.evictions) == (0, 0, 0)  # counters are per object
    digests[3] = _put(second, 3, tmp_path).digest
    assert _on_disk(root) == {digests[0], digests[2], digests[3]}
    assert second.get(_key(0)).entry == {"i": "0"}
    # reopened with a smaller bound: shrinks at once, least recently used first (2, then 3)
    third = ResultCache(root, max_bytes=FILE_BYTES + 1000)
    assert _on_disk(root) == {digests[0]} and third.stats().evictions == 2
    _assert_consistent(root, FILE_BYTES + 1000)


def test_damaged_or_missing_index_is_rebuilt_from_the_entries(tmp_path):
    root = tmp_path / "cache"
    cache = ResultCache(root)
    digests = {_put(cache, i, tmp_path).digest for i in range(2)}
    (root / "index.json").write_text("{not json")
    assert ResultCache(root).stats().entries == 2
    (root / "index.json").unlink()
    again = ResultCache(root)
    assert set(_index(root)["entries"]) == digests
    assert again.get(_key(1)).entry == {"i": "1"}
    _assert_consistent(root, 1 << 30)


def test_leftovers_of_dead_writers_are_removed_on_open(tmp_path):
    root = tmp_path / "cache"
    ResultCache(root)
    dead = root / "tmp" / "999999999-abc"
    (dead / "files").mkdir(parents=True)
    (dead / "entry.json").write_text("{}")
    mine = root / "tmp" / f"{os.getpid()}-abc"
    mine.mkdir()
    ResultCache(root)
    assert not dead.exists() and mine.exists()


# --- damaged entries ---------------------------------------------------------------------------


def _damage_bad_json(folder: Path, tmp_path: Path) -> None:
    (folder / "entry.json").write_text('{"format": 1, "digest": ')


def _damage_missing_entry_json(folder: Path, tmp_path: Path) -> None:
    (folder / "entry.json").unlink()


def _damage_missing_file(folder: Path, tmp_path: Path) -> None:
    (folder / "files" / "data.bin").unlink()


def _damage_changed_file(folder: Path, tmp_path: Path) -> None:
    path = folder / "files" / "data.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_truncated_file(folder: Path, tmp_path: Path) -> None:
    path = folder / "files" / "data.bin"
    path.write_bytes(path.read_bytes()[:-1])


def _damage_name_outside(folder: Path, tmp_path: Path) -> None:
    record = json.loads((folder / "entry.json").read_text())
    record["files"]["../../../../../x.bin"] = record["files"].pop("data.bin")
    (folder / "entry.json").write_text(json.dumps(record))


def _damage_link_outside(folder: Path, tmp_path: Path) -> None:
    path = folder / "files" / "data.bin"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(path.read_bytes())  # same bytes: only the link gives it away
    path.unlink()
    path.symlink_to(outside)


def _damage_other_key(folder: Path, tmp_path: Path) -> None:
    record = json.loads((folder / "entry.json").read_text())
    record["key"]["analyzer"] = "other"
    (folder / "entry.json").write_text(json.dumps(record))


def _damage_not_an_object(folder: Path, tmp_path: Path) -> None:
    (folder / "entry.json").write_text("[1, 2]")


DAMAGES = [
    _damage_bad_json,
    _damage_missing_entry_json,
    _damage_missing_file,
    _damage_changed_file,
    _damage_truncated_file,
    _damage_name_outside,
    _damage_link_outside,
    _damage_other_key,
    _damage_not_an_object,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.removeprefix("_damage_"))
def test_damaged_entry_is_a_miss_and_is_removed(tmp_path, damage):
    cache = ResultCache(tmp_path / "cache")
    digest = _put(cache, 0, tmp_path / "src").digest
    other = _put(cache, 1, tmp_path / "src").digest
    damage(cache.root / "entries" / digest[:2] / digest, tmp_path)
    assert cache.get(_key(0)) is None
    assert _on_disk(cache.root) == {other}
    stats = cache.stats()
    assert (stats.entries, stats.hits, stats.misses) == (1, 0, 1)
    if damage is _damage_link_outside:
        assert (tmp_path / "outside.bin").is_file()  # the link is removed, never what it points to
    assert cache.get(_key(1)).entry == {"i": "1"}
    _put(cache, 0, tmp_path / "src")  # and the key can be stored again
    assert cache.get(_key(0)).entry == {"i": "0"}
    _assert_consistent(cache.root, 1 << 30)


def test_entry_folder_linked_elsewhere_is_a_miss(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    digest = _put(cache, 0, tmp_path / "src").digest
    folder = cache.root / "entries" / digest[:2] / digest
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)
    assert cache.get(_key(0)) is None
    assert not folder.exists() and not folder.is_symlink() and (elsewhere / "entry.json").is_file()
    with pytest.raises(ConfigError):
        cache.file(digest, "data.bin")


# --- concurrency -------------------------------------------------------------------------------


def _worker(root: str, worker: int, rounds: int, max_bytes: int) -> dict:
    """Put and get a mix of shared and own keys; returns this object's counters (used across processes)."""
    cache = ResultCache(root, max_bytes=max_bytes)
    src = Path(root).parent / f"src-{worker}-{os.getpid()}"
    seen = {"hits": 0, "misses": 0, "bad": 0}
    for r in range(rounds):
        for name in (f"shared-{r % 4}", f"own-{worker}-{r}"):
            got = cache.get(_key(name))
            if got is None:
                seen["misses"] += 1
                _put(cache, name, src, size=2000)
            else:
                seen["hits"] += 1
                if got.entry != {"i": name}:
                    seen["bad"] += 1
    stats = cache.stats()
    return {**seen, "stat_hits": stats.hits, "stat_misses": stats.misses}


def _process_worker(root: str, worker: int, rounds: int, max_bytes: int, queue, barrier) -> None:
    barrier.wait(timeout=300)  # both processes have imported everything: their operations interleave
    queue.put(_worker(root, worker, rounds, max_bytes))


def test_threads_keep_the_index_consistent(tmp_path):
    root = tmp_path / "cache"
    max_bytes = 8 * 2600
    cache = ResultCache(root, max_bytes=max_bytes)
    results: list[dict] = []
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            src = tmp_path / f"src-{worker}"
            hits = misses = bad = 0
            for r in range(12):
                for name in (f"shared-{r % 4}", f"own-{worker}-{r}"):
                    got = cache.get(_key(name))
                    if got is None:
                        misses += 1
                        _put(cache, name, src, size=2000)
                    else:
                        hits += 1
                        bad += got.entry != {"i": name}
            results.append({"hits": hits, "misses": misses, "bad": bad})
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r["bad"] for r in results) == 0
    stats = cache.stats()
    assert stats.hits == sum(r["hits"] for r in results) and stats.misses == sum(r["misses"] for r in results)
    assert stats.hits + stats.misses == 4 * 12 * 2
    assert stats.evictions > 0  # 52 distinct keys of ~2.5 kB in a 20.8 kB cache
    entries = _assert_consistent(root, max_bytes)
    assert stats.entries == len(entries)
    for digest in entries:
        record = json.loads((root / "entries" / digest[:2] / digest / "entry.json").read_text())
        assert cache.get(CacheKey(**record["key"])) is not None


def test_two_processes_keep_the_index_consistent(tmp_path):
    root = tmp_path / "cache"
    max_bytes = 8 * 2600
    ResultCache(root, max_bytes=max_bytes)
    context = multiprocessing.get_context("spawn")
    queue, barrier = context.Queue(), context.Barrier(2)
    args = [(str(root), w, 25, max_bytes, queue, barrier) for w in range(2)]
    procs = [context.Process(target=_process_worker, args=a) for a in args]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sum(r["bad"] for r in results) == 0
    for r in results:
        assert (r["stat_hits"], r["stat_misses"]) == (r["hits"], r["misses"])
        assert r["hits"] + r["misses"] == 50
    entries = _assert_consistent(root, max_bytes)
    reader = ResultCache(root, max_bytes=max_bytes)
    assert reader.stats().entries == len(entries) > 0
    for digest in entries:
        record = json.loads((root / "entries" / digest[:2] / digest / "entry.json").read_text())
        got = reader.get(CacheKey(**record["key"]))
        assert got is not None and got.entry == {"i": record["entry"]["i"]}
