"""Saved artifacts (safetensors + JSON): round trips, and every way a folder can be wrong."""

from __future__ import annotations

import json

import pytest
import torch

from interpsuite.artifacts import (
    ARTIFACT_FORMAT,
    META_FILE,
    TENSORS_FILE,
    ModelFingerprint,
    load_artifact,
    save_artifact,
)
from interpsuite.errors import ConfigError
from interpsuite.testing import cached_model

KIND = "example_detector"


@pytest.fixture()
def saved(tmp_path):
    model = cached_model("tiny_llama")
    tensors = {"mean": torch.arange(6, dtype=torch.float32).reshape(2, 3), "threshold": torch.tensor([0.5])}
    spec = {"layers": [0, 1], "method": "mahalanobis"}
    path = save_artifact(tmp_path / "det", KIND, tensors, spec, ModelFingerprint.of(model))
    return path, tensors, spec, model


def test_round_trip_is_exact_and_checks_the_model(saved):
    path, tensors, spec, model = saved
    artifact = load_artifact(path, KIND)
    assert artifact.spec == spec and artifact.format_version == ARTIFACT_FORMAT
    assert set(artifact.tensors) == set(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(artifact.tensors[name], tensor)
    artifact.check_model(model)  # the same model passes
    assert load_artifact(path / META_FILE, KIND).spec == spec  # the JSON file's path works too
    assert not list(path.glob(".*.tmp"))  # temporaries renamed into place


def test_fingerprint_tells_models_and_checkpoints_apart():
    llama, gpt2 = cached_model("tiny_llama"), cached_model("tiny_gpt2")
    assert ModelFingerprint.of(llama) == ModelFingerprint.of(llama)
    assert "fitted on tiny_llama" in ModelFingerprint.of(llama).mismatch(ModelFingerprint.of(gpt2))
    same_shape = ModelFingerprint(**{**ModelFingerprint.of(llama).__dict__, "weights_sha256": "0" * 64})
    assert "weights of tiny_llama differ" in same_shape.mismatch(ModelFingerprint.of(llama))


def test_another_model_is_refused_in_one_line(saved):
    path, *_ = saved
    with pytest.raises(ConfigError, match=r"fitted on tiny_llama .* but the model is tiny_gpt2 .*fit a new one") as err:
        load_artifact(path, KIND).check_model(cached_model("tiny_gpt2"))
    assert "\n" not in str(err.value)


def _rewrite_meta(path, **changes):
    meta = json.loads((path / META_FILE).read_text())
    meta.update(changes)
    (path / META_FILE).write_text(json.dumps(meta))


CORRUPTIONS = {
    "json_garbage": (lambda p: (p / META_FILE).write_text("{not json"), r"artifact.json is corrupt \(not valid JSON"),
    "json_list": (lambda p: (p / META_FILE).write_text("[1, 2]"), r"corrupt \(not a JSON object\)"),
    "other_kind": (lambda p: _rewrite_meta(p, kind="failure_predictor"), r"kind 'failure_predictor', not 'example"),
    "newer_format": (lambda p: _rewrite_meta(p, format_version=99), r"format version 99 .*reads version 1: fit it"),
    "tensors_edited": (
        lambda p: (p / TENSORS_FILE).write_bytes((p / TENSORS_FILE).read_bytes()[:-4] + b"\0\0\0\1"),
        r"does not match its checksum",
    ),
    "tensors_truncated": (
        lambda p: (p / TENSORS_FILE).write_bytes((p / TENSORS_FILE).read_bytes()[:20]),
        r"does not match its checksum",
    ),
    "tensors_missing": (lambda p: (p / TENSORS_FILE).unlink(), r"lacks artifact.json or tensors.safetensors"),
    "no_spec": (lambda p: _rewrite_meta(p, spec=None), r"has no 'spec' object"),
    "no_fingerprint": (lambda p: _rewrite_meta(p, model={"name": "x"}), r"model fingerprint is incomplete"),
    "shapes_listed_wrong": (lambda p: _rewrite_meta(p, tensors={"mean": [3, 2]}), r"differ from those artifact.json"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_folder_is_one_clear_line(saved, corruption):
    path, *_ = saved
    damage, message = CORRUPTIONS[corruption]
    damage(path)
    with pytest.raises(ConfigError, match=message) as err:
        load_artifact(path, KIND)
    assert "\n" not in str(err.value)


def test_missing_path_and_a_file_where_a_folder_belongs(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder; give the folder"):
        load_artifact(tmp_path / "nowhere", KIND)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        save_artifact(tmp_path / "file", KIND, {}, {}, ModelFingerprint("m", "llama", 1, 2, 3, "0"))
