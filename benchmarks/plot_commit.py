"""Plot the commit benchmarks (``commit_cpu.py`` / ``commit_gpu.py`` CSVs) into one PNG.

CPU results become bars of the median time per commit for each path and dtype (labelled with
the speed-up over the dense path); GPU results become the fraction of the measured copy
bandwidth against the rank n, one line per path and K.

Example::

    python benchmarks/plot_commit.py results/commit_cpu.csv results/commit_gpu.csv --out commit.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def _plot_cpu(ax: plt.Axes, df: pd.DataFrame) -> None:
    df = df.copy()
    df["median_ms"] = df["median_s"].astype(float) * 1e3
    sns.barplot(data=df, x="dtype", y="median_ms", hue="path", ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("median time per commit (ms, log)")
    first = df.iloc[0]
    ax.set_title(
        f"CPU commit, L={first['L']}, K={first['K']}, n={first['n']}, "
        f"{first['d_out']}x{first['d_in']}\n{first['device']} ({first['threads']} threads)",
        fontsize=9,
    )
    for container, (_, group) in zip(ax.containers, df.groupby("path", sort=False), strict=False):
        labels = [f"{float(s):.1f}x" for s in group["speedup_vs_dense"]]
        if len(labels) == len(container):  # a path missing for some dtype: leave it unlabelled
            ax.bar_label(container, labels=labels, fontsize=7)


def _plot_gpu(ax: plt.Axes, df: pd.DataFrame) -> None:
    df = df.copy()
    df["frac_copy"] = df["frac_copy"].astype(float)
    df["K"] = "K=" + df["K"].astype(str)
    sns.lineplot(data=df, x="n", y="frac_copy", hue="path", style="K", marker="o", ax=ax)
    ax.set_xscale("log", base=2)
    ax.axhline(0.85, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("fraction of device copy bandwidth")
    ax.set_xlabel("rank n")
    ax.set_title(f"GPU commit, bf16 14336x4096\n{df['device'].iloc[0]}", fontsize=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", type=Path, help="CSV files from commit_*.py")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)

    frames = [pd.read_csv(p) for p in args.csv if p.exists() and p.stat().st_size > 0]
    if not frames:
        parser.error("none of the CSV files exists or has rows")
    cpu = [f for f in frames if "median_s" in f.columns]
    gpu = [f for f in frames if "ms" in f.columns and "median_s" not in f.columns]
    panels = [("cpu", pd.concat(cpu))] if cpu else []
    panels += [("gpu", pd.concat(gpu))] if gpu else []

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (kind, df) in zip(axes[0], panels, strict=True):
        (_plot_cpu if kind == "cpu" else _plot_gpu)(ax, df)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
