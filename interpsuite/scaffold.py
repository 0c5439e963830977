"""`interpsuite new-plugin NAME`: a plugin package that installs, registers and passes its tests.

What a plugin needs besides its analyzer is easy to get subtly wrong from prose (the entry
point group, the Hydra `# @package` header, package data for the yaml, a config dir hook),
so the scaffold writes all of it, around a small working analyzer that uses the kit
(top-level imports, `validate` returning the resolved config, `TokenMeans`), and tests that
use `interpsuite.testing`. tests/test_scaffold.py installs a fresh scaffold and runs them.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

from .errors import ConfigError

__all__ = ["PluginNames", "new_plugin", "new_plugin_command", "plugin_names"]

_NAME = re.compile(r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*")


@dataclass(frozen=True)
class PluginNames:
    """Every spelling of one plugin name: `resid-norms` -> interpsuite-resid-norms, ..."""

    name: str  # as given: resid-norms or resid_norms
    ident: str  # resid_norms: analyzer name, entry point name, config name
    distribution: str  # interpsuite-resid-norms (also the folder name)
    package: str  # interpsuite_resid_norms
    cls: str  # ResidNormsAnalyzer

    def mapping(self) -> dict[str, str]:
        return {
            "name": self.name,
            "ident": self.ident,
            "distribution": self.distribution,
            "package": self.package,
            "cls": self.cls,
        }


def plugin_names(name: str) -> PluginNames:
    """Check NAME and derive the other spellings; a ConfigError says what a valid name looks like."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"plugin name {name!r}: use lowercase letters and digits, words joined by '_' or '-', "
            "starting with a letter (e.g. resid_norms); it becomes the analyzer name and the package interpsuite_<name>"
        )
    if name.startswith("interpsuite"):
        rest = re.sub(r"^interpsuite[_-]?", "", name) or "my_plugin"
        raise ConfigError(f"plugin name {name!r}: give the part after 'interpsuite-' (e.g. {rest!r}); it is added")
    ident = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in ident.split("_")) + "Analyzer"
    distribution = "interpsuite-" + ident.replace("_", "-")  # the normalised spelling pip shows
    return PluginNames(name, ident, distribution, f"interpsuite_{ident}", cls)


def _check_unused(names: PluginNames) -> None:
    """An analyzer name that is already installed would make the registry refuse both."""
    from .plugins import get_registry

    taken = get_registry().analyzers.get(names.ident)
    if taken is not None:
        raise ConfigError(
            f"plugin name {names.name!r}: an analyzer named {names.ident!r} already exists "
            f"(from {taken.distribution}); choose another name"
        )


