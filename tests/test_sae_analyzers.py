"""The sae family's analyzers (sae_train, sae_eval, sae_features) and the sae_train experiment.

What must hold: an SAE trained in a run is saved in both formats and reloads to the same
function; sae_eval's numbers are exactly `evaluate_sae` on the held-out split sae_train did not
train on; sae_features reports the requested features and writes the browser; and every bad
input from issue 14 (width / k out of range, a hook the SAE was not trained on, a file for
another d_in, a corrupt or foreign folder, a token budget beyond the corpus) is refused with
one line naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from interpsuite_plugins.sae import SAEConfig, SparseAutoencoder, load_sae, load_saelens, split_held_out
from interpsuite_plugins.sae.evaluation import evaluate_sae

from interpsuite import InterpretabilityPipeline
from interpsuite.config import compose
from interpsuite.errors import ConfigError
from interpsuite.results import read_results

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "def add(a, b):\n    return a + b",
    "Rivers carry sand and mud from the mountains to the sea.",
    "The cat sat on the mat and looked at the bird outside.",
    "Numbers like 12, 345 and 6789 appear in many documents.",
    "She said that the meeting would start at nine in the morning.",
    "A list of things: apples, pears, plums, cherries and grapes.",
    "Light travels faster than sound through the air.",
    "The committee approved the budget after a long debate.",
]
HOOK = "blocks.1.resid_post"
SMALL = {"hook": HOOK, "width": 128, "k": 8, "epochs": 3, "held_out": 0.2}


def run(model, analyzers: dict, run_dir: Path, texts=TEXTS):
    InterpretabilityPipeline(
        model=model, data=texts, analyzers=analyzers, output_dir=run_dir, sinks=["rundir"], progress=False
    ).run()
    return read_results(run_dir)


def plan_error(model, analyzers: dict, tmp_path: Path) -> str:
    pipeline = InterpretabilityPipeline(
        model=model, data=TEXTS, analyzers=analyzers, output_dir=tmp_path / "never", sinks=["rundir"], progress=False
    )
    with pytest.raises(ConfigError) as err:
        pipeline.validate()
    assert not (tmp_path / "never").exists()  # refused before any folder or weights
    return str(err.value)


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """One run of all three analyzers on tiny_llama (sae_eval and sae_features use sae_train's SAE)."""
    run_dir = tmp_path_factory.mktemp("sae_run")
    payload = run(
        tiny_models["tiny_llama"],
        {"sae_train": {**SMALL, "synthetic_check": True}, "sae_eval": {"held_out": 0.2},
         "sae_features": {"top_n": 5, "n_contexts": 3}},
        run_dir,
    )  # fmt: skip
    return run_dir, payload


def test_sae_train_saves_both_formats_and_passes_its_checks(trained):
    run_dir, payload = trained
    entry = payload["analyzers"]["sae_train"]
    assert entry["status"] == "ok", entry["error"]
    failed = [name for name, check in entry["checks"].items() if not check["passed"]]
    assert failed == []
    assert entry["checks"]["synthetic_dictionary_recovered"]["value"] > 0.9
    assert {"reload_max_abs_error", "saelens_roundtrip_rel_error", "explained_variance_at_most_1"} <= set(
        entry["checks"]
    )
    summary = entry["summary"]
    assert summary["hook"] == HOOK and summary["width"] == 128 and summary["k"] == 8
    assert summary["texts_train"] == 8 and summary["texts_held_out"] == 2
    ours = load_sae(summary["sae"])
    theirs = load_saelens(summary["saelens"])
    x = torch.randn(50, ours.cfg.d_in)
    torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-6)
    assert ours.cfg.hook == HOOK and ours.cfg.width == 128
    metrics = entry["metrics"]
    assert metrics["tokens_trained"] <= 3 * metrics["tokens_recorded"]
    assert metrics["steps"] >= 1 and 0 < metrics["l0"] <= 8
    history = (run_dir / "tables" / "sae_train" / "history.csv").read_text().splitlines()
    assert history[0].startswith("step,loss,mse,l0")


