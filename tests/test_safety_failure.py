"""Failure prediction (safety family): the predictor's statistics on synthetic data with known
answers, the saved artifact, task files, the analyzer's contract on a tiny model and the
`predict-failure` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from interpsuite_plugins.safety.failure import (
    FailurePredictor,
    auroc,
    expected_calibration_error,
    extract,
    label_items,
)
from interpsuite_plugins.safety.failure_prediction import FailurePrediction
from interpsuite_plugins.safety.failure_tasks import (
    TaskItem,
    TaskOptions,
    arithmetic_task,
    is_correct,
    load_tasks,
    read_task_file,
)

from interpsuite.cli import main as cli_main
from interpsuite.errors import ConfigError
from interpsuite.models import load_model
from interpsuite.results import contract_errors, read_results
from interpsuite.testing import run_analyzer
from tests.test_figure_redraw_all import assert_figures_redraw

PROMPTS = [
    "The cat sat on the", "One two three four", "The capital of France is", "Water boils at",
    "Once upon a time", "The sun rises in the", "Red, green and", "My favourite colour is",
    "In the beginning", "The quick brown fox", "She opened the door and", "The answer is",
    "Monday, Tuesday,", "A B C D", "Good morning, how", "The first man on the Moon was",
    "Two plus two is", "Dogs and cats are", "The river flows to the", "At night the sky is",
    "He picked up the", "Paris is a city in", "The book was written by", "Ten, nine, eight,",
]  # fmt: skip


def synthetic(n: int, seed: int, signal: float = 3.0, shuffle: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """Features where `output.top1_prob` carries the signal and two columns are noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 3))
    x[:, 0] -= signal * labels  # failures have a lower top-1 probability (in standard units)
    if shuffle:
        labels = rng.permutation(labels)
    return pd.DataFrame(x, columns=["output.top1_prob", "residual.L00.log_norm", "attention.L00.mean"]), labels


def test_known_signal_is_recovered_on_held_out_data():
    x, y = synthetic(600, 0)
    predictor = FailurePredictor.fit(x, y)
    xt, yt = synthetic(400, 1)
    assert auroc(yt, predictor.score_features(xt).probability) > 0.95
    top = predictor.linear.names[int(np.argmax(np.abs(predictor.linear.coef)))]
    assert top == "output.top1_prob" and predictor.linear.coef[0] < 0


def test_shuffled_labels_give_chance():
    # 400 held-out examples, 200 per class: the AUROC of an uninformative score has standard
    # deviation sqrt((n1 + n0 + 1) / (12 n1 n0)) ~ 0.029, so |AUROC - 0.5| < 0.1 is > 3 sigma
    x, y = synthetic(600, 0, shuffle=True)
    predictor = FailurePredictor.fit(x, y)
    xt, yt = synthetic(400, 1, shuffle=True)
    assert abs(auroc(yt, predictor.score_features(xt).probability) - 0.5) < 0.1


def test_ece_of_a_calibrated_predictor_is_near_zero_and_of_a_confident_wrong_one_is_not():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    labels = (rng.uniform(0, 1, p.size) < p).astype(int)  # labels drawn with probability p: calibrated
    assert expected_calibration_error(p, labels, 10) < 0.01
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000, int), 10) == pytest.approx(0.9)


def test_contributions_sum_to_the_logit():
    x, y = synthetic(300, 2)
    predictor = FailurePredictor.fit(x, y)
    scores = predictor.score_features(x)
    logit = scores.contributions.sum(axis=1).to_numpy() + predictor.linear.intercept
    assert np.allclose(1 / (1 + np.exp(-logit)), scores.probability)
    assert scores.top_features(0, 1)[0][0] in x.columns


