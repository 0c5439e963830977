"""+experiment=induction_emergence: the monitor sees induction heads form (Olsson et al. 2022).

The known answer runs in full here at a shorter schedule than the experiment's default (the
phase change of the default seed happens near step 200 of 600): the best head's induction
score starts below 0.1, ends above 0.5, and the loss on the repeated copy falls at the jump.
"""

from __future__ import annotations

import json

import pytest
import torch

from interpsuite.__main__ import run_cli
from interpsuite.emergence import EmergenceTraining, RepeatedSegments, attention_only_model, jump_step
from interpsuite.errors import ConfigError
from interpsuite.models.sources import byte_tokenizer
from interpsuite.results import contract_errors, read_results


def test_jump_step_is_the_end_of_the_largest_rise():
    assert jump_step([0, 10, 20, 30, 40], [0.02, 0.03, 0.1, 0.9, 0.95]) == (30, pytest.approx(0.8))
    assert jump_step([5], [0.4]) == (5, 0.0)


def test_training_items_repeat_a_segment_of_distinct_tokens():
    data = RepeatedSegments(10, segment=8, vocab=20, bos=256, seed=3)
    item = data[4]["input_ids"]
    assert item[0] == 256 and len(item) == 17
    assert torch.equal(item[1:9], item[9:]) and len(set(item[1:9].tolist())) == 8
    assert torch.equal(data[4]["input_ids"], item)  # seeded by index: the same every epoch
    assert not torch.equal(data[5]["input_ids"], item)


def test_the_model_is_attention_only_and_a_standard_hf_model(tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    model = attention_only_model(EmergenceTraining(), tokenizer).eval()
    ids = torch.randint(0, 256, (2, 9))
    mlp = model.model.layers[0].mlp
    assert torch.count_nonzero(mlp(torch.randn(2, 9, 64))) == 0  # zero-width MLP adds exactly zero
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.d_model=30", "train.d_model=30 must be divisible by train.n_heads=4"),
        ("train.steps=0", "train.steps must be >= 1"),
        ("train.vocab=300", "train.vocab=300"),
        ("~analyzers.head_classification", "needs head_classification"),
        ("+train.bogus=1", "train: unknown key 'bogus'"),
    ],
)
def test_bad_settings_are_one_line_before_training(tmp_path, capsys, override, message):
    extra = ["+analyzers.attention_entropy={}"] if override.startswith("~") else []
    code = run_cli(["+experiment=induction_emergence", override, *extra, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_direct_settings_are_checked():
    with pytest.raises(ConfigError, match="segment"):
        EmergenceTraining(segment=40, vocab=32)


def test_phase_change_is_seen_by_the_monitor(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run_cli(
        [
            "+experiment=induction_emergence",
            "train.steps=400",
            "train.monitor_every=50",
            "progress=false",
            f"hydra.run.dir={run_dir}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    payload = read_results(run_dir)
    assert contract_errors(payload, run_dir) == []
    entry = payload["analyzers"]["induction_emergence"]
    metrics = entry["metrics"]
    assert all(check["passed"] for check in entry["checks"].values()), entry["checks"]
    assert metrics["initial_induction_score"] < 0.1 < 0.5 < metrics["final_induction_score"]
    assert 0 < metrics["jump_step"] < 400
    assert metrics["loss_second_copy_at_jump"] < metrics["loss_second_copy_before_jump"]
    assert 0 < metrics["monitor_fraction"] < 1
    monitor = json.loads((run_dir / "monitor" / "monitor.json").read_text())
    assert monitor["steps"] == list(range(0, 401, 50)) and monitor["status"] == "complete"
    # the trend summary of the monitor's records, and the phase-change figure's saved data
    temporal = read_results(run_dir / "temporal")
    assert temporal["analyzers"]["temporal"]["status"] == "ok"
    assert "phase_change" in entry["figure_data"]
    assert "induction score" in out and "largest jump at step" in out