def test_sae_eval_equals_the_engine_on_the_held_out_split(trained, tiny_models):
    run_dir, payload = trained
    entry = payload["analyzers"]["sae_eval"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["summary"]["sae"].startswith("sae_train of this run")
    model = tiny_models["tiny_llama"]
    sae = load_sae(payload["analyzers"]["sae_train"]["summary"]["sae"])
    held = split_held_out(TEXTS, 0.2, seed=0)[1]
    direct = evaluate_sae(model, sae, held, HOOK, batch_size=8, max_length=512)
    for name, value in direct.metrics().items():
        assert entry["metrics"][name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    assert entry["checks"]["splice_identity_max_abs_logit_diff"]["value"] <= 1e-5


def test_sae_features_reports_and_writes_the_browser(trained):
    run_dir, payload = trained
    entry = payload["analyzers"]["sae_features"]
    assert entry["status"] == "ok", entry["error"]
    assert all(check["passed"] for check in entry["checks"].values())
    assert len(entry["summary"]["features"]) == 5
    html = next(run_dir.rglob("feature_browser.html")).read_text(encoding="utf-8")
    assert "<script" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    data = json.loads((run_dir / "data" / "sae_features" / "features.json").read_text())
    assert [e["id"] for e in data["entries"]] == entry["summary"]["features"]


def test_sae_features_on_a_saved_sae_and_chosen_features(trained, tiny_models, tmp_path):
    _, payload = trained
    path = payload["analyzers"]["sae_train"]["summary"]["saelens"]  # the SAELens copy works as well
    result = run(tiny_models["tiny_llama"], {"sae_features": {"sae": path, "features": [3, 7, 127]}}, tmp_path)
    entry = result["analyzers"]["sae_features"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["summary"]["features"] == [3, 7, 127] and entry["summary"]["selection"] == "explicit"


# --- bad inputs -------------------------------------------------------------------------------


def saved_sae(tmp_path: Path, d_in: int = 64, hook: str = HOOK, width: int = 32) -> str:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=width, architecture="topk", k=4, hook=hook))
    return str(sae.save(tmp_path / f"sae_{d_in}_{hook}"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"k": 0}, "sae.k must be between 1 and width"),
        ({"width": 16, "k": 32}, "sae.k must be between 1 and width (16)"),
        ({"width": 0}, "sae.width must be >= 1"),
        ({"width": 10**12}, "GiB for weights, gradients and Adam state"),
        ({"expansion": 0}, "expansion must be >= 1"),
        ({"architecture": "gated"}, "architecture 'gated' is unknown"),
        ({"hook": "blocks.9.resid_post"}, "layer 9 out of range"),
        ({"hook": "blocks.0.attn.pattern"}, "not a hook point with one vector per token"),
        ({"corpus": "wiki"}, "corpus: 'wiki' is unknown"),
        ({"corpus": "files"}, "corpus=files needs paths"),
        ({"corpus": "files", "paths": ["/no/such/dir"]}, "/no/such/dir does not exist"),
        ({"held_out": 1.0}, "held_out is a fraction"),
        ({"lr": 0.0}, "lr must be > 0"),
    ],
)
def test_sae_train_refuses_bad_options_before_running(tiny_models, tmp_path, options, message):
    assert message in plan_error(tiny_models["tiny_llama"], {"sae_train": options}, tmp_path)