def test_correctness_rule():
    assert is_correct(" Paris, the capital", [" Paris"])
    assert not is_correct(" 420", [" 42"]) and is_correct(" 42.", [" 42"])
    assert is_correct(' "Au"', [" Au"]) and is_correct(" Bogota", [" Bogotá"])
    assert is_correct(" aluminum", [" aluminium", " aluminum"]) and not is_correct(" Lyon", [" Paris"])
    task = arithmetic_task(50, seed=3)
    assert len({i.prompt for i in task.items}) == 50 and task.items == arithmetic_task(50, seed=3).items
    for item in task.items:
        a, op, b, _ = item.prompt.split()
        assert int(item.answers[0]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_tasks_without_checkable_answers_are_refused(tmp_path):
    bad = {
        "no_answer.jsonl": ('{"prompt": "The capital of Peru is"}\n', "no field 'answer'"),
        "empty_answer.jsonl": ('{"prompt": "The capital of Peru is", "answer": " "}\n', "not a checkable answer"),
        "empty_list.jsonl": ('{"prompt": "x", "answer": []}\n', "not a checkable answer"),
        "empty_prompt.jsonl": ('{"prompt": "", "answer": " Lima"}\n', "not a prompt"),
        "nothing.jsonl": ("\n", "holds no prompts"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_task_file(tmp_path / name)
    with pytest.raises(ConfigError, match="unknown task"):
        load_tasks(TaskOptions(tasks=["capitals", "horoscopes"]))
    with pytest.raises(ConfigError, match="no field 'answer'"):
        run_analyzer(FailurePrediction, "tiny_llama", options={"tasks": [], "path": str(tmp_path / "no_answer.jsonl")})
    with pytest.raises(ConfigError, match="unknown feature"):
        run_analyzer(FailurePrediction, "tiny_llama", options={"families": ["output", "vibes"]})


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny_llama")


@pytest.fixture(scope="module")
def mixed_task(tiny, tmp_path_factory) -> str:
    """A task the tiny random model gets right on two thirds of the prompts: the answer is its
    own greedy continuation there, and a string it did not say elsewhere."""
    probe = [TaskItem(p, ("zzzz",), "x") for p in PROMPTS]
    said = label_items(tiny, probe, batch_size=8, max_new_tokens=3).continuations
    rows = []
    for i, (prompt, text) in enumerate(zip(PROMPTS, said, strict=True)):
        answer = text[:2] if i % 3 and text.strip() else "qqqq"
        rows.append({"prompt": prompt, "answer": answer})
    path = tmp_path_factory.mktemp("failure") / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labelled = label_items(tiny, [TaskItem(r["prompt"], (r["answer"],), "mine") for r in rows], batch_size=8)
    assert 4 <= labelled.failed.sum() <= len(rows) - 4  # a real mix
    return str(path)


def small_options(path: str) -> dict:
    return {"tasks": [], "path": path, "folds": 2, "test_fraction": 0.34, "n_bootstrap": 50, "c_grid": [1.0]}


def test_extraction_shapes_and_one_pass_equals_alone(tiny):
    data = extract(tiny, PROMPTS[:5], batch_size=2)
    assert data.features.shape[0] == 5 and data.lens_last_layer_mismatches == 0
    assert set(data.probe_inputs) == {1}  # tiny_llama: 2 layers, default probe layers {1}
    alone = extract(tiny, PROMPTS[:1], ["output"], batch_size=1).features
    assert np.allclose(alone.iloc[0], data.features[alone.columns].iloc[0], atol=1e-5)
    assert ((data.features["output.top1_prob"] > 0) & (data.features["output.top1_prob"] <= 1)).all()


def test_screening_by_first_token_gives_the_same_labels(tiny, mixed_task):
    items = read_task_file(mixed_task).items
    full = label_items(tiny, items, batch_size=8)
    data = extract(tiny, full.prompts, ["output"], batch_size=8)
    screened = label_items(tiny, items, batch_size=8, first_tokens=data.top1_ids)
    assert np.array_equal(full.failed, screened.failed)
    ran = [g for g in screened.generated_first if g >= 0]
    assert len(ran) < len(items) and all(
        g == t for g, t in zip(screened.generated_first, data.top1_ids, strict=True) if g >= 0
    )


def test_fit_from_model_and_tasks_then_score(tiny, mixed_task, tmp_path):
    items = read_task_file(mixed_task).items
    predictor = FailurePredictor.fit(model=tiny, tasks=items, families=["output", "probe"], c_grid=[1.0], folds=2)
    assert predictor.families == ("output", "probe") and predictor.probe_layers == [1]
    scores = predictor.score(tiny, PROMPTS[:4])
    assert scores.contributions.shape == (4, 4) and ((scores.probability > 0) & (scores.probability < 1)).all()
    again = FailurePredictor.load(predictor.save(tmp_path / "p"), tiny).score(tiny, PROMPTS[:4])
    assert np.array_equal(again.probability, scores.probability)


def test_analyzer_contract_checks_and_saved_predictor(tiny, mixed_task, tmp_path, monkeypatch):
    result = run_analyzer(FailurePrediction, tiny, ["unused"], small_options(mixed_task), tmp_path, reraise=True)
    assert result.status == "ok", result.error
    assert not result.failed_checks, {k: c.to_dict() for k, c in result.checks.items()}
    assert contract_errors(read_results(tmp_path), tmp_path) == []
    # its figures redraw from saved data (with the default tasks a tiny model gets no answer right: no figures)
    with monkeypatch.context() as patch:
        assert_figures_redraw(tmp_path, "failure_prediction", tmp_path / "redrawn", patch)
    for key in ("auroc", "auprc", "ece", "baseline_auroc", "accuracy.mine"):
        assert key in result.metrics
    examples = result.tables["examples"]
    assert set(examples["split"]) == {"train", "test"}
    assert result.metrics["accuracy.mine"] == pytest.approx(1 - examples["failed"].mean())
    # the predictor it saved reloads to identical scores and refuses another model
    path = tmp_path / "data" / "failure_prediction" / "predictor"
    predictor = FailurePredictor.load(path, tiny)
    test_rows = examples[examples["split"] == "test"]
    again = predictor.score(tiny, list(test_rows["prompt"]), batch_size=8).probability
    # other batch shapes: float32 noise, see failure_prediction.SCORE_PATH_TOLERANCE
    assert np.allclose(again, test_rows["predicted_failure_probability"], atol=1e-3)
    reloaded = FailurePredictor.load(path).score(tiny, PROMPTS[:3]).probability
    assert np.array_equal(reloaded, predictor.score(tiny, PROMPTS[:3]).probability)
    with pytest.raises(ConfigError, match="fitted on tiny_llama .* but the model is tiny_gpt2"):
        FailurePredictor.load(path, load_model("tiny_gpt2"))
    with pytest.raises(ConfigError, match="empty"):
        predictor.score(tiny, ["The cat", "  "])


def test_always_wrong_is_a_clear_message(tiny, tmp_path):
    path = tmp_path / "hard.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": "qqqq"}) + "\n" for p in PROMPTS))
    result = run_analyzer(FailurePrediction, tiny, ["unused"], small_options(str(path)), tmp_path)
    assert result.status == "ok" and contract_errors(read_results(tmp_path), tmp_path) == []
    finding = result.summary["finding"]
    assert "wrong on 24 and right on 0" in finding and "AUROC is undefined" in finding
    assert result.metrics["accuracy.hard"] == 0.0 and np.isnan(result.metrics["auroc"])
    assert not (tmp_path / "data" / "failure_prediction" / "predictor").exists()


