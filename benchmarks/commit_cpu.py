"""CPU micro-benchmark of committing one edit: the fused low-rank path vs a dense Δ path.

Per edit, L modules are candidates and K of them are selected. The dense path is what the
public research code does: materialise the fp32 Δ_l = s·B_lᵀA_l for every module, mask it,
cast it to the weight dtype and add it. The fused path is ``lowrank_kernels.lowrank_update_`` (on CPU:
the PyTorch reference, an in-place fp32-accumulating update in row blocks) on the K selected
modules only. Both run in one process on the same weights, warmed up and interleaved, and an
in-run tensor copy of the fused path's bytes gives the achievable-bandwidth denominator.

Example::

    python benchmarks/commit_cpu.py --out results/commit_cpu.csv          # Llama-3-8B shapes
    python benchmarks/commit_cpu.py --small --repeats 3 --out /tmp/c.csv  # quick check
"""

from __future__ import annotations

import argparse
import csv
import gc
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lowrank_kernels  # noqa: E402

# Llama-3-8B gate_proj / up_proj: d_out x d_in.
FULL_SHAPE = (14336, 4096)
SMALL_SHAPE = (1792, 512)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

# Bytes per weight element moved by the dense path, per module: write Δ (4), read Δ and write
# the masked copy (8), read it and write the cast (4 + b; skipped for fp32), then the in-place
# add reads W and the cast and writes W (3b). 24 bytes for both bf16 and fp32.
FIELDS = [
    "device",
    "torch",
    "threads",
    "path",
    "dtype",
    "L",
    "K",
    "n",
    "d_out",
    "d_in",
    "repeats",
    "median_s",
    "min_s",
    "bytes",
    "GBps",
    "copy_GBps",
    "frac_copy",
    "speedup_vs_dense",
    "peak_rss_gb",
]


def device_name() -> str:
    """The CPU model (``/proc/cpuinfo``), falling back to ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def dense_commit(weights, a, b, scales, mask) -> None:
    """Reference-style commit: a dense fp32 Δ for every module, masked, cast, added.

    Modules are processed one after another so only one Δ is alive at a time (keeping all L
    alive, as the research code does, needs 2.8 GB more at full size and is not faster).
    """
    for w, fa, fb, s, m in zip(weights, a, b, scales, mask, strict=True):
        delta = s * (fb.t() @ fa)
        masked = delta * float(m)
        w.add_(masked.to(w.dtype))
        del delta, masked


def time_paths(paths: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Warm up every path once, then time them interleaved ``repeats`` times."""
    for fn in paths.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def run_dtype(name: str, args: argparse.Namespace, shape: tuple[int, int]) -> list[dict]:
    dtype = DTYPES[name]
    d_out, d_in = shape
    g = torch.Generator().manual_seed(args.seed)
    weights = [(torch.randn(d_out, d_in, generator=g) * 0.02).to(dtype) for _ in range(args.L)]
    a = [torch.randn(args.n, d_in, generator=g) for _ in range(args.L)]
    b = [torch.randn(args.n, d_out, generator=g) for _ in range(args.L)]
    scales = [1e-4] * args.L
    # K modules spread over the group, as a router would pick them.
    chosen = set(round(i * args.L / args.K) for i in range(args.K))
    mask = [i in chosen for i in range(args.L)]
    master = lowrank_kernels.PrecisionState("master")

    elem = weights[0].element_size()
    numel = d_out * d_in
    copy_src = torch.empty(numel, dtype=dtype)
    copy_src.copy_(weights[0].view(-1))
    copy_dst = torch.empty_like(copy_src)

    def copy_same_bytes() -> None:
        for _ in range(args.K):
            copy_dst.copy_(copy_src)

    paths: dict[str, Callable[[], None]] = {
        "dense": lambda: dense_commit(weights, a, b, scales, mask),
        "fused": lambda: lowrank_kernels.lowrank_update_(weights, a, b, scales, mask),
        "copy": copy_same_bytes,
    }
    if dtype != torch.float32:
        paths["fused_master"] = lambda: lowrank_kernels.lowrank_update_(
            weights, a, b, scales, mask, state=master
        )
    times = time_paths(paths, args.repeats)

    factor_bytes = args.K * args.n * (d_in + d_out) * 4
    model = {
        "dense": args.L * 24 * numel + args.L * args.n * (d_in + d_out) * 4,
        "fused": args.K * 2 * elem * numel + factor_bytes,
        "fused_master": args.K * (8 + elem) * numel + factor_bytes,
        "copy": args.K * 2 * elem * numel,
    }
    copy_gbps = model["copy"] / statistics.median(times["copy"]) / 1e9
    dense_median = statistics.median(times["dense"])
    rows = []
    for path, ts in times.items():
        median = statistics.median(ts)
        gbps = model[path] / median / 1e9
        rows.append(
            {
                "device": device_name(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "path": path,
                "dtype": name,
                "L": args.L,
                "K": args.K,
                "n": args.n,
                "d_out": d_out,
                "d_in": d_in,
                "repeats": args.repeats,
                "median_s": f"{median:.6g}",
                "min_s": f"{min(ts):.6g}",
                "bytes": model[path],
                "GBps": f"{gbps:.4g}",
                "copy_GBps": f"{copy_gbps:.4g}",
                "frac_copy": f"{gbps / copy_gbps:.4g}",
                "speedup_vs_dense": f"{dense_median / median:.4g}",
                "peak_rss_gb": f"{peak_rss_gb():.3g}",
            }
        )
    return rows  # the weights, buffers and closures are freed with this frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help=f"use {SMALL_SHAPE} modules")
    parser.add_argument("--L", type=int, default=12, help="candidate modules per edit")
    parser.add_argument("--K", type=int, default=6, help="selected modules per edit")
    parser.add_argument("--n", type=int, default=16, help="rank of each module's update")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument("--out", type=Path, help="CSV file to write")
    args = parser.parse_args(argv)
    if not 0 < args.K <= args.L:
        parser.error("need 0 < K <= L")
    shape = SMALL_SHAPE if args.small else FULL_SHAPE
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[dict] = []
    for name in args.dtypes:  # one dtype at a time keeps peak memory down
        rows += run_dtype(name, args, shape)
        gc.collect()

    print(f"device: {device_name()}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    print(
        f"modules {shape[0]}x{shape[1]}, L={args.L}, K={args.K}, n={args.n}, "
        f"{args.repeats} interleaved repeats after warm-up"
    )
    header = f"{'dtype':5} {'path':13} {'median ms':>10} {'min ms':>9} {'MB/edit':>9} "
    print(header + f"{'GB/s':>7} {'of copy':>8} {'vs dense':>9}")
    for r in rows:
        print(
            f"{r['dtype']:5} {r['path']:13} {float(r['median_s']) * 1e3:10.2f} "
            f"{float(r['min_s']) * 1e3:9.2f} {r['bytes'] / 1e6:9.1f} {float(r['GBps']):7.2f} "
            f"{float(r['frac_copy']):8.2f} {float(r['speedup_vs_dense']):8.2f}x"
        )
    print(f"peak RSS {peak_rss_gb():.2f} GB")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
