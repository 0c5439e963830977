"""README examples run as written (docs that lie are worse than none)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"readme_example_{index}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), module.__dict__)
    if "InterpretabilityPipeline" in BLOCKS[index]:
        assert (tmp_path / "outputs" / "python_demo" / "results.json").is_file()
        assert "'passed': True" in capsys.readouterr().out
