"""Figures 7 and 8 on synthetic files: validation during training, and the long stream's cost
(test inputs, not results)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hiedit.cli import main
from hiedit.reporting.figures import (
    training_edits_per_trajectory,
    validation_curves_figure,
    validation_summary,
    with_training_edits,
)
from hiedit.reporting.inputs import ReportInputError, read_curves, read_per_edit, read_validation
from hiedit.reporting.long_stream import long_stream_figure, stream_summary, stream_windows
from hiedit.validation_metrics import LOGGED_METRICS

MODEL, DATASET = "tiny-llama", "geofacts-zsre"
LOGGED = list(LOGGED_METRICS)
MODULES = ["model.layers.1.mlp.up_proj", "model.layers.2.mlp.up_proj"]


def run_file(root: Path, variant: str, seed: int, name: str, dataset: str = DATASET) -> Path:
    path = root / MODEL / dataset / variant / f"seed{seed}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_validation(root: Path, variant: str, seed: int, scores: list[float]) -> Path:
    path = run_file(root, variant, seed, "validation.csv")
    frame = pd.DataFrame({"trajectory": [5 * i for i in range(len(scores))], "score": scores})
    for metric in LOGGED:
        frame[metric] = [min(1.0, s + 0.05) for s in scores]
    frame.to_csv(path, index=False)
    return path


def write_search(root: Path, seed: int, scores: list[float]) -> Path:
    path = run_file(root, "tuned-step", seed, "validation.csv")
    frame = pd.DataFrame(
        {
            "candidate": range(len(scores)),
            "phase": ["grid"] * (len(scores) - 1) + ["pass1"],
            "score": scores,
        }
    )
    for metric in LOGGED:
        frame[metric] = scores
    for module in MODULES:
        frame[f"step_{module}"] = [1e-5 * 2**i for i in range(len(scores))]
    frame.to_csv(path, index=False)
    return path


def write_empty_validation(root: Path, variant: str, seed: int) -> Path:
    path = run_file(root, variant, seed, "validation.csv")
    path.write_text("trajectory,score," + ",".join(LOGGED) + "\n")
    return path


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validation_files_of_both_kinds_and_empty_ones(tmp_path):
    paths = [
        write_validation(tmp_path, "hiedit", 0, [0.2, 0.5, 0.4]),
        write_validation(tmp_path, "hiedit", 1, [0.3, 0.6, 0.7]),
        write_validation(tmp_path, "rledit", 0, [0.1, 0.2]),
        write_search(tmp_path, 0, [0.1, 0.3, 0.2, 0.35]),
        write_empty_validation(tmp_path, "no-intrinsic", 0),
    ]
    logs = read_validation(paths)
    assert set(logs.trajectories["variant"]) == {"hiedit", "rledit"}
    assert set(logs.candidates["metric"]) == {"score", *LOGGED}  # step_<module> left out
    assert logs.empty == [
        {"model": MODEL, "dataset": DATASET, "variant": "no-intrinsic", "seed": 0}
    ]
    summary = validation_summary(logs).set_index(["variant", "seed"])
    assert summary.loc[("hiedit", 0), "best_at"] == 5
    assert summary.loc[("hiedit", 0), "best_score"] == pytest.approx(50.0)
    assert summary.loc[("hiedit", 1), "last_score"] == pytest.approx(70.0)
    assert summary.loc[("tuned-step", 0), "kind"] == "candidate"
    assert summary.loc[("tuned-step", 0), "best_at"] == 3
    assert summary.loc[("no-intrinsic", 0), "n_validations"] == 0
    # Registry order: hiedit, no-intrinsic, rledit, tuned-step.
    assert list(summary.index.get_level_values(0).unique()) == [
        "hiedit",
        "no-intrinsic",
        "rledit",
        "tuned-step",
    ]
    out = tmp_path / "validation.png"
    validation_curves_figure(logs, out)
    assert _is_png(out)


def test_a_baseline_grid_search_is_read_as_candidates(tmp_path):
    # The layout hiedit/baselines/tuning.py writes: hyperparameter values of any type, timings,
    # an error text and the chosen flag beside the scores.
    path = run_file(tmp_path, "alphaedit", 0, "validation.csv")
    rows = {
        "candidate": [0, 1],
        "target": ["{'v_num_grad_steps': 3}", "{'v_num_grad_steps': 2}"],
        "score": [0.2, 0.4],
        **{name: [0.1, 0.2] for name in LOGGED},
        "edit_seconds": [1.5, 1.2],
        "seconds": [30.0, 28.0],
        "error": ["", ""],
        "chosen": [False, True],
    }
    pd.DataFrame(rows).to_csv(path, index=False)
    logs = read_validation([path, write_validation(tmp_path, "hiedit", 0, [0.2, 0.5])])
    assert set(logs.candidates["phase"]) == {"grid search"}
    assert set(logs.candidates["metric"]) == {"score", *LOGGED}
    summary = validation_summary(logs).set_index(["variant", "seed"])
    assert summary.loc[("alphaedit", 0), "best_at"] == 1
    out = tmp_path / "validation.png"
    validation_curves_figure(logs, out)
    assert _is_png(out)


def test_only_empty_validation_files_still_give_a_figure(tmp_path):
    logs = read_validation([write_empty_validation(tmp_path, "hiedit", 0)])
    out = tmp_path / "validation.png"
    summary = validation_curves_figure(logs, out)
    assert _is_png(out)
    assert summary["n_validations"].tolist() == [0]


def test_a_validation_file_of_neither_kind_is_named(tmp_path):
    path = run_file(tmp_path, "hiedit", 0, "validation.csv")
    pd.DataFrame({"epoch": [0], "score": [0.1]}).to_csv(path, index=False)
    with pytest.raises(ReportInputError, match=rf"{path}.*'trajectory'"):
        read_validation([path])
    pd.DataFrame({"trajectory": [0], "score": ["high"]}).to_csv(path, index=False)
    with pytest.raises(ReportInputError, match=rf"{path}: row 0: column 'score'"):
        read_validation([path])


def write_long_per_edit(root: Path, variant: str, n: int, slow_after: int | None = None) -> Path:
    """``n`` edits at 10 ms (20 ms from ``slow_after`` on), RSS growing by 1 MiB per 100 edits."""
    path = run_file(root, variant, 0, "per_edit.csv")
    wall = [0.02 if slow_after is not None and i >= slow_after else 0.01 for i in range(n)]
    pd.DataFrame(
        {
            "index": range(n),
            "record_id": [f"r{i}" for i in range(n)],
            "relation": "P17",
            "selected": MODULES[0],
            "seconds": [w * 0.9 for w in wall],
            "wall_seconds": wall,
            "rss_mib": [1000.0 + i / 100 for i in range(n)],
        }
    ).to_csv(path, index=False)
    return path


def write_curve(root: Path, variant: str, points: list[int]) -> Path:
    path = run_file(root, variant, 0, "curve.csv")
    pd.DataFrame(
        {
            "n_edits": points,
            "n_scored": 50,
            "efficacy": [0.9 - 0.1 * i for i in range(len(points))],
            "generalization": 0.5,
            "specificity": 0.3,
            "specificity_agreement_correct": 0.95,
        }
    ).to_csv(path, index=False)
    return path


def test_windows_ratios_and_rss_growth_by_hand(tmp_path):
    flat = write_long_per_edit(tmp_path, "hiedit", 1050)
    slower = write_long_per_edit(tmp_path, "rledit", 1000, slow_after=900)
    per_edit = read_per_edit([flat, slower], required=("wall_seconds", "rss_mib"))
    windows = stream_windows(per_edit, window=100)
    hiedit = windows[windows["variant"] == "hiedit"]
    # 1,050 edits: ten full windows and a last one of 50 edits (half a window: kept).
    assert len(hiedit) == 11 and hiedit["n_edits"].tolist()[-1] == 50
    assert hiedit["median_wall_ms"].tolist() == pytest.approx([10.0] * 11)
    assert hiedit["median_editor_ms"].iloc[0] == pytest.approx(9.0)
    summary = stream_summary(windows, 100).set_index("variant")
    assert summary.loc["hiedit", "time_ratio"] == pytest.approx(1.0)
    assert bool(summary.loc["hiedit", "time_within_10pct"])
    assert summary.loc["rledit", "time_ratio"] == pytest.approx(2.0)
    assert not bool(summary.loc["rledit", "time_within_10pct"])
    # RSS medians: edits 0-99 -> 1000.495; edits 1000-1049 -> 1010.245.
    assert summary.loc["hiedit", "rss_growth_mib"] == pytest.approx(1010.245 - 1000.495)
    assert summary.loc["hiedit", "peak_rss_mib"] == pytest.approx(1010.49)
    assert summary.loc["hiedit", "n_edits"] == 1050
    # Windows of 1,000: the last 50 edits are under half a window and are dropped, which leaves
    # one window: no ratio to take.
    with pytest.raises(ReportInputError, match="fewer than two windows of 1000"):
        stream_windows(per_edit, window=1000)


def test_long_stream_needs_the_cost_columns(tmp_path):
    path = run_file(tmp_path, "hiedit", 0, "per_edit.csv")
    pd.DataFrame(
        {"index": [0, 1], "relation": "P17", "selected": "", "seconds": [0.1, 0.1]}
    ).to_csv(path, index=False)
    with pytest.raises(ReportInputError, match=rf"{path}.*wall_seconds"):
        read_per_edit([path], required=("wall_seconds", "rss_mib"))


def test_curves_are_read_in_long_form(tmp_path):
    curves = read_curves([write_curve(tmp_path, "hiedit", [100, 200])])
    assert set(curves["metric"]) == {
        "efficacy",
        "generalization",
        "specificity",
        "specificity_agreement_correct",
    }
    efficacy = curves[curves["metric"] == "efficacy"]
    assert efficacy["n_edits"].tolist() == [100, 200]
    assert efficacy["value"].tolist() == pytest.approx([0.9, 0.8])


def test_long_stream_cli_writes_figure_and_tables(tmp_path):
    per_edit = [
        write_long_per_edit(tmp_path, "hiedit", 400),
        write_long_per_edit(tmp_path, "rledit", 400, slow_after=200),
    ]
    curves = [write_curve(tmp_path, v, [100, 200, 300, 400]) for v in ("hiedit", "rledit")]
    out, windows, summary = (tmp_path / n for n in ("long.png", "windows.csv", "summary.csv"))
    code = main(
        [
            "report",
            "long-stream",
            *map(str, per_edit),
            "--curves",
            *map(str, curves),
            "--window",
            "100",
            "--out",
            str(out),
            "--windows",
            str(windows),
            "--summary",
            str(summary),
        ]
    )
    assert code == 0
    assert _is_png(out)
    assert len(pd.read_csv(windows)) == 8
    ratios = pd.read_csv(summary).set_index("variant")["time_ratio"]
    assert ratios.to_dict() == pytest.approx({"hiedit": 1.0, "rledit": 2.0})
    # Without curves the cost panels are drawn alone.
    long_stream_figure(
        stream_windows(read_per_edit(per_edit), window=100), None, tmp_path / "bare.png"
    )
    assert _is_png(tmp_path / "bare.png")


def test_validation_cli(tmp_path):
    paths = [
        write_validation(tmp_path, "hiedit", 0, [0.2, 0.4]),
        write_search(tmp_path, 0, [0.1, 0.2]),
    ]
    out, summary = tmp_path / "v.png", tmp_path / "v.csv"
    assert (
        main(
            [
                "report",
                "validation-curves",
                *map(str, paths),
                "--out",
                str(out),
                "--summary",
                str(summary),
            ]
        )
        == 0
    )
    assert _is_png(out)
    assert pd.read_csv(summary)["variant"].tolist() == ["hiedit", "tuned-step"]


def test_validation_curves_share_an_axis_of_training_edits(tmp_path):
    # MEND trains on single edits: its trajectory 40 holds as many edits as hiedit's trajectory 2.
    assert training_edits_per_trajectory("hiedit", 20) == 20
    assert training_edits_per_trajectory("mend", 20) == 1
    logs = read_validation(
        [
            write_validation(tmp_path, "hiedit", 0, [0.2, 0.5, 0.4]),
            write_validation(tmp_path, "mend", 0, [0.1, 0.3]),
        ]
    )
    edits = with_training_edits(logs.trajectories, 20)
    score = edits[edits["metric"] == "score"].set_index(["variant", "trajectory"])["edits"]
    assert score.to_dict() == {
        ("hiedit", 0): 0,
        ("hiedit", 5): 100,
        ("hiedit", 10): 200,
        ("mend", 0): 0,
        ("mend", 5): 5,
    }
    out = tmp_path / "validation.png"
    validation_curves_figure(logs, out, trajectory_length=20)
    assert _is_png(out)
