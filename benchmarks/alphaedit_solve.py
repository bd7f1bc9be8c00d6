"""CPU micro-benchmark of AlphaEdit's per-layer solve: the dense system vs the null-space one.

The public code solves ``(P (Kpᵀ Kp + Kᵀ K) + l2 · I) X = P Kᵀ`` with a dense d_in × d_in
product and LU for every edited layer of every edit. ``hiedit.baselines.alphaedit`` solves the
same system in the null space: ``(G + (K Û)ᵀ (K Û) + l2 · I) Y = (K Û)ᵀ``, ``X = Û Y``, with
``G = Ûᵀ Kpᵀ Kp Û`` kept between edits (r × r) and a Cholesky factorisation. Both run here, in
one process on the same fp64 inputs (a random orthonormal basis of r of the d_in directions,
earlier keys, n new keys), interleaved after a warm-up; the table gives their medians, the
ratio and the largest difference between the two solutions relative to the largest entry.

    python benchmarks/alphaedit_solve.py --out results/bench/alphaedit_solve.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hiedit.baselines.alphaedit import null_space_solve  # noqa: E402
from hiedit.evaluation.runinfo import cpu_name  # noqa: E402

FIELDS = [
    "device",
    "torch",
    "threads",
    "d_in",
    "null_dim",
    "n_keys",
    "repeats",
    "dense_median_s",
    "null_space_median_s",
    "speedup",
    "max_rel_diff",
]


def dense_solve(projector, accumulated, keys, l2):
    """The public code's form (``AlphaEdit_main.py``), the reference."""
    eye = torch.eye(projector.shape[0], dtype=projector.dtype)
    return torch.linalg.solve(
        projector @ (accumulated + keys.T @ keys) + l2 * eye, projector @ keys.T
    )


def run_case(d_in: int, null_dim: int, n_keys: int, repeats: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=generator, dtype=torch.float64))
    basis = basis[:, :null_dim].contiguous()
    projector = basis @ basis.T
    earlier = torch.randn(4 * n_keys + 64, d_in, generator=generator, dtype=torch.float64)
    accumulated = earlier.T @ earlier
    gram = basis.T @ accumulated @ basis
    keys = torch.randn(n_keys, d_in, generator=generator, dtype=torch.float64)
    l2 = 10.0
    dense = dense_solve(projector, accumulated, keys, l2)  # warm-up and the reference
    ours = null_space_solve(basis, gram, keys, l2)
    times: dict[str, list[float]] = {"dense": [], "null_space": []}
    for _ in range(repeats):
        for name, solve in (
            ("dense", lambda: dense_solve(projector, accumulated, keys, l2)),
            ("null_space", lambda: null_space_solve(basis, gram, keys, l2)),
        ):
            start = time.perf_counter()
            solve()
            times[name].append(time.perf_counter() - start)
    dense_s, ours_s = (statistics.median(times[k]) for k in ("dense", "null_space"))
    return {
        "device": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "d_in": d_in,
        "null_dim": null_dim,
        "n_keys": n_keys,
        "repeats": repeats,
        "dense_median_s": f"{dense_s:.5f}",
        "null_space_median_s": f"{ours_s:.5f}",
        "speedup": f"{dense_s / ours_s:.2f}",
        "max_rel_diff": f"{float((dense - ours).abs().max() / dense.abs().max()):.2e}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=1536, help="SmolLM2-135M's down_proj width")
    parser.add_argument(
        "--null-fractions",
        default="0.25,0.5,0.75,0.95",
        help="null-space dimensions as fractions of d_in",
    )
    parser.add_argument("--n-keys", type=int, default=1, help="records edited per step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for fraction in (float(f) for f in args.null_fractions.split(",")):
        null_dim = max(1, min(args.d_in, round(fraction * args.d_in)))
        rows.append(run_case(args.d_in, null_dim, args.n_keys, args.repeats, args.seed))
        print(
            f"d_in {args.d_in}, null space {null_dim}: dense {rows[-1]['dense_median_s']} s, "
            f"null space {rows[-1]['null_space_median_s']} s ({rows[-1]['speedup']}×), "
            f"max relative difference {rows[-1]['max_rel_diff']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
