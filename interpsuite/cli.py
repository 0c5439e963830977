"""Console script `interpsuite`: inspect what is installed; `run` forwards to the Hydra app."""

from __future__ import annotations

import argparse
import sys

from .errors import InterpsuiteError


def _plugins(args: argparse.Namespace) -> int:
    from .plugins import get_registry

    registry = get_registry()
    sections = (("analyzers", registry.analyzers), ("sinks", registry.sinks), ("datasets", registry.datasets))
    for title, table in sections:
        print(f"{title}:")
        for name in sorted(table):
            item = table[name]
            family = getattr(item.obj, "family", "")
            description = getattr(item.obj, "description", "")
            family_text = f"[{family}] " if family else ""
            print(f"  {name:<24} {family_text}{description}  (from {item.distribution})")
    if registry.config_dirs:
        print("config dirs:")
        for item in registry.config_dirs:
            print(f"  {item.obj}  (from {item.distribution})")
    for warning in registry.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models.sources import EMBEDDED

    print("embedded models (select with model=<name>):")
    for name, model in EMBEDDED.items():
        print(f"  {name:<12} {model.description}")
    print("any other: model.name=<Hugging Face name or local folder> (llama, mistral, qwen2, gpt2, bert types)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":  # `interpsuite run +experiment=quickstart` == python -m interpsuite
        from .__main__ import main as hydra_main

        sys.argv = [sys.argv[0], *argv[1:]]
        hydra_main()
        return 0
    parser = argparse.ArgumentParser(prog="interpsuite", description="Look inside transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list registered analyzers, sinks and datasets with their distribution")
    sub.add_parser("models", help="list embedded and supported models")
    sub.add_parser("run", help="run an experiment (same as python -m interpsuite ...)")
    args = parser.parse_args(argv)
    try:
        return {"plugins": _plugins, "models": _models}[args.command](args)
    except InterpsuiteError as err:
        print(f"interpsuite: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
