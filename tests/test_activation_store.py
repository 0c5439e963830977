"""The activation store: exact round trip, resume after an interruption without duplicate
rows, top_tokens against brute force, and clear errors for bad setups (tiny models)."""

from __future__ import annotations

import json

import pytest
import torch
from interpsuite_plugins.activation import store as store_module
from interpsuite_plugins.activation.store import (
    MANIFEST,
    ActivationStore,
    ActivationStoreAnalyzer,
    StoreWriter,
    verify_roundtrip,
    write_store,
)

from interpsuite import InterpretabilityPipeline
from interpsuite.analyzer import build_config
from interpsuite.errors import ConfigError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Hi",
    "She opened the window and let the cool morning air in.",
    "Numbers: 1, 2, 3.",
    "A",
    "Our train was delayed by twenty minutes.",
    "The end of the list is near.",
    "One more for luck!",
    "And the last one.",
]
HOOKS = ["embed", "blocks.0.attn.z", "blocks.0.mlp.post", "blocks.1.resid_post", "final"]
# 37 rows per shard: shard boundaries fall inside texts and inside batches
OPTIONS = {"shard_tokens": 37, "batch_size": 3, "max_length": 32}


class SimulatedCrashError(Exception):
    pass


def reference(model, texts, hooks, batch_size=3, max_length=32):
    """Direct captures, batch by batch: ({hook: [rows, units]}, [(text_id, position, token_id, token)])."""
    acts = {hook: [] for hook in hooks}
    index = []
    for batch in model.batches(texts, batch_size, max_length):
        cache = model.forward(batch, capture=hooks).cache
        mask = batch.attention_mask.bool()
        for hook in hooks:
            acts[hook].append(cache[hook][mask].reshape(int(mask.sum()), -1))
        for row, text_id in enumerate(batch.text_ids):
            for position, token in enumerate(batch.tokens[row]):
                index.append((text_id, position, int(batch.input_ids[row, position]), token))
    return {hook: torch.cat(parts) for hook, parts in acts.items()}, index


def rows_of(store: ActivationStore):
    frame = store.index()
    index = list(zip(frame.text_id, frame.position, frame.token_id, frame.token, strict=True))
    return {hook: store.load(hook) for hook in store.hooks}, index


def shard_files(path):
    return sorted(p.name for p in path.iterdir() if p.name.startswith("shard_"))


def test_round_trip_is_exact(tiny_model, tmp_path):
    store = write_store(tmp_path, tiny_model, TEXTS, HOOKS, **OPTIONS)
    expected, expected_index = reference(tiny_model, TEXTS, HOOKS)
    acts, index = rows_of(store)
    assert index == expected_index
    for hook in HOOKS:
        assert acts[hook].dtype == torch.float32
        assert torch.equal(acts[hook], expected[hook]), hook
    assert len(store) == len(expected_index) == sum(s["rows"] for s in store.shards)
    assert [s["rows"] for s in store.shards[:-1]] == [37] * (len(store.shards) - 1)
    assert store.duplicate_rows() == 0
    assert store.texts_completed == len(TEXTS)
    assert verify_roundtrip(store, tiny_model, TEXTS)[0] == 0.0
    # the manifest is plain JSON and lists every shard file there is
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert shard_files(tmp_path) == [s["file"] for s in manifest["shards"]]


def test_float16_store_holds_the_rounded_values(tiny_models, tmp_path):
    model = tiny_models["tiny_gpt2"]
    store = write_store(tmp_path, model, TEXTS, HOOKS[1:3], dtype="float16", **OPTIONS)
    expected, _ = reference(model, TEXTS, HOOKS[1:3])
    for hook in HOOKS[1:3]:
        assert torch.equal(store.load(hook), expected[hook].half())
    exact, quantised, compared = verify_roundtrip(store, model, TEXTS)
    assert exact == 0.0 and 0 < quantised < 1e-2 and compared > 0


