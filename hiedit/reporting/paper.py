"""The paper's published numbers, keyed by this project's model, dataset, variant and metric names.

Only numbers printed in the paper's main results table are here (Llama-3-8B-Instruct; ZsRE
Efficacy, Generalization, Specificity and Retention; CounterFact Efficacy), in percent as
published. The paper's other rows are baselines this project does not run (AlphaEdit, RECT on
Gemma-2-9B), and its ablation table repeats the same numbers or gives only bounds ("< 81"), so
nothing else is recorded: a missing key means the paper publishes no number for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PAPER_COLUMNS = ("model", "dataset", "variant", "metric", "value")

# The paper's "RLEdit", "HiEdit (rand)" and "Ours (full)" rows map to our rledit, hiedit-rand and
# hiedit variants; "Ret." is the retention of edit efficacy (our retention_efficacy).
_PUBLISHED: dict[tuple[str, str, str], dict[str, float]] = {
    ("llama3-8b", "zsre", "rledit"): {
        "efficacy": 81.43,
        "generalization": 79.49,
        "specificity": 42.73,
        "retention_efficacy": 70.72,
    },
    ("llama3-8b", "zsre", "hiedit-rand"): {
        "efficacy": 81.95,
        "generalization": 79.63,
        "specificity": 47.97,
        "retention_efficacy": 74.66,
    },
    ("llama3-8b", "zsre", "hiedit"): {
        "efficacy": 82.10,
        "generalization": 79.99,
        "specificity": 48.42,
        "retention_efficacy": 75.16,
    },
    ("llama3-8b", "counterfact", "rledit"): {"efficacy": 66.35},
    ("llama3-8b", "counterfact", "hiedit-rand"): {"efficacy": 66.40},
    ("llama3-8b", "counterfact", "hiedit"): {"efficacy": 66.53},
}


def paper_number(model: str, dataset: str, variant: str, metric: str) -> float | None:
    """The published number (percent) for this cell, or ``None`` where the paper gives none."""
    return _PUBLISHED.get((model, dataset, variant), {}).get(metric)


def paper_numbers() -> pd.DataFrame:
    """Every published number as a tidy table with columns :data:`PAPER_COLUMNS` (percent)."""
    import pandas as pd

    rows = [
        {"model": m, "dataset": d, "variant": v, "metric": metric, "value": value}
        for (m, d, v), metrics in _PUBLISHED.items()
        for metric, value in metrics.items()
    ]
    return pd.DataFrame(rows, columns=list(PAPER_COLUMNS))
