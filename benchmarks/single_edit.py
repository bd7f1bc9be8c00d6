"""Single-edit efficacy: each record edited alone on the unedited model, then scored.

The sequential stream measures edits that pile up; this isolates what one edit does. For each of
the first ``--records`` eval records: restore the base weights and the networks, edit the record,
score its edit tuple (token accuracy, the stream's ``efficacy``). Prints the mean and appends it
to ``--out`` (CSV) with the run configuration's variant and step size.

Example (the trained editor, then untrained networks with a hand-set step size)::

    python benchmarks/single_edit.py \\
        --run-config results/configs/smollm2-135m/geofacts-zsre/hiedit/seed0.json \\
        --checkpoint results/editors/smollm2-135m/geofacts-zsre/hiedit/seed0/editor.pt \\
        --eval-data results/data/geofacts-zsre/eval.parquet
    python benchmarks/single_edit.py --lr 1e-3 \\
        --run-config results/configs/smollm2-135m/geofacts-zsre/hiedit-untrained/seed0.json \\
        --eval-data results/data/geofacts-zsre/eval.parquet
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hiedit.data import read_split
from hiedit.editor import load_editor
from hiedit.evaluation.metrics import score_records
from hiedit.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", required=True, help="a job's JSON under results/configs")
    parser.add_argument("--eval-data", required=True)
    parser.add_argument("--checkpoint", help="trained editor (default: the seeded untrained one)")
    parser.add_argument("--lr", type=float, help="override editor.lr (the initial step size)")
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/bench/single_edit.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    job = json.loads(Path(args.run_config).read_text())
    if args.lr is not None:
        job["editor"]["lr"] = args.lr
    model, tokenizer = load_model(job["model"])
    editor = load_editor(job, model, tokenizer, args.checkpoint)
    records = read_split(args.eval_data)[: args.records]
    efficacy = []
    for record in tqdm(records, desc="single edits"):
        editor.reset_model()
        editor.edit_records([record])
        scores = score_records(model, tokenizer, [record], batch_size=8)
        efficacy.append(float(scores.frame["efficacy"].iloc[0]))
    editor.reset_model()
    mean = sum(efficacy) / len(efficacy)
    row = {
        "model": job["model_name"],
        "dataset": job["dataset_name"],
        "variant": job["variant"],
        "checkpoint": args.checkpoint or "",
        "lr": job["editor"]["lr"],
        "records": len(efficacy),
        "single_edit_efficacy": round(mean, 4),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerows([row])
    print(f"single-edit efficacy {mean:.4f} over {len(efficacy)} records")


if __name__ == "__main__":
    main()