def test_iter_batches_cover_every_row(tiny_models, tmp_path):
    store = write_store(tmp_path, tiny_models["tiny_llama"], TEXTS, ["blocks.1.resid_post"], **OPTIONS)
    full = store.load("blocks.1.resid_post")
    batches = list(store.iter_batches("blocks.1.resid_post", 16))
    assert [len(b) for b in batches[:-1]] == [16] * (len(batches) - 1)
    assert torch.equal(torch.cat(batches), full)
    shuffled = torch.cat(list(store.iter_batches("blocks.1.resid_post", 16, shuffle=True, seed=1)))
    assert not torch.equal(shuffled, full)
    assert torch.equal(shuffled.sort(dim=0).values, full.sort(dim=0).values)
    assert sum(len(b) for b in store.iter_batches("blocks.1.resid_post", 16, drop_last=True)) == len(full) // 16 * 16


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_bert"])
def test_resume_after_interruption_equals_an_uninterrupted_run(tiny_models, model_name, tmp_path, monkeypatch):
    model = tiny_models[model_name]
    whole = write_store(tmp_path / "whole", model, TEXTS, HOOKS, **OPTIONS)
    path = tmp_path / "resumed"

    # 1. interrupted right after the 2nd shard was committed
    def stop_after_two(entry):
        if entry["file"] == "shard_00001.safetensors":
            raise SimulatedCrashError

    with pytest.raises(SimulatedCrashError):
        StoreWriter(path, model, HOOKS, on_shard=stop_after_two, **OPTIONS).write(TEXTS)
    assert len(ActivationStore(path).shards) == 2

    # 2. interrupted after the 3rd shard file was written but before the manifest listed it
    real_write = store_module.write_json_atomic

    def crash_on_manifest(file, payload):
        if len(payload["shards"]) == 3:
            raise SimulatedCrashError
        real_write(file, payload)

    monkeypatch.setattr(store_module, "write_json_atomic", crash_on_manifest)
    with pytest.raises(SimulatedCrashError):
        StoreWriter(path, model, HOOKS, **OPTIONS).write(TEXTS)
    monkeypatch.undo()
    assert "shard_00002.safetensors" in shard_files(path)  # the partial shard is on disk ...
    assert len(ActivationStore(path).shards) == 2  # ... and not in the manifest

    # 3. resume to the end
    stats = StoreWriter(path, model, HOOKS, **OPTIONS).write(TEXTS)
    assert stats.started_at == tuple(whole.shards[2]["start"]) and stats.rows_written == len(whole) - 2 * 37
    resumed = ActivationStore(path)
    acts, index = rows_of(resumed)
    whole_acts, whole_index = rows_of(whole)
    assert index == whole_index
    keys = [(text_id, position) for text_id, position, _, _ in index]
    assert len(keys) == len(set(keys))
    assert resumed.duplicate_rows() == 0
    for hook in HOOKS:
        assert torch.equal(acts[hook], whole_acts[hook]), hook
    assert [s["rows"] for s in resumed.shards] == [s["rows"] for s in whole.shards]
    assert shard_files(path) == shard_files(tmp_path / "whole")
    assert len(resumed.manifest["sessions"]) == 2
    assert verify_roundtrip(resumed, model, TEXTS)[0] == 0.0

    # 4. once complete, re-running writes nothing
    again = StoreWriter(path, model, HOOKS, **OPTIONS).write(TEXTS)
    assert again.rows_written == 0 and len(ActivationStore(path)) == len(whole)


def test_resume_with_more_texts_extends_the_store(tiny_models, tmp_path):
    model = tiny_models["tiny_gpt2"]
    write_store(tmp_path / "part", model, TEXTS[:6], HOOKS, **OPTIONS)
    extended = write_store(tmp_path / "part", model, TEXTS, HOOKS, **OPTIONS)
    whole = write_store(tmp_path / "whole", model, TEXTS, HOOKS, **OPTIONS)
    assert rows_of(extended)[1] == rows_of(whole)[1]
    for hook in HOOKS:
        assert torch.equal(extended.load(hook), whole.load(hook))
    assert extended.duplicate_rows() == 0 and extended.texts_completed == len(TEXTS)


def test_a_mismatching_store_is_refused(tiny_models, tmp_path):
    llama = tiny_models["tiny_llama"]
    write_store(tmp_path, llama, TEXTS, HOOKS, **OPTIONS)
    before = ActivationStore(tmp_path).manifest
    with pytest.raises(ConfigError, match="hooks"):
        StoreWriter(tmp_path, llama, ["blocks.0.resid_post"], **OPTIONS).write(TEXTS)
    with pytest.raises(ConfigError, match="dtype"):
        StoreWriter(tmp_path, llama, HOOKS, **{**OPTIONS, "dtype": "float16"}).write(TEXTS)
    with pytest.raises(ConfigError, match="model.name"):
        StoreWriter(tmp_path, tiny_models["tiny_gpt2"], HOOKS, **OPTIONS).write(TEXTS)
    with pytest.raises(ConfigError, match="differ"):
        StoreWriter(tmp_path, llama, HOOKS, **OPTIONS).write(["Other texts", *TEXTS[1:]])
    assert ActivationStore(tmp_path).manifest == before  # nothing was touched
    # resume=false starts over
    fresh = write_store(tmp_path, llama, TEXTS[:2], ["blocks.0.resid_post"], resume=False, **OPTIONS)
    assert fresh.hooks == ["blocks.0.resid_post"] and fresh.texts_completed == 2
    assert shard_files(tmp_path) == [s["file"] for s in fresh.shards]
    # a folder that holds something else is never written into
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an activation store"):
        StoreWriter(tmp_path / "other", llama, HOOKS).write(TEXTS)
    with pytest.raises(ConfigError, match="no manifest.json"):
        ActivationStore(tmp_path / "other")


def _brute_force_top(store, hook, unit, k, largest):
    values = store.load(hook)[:, unit].float()
    order = torch.sort(values if largest else -values, descending=True, stable=True).indices[:k]
    return order.tolist(), values[order].tolist()


