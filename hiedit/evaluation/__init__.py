"""Evaluation: the sequential edit stream, batched teacher-forced metrics and result files."""

from hiedit.evaluation.metrics import (
    Scores,
    answer_position_stats,
    metric_columns,
    score_records,
    summarize,
)
from hiedit.evaluation.outputs import LONG_COLUMNS, ResultFileError, gather, write_evaluation
from hiedit.evaluation.runinfo import collect_runinfo
from hiedit.evaluation.stream import StreamResult, StreamSettings, run_stream

__all__ = [
    "LONG_COLUMNS",
    "ResultFileError",
    "Scores",
    "StreamResult",
    "StreamSettings",
    "answer_position_stats",
    "collect_runinfo",
    "gather",
    "metric_columns",
    "run_stream",
    "score_records",
    "summarize",
    "write_evaluation",
]
