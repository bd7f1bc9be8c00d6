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
        table.set_defaults(func=func)

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


def _pairs(values: list[str], option: str) -> dict[str, int]:
    from hiedit.errors import ConfigError

    pairs = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep or not name or not number.isdigit():
            raise ConfigError(f"{option}: expected MODEL=INTEGER, got {value!r}")
        pairs[name] = int(number)
    return pairs


def _write_table(args: argparse.Namespace, build, title: str) -> int:
    from hiedit.reporting.inputs import read_metrics
    from hiedit.reporting.tables import write_table

    metrics = read_metrics(args.metrics)
    table = build(metrics, args.model, args.dataset, source=args.metrics)
    write_table(table, args.csv, args.html, f"{title}: {args.model} / {args.dataset}")
    print(table.to_string(index=False))
    return 0


def _main_table(args: argparse.Namespace) -> int:
    from hiedit.reporting.tables import main_table

    return _write_table(args, main_table, "Table 1")


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
