"""Inputs from every supported source, and their clear errors."""

from __future__ import annotations

import json

import pytest

from interpsuite.data import DataConfig, load_inputs, read_file
from interpsuite.errors import ConfigError
from interpsuite.plugins import get_registry


def test_txt_jsonl_csv_read_the_same_texts(tmp_path):
    texts = ["alpha beta", "gamma, delta", 'quote "here"']
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "label": 1}) for t in texts))
    import csv

    with (tmp_path / "a.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows({"id": i, "text": t} for i, t in enumerate(texts))
    for suffix in ("txt", "jsonl", "csv"):
        assert read_file(tmp_path / f"a.{suffix}") == texts


def test_jsonl_and_csv_field_errors_name_the_fix(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"sentence": "x"}))
    with pytest.raises(ConfigError, match=r"b.jsonl:1: no field 'text'; set data.text_field"):
        read_file(tmp_path / "b.jsonl")
    assert read_file(tmp_path / "b.jsonl", text_field="sentence") == ["x"]
    (tmp_path / "c.jsonl").write_text("{not json")
    with pytest.raises(ConfigError, match="c.jsonl:1: not valid JSON"):
        read_file(tmp_path / "c.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"no column 'text' \(columns: \['a', 'b'\]\)"):
        read_file(tmp_path / "d.csv")
    (tmp_path / "e.parquet").write_text("")
    with pytest.raises(ConfigError, match="unsupported file type"):
        read_file(tmp_path / "e.parquet")


def test_registered_datasets_and_limits():
    datasets = get_registry().datasets
    ioi = load_inputs(DataConfig(dataset="ioi", limit=10), datasets)
    assert ioi.count == 10 and ioi.source == "dataset:ioi"
    assert len(set(load_inputs(DataConfig(dataset="ioi"), datasets).texts)) == 100
    with pytest.raises(ConfigError, match="give one of texts / path / dataset"):
        load_inputs(DataConfig(texts=["a"], dataset="ioi"), datasets)
