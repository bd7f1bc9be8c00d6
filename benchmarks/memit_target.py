"""CPU benchmark of MEMIT's target optimisation: the whole decoder per step vs the cached lower layers.

``hiedit.baselines.locate.optimise_target`` adds a vector δ to the output of the last edited
decoder layer and takes a few Adam steps on it. The layers below that one never see δ, so their
hidden states are computed once per record and each step runs only the layers from the last
edited one up (``reuse_lower_layers=True``, the default); ``False`` runs the whole decoder at
every step, as the public MEMIT code does. Both run here in one process on the same records of an
eval split, interleaved after a warm-up, with the setup's MEMIT settings (its layers for the
model, its ``v_num_grad_steps``, prefixes and KL term); the table gives each record's two times,
their medians and ratio, and the largest difference between the two targets relative to the
target's largest entry. The search values of the setup's section (``search``) are not applied:
the cost per step does not depend on them.

    python benchmarks/memit_target.py --setup study --model smollm2-135m \\
        --eval-data results/study/data/geofacts-zsre/eval.parquet --out study/bench/memit_target.csv
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
from hiedit.baselines.locate import generate_prefixes, optimise_target  # noqa: E402
from hiedit.baselines.memit import MEMITConfig  # noqa: E402
from hiedit.baselines.tuning import split_search  # noqa: E402
from hiedit.config import job_config, load_config, resolve_setup  # noqa: E402
from hiedit.data import read_split  # noqa: E402
from hiedit.evaluation.runinfo import cpu_name, library_version  # noqa: E402
from hiedit.models import load_model  # noqa: E402

FIELDS = [
    "kind",
    "record_id",
    "whole_s",
    "cached_s",
    "speedup",
    "steps",
    "max_rel_diff",
    "model",
    "layers",
    "z_layer",
    "n_layers",
    "v_num_grad_steps",
    "n_prefixes",
    "device",
    "threads",
    "torch",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--setup", default="study")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="geofacts-zsre")
    parser.add_argument("--eval-data", required=True)
    parser.add_argument("--n-records", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    job = job_config(
        config, resolve_setup(config, args.setup), args.model, args.dataset, "memit", 0
    )
    section, _ = split_search(job["baselines"]["memit"])
    settings = MEMITConfig.from_mapping(section, "baselines.memit")
    model, tokenizer = load_model(job["model"])
    layers = settings.layers[args.model]
    decoder_layers = model.get_decoder().layers
    z_layer = decoder_layers[layers[-1]]
    prefixes = generate_prefixes(
        model, tokenizer, settings.n_prefixes, settings.prefix_tokens, seed=0
    )
    records = read_split(args.eval_data)[: args.n_records + 1]
    if len(records) <= args.n_records:
        raise SystemExit(f"{args.eval_data}: fewer than {args.n_records + 1} records")

    def target(record, reuse):
        tick = time.perf_counter()
        found = optimise_target(
            model, tokenizer, record, z_layer, prefixes, settings, reuse_lower_layers=reuse
        )
        return found, time.perf_counter() - tick

    target(records[0], True)  # warm-up (not timed)
    target(records[0], False)
    shared = {
        "model": args.model,
        "layers": ";".join(map(str, layers)),
        "z_layer": layers[-1],
        "n_layers": len(decoder_layers),
        "v_num_grad_steps": settings.v_num_grad_steps,
        "n_prefixes": settings.n_prefixes,
        "device": cpu_name(),
        "threads": args.threads,
        "torch": library_version("torch"),
    }
    rows = []
    for i, record in enumerate(records[1:]):
        order = (True, False) if i % 2 == 0 else (False, True)  # alternate who goes first
        results = {reuse: target(record, reuse) for reuse in order}
        (cached, cached_s), (whole, whole_s) = results[True], results[False]
        diff = float((cached.z - whole.z).abs().max() / whole.z.abs().max())
        rows.append(
            {
                "kind": "record",
                "record_id": record.record_id,
                "whole_s": f"{whole_s:.4f}",
                "cached_s": f"{cached_s:.4f}",
                "speedup": f"{whole_s / cached_s:.3f}",
                "steps": whole.steps,
                "max_rel_diff": f"{diff:.2e}",
                **shared,
            }
        )
        print(f"{record.record_id}: whole {whole_s:.3f} s, cached {cached_s:.3f} s, {diff:.1e}")
    whole_median = statistics.median(float(r["whole_s"]) for r in rows)
    cached_median = statistics.median(float(r["cached_s"]) for r in rows)
    rows.append(
        {
            "kind": "median",
            "whole_s": f"{whole_median:.4f}",
            "cached_s": f"{cached_median:.4f}",
            "speedup": f"{whole_median / cached_median:.3f}",
            "max_rel_diff": f"{max(float(r['max_rel_diff']) for r in rows):.2e}",
            **shared,
        }
    )
    print(f"median: whole {whole_median:.3f} s, cached {cached_median:.3f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