def test_sae_file_checks_before_weights_load(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    path = saved_sae(tmp_path)
    # trained on blocks.1.resid_post, asked for blocks.0.resid_post
    error = plan_error(model, {"sae_eval": {"sae": path, "hook": "blocks.0.resid_post"}}, tmp_path)
    assert "was trained on blocks.1.resid_post, not blocks.0.resid_post" in error and "allow_other_hook" in error
    # on purpose elsewhere, but a hook of another width (mlp.post has d_mlp entries)
    error = plan_error(
        model, {"sae_features": {"sae": path, "hook": "blocks.1.mlp.post", "allow_other_hook": True}}, tmp_path
    )
    assert "reads 64-dimensional activations but blocks.1.mlp.post" in error
    # an SAE for another model width
    error = plan_error(model, {"sae_eval": {"sae": saved_sae(tmp_path, d_in=48)}}, tmp_path)
    assert "reads 48-dimensional activations" in error
    # a folder that is no SAE, and a feature id beyond the width
    assert "holds neither artifact.json" in plan_error(model, {"sae_eval": {"sae": str(tmp_path)}}, tmp_path)
    error = plan_error(model, {"sae_features": {"sae": path, "features": [32]}}, tmp_path)
    assert "32 is not a latent of this SAE (width 32: 0..31)" in error


def test_corrupt_sae_file_is_refused_by_name(tiny_models, tmp_path):
    path = Path(saved_sae(tmp_path))
    data = bytearray((path / "tensors.safetensors").read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # flip the last bytes of the tensor data
    (path / "tensors.safetensors").write_bytes(bytes(data))
    payload = run(tiny_models["tiny_llama"], {"sae_eval": {"sae": str(path)}}, tmp_path / "run")
    entry = payload["analyzers"]["sae_eval"]
    assert entry["status"] == "failed" and "does not match its checksum" in entry["error"]
    (path / "artifact.json").write_text("{not json")
    assert "not valid JSON" in plan_error(tiny_models["tiny_llama"], {"sae_eval": {"sae": str(path)}}, tmp_path)


def test_token_budget_beyond_the_corpus_is_refused_before_recording(tiny_models, tmp_path):
    payload = run(tiny_models["tiny_llama"], {"sae_train": {**SMALL, "train_tokens": 10**7}}, tmp_path)
    entry = payload["analyzers"]["sae_train"]
    assert entry["status"] == "failed"
    assert "10,000,000 tokens is more than the corpus gives" in entry["error"] and "raise epochs" in entry["error"]
    assert not (tmp_path / "data" / "sae_train" / "store" / "manifest.json").exists()


def test_training_resumes_from_its_workdir(tiny_models, tmp_path):
    """The same workdir again: the store is complete and the checkpoint is at the last step, so
    the second run trains nothing more and saves the same SAE."""
    options = {**SMALL, "workdir": str(tmp_path / "work"), "evaluate": False, "export_saelens": False}
    first = run(tiny_models["tiny_llama"], {"sae_train": options}, tmp_path / "a")["analyzers"]["sae_train"]
    second = run(tiny_models["tiny_llama"], {"sae_train": options}, tmp_path / "b")["analyzers"]["sae_train"]
    assert second["summary"]["store_resumed"] and second["metrics"]["steps"] == first["metrics"]["steps"]
    x = torch.randn(20, 64)
    torch.testing.assert_close(load_sae(second["summary"]["sae"])(x), load_sae(first["summary"]["sae"])(x))


# --- the experiment -----------------------------------------------------------------------------


def test_sae_train_experiment_passes_the_shared_sae_keys_to_every_analyzer():
    cfg = compose(["+experiment=sae_train", "model=tiny_llama", f"sae.hook={HOOK}", "sae.width=96", "sae.k=4",
                   "sae.corpus=inputs"])  # fmt: skip
    pipeline = InterpretabilityPipeline.from_config(cfg, output_dir="/tmp/unused")
    train = pipeline.analyzer_options["sae_train"]
    assert (train["hook"], train["width"], train["k"], train["corpus"]) == (HOOK, 96, 4, "inputs")
    assert pipeline.analyzer_options["sae_eval"]["corpus"] == "inputs"
    assert pipeline.analyzer_options["sae_features"]["corpus"] == "inputs"
