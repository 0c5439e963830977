"""Console script `interpsuite`: inspect what is installed; `run` forwards to the Hydra app."""

from __future__ import annotations

import argparse
import sys

from .errors import InterpsuiteError


def _plugins(args: argparse.Namespace) -> int:
    from .plugins import get_registry

    registry = get_registry()
    sections = (
        ("analyzers", registry.analyzers),
        ("sinks", registry.sinks),
        ("datasets", registry.datasets),
        ("commands", registry.commands),
    )
    for title, table in sections:
        print(f"{title}:")
        for name in sorted(table):
            item = table[name]
            family = getattr(item.obj, "family", "")
            description = getattr(item.obj, "description", "") or getattr(item.obj, "help", "")
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


def _experiments(args: argparse.Namespace) -> int:
    from .experiments import experiments_command

    return experiments_command()


def _cache(args: argparse.Namespace) -> int:
    from .models.cache import cache_command

    return cache_command(args.action, args.name, full=not args.quick)


def _new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import new_plugin_command

    return new_plugin_command(args.name, args.dest)


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_command

    return compare_command(args.run_dirs, args.out, args.allow_different_inputs)


def _merge_shards(args: argparse.Namespace) -> int:
    from .shards import merge_shards_command

    return merge_shards_command(args.run_dirs, args.analyzer, args.out)


def _sweep_summary(args: argparse.Namespace) -> int:
    from .sweep_summary import sweep_summary_command

    return sweep_summary_command(args.multirun_dir, args.out, metric=args.metric, parameter=args.param)


def _figures(args: argparse.Namespace) -> int:
    from .figure_command import figures_command

    return figures_command(args)


def _analyze(args: argparse.Namespace) -> int:
    from .analyze_command import analyze_command

    return analyze_command(args)


def _serve(args: argparse.Namespace) -> int:
    from .serve_command import serve_command

    return serve_command(args)


COMMANDS = {
    "plugins": _plugins,
    "models": _models,
    "experiments": _experiments,
    "cache": _cache,
    "new-plugin": _new_plugin,
    "compare": _compare,
    "sweep-summary": _sweep_summary,
    "merge-shards": _merge_shards,
    "figures": _figures,
    "analyze": _analyze,
    "list-models": _models,
    "serve": _serve,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interpsuite",
        description="Look inside transformer language models.",
        epilog="exit codes: 0 ok, 1 an analyzer failed, 2 configuration or input error, 130 interrupted",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list registered analyzers, sinks and datasets with their distribution")
    sub.add_parser("models", help="list embedded and supported models")
    sub.add_parser("list-models", help="the same list as `interpsuite models`")
    from .analyze_command import add_arguments as analyze_arguments

    analyze_arguments(
        sub.add_parser("analyze", help="analyze a few texts now and print the results (no Hydra run directory)")
    )
    sub.add_parser("experiments", help="list the experiments (+experiment=NAME), one line each")
    cache = sub.add_parser("cache", help="list, verify or clear converted model weights")
    cache.add_argument("action", choices=("list", "verify", "clear"))
    cache.add_argument("name", nargs="?", default=None, help="one entry (default: all)")
    cache.add_argument("--quick", action="store_true", help="verify: sampled blocks only, not full checksums")
    scaffold = sub.add_parser("new-plugin", help="scaffold a plugin package with an analyzer, config and tests")
    scaffold.add_argument("name", help="plugin name, e.g. token_norms")
    scaffold.add_argument("--dest", default=None, help="parent folder (default: the current folder)")
    compare = sub.add_parser("compare", help="one HTML report comparing finished runs of different models")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or one multirun folder)")
    compare.add_argument("--out", default="comparison", help="output folder (default: ./comparison)")
    compare.add_argument(
        "--allow-different-inputs", action="store_true", help="compare runs made on different texts (off: refused)"
    )
    merge = sub.add_parser("merge-shards", help="merge a sharded analyzer's jobs into the single-job run directory")
    merge.add_argument(
        "run_dirs", nargs="+", metavar="DIR", help="the shards' run directories (or their multirun folder)"
    )
    merge.add_argument("--analyzer", default="causal_tracing", help="the sharded analyzer (default: causal_tracing)")
    merge.add_argument("--out", required=True, help="output folder for the merged run directory (must be new)")
    summary = sub.add_parser("sweep-summary", help="one table and figure from every job of a multirun (results.json)")
    summary.add_argument("multirun_dir", metavar="MULTIRUN_DIR", help="the multirun's folder (holds multirun.yaml)")
    summary.add_argument("--out", default=None, help="output folder (default: MULTIRUN_DIR/sweep_summary)")
    summary.add_argument("--metric", default=None, help="figure: ANALYZER/METRIC on y (default: one that varies)")
    summary.add_argument("--param", default=None, help="figure: the swept key on the x axis (default: the first)")
    from .figure_command import add_arguments as figure_arguments

    figure_arguments(
        sub.add_parser(
            "figures",
            help="redraw a run's figures from saved data in a paper/slides/poster style; `figures compose SPEC.yaml`",
        )
    )
    from .serve_command import add_arguments as serve_arguments

    serve_arguments(sub.add_parser("serve", help="REST/WebSocket API over the analyzers (FastAPI; docs at /docs)"))
    sub.add_parser("run", help="run an experiment (same as python -m interpsuite ...)")
    sub.add_parser("estimate", help="estimate passes, memory, disk and time of a run without running it")
    for name, command in plugin_commands().items():
        command.add_arguments(sub.add_parser(name, help=command.help))
    return parser


def plugin_commands() -> dict:
    """Subcommands plugins contribute (hook `interpsuite_commands`); built-in names win."""
    from .plugins import get_registry

    return {
        name: item.obj
        for name, item in sorted(get_registry().commands.items())
        if name not in COMMANDS and name not in ("run", "estimate")
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":  # `interpsuite run +experiment=quickstart` == python -m interpsuite
        from .__main__ import run_cli

        return run_cli(argv[1:])
    if argv and argv[0] == "estimate":  # Hydra overrides, like `run`: `interpsuite estimate +experiment=NAME ...`
        from .estimate_command import estimate_cli

        return estimate_cli(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        return plugin_commands()[args.command].run(args)
    except InterpsuiteError as err:
        print(f"interpsuite: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
