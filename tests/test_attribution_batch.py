"""Batch attribution over a data file whose records carry their own targets."""

from __future__ import annotations

import json

from interpsuite import InterpretabilityPipeline
from interpsuite.data import DataConfig, load_inputs


def test_jsonl_targets_stay_aligned_with_their_texts(tmp_path):
    path = tmp_path / "pairs.jsonl"
    records = [{"text": "ab ab a", "target": "b"}, {"text": "   "}, {"text": "xyz x", "target": "y"}, {"text": "no t"}]
    path.write_text("\n".join(json.dumps(r) for r in records))
    inputs = load_inputs(DataConfig(path=str(path)), {})
    assert inputs.texts == ["ab ab a", "xyz x", "no t"]  # the blank record is dropped with its target
    assert inputs.extra["targets"] == ["b", "y", None]
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
