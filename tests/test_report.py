"""The report's tables and figures on small synthetic result files (test inputs, not results)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pandas as pd
import pytest

from hiedit import registry
from hiedit.cli import main
from hiedit.reporting.figures import (
    edit_time_figure,
    k_sweep_data,
    k_sweep_figure,
    learning_curves_figure,
    mask_usage,
    mask_usage_figure,
    training_curves_figure,
)
from hiedit.reporting.inputs import (
    ReportInputError,
    read_metrics,
    read_per_edit,
    read_train_logs,
    run_identity,
)
from hiedit.reporting.paper import PAPER_ROWS, paper_number, paper_numbers
from hiedit.reporting.tables import (
    ablation_table,
    main_table,
    mean_interval,
    t_quantile_975,
)

MODULES = [
    "model.layers.1.mlp.gate_proj",
    "model.layers.2.mlp.gate_proj",
    "model.layers.2.mlp.up_proj",
    "model.layers.3.mlp.up_proj",
]
VARIANTS = ["hiedit", "hiedit-rand", "static-k", "no-intrinsic", "rledit", "hiedit-k1", "hiedit-k3"]
METRICS = ["efficacy", "generalization", "specificity", "specificity_agreement"]
RETENTION = ["retention_efficacy", "retention_generalization", "retention_specificity"]


def synthetic_metrics(
    models=("tiny-llama",),
    datasets=("geofacts-zsre",),
    variants=VARIANTS,
    seeds=(0, 1),
    n_edits=12,
    checkpoints=(6,),
) -> pd.DataFrame:
    """A schema-correct tidy metrics table with deterministic, distinct values."""
    rng = random.Random(0)
    rows = []
    for model in models:
        for dataset in datasets:
            for variant in variants:
                for seed in seeds:
                    final = {m: rng.uniform(0.2, 0.9) for m in METRICS + RETENTION}
                    final.update({f"unedited_{m}": 0.1 + 0.01 * seed for m in METRICS[:3]})
                    final.update({f"unedited_{m}": 0.1 for m in RETENTION})
                    for metric, value in final.items():
                        rows.append((model, dataset, variant, seed, n_edits, metric, value))
                    for t in checkpoints:
                        for metric in METRICS:
                            rows.append(
                                (
                                    model,
                                    dataset,
                                    variant,
                                    seed,
                                    t,
                                    f"curve_{metric}",
                                    rng.uniform(0.2, 0.9),
                                )
                            )
    return pd.DataFrame(
        rows, columns=["model", "dataset", "variant", "seed", "n_edits", "metric", "value"]
    )


def write_per_edit(root: Path, model, dataset, variant, seed, rows) -> Path:
    path = root / model / dataset / variant / f"seed{seed}" / "per_edit.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["index", "record_id", "relation", "selected", "seconds"])
    frame["efficacy"] = 1.0  # a per-record flag the report must ignore
    frame.to_csv(path, index=False)
    return path


def synthetic_per_edit(root: Path, variants=("hiedit",), seeds=(0,), n=40, k=2) -> list[Path]:
    rng = random.Random(1)
    paths = []
    for variant in variants:
        for seed in seeds:
            rows = []
            for i in range(n):
                chosen = MODULES if variant == "rledit" else rng.sample(MODULES, k)
                rows.append(
                    (
                        i,
                        f"r{i}",
                        rng.choice(["P17", "P36", "capital"]),
                        ";".join(chosen),
                        rng.uniform(0.01, 0.05),
                    )
                )
            paths.append(write_per_edit(root, "tiny-llama", "geofacts-zsre", variant, seed, rows))
    return paths


# --- inputs -------------------------------------------------------------------------------------


def test_run_identity_reads_the_run_folder():
    path = "results/eval/llama3-8b/zsre/hiedit-k4/seed2/per_edit.csv"
    assert run_identity(path) == {
        "model": "llama3-8b",
        "dataset": "zsre",
        "variant": "hiedit-k4",
        "seed": 2,
    }
    with pytest.raises(ReportInputError, match="per_edit.csv"):
        run_identity("results/per_edit.csv")


def test_missing_per_edit_columns_name_the_file(tmp_path):
    path = tmp_path / "m" / "d" / "hiedit" / "seed0" / "per_edit.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"index": [0], "relation": ["P17"], "seconds": [0.1]}).to_csv(path, index=False)
    with pytest.raises(ReportInputError, match=rf"{path}.*selected"):
        read_per_edit([path])


def test_edit_phases_are_kept_and_summarised(tmp_path):
    rows = [(i, f"r{i}", "P17", MODULES[0], 0.04) for i in range(4)]
    path = write_per_edit(tmp_path, "m", "d", "hiedit", 0, rows)
    frame = pd.read_csv(path)
    for phase, seconds in (
        ("capture", 0.03),
        ("route", 0.002),
        ("update", 0.005),
        ("commit", 0.003),
    ):
        frame[f"{phase}_seconds"] = seconds
    frame.to_csv(path, index=False)
    per_edit = read_per_edit([path])
    assert per_edit["capture_seconds"].tolist() == [0.03] * 4
    summary = edit_time_figure(per_edit, tmp_path / "time.png").iloc[0]
    assert summary["median"] == pytest.approx(40.0)
    assert summary["capture_ms"] == pytest.approx(30.0)
    assert summary["commit_ms"] == pytest.approx(3.0)
    # A file whose phase column is not numeric is named with its row.
    frame["route_seconds"] = frame["route_seconds"].astype(object)
    frame.loc[2, "route_seconds"] = "slow"
    frame.to_csv(path, index=False)
    with pytest.raises(ReportInputError, match=rf"{path}: row 2: column 'route_seconds'"):
        read_per_edit([path])


def test_missing_metrics_columns_name_the_file(tmp_path):
    path = tmp_path / "metrics.csv"
    synthetic_metrics().drop(columns="n_edits").to_csv(path, index=False)
    with pytest.raises(ReportInputError, match=rf"{path}.*n_edits"):
        read_metrics(path)


def test_train_log_columns_are_detected_or_named(tmp_path):
    path = tmp_path / "m" / "d" / "hiedit" / "seed0" / "train_log.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(
        {"global_step": [0, 1], "loss": [2.0, 1.0], "edit_loss": [1.5, 0.5], "lr": [1, 1]}
    ).to_csv(path, index=False)
    logs, x = read_train_logs([path])
    assert x == "global_step"
    assert set(logs["loss"]) == {"loss", "edit_loss"}
    logs, x = read_train_logs([path], x="global_step", y=["edit_loss"])
    assert set(logs["loss"]) == {"edit_loss"}
    with pytest.raises(ReportInputError, match=rf"{path}.*missing column.*kl_loss"):
        read_train_logs([path], y=["kl_loss"])
    pd.DataFrame({"epoch": [0], "loss": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ReportInputError, match=rf"{path}.*no step column"):
        read_train_logs([path])


# --- tables -------------------------------------------------------------------------------------


def test_t_interval_matches_hand_computation():
    assert t_quantile_975(1) == pytest.approx(12.7062)
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=2e-4)
    interval = mean_interval([80.0, 82.0])
    # mean 81, s = sqrt(2), h = t(1) * s / sqrt(2) = 12.7062
    assert interval.mean == pytest.approx(81.0)
    assert interval.half_width == pytest.approx(12.7062, rel=1e-6)
    assert interval.format() == "81.00 ± 12.71"
    assert mean_interval([75.5]).format() == "75.50"


def test_main_table_has_every_variant_and_the_mean_over_two_seeds():
    metrics = synthetic_metrics()
    table = main_table(metrics, "tiny-llama", "geofacts-zsre")
    assert table["Variant"].iloc[0] == "unedited"
    assert table["Editor"].iloc[0] == "Unedited"
    assert set(table["Variant"]) == {"unedited", *VARIANTS}
    assert (table["Seeds"] == 2).all()
    # No paper numbers for this model: no paper columns.
    assert not [c for c in table.columns if "paper" in c]
    final = metrics[
        (metrics["variant"] == "static-k")
        & (metrics["metric"] == "generalization")
        & (metrics["n_edits"] == 12)
    ]
    a, b = 100 * final["value"]
    mean, half = (a + b) / 2, 12.7062 * abs(a - b) / 2
    cell = table.set_index("Variant").loc["static-k", "Generalization"]
    assert cell == f"{mean:.2f} ± {half:.2f}"
    # The unedited row averages the unedited model's values over seeds (10 % and 11 %).
    assert table.set_index("Variant").loc["unedited", "Efficacy"].startswith("10.50 ± ")


def test_main_table_puts_the_paper_beside_ours():
    metrics = synthetic_metrics(models=("llama3-8b",), datasets=("zsre", "counterfact"), seeds=(0,))
    zsre = main_table(metrics, "llama3-8b", "zsre").set_index("Variant")
    for label in ("Efficacy", "Generalization", "Specificity", "Retention"):
        assert f"{label} (paper)" in zsre.columns
    assert zsre.loc["hiedit", "Efficacy (paper)"] == "82.10"
    assert zsre.loc["hiedit-rand", "Retention (paper)"] == "74.66"
    assert zsre.loc["rledit", "Specificity (paper)"] == "42.73"
    assert zsre.loc["static-k", "Efficacy (paper)"] == "—"
    # One seed: just the value.
    assert "±" not in zsre.loc["hiedit", "Efficacy"]
    counterfact = main_table(metrics, "llama3-8b", "counterfact").set_index("Variant")
    assert [c for c in counterfact.columns if "paper" in c] == ["Efficacy (paper)"]
    assert counterfact.loc["hiedit", "Efficacy (paper)"] == "66.53"


def test_paper_numbers_are_only_the_published_ones():
    numbers = paper_numbers()
    assert len(numbers) == 3 * 4 + 3 + 4 + 1
    assert set(numbers["model"]) == {"llama3-8b", "gemma2-9b"}
    assert paper_number("llama3-8b", "zsre", "hiedit", "retention_efficacy") == 75.16
    assert paper_number("gemma2-9b", "zsre", "alphaedit", "retention_efficacy") == 13.19
    assert paper_number("gemma2-9b", "counterfact", "alphaedit", "efficacy") == 38.17
    assert paper_number("gemma2-9b", "zsre", "hiedit", "efficacy") is None


def test_paper_rows_agree_with_the_registry():
    for variant, paper_row in PAPER_ROWS.items():
        if variant in registry.VARIANTS:
            assert registry.VARIANTS[variant].paper_row == paper_row, variant
    assert set(paper_numbers()["variant"]) <= set(PAPER_ROWS)


def test_main_table_uses_registry_labels_and_order():
    metrics = synthetic_metrics(variants=["rledit", "hiedit-k1", "hiedit", "static-k"], seeds=(0,))
    table = main_table(metrics, "tiny-llama", "geofacts-zsre")
    assert list(table["Variant"]) == ["unedited", "hiedit", "static-k", "rledit", "hiedit-k1"]
    assert list(table["Editor"]) == ["Unedited", "HiEdit", "static K", "RLEdit", "HiEdit K=1"]


def test_gemma_table_puts_alphaedit_beside_the_paper():
    metrics = synthetic_metrics(
        models=("gemma2-9b",), datasets=("zsre",), variants=["hiedit", "alphaedit"], seeds=(0,)
    )
    table = main_table(metrics, "gemma2-9b", "zsre").set_index("Variant")
    assert table.loc["alphaedit", "Efficacy (paper)"] == "15.79"
    assert table.loc["hiedit", "Retention (paper)"] == "—"


def test_main_table_adds_time_and_memory_per_editor(tmp_path):
    rng = random.Random(3)
    paths = []
    for variant, scale in (("hiedit", 0.01), ("rledit", 0.02)):
        for seed in (0, 1):
            rows = [(i, f"r{i}", "P17", MODULES[0], scale * (1 + i)) for i in range(5)]
            path = write_per_edit(tmp_path, "tiny-llama", "geofacts-zsre", variant, seed, rows)
            frame = pd.read_csv(path)
            frame["rss_mib"] = [500.0 + 10 * seed + rng.random() for _ in range(5)]
            frame.loc[2, "rss_mib"] = 600.0 + 10 * seed  # the peak
            frame.to_csv(path, index=False)
            paths.append(path)
    # A run of another dataset must not count, and an older file without rss_mib still reads.
    other = write_per_edit(
        tmp_path, "tiny-llama", "geofacts-counterfact", "hiedit", 0, [(0, "r", "P17", "", 9.0)]
    )
    per_edit = read_per_edit([*paths, other])
    metrics = synthetic_metrics(variants=["hiedit", "rledit", "static-k"])
    table = main_table(metrics, "tiny-llama", "geofacts-zsre", per_edit=per_edit)
    table = table.set_index("Variant")
    # Median of 0.01 * (1..5) s is 30 ms on both seeds; peaks 600 and 610 MiB.
    assert table.loc["hiedit", "Time per edit (ms)"] == "30.0 ± 0.0"
    assert table.loc["rledit", "Time per edit (ms)"] == "60.0 ± 0.0"
    assert table.loc["hiedit", "Peak RSS (MiB)"] == mean_interval([600.0, 610.0]).format(digits=0)
    assert table.loc["static-k", "Time per edit (ms)"] == "—"
    assert table.loc["unedited", "Peak RSS (MiB)"] == "—"
    counterfact = main_table(
        synthetic_metrics(datasets=("geofacts-counterfact",), variants=["hiedit"]),
        "tiny-llama",
        "geofacts-counterfact",
        per_edit=per_edit,
    ).set_index("Variant")
    assert counterfact.loc["hiedit", "Time per edit (ms)"] == "9000.0"
    assert counterfact.loc["hiedit", "Peak RSS (MiB)"] == "—"


def test_ablation_table_pairs_differences_by_seed():
    metrics = synthetic_metrics(variants=["hiedit", "rledit", "no-intrinsic", "hiedit-untrained"])
    table = ablation_table(metrics, "tiny-llama", "geofacts-zsre").set_index("Variant")
    assert list(table.index) == ["hiedit", "no-intrinsic", "rledit", "hiedit-untrained"]
    final = metrics[(metrics["metric"] == "efficacy") & (metrics["n_edits"] == 12)].set_index(
        ["variant", "seed"]
    )["value"]
    diffs = [100 * (final["rledit", s] - final["hiedit", s]) for s in (0, 1)]
    assert table.loc["rledit", "Δ Efficacy"] == mean_interval(diffs).format(signed=True)
    assert table.loc["hiedit", "Δ Efficacy"] == "—"


def test_tables_without_the_run_name_the_source():
    with pytest.raises(ReportInputError, match="metrics.csv.*other-model"):
        main_table(synthetic_metrics(), "other-model", "geofacts-zsre", source="metrics.csv")


# --- figures ------------------------------------------------------------------------------------


def test_mask_usage_fractions_on_a_hand_made_stream(tmp_path):
    rows = [
        (0, "a", "P17", "model.layers.1.mlp.gate_proj;model.layers.2.mlp.up_proj", 0.1),
        (1, "b", "P17", "model.layers.1.mlp.gate_proj", 0.1),
        (2, "c", "P36", "model.layers.2.mlp.up_proj;model.layers.3.mlp.up_proj", 0.1),
        (3, "d", "P17", "", 0.1),
    ]
    path = write_per_edit(tmp_path, "tiny-llama", "geofacts-zsre", "hiedit", 0, rows)
    table = mask_usage(read_per_edit([path]), MODULES)
    assert list(table.index) == MODULES
    assert list(table.columns) == ["all", "P17", "P36"]
    assert table.loc["model.layers.1.mlp.gate_proj"].tolist() == pytest.approx([2 / 4, 2 / 3, 0.0])
    assert table.loc["model.layers.2.mlp.up_proj"].tolist() == pytest.approx([2 / 4, 1 / 3, 1.0])
    assert table.loc["model.layers.2.mlp.gate_proj"].tolist() == [0.0, 0.0, 0.0]
    assert table.attrs["n_edits"] == {"all": 4, "P17": 3, "P36": 1}
    pooled = mask_usage(read_per_edit([path]), MODULES, max_relations=1)
    assert list(pooled.columns) == ["all", "other"]
    with pytest.raises(ReportInputError, match="not among the candidates"):
        mask_usage(read_per_edit([path]), MODULES[:2])


def test_k_sweep_places_hiedit_at_its_default_k_and_rledit_at_l():
    data = k_sweep_data(synthetic_metrics(), {"tiny-llama": 2}, {"tiny-llama": 4})
    ks = data.groupby("series")["K"].unique()
    assert sorted(ks["hiedit (K sweep)"]) == [1, 2, 3]
    assert list(ks["rledit (dense, K = L)"]) == [4]


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_written(tmp_path):
    metrics = synthetic_metrics(datasets=("geofacts-zsre", "geofacts-counterfact"))
    k_sweep_figure(metrics, tmp_path / "k.png", {"tiny-llama": 2}, {"tiny-llama": 4})
    learning_curves_figure(metrics, tmp_path / "curves.png")
    per_edit = read_per_edit(
        synthetic_per_edit(tmp_path / "eval", variants=("hiedit", "rledit"), seeds=(0, 1))
    )
    mask_usage_figure(per_edit[per_edit["variant"] == "hiedit"], tmp_path / "mask.png", MODULES)
    summary = edit_time_figure(per_edit, tmp_path / "time.png")
    assert set(summary["variant"]) == {"hiedit", "rledit"}
    log = (
        tmp_path / "editors" / "tiny-llama" / "geofacts-zsre" / "hiedit" / "seed0" / "train_log.csv"
    )
    log.parent.mkdir(parents=True)
    pd.DataFrame({"step": range(10), "loss": [math.exp(-i) for i in range(10)]}).to_csv(
        log, index=False
    )
    logs, x = read_train_logs([log])
    training_curves_figure(logs, tmp_path / "train.png", x)
    for name in ("k", "curves", "mask", "time", "train"):
        assert _is_png(tmp_path / f"{name}.png"), name


def report_cli(*args: object) -> int:
    return main(["report", *map(str, args)])


def test_cli_writes_tables_and_figures(tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    synthetic_metrics().to_csv(metrics, index=False)
    run = ("--metrics", metrics, "--model", "tiny-llama", "--dataset", "geofacts-zsre")
    t1, t1_html, t2 = tmp_path / "t1.csv", tmp_path / "t1.html", tmp_path / "t2.csv"
    assert report_cli("main-table", *run, "--csv", t1, "--html", t1_html) == 0
    assert "<table" in t1_html.read_text()
    assert len(pd.read_csv(t1)) == 1 + len(VARIANTS)
    assert report_cli("ablation-table", *run, "--csv", t2) == 0
    sweep = ("k-sweep", "--metrics", metrics, "--out", tmp_path / "k.png")
    assert report_cli(*sweep, "--default-k", "tiny-llama=2", "--n-modules", "tiny-llama=4") == 0
    paths = synthetic_per_edit(tmp_path / "eval")
    usage = ("--modules", *MODULES, "--out", tmp_path / "m.png", "--table", tmp_path / "m.csv")
    assert report_cli("mask-usage", *paths, *usage) == 0
    assert pd.read_csv(tmp_path / "m.csv", index_col=0).shape == (4, 4)
    assert report_cli(*sweep, "--default-k", "tiny-llama") == 2
    assert "MODEL=INTEGER" in capsys.readouterr().err


def test_html_tables_carry_their_title_as_a_caption():
    import pandas as pd

    from hiedit.reporting.tables import table_html

    page = table_html(pd.DataFrame({"a": [1]}), "Table 1 <x>")
    assert '<table class="dataframe">\n<caption>Table 1 &lt;x&gt;</caption>' in page