@pytest.mark.parametrize("largest", [True, False])
def test_top_tokens_match_brute_force(tiny_models, tmp_path, largest):
    model = tiny_models["tiny_llama"]
    texts = TEXTS * 3  # repeated texts: equal values, ties go to the earlier row
    store = write_store(tmp_path, model, texts, ["blocks.0.mlp.post", "blocks.1.resid_post"], **OPTIONS)
    frame = store.index()
    for hook, unit in [("blocks.0.mlp.post", 0), ("blocks.0.mlp.post", 77), ("blocks.1.resid_post", 5)]:
        top = store.top_tokens(hook, unit, k=7, context=3, largest=largest)
        rows, values = _brute_force_top(store, hook, unit, 7, largest)
        assert top["row"].tolist() == rows
        assert top["value"].tolist() == values
        for record in top.itertuples():
            row = frame.iloc[record.row]
            assert (record.text_id, record.position, record.token) == (row.text_id, row.position, row.token)
            same_text = frame[frame.text_id == row.text_id].set_index("position").token
            left = "".join(same_text.loc[max(0, row.position - 3) : row.position - 1])
            right = "".join(same_text.loc[row.position + 1 : row.position + 3])
            assert (record.left, record.right) == (left, right)
            assert record.context == f"{left}[[{row.token}]]{right}"
    with pytest.raises(ConfigError, match="out of range"):
        store.top_tokens("blocks.0.mlp.post", model.info.d_mlp)
    with pytest.raises(ConfigError, match="not in the store"):
        store.top_tokens("blocks.0.resid_post", 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hook_points": ["attn.pattern"]}, "cannot be stored"),
        ({"hook_points": ["nonsense"]}, "cannot be stored"),
        ({"hook_points": []}, "empty"),
        ({"layers": [7]}, "layer 7 out of range"),
        ({"hook_points": ["blocks.9.mlp.post"]}, "layer 9 out of range"),
        ({"dtype": "int8"}, "dtype"),
        ({"shard_tokens": 0}, "shard_tokens"),
    ],
)
def test_bad_options_fail_before_weights_load(tiny_models, options, message):
    info = tiny_models["tiny_llama"].info
    cfg = build_config(ActivationStoreAnalyzer, options)
    with pytest.raises(ConfigError, match=message):
        ActivationStoreAnalyzer(cfg).validate(info, cfg)


def test_the_analyzer_writes_checks_and_resumes(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    options = {"hook_points": ["resid_post", "mlp.post"], "layers": [0, 1], "path": str(tmp_path / "store"),
               "shard_tokens": 50}  # fmt: skip

    def run(analyzer_options, run_dir):
        return InterpretabilityPipeline(
            model=model,
            data=TEXTS,
            analyzers={"activation_store": analyzer_options},
            output_dir=run_dir,
            sinks=["rundir"],
            progress=False,
            batch_size=4,
        ).run()

    first = run(options, tmp_path / "run1").results["activation_store"]
    assert first.status == "ok", first.error
    assert {name: check.value for name, check in first.checks.items()} == {
        "roundtrip_max_abs_error": 0.0,
        "no_duplicate_rows": 0.0,
        "row_count_error": 0.0,
    }
    store = ActivationStore(tmp_path / "store")
    assert store.hooks == ["blocks.0.resid_post", "blocks.1.resid_post", "blocks.0.mlp.post", "blocks.1.mlp.post"]
    assert first.metrics["rows"] == first.metrics["rows_written"] == len(store)
    assert first.metrics["shards"] == len(first.tables["shards"]) == len(store.shards)
    assert first.summary["path"] == str((tmp_path / "store").resolve())
    second = run(options, tmp_path / "run2").results["activation_store"]
    assert second.status == "ok" and second.metrics["rows_written"] == 0 and not second.failed_checks
    # a mismatching setup on the existing store is refused by validate(), before any forward pass
    with pytest.raises(ConfigError, match="another setup"):
        run({**options, "layers": [1]}, tmp_path / "run3")
    # without a path the store goes to the run directory
    default = run({}, tmp_path / "run4").results["activation_store"]
    assert default.summary["path"] == str((tmp_path / "run4" / "data" / "activation_store").resolve())
    assert ActivationStore(default.summary["path"]).hooks == ["blocks.1.resid_post"]


@pytest.mark.parametrize("crafted", ["../victim.txt", "ABSOLUTE", "sub/shard_00000.safetensors", "manifest.json"])
def test_a_crafted_manifest_cannot_reach_files_outside_the_store(tiny_models, tmp_path, crafted):
    """resume=false deletes the files the manifest names: only the store's own shard names pass."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    store_dir = tmp_path / "store"
    write_store(store_dir, tiny_models["tiny_llama"], TEXTS[:2], ["blocks.1.resid_post"], **OPTIONS)
    manifest = json.loads((store_dir / MANIFEST).read_text())
    manifest["shards"][0]["file"] = str(victim) if crafted == "ABSOLUTE" else crafted
    (store_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="is not a shard file name of this store"):
        write_store(store_dir, tiny_models["tiny_llama"], TEXTS[:2], ["blocks.1.resid_post"], resume=False, **OPTIONS)
    with pytest.raises(ConfigError, match="is not a shard file name of this store"):
        ActivationStore(store_dir)
    assert victim.read_text() == "keep me"
