"""The paper's published numbers, keyed by this project's model, dataset, variant and metric names.

Only numbers printed in the paper's main results table are here (ZsRE Efficacy, Generalization,
Specificity and Retention; CounterFact Efficacy), in percent as published: HiEdit, its random-mask
ablation and RLEdit on Llama-3-8B-Instruct, and AlphaEdit on Gemma-2-9B. The table's RECT row
(Gemma-2-9B) is an editor this project does not run, and the ablation table repeats the same
numbers or gives only bounds ("< 81"), so nothing else is recorded: a missing key means the paper
publishes no number for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PAPER_COLUMNS = ("model", "dataset", "variant", "metric", "value")

# The paper's row name of each variant recorded here (the registry's ``paper_row`` agrees: a test
# checks it); "Ret." is the retention of edit efficacy (our retention_efficacy).
PAPER_ROWS: dict[str, str] = {
    "rledit": "RLEdit",
    "hiedit-rand": "HiEdit (rand)",
    "hiedit": "Ours (full)",
    "alphaedit": "AlphaEdit",
}
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
    ("gemma2-9b", "zsre", "alphaedit"): {
        "efficacy": 15.79,
        "generalization": 15.32,
        "specificity": 20.21,
        "retention_efficacy": 13.19,
    },
    ("gemma2-9b", "counterfact", "alphaedit"): {"efficacy": 38.17},
}


def paper_number(model: str, dataset: str, variant: str, metric: str) -> float | None:
    """The published number (percent) for this cell, or ``None`` where the paper gives none."""
    return _PUBLISHED.get((model, dataset, variant), {}).get(metric)


def paper_has(model: str, dataset: str, metric: str) -> bool:
    """Whether the paper publishes ``metric`` for any editor on this model × dataset."""
    return any(
        metric in values for (m, d, _), values in _PUBLISHED.items() if (m, d) == (model, dataset)
    )


def paper_numbers() -> pd.DataFrame:
    """Every published number as a tidy table with columns :data:`PAPER_COLUMNS` (percent)."""
    import pandas as pd

    rows = [
        {"model": m, "dataset": d, "variant": v, "metric": metric, "value": value}
        for (m, d, v), metrics in _PUBLISHED.items()
        for metric, value in metrics.items()
    ]
    return pd.DataFrame(rows, columns=list(PAPER_COLUMNS))
