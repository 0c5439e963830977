"""The data behind a figure: saved with it, so the figure can be redrawn without the model.

A `FigureRecipe` is a marked plot function (`figures.figure_function`) and the arguments it
was called with. They are stored as `figure.json` (the call, with plain values inline) and
`arrays.safetensors` (every array, tensor and numeric table column, bit for bit), in
`figure_data/<analyzer>/<figure>/` of the run directory (docs/results.md). Nothing is pickled:
a run directory from someone else can be redrawn safely, and only functions that carry the
`figure_function` mark, in interpsuite or an installed plugin, are ever called.

Values a recipe can hold: None, bool, int, float (NaN and infinities included), str, lists,
tuples, dicts (any of these as keys), numpy arrays and scalars, torch tensors, pandas
DataFrames and Series (numeric columns exact, text and object columns as JSON), and the
FigureStyle argument, which is replaced by the style asked for when redrawing.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, PluginError
from .figures import FIGURE_FUNCTION_MARK, FigureStyle

FORMAT_VERSION = 1
RECIPE_FILE = "figure.json"
ARRAYS_FILE = "arrays.safetensors"


class UnsavableArgumentError(TypeError):
    """An argument of a figure function that has no safe saved form."""


@dataclass
class FigureRecipe:
    """A figure function and its arguments, encoded: `call` is JSON, `arrays` numpy arrays."""

    function: str
    call: dict[str, Any]
    arrays: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)
    style: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls, fn, args: tuple, kwargs: dict, style: FigureStyle | None = None) -> FigureRecipe:
        """Encode a call now (a snapshot: later changes to the arguments do not reach it)."""
        if not getattr(fn, FIGURE_FUNCTION_MARK, False):
            raise PluginError(
                f"{getattr(fn, '__qualname__', fn)!r} is not marked with @figure_function; mark the plot "
                "function (interpsuite.figure_function) so that its figure can be redrawn from saved data"
            )
        if "." in fn.__qualname__ or "<" in fn.__qualname__:
            raise PluginError(f"figure function {fn.__qualname__!r} must be a module-level function")
        encoder = _Encoder()
        call = {"args": [encoder.encode(a) for a in args], "kwargs": {k: encoder.encode(v) for k, v in kwargs.items()}}
        style_dict = style.to_dict() if style is not None else {}
        return cls(f"{fn.__module__}:{fn.__qualname__}", call, encoder.arrays, encoder.tensors, style_dict)

    # --- files ---------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """figure.json and arrays.safetensors in `folder` (written to temp names, then renamed)."""
        from safetensors.numpy import save_file as save_numpy
        from safetensors.torch import save_file as save_torch

        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, payload, save in (
            (ARRAYS_FILE, self.arrays, save_numpy),
            ("tensors.safetensors", self.tensors, save_torch),
        ):
            if not payload:
                continue
            tmp = folder / f".{name}.tmp"
            save(payload, str(tmp))
            files[name] = hashlib.sha256(tmp.read_bytes()).hexdigest()
            tmp.replace(folder / name)
        spec = {
            "format_version": FORMAT_VERSION,
            "function": self.function,
            "call": self.call,
            "style": self.style,
            "files": files,
        }
        tmp = folder / f".{RECIPE_FILE}.tmp"
        tmp.write_text(json.dumps(spec, indent=1, allow_nan=False))
        tmp.replace(folder / RECIPE_FILE)

    @classmethod
    def load(cls, folder: Path) -> FigureRecipe:
        from safetensors.numpy import load_file as load_numpy
        from safetensors.torch import load_file as load_torch

        path = folder / RECIPE_FILE
        if not path.is_file():
            raise ConfigError(f"{folder}: no {RECIPE_FILE}; this figure's data was not saved")
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: not readable figure data ({err})") from None
        if not isinstance(spec, dict) or spec.get("format_version") != FORMAT_VERSION:
            version = spec.get("format_version") if isinstance(spec, dict) else None
            raise ConfigError(
                f"{path}: figure data format {version!r}; this interpsuite reads "
                f"format {FORMAT_VERSION}; rerun the analyzer to save it again"
            )
        call = spec.get("call")
        if (
            not isinstance(spec.get("function"), str)
            or not isinstance(call, dict)
            or not isinstance(call.get("args"), list)
            or not isinstance(call.get("kwargs"), dict)
            or not isinstance(spec.get("files", {}), dict)
            or not isinstance(spec.get("style", {}), dict)
        ):
            raise ConfigError(f"{path}: damaged figure data (function, call or files malformed); rerun the analyzer")
        loaded: dict[str, dict] = {}
        for name, digest in spec.get("files", {}).items():
            if name not in (ARRAYS_FILE, "tensors.safetensors"):
                raise ConfigError(f"{path}: unexpected data file {name!r}")
            data_path = folder / name
            if not data_path.is_file() or hashlib.sha256(data_path.read_bytes()).hexdigest() != digest:
                raise ConfigError(f"{data_path}: missing or changed since it was written (sha256 differs)")
            loaded[name] = (load_numpy if name == ARRAYS_FILE else load_torch)(str(data_path))
        return cls(
            spec["function"],
            spec["call"],
            loaded.get(ARRAYS_FILE, {}),
            loaded.get("tensors.safetensors", {}),
            spec.get("style", {}),
        )

    # --- redrawing -----------------------------------------------------------------------------
    def resolve(self, allowed_packages: set[str] | None = None):
        """The marked function this recipe names, imported from interpsuite or an installed plugin."""
        module_name, _, name = self.function.partition(":")
        top = module_name.split(".", 1)[0]
        allowed = allowed_packages if allowed_packages is not None else plugin_packages()
        if not name.isidentifier() or not all(part.isidentifier() for part in module_name.split(".")):
            raise ConfigError(
                f"figure function {self.function!r} is not of the form package.module:function; the figure data "
                "is damaged, rerun the analyzer"
            )
        if top not in allowed:
            raise ConfigError(
                f"figure function {self.function!r} is not from interpsuite or an installed plugin "
                f"({', '.join(sorted(allowed))}); install the plugin that made this run"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(
                f"figure function {self.function!r}: {err}; install the plugin that made this run"
            ) from None
        fn = getattr(module, name, None)
        if fn is None or not getattr(fn, FIGURE_FUNCTION_MARK, False):
            raise ConfigError(
                f"figure function {self.function!r} is missing or not a marked figure function in the "
                "installed version; redraw with the version that made the run, or rerun the analyzer"
            )
        return fn

    def arguments(self, style: FigureStyle) -> tuple[list, dict]:
        decoder = _Decoder(self.arrays, self.tensors, style)
        args = [decoder.decode(a) for a in self.call["args"]]
        kwargs = {k: decoder.decode(v) for k, v in self.call["kwargs"].items()}
        return args, kwargs

    def draw(self, style: FigureStyle | None = None, allowed_packages: set[str] | None = None):
        """The figure, drawn again (in `style`, default: the style of the run)."""
        style = style if style is not None else FigureStyle.from_dict(self.style)
        fn = self.resolve(allowed_packages)
        args, kwargs = self.arguments(style)
        with style.context():
            return fn(*args, **kwargs)


def plugin_packages() -> set[str]:
    """Top-level packages whose figure functions may be called: interpsuite's and every plugin's."""
    from .plugins import get_registry

    packages = {"interpsuite", "interpsuite_plugins"}
    for table in (get_registry().analyzers,):
        for item in table.values():
            module = getattr(item.obj, "__module__", "") or ""
            if module:
                packages.add(module.split(".", 1)[0])
    return packages


# --- the codec ------------------------------------------------------------------------------------
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, Any] = {}
        self.tensors: dict[str, Any] = {}

    def _array(self, value) -> str:
        import numpy as np

        key = f"a{len(self.arrays)}"
        # np.array, not np.ascontiguousarray: the latter makes 0-d arrays (and numpy scalars) 1-d
        self.arrays[key] = np.array(value, copy=True, order="C")
        return key

    def encode(self, value: Any) -> Any:
        import numpy as np

        if isinstance(value, FigureStyle):
            return {"__style__": True}
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):
            if value.dtype.kind in "biuf":
                return {"__scalar__": self._array(np.asarray(value))}
            return self.encode(value.item())
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": str(value)}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v) for v in value]}
        if isinstance(value, dict):
            return {"__dict__": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "biuf":
                return {"__array__": self._array(value)}
            if value.dtype.kind in "UO":
                # flat (tolist() of an n-d array nests lists, which would decode as list elements)
                items = [self.encode(v) for v in value.reshape(-1).tolist()]
                return {"__object_array__": items, "shape": list(value.shape), "dtype": value.dtype.str}
        module = type(value).__module__.split(".", 1)[0]
        if module == "torch":
            import torch

            if isinstance(value, torch.Tensor):
                key = f"t{len(self.tensors)}"
                self.tensors[key] = value.detach().to("cpu").contiguous().clone()
                return {"__tensor__": key}
        if module == "pandas":
            import pandas as pd

            if isinstance(value, pd.DataFrame):
                return {"__dataframe__": self._frame(value)}
            if isinstance(value, pd.Series):
                frame = value.to_frame(name="__values__")
                return {"__series__": self._frame(frame), "name": self.encode(value.name)}
        raise UnsavableArgumentError(
            f"a figure argument of type {type(value).__module__}.{type(value).__qualname__} cannot be saved; "
            "pass plain values, arrays, tensors or tables to the figure function"
        )

    def _column(self, series) -> dict[str, Any]:
        import numpy as np
        import pandas as pd

        dtype = series.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            return {"array": self._array(series.to_numpy()), "dtype": str(dtype)}
        if isinstance(dtype, pd.CategoricalDtype):  # categories in their order (groupby and legends follow it)
            return {
                "codes": self._array(series.cat.codes.to_numpy()),
                "categories": self._column(pd.Series(dtype.categories)),
                "ordered": bool(dtype.ordered),
            }
        # a float NaN is encodable and stays NaN; other missing markers (pd.NA, NaT) become None
        values = [v if isinstance(v, float) else None if _is_missing(v) else v for v in series.tolist()]
        return {"values": [self.encode(v) for v in values], "dtype": str(dtype)}

    def _frame(self, frame) -> dict[str, Any]:
        import pandas as pd

        columns = [[self.encode(name), self._column(frame.iloc[:, i])] for i, name in enumerate(frame.columns)]
        index = frame.index
        if isinstance(index, pd.RangeIndex):
            encoded_index: dict[str, Any] = {
                "range": [index.start, index.stop, index.step],
                "name": self.encode(index.name),
            }
        else:
            levels = index.to_frame(index=False)
            encoded_index = {
                "levels": [self._column(levels.iloc[:, i]) for i in range(levels.shape[1])],
                "names": [self.encode(n) for n in index.names],
            }
        header = frame.columns
        encoded: dict[str, Any] = {"columns": columns, "index": encoded_index}
        if isinstance(header, pd.MultiIndex):  # names are tuples; the levels' names come along
            encoded["column_levels"] = [self.encode(n) for n in header.names]
            return encoded
        if header.name is not None:  # e.g. a pivot table's `columns=` name
            encoded["columns_name"] = self.encode(header.name)
        if isinstance(header, pd.RangeIndex):  # pd.DataFrame(array) numbers its columns so
            encoded["columns_range"] = [header.start, header.stop, header.step]
        elif not len(header) and str(header.dtype) != "object":
            encoded["columns_dtype"] = str(header.dtype)
        return encoded


def _is_missing(value: Any) -> bool:
    try:
        import pandas as pd

        return value is None or (not isinstance(value, (list, tuple, dict)) and bool(pd.isna(value)))
    except (TypeError, ValueError):
        return False


class _Decoder:
    def __init__(self, arrays: dict, tensors: dict, style: FigureStyle):
        self.arrays, self.tensors, self.style = arrays, tensors, style

    def _array(self, key: str):
        if key not in self.arrays:
            raise ConfigError(f"figure data names array {key!r}, which is not in {ARRAYS_FILE}")
        return self.arrays[key]

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__style__" in value:
            return self.style
        if "__float__" in value:
            if value["__float__"] not in _FLOATS:
                raise ConfigError(f"figure data holds an unknown float {value['__float__']!r}")
            return _FLOATS[value["__float__"]]
        if "__scalar__" in value:
            return self._array(value["__scalar__"])[()]
        if "__tuple__" in value:
            return tuple(self.decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_hashable(self.decode(k)): self.decode(v) for k, v in value["__dict__"]}
        if "__array__" in value:
            return self._array(value["__array__"]).copy()
        if "__object_array__" in value:
            import numpy as np

            items = [self.decode(v) for v in value["__object_array__"]]
            shape = [int(n) for n in value["shape"]]
            out = np.empty(len(items), dtype=object)
            out[:] = items
            if len(items) != math.prod(shape):
                raise ConfigError(f"figure data holds {len(items)} values for an array of shape {shape}")
            result = out.reshape(shape)
            dtype = value.get("dtype")
            if dtype is None:  # written before the dtype was saved
                return result.astype(str) if all(isinstance(v, str) for v in items) else result
            if not (dtype.startswith(("<U", ">U", "|U")) or dtype == "|O"):
                raise ConfigError(f"figure data holds a text array of dtype {dtype!r}")
            return result.astype(np.dtype(dtype))
        if "__tensor__" in value:
            key = value["__tensor__"]
            if key not in self.tensors:
                raise ConfigError(f"figure data names tensor {key!r}, which is not saved")
            return self.tensors[key].clone()
        if "__dataframe__" in value:
            return self._frame(value["__dataframe__"])
        if "__series__" in value:
            frame = self._frame(value["__series__"])
            series = frame["__values__"]
            series.name = self.decode(value["name"])
            return series
        raise ConfigError(f"figure data holds an unknown value {sorted(value)!r}")

    def _column(self, encoded: dict[str, Any]):
        import numpy as np
        import pandas as pd

        if "array" in encoded:
            return pd.Series(self._array(encoded["array"]).copy())
        if "codes" in encoded:
            categories = self._column(encoded["categories"])
            dtype = pd.CategoricalDtype(pd.Index(categories), ordered=bool(encoded.get("ordered")))
            return pd.Series(pd.Categorical.from_codes(self._array(encoded["codes"]).copy(), dtype=dtype))
        values = [self.decode(v) for v in encoded["values"]]
        dtype = encoded.get("dtype", "object")
        try:
            return pd.Series(values, dtype=dtype if dtype != "object" else object)
        except (TypeError, ValueError):
            column = np.empty(len(values), dtype=object)
            column[:] = values
            return pd.Series(column, dtype=object)

    def _frame(self, encoded: dict[str, Any]):
        import pandas as pd

        data = {}
        names = []
        for name, column in encoded["columns"]:
            key = _hashable(self.decode(name))
            names.append(key)
            data[len(names) - 1] = self._column(column).reset_index(drop=True)
        index_spec = encoded["index"]
        if "range" in index_spec:
            index = pd.RangeIndex(*index_spec["range"], name=self.decode(index_spec["name"]))
        else:
            levels = [self._column(level) for level in index_spec["levels"]]
            level_names = [self.decode(n) for n in index_spec["names"]]
            if len(levels) == 1:
                index = pd.Index(levels[0], name=level_names[0])
            else:
                index = pd.MultiIndex.from_arrays(levels, names=level_names)
        frame = pd.DataFrame(data) if data else pd.DataFrame(index=range(len(index)))
        if "column_levels" in encoded:
            frame.columns = pd.MultiIndex.from_tuples(names, names=[self.decode(n) for n in encoded["column_levels"]])
        elif "columns_range" in encoded:
            frame.columns = pd.RangeIndex(*encoded["columns_range"], name=self.decode(encoded.get("columns_name")))
        else:
            header_name = self.decode(encoded.get("columns_name"))
            frame.columns = pd.Index(names, dtype=encoded.get("columns_dtype"), name=header_name)
        frame.index = index
        return frame


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value
