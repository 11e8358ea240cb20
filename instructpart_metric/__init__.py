"""InstructPart's metrics: gIoU, cIoU, P@50, P@50:95 of binary part masks.

The core (`core.py`) is pure numpy; `instructpart_metric.py` wraps it as an `evaluate` module
(`evaluate.load("path/to/instructpart_metric")`); `python -m instructpart_metric score` scores a
folder of predicted PNGs against the benchmark. Definitions and conventions: README.md here.
"""

from .core import (
    METRIC_KEYS,
    PRECISION_NUMERATORS,
    StreamingScorer,
    as_mask,
    mask_counts,
    metrics_from_counts,
    sample_iou,
)
from .tables import format_table, results_dict

__all__ = [
    "METRIC_KEYS",
    "PRECISION_NUMERATORS",
    "StreamingScorer",
    "as_mask",
    "format_table",
    "mask_counts",
    "metrics_from_counts",
    "results_dict",
    "sample_iou",
]
