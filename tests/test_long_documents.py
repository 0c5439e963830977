"""Long documents in windows (data.long_documents=window): planning, the model layer, stitching,
accumulation, directory inputs and bad inputs. Exact equalities on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from interpsuite import InterpretabilityPipeline
from interpsuite.data import DataConfig, load_inputs
from interpsuite.errors import ConfigError
from interpsuite.models import load_model
from interpsuite.models.hooked import TokenBatch
from interpsuite.windows import (
    TokenWindow,
    WindowSpec,
    document_token_ids,
    plan_windows,
    special_frame,
    window_documents,
)

SENTENCE = "The cat sat on the mat while the dog slept by the door. "


def _document(model, n_tokens: int) -> str:
    """A text of at least n_tokens content tokens."""
    text = SENTENCE
    while len(document_token_ids(model.tokenizer, text)) < n_tokens:
        text += SENTENCE
    return text


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny_llama")


def _run(tmp_path, model, texts, analyzers, **data):
    return InterpretabilityPipeline(
        model=model,
        data={"texts": texts, **data},
        analyzers=analyzers,
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    ).run()


# --- planning ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "length", "stride"), [(100, 32, 16), (97, 32, 16), (64, 32, 32), (50, 20, 7), (5, 8, 4)])
def test_every_token_has_exactly_one_owner_with_the_most_left_context(n, length, stride):
    windows = plan_windows(n, WindowSpec(length, stride))
    owners = [[w for w in windows if w.owned_start <= t < w.owned_stop] for t in range(n)]
    assert all(len(o) == 1 for o in owners)
    for t, (owner,) in enumerate(owners):
        containing = [w for w in windows if w.start <= t < w.stop]
        assert owner.start == min(w.start for w in containing)  # the most left context
        assert owner.stop - owner.start <= length
    assert windows[-1].stop == n
    assert all(b.start - a.start == stride for a, b in zip(windows, windows[1:], strict=False))


def test_sliced_tokenization_equals_whole(monkeypatch):
    import interpsuite.windows as windows

    for name in ("tiny_llama", "tiny_gpt2", "tiny_bert"):
        tokenizer = load_model(name).tokenizer
        text = ("Ünïcode façade, naïve café — 東京 tokens\n\nand newlines.  Spaces  " * 40).strip()
        whole = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        monkeypatch.setattr(windows, "TOKENIZE_SLICE_CHARS", 300)
        monkeypatch.setattr(windows, "SLICE_MARGIN_CHARS", 40)
        assert document_token_ids(tokenizer, text) == whole, name
        monkeypatch.undo()


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_a_window_is_the_documents_token_slice_with_the_models_special_tokens(name):
    model = load_model(name)
    text = _document(model, 90)
    ids = document_token_ids(model.tokenizer, text)
    prefix, suffix = special_frame(model.tokenizer)
    windows, info = window_documents(model, [text], WindowSpec(32, 16))
    batch = model.tokenize(windows)
    for row, window in enumerate(windows):
        w = window.window
        real = batch.input_ids[row][: int(batch.attention_mask[row].sum())].tolist()
        assert real == [*prefix, *ids[w.start : w.stop], *suffix]
        owned = batch.counted_mask[row].nonzero().flatten().tolist()
        assert [w.document_position(p) for p in owned] == list(range(w.owned_start, w.owned_stop))
    assert sum(int(m.sum()) for m in batch.counted_mask) == len(ids) == info.document_tokens[0]


def test_plain_texts_count_every_real_token(llama):
    batch = llama.tokenize(["one two three", "four"])
    assert batch.owned_mask is None
    assert torch.equal(batch.counted_mask, batch.attention_mask)
    assert not isinstance(str(TokenWindow("x", [1], plan_windows(1, WindowSpec(2, 1))[0])), TokenWindow)


# --- the checks of issue 16 ---------------------------------------------------------------


def test_a_document_that_fits_in_one_window_equals_truncate_mode(tmp_path, llama):
    texts = [_document(llama, 40), "A short second text."]
    analyzers = {"activation_stats": {}, "logit_lens": {}}
    plain = _run(tmp_path / "truncate", llama, texts, analyzers, max_length=64)
    windowed = _run(tmp_path / "window", llama, texts, analyzers, max_length=64, long_documents="window")
    for name in analyzers:
        assert plain.results[name].status == windowed.results[name].status == "ok"
        assert plain.results[name].metrics == windowed.results[name].metrics, name
    top_plain = plain.results["logit_lens"].tables["top_tokens"]
    top_window = windowed.results["logit_lens"].tables["top_tokens"]
    assert top_window["document_position"].tolist() == top_window["position"].tolist()
    assert top_plain.equals(top_window.drop(columns=["document", "document_position"]))


def test_per_token_activations_equal_each_tokens_own_window(tmp_path, llama):
    """4 x the window, stride = length / 2: every stored row equals a direct forward of the
    window its token was taken from (the earliest window containing it)."""
    from interpsuite_plugins.activation.store import ActivationStore

    length, stride = 32, 16
    text = _document(llama, 4 * length)
    ids = document_token_ids(llama.tokenizer, text)
    hook = "blocks.1.resid_post"
    report = _run(
        tmp_path,
        llama,
        [text],
        {"activation_store": {"hook_points": [hook]}},
        long_documents="window",
        window={"length": length, "stride": stride},
    )
    result = report.results["activation_store"]
    assert result.status == "ok", result.error
    assert all(check.passed for check in result.checks.values())
    store = ActivationStore(tmp_path / "data" / "activation_store")
    rows = store.load(hook)
    index = store.index()
    assert len(rows) == len(ids)  # each document token stored once
    windows = plan_windows(len(ids), WindowSpec(length, stride))
    direct: dict[int, torch.Tensor] = {}
    seen = []
    for row, (text_id, position) in enumerate(zip(index["text_id"], index["position"], strict=True)):
        t = windows[text_id].document_position(int(position))
        seen.append(t)
        start = 0 if t < length else ((t - length) // stride + 1) * stride  # computed independently
        if start not in direct:
            chunk = torch.tensor([ids[start : min(start + length, len(ids))]])
            batch = TokenBatch(chunk, torch.ones_like(chunk), [["?"] * chunk.shape[1]], [0])
            direct[start] = llama.forward(batch, capture=[hook]).cache[hook][0]
        assert torch.allclose(rows[row], direct[start][t - start], atol=1e-5), (row, t)
    assert sorted(seen) == list(range(len(ids)))
    assert len(direct) == len(windows) > 4


def test_accumulated_statistics_count_each_document_token_once(tmp_path, llama):
    """activation_stats in window mode = the moments of the stitched per-token activations."""
    from interpsuite_plugins.activation.store import ActivationStore

    text = _document(llama, 100)
    hook = "blocks.0.resid_post"
    window = {"length": 24, "stride": 8}
    report = _run(
        tmp_path,
        llama,
        [text],
        {
            "activation_store": {"hook_points": [hook]},
            "activation_stats": {"layers": [0], "hook_points": ["resid_post"]},
        },
        long_documents="window",
        window=window,
    )
    acts = ActivationStore(tmp_path / "data" / "activation_store").load(hook).double()
    table = report.results["activation_stats"].tables["layer_stats"]
    mean = float(table.loc[table["hook_point"] == "resid_post", "mean"].iloc[0])
    assert mean == pytest.approx(float(acts.mean()), rel=1e-6, abs=1e-9)


def test_logit_lens_stitches_each_document_position_once(tmp_path, llama):
    text = _document(llama, 80)
    n = len(document_token_ids(llama.tokenizer, text))
    report = _run(
        tmp_path,
        llama,
        [text],
        {"logit_lens": {"table_texts": 100, "top_k": 1}},
        long_documents="window",
        window={"length": 32, "stride": 16},
    )
    result = report.results["logit_lens"]
    top = result.tables["top_tokens"]
    for layer, rows in top.groupby("layer"):
        assert sorted(rows["document_position"]) == list(range(n)), layer
    assert result.summary["windows"]["per_document"] == [
        {"document": 0, "tokens": n, "windows": len(plan_windows(n, WindowSpec(32, 16)))}
    ]
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["inputs"]["data"]["windows"]["windows"] == len(plan_windows(n, WindowSpec(32, 16)))


def test_attribution_completeness_holds_in_every_window(tmp_path, llama):
    text = _document(llama, 60)
    report = _run(
        tmp_path,
        llama,
        [text],
        {"token_attribution": {"methods": ["integrated_gradients"], "max_texts": 10}},
        long_documents="window",
        window={"length": 24, "stride": 12},
    )
    result = report.results["token_attribution"]
    assert result.status == "ok", result.error
    completeness = {k: c for k, c in result.checks.items() if k.startswith("ig_completeness")}
    assert len(completeness) >= 3 and all(c.passed for c in completeness.values())
    scores = result.tables["token_scores"]  # per window: every position of each window, with its document
    assert {"document", "window_start"} <= set(scores.columns)
    assert scores["text_id"].nunique() == len(completeness)


# --- inputs and bad inputs ------------------------------------------------------------------


def test_a_directory_of_text_files_is_one_document_per_file(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first line\nsecond line\n")
    (folder / "sub" / "b.txt").write_text("another document\n")
    (folder / ".hidden.txt").write_text("not read")
    (folder / "notes.md").write_text("not a supported type")
    assert load_inputs(DataConfig(path=str(folder)), {}).texts == ["first line\nsecond line\n", "another document\n"]
    lines = load_inputs(DataConfig(path=str(folder), text_unit="line"), {}).texts
    assert lines == ["first line", "second line", "another document"]
    single = load_inputs(DataConfig(path=str(folder / "a.txt")), {}).texts
    assert single == ["first line", "second line"]


def test_a_link_leaving_the_directory_is_not_followed(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("outside")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "ok.txt").write_text("inside")
    (folder / "link.txt").symlink_to(outside)
    assert load_inputs(DataConfig(path=str(folder)), {}).texts == ["inside"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"window": {"stride": 0}}, r"data.window.stride must be >= 1"),
        ({"window": {"length": 16, "stride": 32}}, r"data.window.length=16 is shorter than data.window.stride=32"),
        ({"window": {"length": 1, "stride": 1}}, r"data.window.length must be >= 2"),
        ({"window": {"length": 4096, "stride": 16}}, r"longer than tiny_llama's 256 positions"),
        ({"max_length": None}, r"needs a window length"),
        ({"long_documents": "chunks"}, r"data.long_documents: 'chunks' is not one of truncate, window, error"),
    ],
)
def test_bad_windows_are_one_line_before_weights_load(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message) as caught:
        InterpretabilityPipeline(
            model="tiny_llama",
            data={"texts": ["some text"], "long_documents": "window", **data},
            analyzers={"activation_stats": {}},
            output_dir=tmp_path,
            sinks=["rundir"],
        ).validate()
    assert "\n" not in str(caught.value)


def test_analyzers_that_cannot_combine_windows_are_refused(tmp_path):
    pipeline = InterpretabilityPipeline(
        model="tiny_llama",
        data={"texts": ["some text"], "long_documents": "window"},
        analyzers={"activation_stats": {}, "head_ablation": {}},
        output_dir=tmp_path,
        sinks=["rundir"],
    )
    with pytest.raises(ConfigError, match=r"head_ablation cannot combine outputs across the windows"):
        pipeline.validate()


def test_a_directory_without_readable_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ConfigError, match=r"has no .txt, .jsonl or .csv files"):
        load_inputs(DataConfig(path=str(tmp_path / "empty")), {})


def test_long_documents_error_refuses_long_texts(tmp_path, llama):
    with pytest.raises(ConfigError, match=r"data.long_documents=window"):
        _run(tmp_path, llama, [_document(llama, 80)], {"activation_stats": {}}, max_length=32, long_documents="error")


def test_anomaly_scores_per_window_stitched_tokens_and_a_document_summary(tmp_path, llama):
    text = _document(llama, 70)
    n = len(document_token_ids(llama.tokenizer, text))
    report = _run(
        tmp_path,
        llama,
        [text, "A short second text."],
        {"anomaly_detection": {"token_scores": True}},
        long_documents="window",
        window={"length": 24, "stride": 12},
    )
    result = report.results["anomaly_detection"]
    assert result.status == "ok", result.error
    windows = plan_windows(n, WindowSpec(24, 12))
    scores, documents = result.tables["input_scores"], result.tables["document_scores"]
    assert documents["windows"].tolist() == [len(windows), 1]
    assert documents["max_score"].iloc[0] == pytest.approx(scores.loc[scores["document"] == 0, "score"].max())
    tokens = result.tables["input_token_scores"]
    assert sorted(tokens.loc[tokens["document"] == 0, "document_position"]) == list(range(n))
