"""Batch attribution over a data file whose records carry their own targets."""

from __future__ import annotations

import json

import pytest

from interpsuite import InterpretabilityPipeline
from interpsuite.data import DataConfig, load_inputs
from interpsuite.errors import ConfigError


def test_jsonl_targets_stay_aligned_with_their_texts(tmp_path):
    path = tmp_path / "pairs.jsonl"
    records = [{"text": "ab ab a", "target": "b"}, {"text": "xyz x", "target": "y"}, {"text": "no t"}]
    path.write_text("\n\n".join(json.dumps(r) for r in records))  # blank lines between records are skipped
    inputs = load_inputs(DataConfig(path=str(path)), {})
    assert inputs.texts == ["ab ab a", "xyz x", "no t"]
    assert inputs.extra["targets"] == ["b", "y", None]
    path.write_text("\n".join(json.dumps(r) for r in [records[0], {"text": "   "}]))
    with pytest.raises(ConfigError, match=r"pairs.jsonl:2: field 'text' is '   ', not a text"):
        load_inputs(DataConfig(path=str(path)), {})  # a blank record is named, not silently dropped
    assert "targets" not in load_inputs(DataConfig(texts=["a b"]), {}).extra


def test_each_text_is_explained_for_its_own_target(tiny_models, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"text": "ab ab a", "target": "b"}, {"text": "xyz x"}]))
    report = InterpretabilityPipeline(
        model=tiny_models["tiny_llama"],
        data={"path": str(path)},
        analyzers={"token_attribution": {"methods": ["grad_x_input"], "target": "q"}},
        output_dir=tmp_path / "run",
        sinks=["rundir"],
        progress=False,
    ).run()
    entry = report.payload["analyzers"]["token_attribution"]
    assert entry["status"] == "ok", entry["error"]
    labels = [text["target"] for text in entry["summary"]["texts"]]
    assert "'b'" in labels[0] and "'q'" in labels[1]  # file target first, the config's default second
