"""The offline SAE corpus: Python's documentation and the user's text files, cut into texts."""

from __future__ import annotations

import pytest
from interpsuite_plugins.sae.corpus import count_tokens, python_docs_texts, text_files

from interpsuite.errors import ConfigError


def test_python_docs_are_real_text_within_the_limits_and_deterministic():
    texts = python_docs_texts(max_chars=1500, min_chars=40)
    assert texts == python_docs_texts(max_chars=1500, min_chars=40)
    assert all(40 <= len(t) <= 1500 for t in texts)
    assert sum(map(len, texts)) > 300_000  # the whole reference, not a sample
    assert any("assert" in t and "__debug__" in t for t in texts)
    assert not any(line.strip() and set(line.strip()) <= set("*=") for t in texts for line in t.splitlines())


def test_text_files_split_at_blank_lines_and_read_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("one\n\ntwo two\n\n" + "x" * 25)
    (tmp_path / "sub" / "b.txt").write_text("three")
    (tmp_path / "ignored.md").write_text("not text")
    texts = text_files([tmp_path], max_chars=10)
    assert texts == ["one", "two two", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx", "three"]
    assert text_files([tmp_path / "a.txt"], max_chars=12)[0] == "one\n\ntwo two"  # paragraphs joined when they fit


def test_bad_corpus_inputs_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        text_files([tmp_path / "missing.txt"])
    with pytest.raises(ConfigError, match="no .txt files"):
        text_files([tmp_path])
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ConfigError, match="cannot be read as utf-8"):
        text_files([tmp_path / "latin.txt"])
    with pytest.raises(ConfigError, match="min_chars"):
        python_docs_texts(max_chars=10, min_chars=40)


def test_token_count_is_the_models(tiny_models):
    model = tiny_models["tiny_llama"]
    texts = ["hello world", "a longer text than the first one"]
    lengths = model.token_lengths(texts)
    assert count_tokens(model, texts) == sum(lengths)
    assert count_tokens(model, texts, max_length=5) == sum(min(n, 5) for n in lengths)
