"""CLI group ``report``: the report's tables (CSV + HTML) and figures (PNG) from the result files."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="tables and figures of the report")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, what in (
        (
            "main-table",
            _main_table,
            "Table 1: every variant and the unedited model, beside the paper",
        ),
        (
            "ablation-table",
            _ablation_table,
            "Table 2: hiedit against its ablations, paired differences",
        ),
    ):
        table = sub.add_parser(name, help=what)
        table.add_argument("--metrics", required=True, help="the tidy metrics table (metrics.csv)")
        table.add_argument("--model", required=True, help="model name (as in the metrics table)")
        table.add_argument(
            "--dataset", required=True, help="dataset name (as in the metrics table)"
        )
        table.add_argument("--csv", required=True, help="output CSV")
        table.add_argument("--html", help="also write the table as an HTML page here")
        if name == "main-table":
            table.add_argument(
                "--per-edit",
                nargs="*",
                default=None,
                metavar="PER_EDIT",
                help="per_edit.csv files of the runs: adds the time per edit and peak memory "
                "columns (files of other models or datasets are ignored)",
            )
        table.set_defaults(func=func)

    claims = sub.add_parser("claims", help="the claims table: each claim of the paper, tested")
    claims.add_argument("--metrics", required=True, help="the tidy metrics table (metrics.csv)")
    claims.add_argument(
        "--per-edit",
        nargs="*",
        default=[],
        metavar="PER_EDIT",
        help="per_edit.csv files of hiedit and no-intrinsic (the router's selectivity)",
    )
    claims.add_argument(
        "--default-k", nargs="*", default=[], metavar="MODEL=K", help="each model's default K"
    )
    claims.add_argument(
        "--n-modules",
        nargs="*",
        default=[],
        metavar="MODEL=L",
        help="each model's number of candidate modules",
    )
    claims.add_argument(
        "--zsre",
        nargs="*",
        default=[],
        metavar="DATASET",
        help="datasets in the ZsRE format (where the study's efficacy/retention targets apply)",
    )
    claims.add_argument("--csv", required=True, help="output CSV")
    claims.add_argument("--html", help="also write the table as an HTML page here")
    claims.set_defaults(func=_claims)

    sweep = sub.add_parser("k-sweep", help="Figure 1: final metrics against K")
    sweep.add_argument("--metrics", required=True, help="the tidy metrics table (metrics.csv)")
    sweep.add_argument(
        "--default-k",
        nargs="+",
        required=True,
        metavar="MODEL=K",
        help="each model's default K (where the hiedit variant sits on the K axis)",
    )
    sweep.add_argument(
        "--n-modules",
        nargs="+",
        default=[],
        metavar="MODEL=L",
        help="each model's number of candidate modules: rledit is drawn at K = L",
    )
    sweep.add_argument("--out", required=True, help="output PNG")
    sweep.set_defaults(func=_k_sweep)

    curves = sub.add_parser("learning-curves", help="Figure 2: metrics against the number of edits")
    curves.add_argument("--metrics", required=True, help="the tidy metrics table (metrics.csv)")
    curves.add_argument(
        "--include-sweep", action="store_true", help="also draw the hiedit-k<K> runs"
    )
    curves.add_argument("--out", required=True, help="output PNG")
    curves.set_defaults(func=_learning_curves)

    usage = sub.add_parser("mask-usage", help="Figure 3: module × relation selection frequencies")
    usage.add_argument("per_edit", nargs="+", help="per_edit.csv files (their edits are pooled)")
    usage.add_argument("--modules", nargs="+", help="every candidate module, in display order")
    usage.add_argument(
        "--max-relations",
        type=int,
        default=25,
        help="pool rarer relations into 'other' beyond this",
    )
    usage.add_argument("--out", required=True, help="output PNG")
    usage.add_argument("--table", help="also write the fractions as CSV here")
    usage.set_defaults(func=_mask_usage)

    timing = sub.add_parser("edit-time", help="Figure 4: wall time per edit, per variant")
    timing.add_argument("per_edit", nargs="+", help="per_edit.csv files")
    timing.add_argument("--out", required=True, help="output PNG")
    timing.add_argument("--summary", help="also write median/mean/p90 per variant as CSV here")
    timing.set_defaults(func=_edit_time)

    training = sub.add_parser("training-curves", help="Figure 5: editor training losses")
    training.add_argument("train_log", nargs="+", help="train_log.csv files")
    training.add_argument(
        "--x", help="step column (default: the first of global_step, step, trajectory)"
    )
    training.add_argument(
        "--y", nargs="+", help="loss columns (default: every column naming 'loss')"
    )
    training.add_argument("--out", required=True, help="output PNG")
    training.set_defaults(func=_training_curves)

    register_streams(sub)


def register_streams(sub: argparse._SubParsersAction) -> None:
    validation = sub.add_parser(
        "validation-curves", help="Figure 7: validation metrics during editor training"
    )
    validation.add_argument(
        "validation", nargs="+", help="validation.csv files (trained editors and step searches)"
    )
    validation.add_argument("--out", required=True, help="output PNG")
    validation.add_argument("--summary", help="also write the best validation per run as CSV here")
    validation.add_argument(
        "--trajectory-length",
        type=int,
        help="the setup's training trajectory length: plot against training edits seen",
    )
    validation.set_defaults(func=_validation_curves)

    long = sub.add_parser(
        "long-stream", help="Figure 8: cost and learning curves of the long stream"
    )
    long.add_argument("per_edit", nargs="+", help="per_edit.csv files of the long stream")
    long.add_argument("--curves", nargs="*", default=[], help="curve.csv files of the same runs")
    long.add_argument(
        "--window", type=int, default=1000, help="edits per window (medians per window)"
    )
    long.add_argument("--out", required=True, help="output PNG")
    long.add_argument("--windows", help="also write every window's medians as CSV here")
    long.add_argument(
        "--summary", help="also write per run the last/first window ratios as CSV here"
    )
    long.set_defaults(func=_long_stream)


def _pairs(values: list[str], option: str) -> dict[str, int]:
    from hiedit.errors import ConfigError

    pairs = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep or not name or not number.isdigit():
            raise ConfigError(f"{option}: expected MODEL=INTEGER, got {value!r}")
        pairs[name] = int(number)
    return pairs


def _write_table(args: argparse.Namespace, build, title: str, **extra) -> int:
    from hiedit.reporting.inputs import read_metrics
    from hiedit.reporting.tables import write_table

    metrics = read_metrics(args.metrics)
    table = build(metrics, args.model, args.dataset, source=args.metrics, **extra)
    write_table(table, args.csv, args.html, f"{title}: {args.model} / {args.dataset}")
    print(table.to_string(index=False))
    return 0


def _main_table(args: argparse.Namespace) -> int:
    from hiedit.reporting.inputs import read_per_edit
    from hiedit.reporting.tables import main_table

    per_edit = read_per_edit(args.per_edit) if args.per_edit else None
    return _write_table(args, main_table, "Table 1", per_edit=per_edit)


def _ablation_table(args: argparse.Namespace) -> int:
    from hiedit.reporting.tables import ablation_table

    return _write_table(args, ablation_table, "Table 2")


def _k_sweep(args: argparse.Namespace) -> int:
    from hiedit.reporting.figures import k_sweep_figure
    from hiedit.reporting.inputs import read_metrics

    k_sweep_figure(
        read_metrics(args.metrics),
        args.out,
        default_k=_pairs(args.default_k, "--default-k"),
        n_modules=_pairs(args.n_modules, "--n-modules"),
    )
    return 0


def _learning_curves(args: argparse.Namespace) -> int:
    from hiedit.reporting.figures import learning_curves_figure
    from hiedit.reporting.inputs import read_metrics

    learning_curves_figure(read_metrics(args.metrics), args.out, include_sweep=args.include_sweep)
    return 0


def _mask_usage(args: argparse.Namespace) -> int:
    from hiedit.atomic import atomic_path
    from hiedit.reporting.figures import mask_usage_figure
    from hiedit.reporting.inputs import read_per_edit

    per_edit = read_per_edit(args.per_edit)
    runs = per_edit[["model", "dataset", "variant"]].drop_duplicates()
    names = " + ".join(f"{r.variant}: {r.model} / {r.dataset}" for r in runs.itertuples())
    n_seeds = per_edit["seed"].nunique()
    title = f"Module usage of {names}\n{n_seeds} seed(s), {len(per_edit)} edits"
    table = mask_usage_figure(per_edit, args.out, args.modules, args.max_relations, title)
    if args.table:
        with atomic_path(args.table) as tmp:
            table.to_csv(tmp)
    return 0


def _edit_time(args: argparse.Namespace) -> int:
    from hiedit.atomic import atomic_path
    from hiedit.reporting.figures import edit_time_figure
    from hiedit.reporting.inputs import read_per_edit

    summary = edit_time_figure(read_per_edit(args.per_edit), args.out)
    if args.summary:
        with atomic_path(args.summary) as tmp:
            summary.to_csv(tmp, index=False)
    print(summary.to_string(index=False))
    return 0


def _training_curves(args: argparse.Namespace) -> int:
    from hiedit.reporting.figures import training_curves_figure
    from hiedit.reporting.inputs import read_train_logs

    logs, x_name = read_train_logs(args.train_log, x=args.x, y=args.y)
    training_curves_figure(logs, args.out, x_label=x_name)
    return 0


def _claims(args: argparse.Namespace) -> int:
    from hiedit.reporting.claims import claims_table, display_table, write_claims
    from hiedit.reporting.inputs import read_metrics, read_per_edit

    table = claims_table(
        read_metrics(args.metrics),
        per_edit=read_per_edit(args.per_edit) if args.per_edit else None,
        default_k=_pairs(args.default_k, "--default-k"),
        n_modules=_pairs(args.n_modules, "--n-modules"),
        zsre_datasets=args.zsre,
    )
    write_claims(table, args.csv, args.html)
    print(display_table(table).to_string(index=False))
    return 0


def _validation_curves(args: argparse.Namespace) -> int:
    from hiedit.atomic import atomic_path
    from hiedit.reporting.figures import validation_curves_figure
    from hiedit.reporting.inputs import read_validation

    summary = validation_curves_figure(
        read_validation(args.validation), args.out, args.trajectory_length
    )
    if args.summary:
        with atomic_path(args.summary) as tmp:
            summary.to_csv(tmp, index=False)
    print(summary.to_string(index=False))
    return 0


def _long_stream(args: argparse.Namespace) -> int:
    from hiedit.atomic import atomic_path
    from hiedit.reporting.inputs import read_curves, read_per_edit
    from hiedit.reporting.long_stream import long_stream_figure, stream_summary, stream_windows

    per_edit = read_per_edit(args.per_edit, required=("wall_seconds", "rss_mib"))
    windows = stream_windows(per_edit, args.window)
    curves = read_curves(args.curves) if args.curves else None
    long_stream_figure(windows, curves, args.out)
    summary = stream_summary(windows, args.window)
    for frame, path in ((windows, args.windows), (summary, args.summary)):
        if path:
            with atomic_path(path) as tmp:
                frame.to_csv(tmp, index=False)
    print(summary.to_string(index=False))
    return 0