def new_plugin(name: str, dest: str | Path = ".") -> Path:
    """Write the package `interpsuite-<name>/` under `dest` (`_` written as `-`); returns its folder.

    The folder must not exist yet, or be empty: the scaffold never overwrites anything.
    """
    names = plugin_names(name)
    _check_unused(names)
    root = Path(dest).expanduser() / names.distribution
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root} already exists and is not empty; remove it or choose another --dest")
    files = {path: Template(text).substitute(names.mapping()) for path, text in _FILES.items()}
    for relative, text in files.items():
        path = root / Template(relative).substitute(names.mapping())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def new_plugin_command(name: str, dest: str | None) -> int:
    """The CLI's `interpsuite new-plugin NAME [--dest DIR]`: scaffold, then say what to do next.

    A bad name or an occupied folder raises ConfigError (the CLI prints it and exits 2).
    """
    root = new_plugin(name, Path(dest) if dest else Path.cwd())
    names = plugin_names(name)
    print(f"created {root}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(root).as_posix()}")
    print(
        "\nnext:\n"
        f"  cd {root}\n"
        "  pip install -e .              # registers the entry point\n"
        "  python -m pytest              # its tests, with interpsuite.testing\n"
        f"  interpsuite plugins           # lists {names.ident}\n"
        f"  python -m interpsuite model=tiny_llama +analyzer={names.ident} 'sinks=[rundir]'",
        file=sys.stdout,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m interpsuite.scaffold NAME [DEST]` (the same as `interpsuite new-plugin`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or args[0].startswith("-"):
        print("usage: python -m interpsuite.scaffold NAME [DEST]", file=sys.stderr)
        return 2
    try:
        return new_plugin_command(args[0], args[1] if len(args) == 2 else None)
    except ConfigError as err:
        print(f"interpsuite new-plugin: error: {err}", file=sys.stderr)
        return 2


# --- the files; $name, $ident, $distribution, $package and $cls are filled in -------------------------

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "An interpsuite plugin: the analyzer $ident."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["interpsuite"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The whole registration: one entry point in the group `interpsuite`, naming the module with
# the hook implementations. `interpsuite plugins` lists what it contributes.
[project.entry-points.interpsuite]
$ident = "$package"

[tool.setuptools]
packages = ["$package"]

# Ship conf/analyzer/$ident.yaml inside the package, so `+analyzer=$ident` also works from a
# regular (non-editable) install.
[tool.setuptools.package-data]
$package = ["conf/*.yaml", "conf/**/*.yaml"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_INIT = '''\
"""$distribution: an interpsuite plugin contributing the analyzer `$ident`.

interpsuite imports this module through the entry point in pyproject.toml
(`[project.entry-points.interpsuite] $ident = "$package"`) and calls the hooks below:
each returns what the plugin contributes.
"""

from __future__ import annotations

from pathlib import Path

from interpsuite import hookimpl

from .analyzer import $cls

__version__ = "0.1.0"
__all__ = ["$cls"]

#: Hydra configs: conf/analyzer/$ident.yaml makes `+analyzer=$ident` work
CONF_DIR = Path(__file__).resolve().parent / "conf"


@hookimpl
def interpsuite_analyzers():
    return [$cls]


@hookimpl
def interpsuite_config_dirs():
    return [str(CONF_DIR)]
'''

_ANALYZER = '''\
"""$ident: mean L2 norm of one hook point, per layer, over real (non-padding) tokens.

A working starting point written by `interpsuite new-plugin $name`; interpsuite's
docs/plugins.md explains each piece.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from interpsuite import (
    Analyzer,
    ConfigError,
    FigureStyle,
    ModelInfo,
    Result,
    RunContext,
    TokenMeans,
    check_hook_points,
    check_layers,
    figure_function,
    layer_hooks,
    per_layer,
)

#: per-layer hook points shaped [batch, pos, d_model] (docs/model-layer.md lists them all)
SITES = ("resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out")


@figure_function
def plot_norms(table, site: str, title: str, style: FigureStyle):
    """A pure function of the table: `interpsuite figures RUN_DIR --style paper` redraws it
    from the saved data, without the model."""
    fig, axes = style.figure()  # a matplotlib Figure; never pyplot
    ax = axes[0, 0]
    ax.errorbar(table["layer"], table["mean_norm"], yerr=table["std_norm"], marker="o", capsize=3)
    ax.set(xlabel="layer", ylabel=f"mean L2 norm of {site}", title=title)
    return fig


@dataclass
class ${cls}Config:
    site: str = "resid_post"  # one of SITES
    layers: list[int] | None = None  # None: every layer; negative indices count from the end


class $cls(Analyzer):
    """Mean (and spread of) the L2 norm of `blocks.{layer}.{site}` per layer, over real tokens."""

    name = "$ident"
    family = "activation"
    description = "mean L2 norm of one hook point per layer ($distribution)"
    Config = ${cls}Config

    def validate(self, info: ModelInfo, cfg: ${cls}Config) -> ${cls}Config:
        """Every check that needs no weights. The config returned is `self.cfg` in run()."""
        if cfg.site not in SITES:
            raise ConfigError(f"{self.name}.site: {cfg.site!r} is not one of {', '.join(SITES)}")
        check_hook_points(info, [cfg.site], f"{self.name}.site")
        return replace(cfg, layers=check_layers(info, cfg.layers, f"{self.name}.layers"))

    def run(self, ctx: RunContext) -> Result:
        cfg: ${cls}Config = self.cfg  # resolved by validate(): layers is a list of block indices
        norms = TokenMeans(track_variance=True)  # layer -> mean and variance over real tokens
        hooks = layer_hooks(cfg.site, cfg.layers)
        for batch in ctx.batches(self.name):
            cache = ctx.model.forward(batch, capture=hooks).cache
            for layer, acts in per_layer(cache, cfg.site):  # [batch, pos, d_model], right-padded
                norms[layer].add(acts.norm(dim=-1), batch.attention_mask)  # padding never counts
        table = norms.table("layer", "mean_norm")
        table["std_norm"] = [float(acc.std()) for acc in norms.values()]

        result = Result(tables={"norms": table})
        # draws the figure and saves its data beside it (figure_data/), so it can be redrawn
        result.add_figure("norms", plot_norms, table, cfg.site, self.name, ctx.style)
        result.metrics["mean_norm"] = float(table["mean_norm"].mean())
        result.metrics["n_tokens"] = float(table["n_tokens"].iloc[0])
        # mode "min": passes when value >= threshold (a zero norm means the site carries nothing)
        result.add_check("every_layer_nonzero", float(table["mean_norm"].min()), 1e-6, mode="min")
        result.summary = {
            "site": cfg.site,
            "layers": cfg.layers,
            "largest_layer": int(table.loc[table["mean_norm"].idxmax(), "layer"]),
        }
        return result
'''

_YAML = """\
# @package analyzers.$ident
# Mean L2 norm of one hook point per layer ($distribution). Select with +analyzer=$ident
site: resid_post           # resid_pre | resid_mid | resid_post | attn.out | mlp.out
layers: null               # null: every layer; negative indices count from the end
"""

_TEST = '''\
"""Tests of $ident with interpsuite's test kit.

pytest loads `interpsuite.testing` by itself (an entry point of interpsuite); it provides the
fixtures `interpsuite_tiny_model` (each tiny model in turn: Llama-like, GPT-2, BERT) and
`interpsuite_model_factory`, and the helpers `run_analyzer` and `assert_result_contract`.
Install the package first (`pip install -e .`): the registry and Hydra tests find it through
its entry point, as interpsuite will.
"""

from __future__ import annotations

import dataclasses

import pytest
from interpsuite import ConfigError
from interpsuite.testing import assert_result_contract, run_analyzer

from $package import $cls


def test_result_meets_the_contract(interpsuite_tiny_model, tmp_path):
    result = run_analyzer($cls, interpsuite_tiny_model, run_dir=tmp_path)
    assert_result_contract(result, all_checks_passed=True, run_dir=tmp_path)
    assert result.tables["norms"]["layer"].tolist() == list(range(interpsuite_tiny_model.info.n_layers))


def test_norms_equal_a_direct_computation(interpsuite_model_factory):
    model = interpsuite_model_factory("tiny_llama")
    texts = ["a short text", "a longer text, so that the first one is padded"]
    result = run_analyzer($cls, model, texts=texts, options={"layers": [-1]})
    last = model.info.n_layers - 1
    batch = model.tokenize(texts)
    hook = f"blocks.{last}.resid_post"
    norms = model.forward(batch, capture=[hook]).cache[hook].norm(dim=-1)
    expected = norms[batch.attention_mask.bool()].double()  # real tokens only
    table = result.tables["norms"]
    assert table["layer"].tolist() == [last]
    assert table["mean_norm"].iloc[0] == pytest.approx(float(expected.mean()), rel=1e-6)
    assert table["std_norm"].iloc[0] == pytest.approx(float(expected.std(correction=0)), rel=1e-6)
    assert table["n_tokens"].iloc[0] == batch.n_tokens


def test_bad_options_fail_before_anything_runs():
    with pytest.raises(ConfigError, match="layer 99 out of range"):
        run_analyzer($cls, "tiny_llama", options={"layers": [99]})
    with pytest.raises(ConfigError, match="site"):
        run_analyzer($cls, "tiny_llama", options={"site": "nowhere"})
    with pytest.raises(ConfigError, match="no_such_option"):
        run_analyzer($cls, "tiny_llama", options={"no_such_option": 1})


def test_registered_through_the_entry_point():
    from interpsuite.plugins import get_registry

    contribution = get_registry().analyzers["$ident"]
    assert contribution.obj is $cls
    assert contribution.distribution == "$distribution"


def test_hydra_config_matches_the_defaults():
    from interpsuite.config import compose

    cfg = compose(["model=tiny_llama", "+analyzer=$ident"])
    assert dict(cfg.analyzers["$ident"]) == dataclasses.asdict($cls.Config())
'''

_README = """\
# $distribution

An [interpsuite](https://pypi.org/project/interpsuite/) plugin: the analyzer `$ident`
(mean L2 norm of one hook point per layer, over real tokens), written by
`interpsuite new-plugin $name` as a starting point.

```
pip install -e .
python -m pytest                 # tests/ use interpsuite.testing
interpsuite plugins              # lists $ident (from $distribution)
python -m interpsuite model=tiny_llama +analyzer=$ident 'sinks=[rundir]'
```

- `$package/analyzer.py`: the analyzer (`Config`, `validate`, `run`).
- `$package/__init__.py`: the hooks interpsuite calls (`interpsuite_analyzers`,
  `interpsuite_config_dirs`).
- `$package/conf/analyzer/$ident.yaml`: its Hydra config (`# @package analyzers.$ident`),
  so `+analyzer=$ident` selects it; shipped as package data (see pyproject.toml).
- `pyproject.toml`: the entry point `$ident = "$package"` in the group `interpsuite`.
- `tests/test_$ident.py`: contract, numbers against a direct computation, validation, registration.
"""

_GITIGNORE = """\
__pycache__/
*.egg-info/
build/
dist/
outputs/
"""

#: relative path (itself a template) -> file template
_FILES: dict[str, str] = {
    "pyproject.toml": _PYPROJECT,
    "README.md": _README,
    ".gitignore": _GITIGNORE,
    "$package/__init__.py": _INIT,
    "$package/analyzer.py": _ANALYZER,
    "$package/conf/analyzer/$ident.yaml": _YAML,
    "tests/test_$ident.py": _TEST,
}


if __name__ == "__main__":
    raise SystemExit(main())
