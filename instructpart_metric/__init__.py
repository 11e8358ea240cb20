"""InstructPart's metrics: gIoU, cIoU, P@50, P@50:95 of binary part masks.

The core (`core.py`) is pure numpy; `instructpart_metric.py` wraps it as an `evaluate` module
(`instructpart_metric.load()` from any folder, or `evaluate.load("ORG/instructpart")` for the published
Space); `python -m instructpart_metric score` scores a folder of predicted PNGs against the benchmark.
Definitions and conventions: README.md here.
"""

import os

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


def load(**kwargs):
    """The `evaluate` module of this installed package, from any working folder: `evaluate.load` of the
    package's own folder (offline; keyword arguments such as `cache_dir`, `num_process`, `process_id` and
    `experiment_id` go to `evaluate.load`)."""
    import evaluate

    return evaluate.load(os.path.dirname(os.path.abspath(__file__)), **kwargs)


__all__ = [
    "METRIC_KEYS",
    "PRECISION_NUMERATORS",
    "StreamingScorer",
    "as_mask",
    "format_table",
    "load",
    "mask_counts",
    "metrics_from_counts",
    "results_dict",
    "sample_iou",
]
