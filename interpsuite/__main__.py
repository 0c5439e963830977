"""`python -m interpsuite +experiment=NAME key=value ...` (Hydra app; `-m` for multirun)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import CONFIG_NAME, PRIMARY_CONFIG, searchpath_override
from .errors import InterpsuiteError
from .pipeline import InterpretabilityPipeline
from .report import format_report


@hydra.main(version_base="1.3", config_path=PRIMARY_CONFIG, config_name=CONFIG_NAME)
def hydra_app(cfg: DictConfig) -> None:
    try:
        pipeline = InterpretabilityPipeline.from_config(cfg, output_dir=HydraConfig.get().runtime.output_dir)
        report = pipeline.run()
    except InterpsuiteError as err:
        print(f"interpsuite: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report))


def main() -> None:
    extra = searchpath_override(user=sys.argv[1:])
    if extra:
        sys.argv.append(extra)
    hydra_app()


if __name__ == "__main__":
    main()