def test_corrupt_and_foreign_files_are_refused(tiny, tmp_path):
    x, y = synthetic(100, 0)
    predictor = FailurePredictor.fit(extract(tiny, PROMPTS * 4 + PROMPTS[:4], batch_size=25), y)
    path = predictor.save(tmp_path / "p", model=tiny)
    (path / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="does not match its checksum"):
        FailurePredictor.load(path)
    with pytest.raises(ConfigError, match="not a folder"):
        FailurePredictor.load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="fitted without a model"):
        FailurePredictor.fit(x, y).save(tmp_path / "q")


def test_command_prints_and_exits_zero_and_bad_input_is_one_line(tiny, mixed_task, tmp_path, capsys):
    run_analyzer(FailurePrediction, tiny, ["unused"], small_options(mixed_task), tmp_path, reraise=True)
    path = str(tmp_path / "data" / "failure_prediction" / "predictor")
    assert cli_main(["predict-failure", "--predictor", path, "--text", "The capital of Peru is"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("failure predictor for tiny_llama") and len(out) == 2
    index, probability, *_ = out[1].split("\t")
    assert index == "0" and 0.0 <= float(probability) <= 1.0 and "[" in out[1]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the\n\nOne two three\n")
    assert cli_main(["predict-failure", "--predictor", path, "--file", str(prompts)]) == 0
    out, err = capsys.readouterr()
    rows = out.strip().splitlines()[1:]
    assert [row.split("\t")[0] for row in rows] == ["1", "3"]  # line numbers; the empty line 2 is skipped
    assert "skipped 1 empty line" in err
    assert cli_main(["predict-failure", "--predictor", path, "--text", "One two", "--text", "three four"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    for argv in (
        ["--predictor", str(tmp_path / "missing"), "--text", "hello"],
        ["--predictor", path, "--text", "   "],
        ["--predictor", path, "--file", str(tmp_path / "none.txt")],
    ):
        assert cli_main(["predict-failure", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("interpsuite: error:")


@pytest.mark.slow
def test_smollm2_labels_capitals_mostly_right_and_arithmetic_checkably(smollm2):
    items = [i for t in load_tasks(TaskOptions(tasks=["capitals", "arithmetic"], max_per_task=8)) for i in t.items]
    labelled = label_items(smollm2, items, batch_size=8)
    capitals = labelled.failed[[i.task == "capitals" for i in items]]
    assert capitals.mean() < 0.5  # SmolLM2-135M-Instruct knows most of the first capitals
    assert labelled.continuations[0].strip().startswith("Paris")
