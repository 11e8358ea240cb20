"""InstructPart part-segmentation metrics (gIoU, cIoU, P@50, P@50:95) as an `evaluate` module.

This script only wraps `core.py`, which `evaluate` copies next to it (the relative import
below): the pair `<name>.py` + `core.py` is self-contained (numpy, datasets, evaluate), so the
script may be renamed (the Hub Space calls it `instructpart.py`) without changing a line.
"""

import datasets
import numpy as np

try:
    import evaluate
except ImportError as error:  # the package's base install leaves the `evaluate` library out
    raise ImportError("the evaluate module wrapper needs evaluate: pip install instructpart[evaluate]") from error

from .core import StreamingScorer, mask_counts

# Stored for samples added without groups (the string feature refuses None).
NO_GROUP = ""

_CITATION = """\
@inproceedings{wan2025instructpart,
  title     = {InstructPart: Task-Oriented Part Segmentation with Instruction Reasoning},
  author    = {Wan, Zifu and Xie, Yaqi and Zhang, Ce and Lin, Zhiqiu and Wang, Zihan and
               Stepputtis, Simon and Ramanan, Deva and Sycara, Katia},
  booktitle = {Proceedings of the 63rd Annual Meeting of the Association for Computational Linguistics (ACL)},
  year      = {2025}
}
"""

_DESCRIPTION = """\
Scores binary part masks as the InstructPart benchmark does. Per sample, I = |pred AND ref| and
U = |pred OR ref| at the reference's resolution, IoU = I / U (1 when both masks are empty).
gIoU is the mean per-sample IoU, cIoU is sum(I) / sum(U), P@50 is the share of samples with
IoU >= 0.5 and P@50:95 the mean of that share over the thresholds 0.50, 0.55, ..., 0.95,
decided exactly in integers (20 I >= k U). Results are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted masks, one per sample: (H, W) bool or integer arrays
        (non-zero = foreground), nested lists, or single-channel PIL images (mode 1 or L).
        Float arrays need `threshold`.
    references: list of ground-truth masks of the same shapes (never resized).
    groups (optional): list of one string label per sample (e.g. the instruction type or the
        object); the output then holds the four metrics per group as well.
    threshold (optional): foreground = value > threshold for every integer or float prediction
        (bool ones pass for a threshold in [0, 1), else are refused); without it, integers count every
        non-zero pixel.
Returns:
    gIoU, cIoU, P@50:95, P@50: floats in [0, 1]; num_samples: int;
    groups (only when groups were given): {group: {gIoU, cIoU, P@50:95, P@50, num_samples}}.
Examples:
    >>> import numpy as np
    >>> import evaluate
    >>> metric = evaluate.load("path/to/instructpart_metric")
    >>> truth = np.zeros((4, 4), dtype=bool); truth[:2] = True         # 8 pixels
    >>> half = np.zeros((4, 4), dtype=bool); half[:1] = True           # 4 of them
    >>> metric.compute(predictions=[truth, half], references=[truth, truth])
    {'gIoU': 0.75, 'cIoU': 0.75, 'P@50:95': 0.55, 'P@50': 1.0, 'num_samples': 2}
"""


class InstructPartMetric(evaluate.Metric):
    """Each pair is reduced to its integer counts as soon as it is added (by `core.mask_counts`),
    so the module's cache (and what processes exchange under `num_process`) holds two integers
    and a group label per sample instead of masks: `add_batch` + `compute` costs little more
    than counting the masks' pixels. Hence the features are the counts, not the masks."""

    # The running sample index (for error messages) and whether samples carry groups, per stream.
    _samples_added = 0
    _grouped = None
    # Counts not yet handed to evaluate's writer. Each `super().add_batch` call costs about as much as
    # counting a large mask pair (feature encoding, an Arrow batch), and users call `add_batch` once per
    # sample: batching the counts keeps that path near the floor. Flushed before `compute` (hence before
    # evaluate gathers the processes' cache files), so what is written and merged is unchanged.
    FLUSH_EVERY = 4096
    _pending = None

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "intersection": datasets.Value("int64"),
                    "union": datasets.Value("int64"),
                    "group": datasets.Value("string"),
                }
            ),
            reference_urls=["https://zifuwan.github.io/InstructPart/", "https://arxiv.org/abs/2505.18291"],
        )

    def _reset_stream(self):
        self._samples_added = 0
        self._grouped = None
        self._pending = None

    def _flush(self):
        if self._pending and self._pending["union"]:
            pending, self._pending = self._pending, None
            super().add_batch(**pending)

    def _check_groups(self, groups, count):
        grouped = groups is not None
        if self._grouped is not None and grouped != self._grouped:
            raise ValueError("groups must be given for every added sample or for none")
        if not grouped:
            return [NO_GROUP] * count
        if isinstance(groups, str) or len(groups) != count:
            raise ValueError(f"groups must be a list with one label per sample ({count})")
        for offset, group in enumerate(groups):
            if not isinstance(group, str) or group == NO_GROUP:
                index = self._samples_added + offset
                raise ValueError(f"sample {index}: group must be a non-empty string, got {group!r}")
        return list(groups)

    def add_batch(self, *, predictions=None, references=None, groups=None, threshold=None):
        """Reduce a batch of mask pairs to counts and append them to the module's cache."""
        if predictions is None or references is None:
            raise ValueError("add_batch needs both predictions and references")
        for name, masks in (("predictions", predictions), ("references", references)):
            if isinstance(masks, np.ndarray) and masks.ndim == 2 or hasattr(masks, "getbands"):
                raise ValueError(f"{name} must be a list of masks (got a single mask: wrap it in a list)")
        predictions = predictions if hasattr(predictions, "__len__") else list(predictions)
        references = references if hasattr(references, "__len__") else list(references)
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        if len(predictions) == 0:
            raise ValueError("add_batch got empty predictions and references")
        groups = self._check_groups(groups, len(predictions))
        intersections, unions = [], []
        for offset, (prediction, reference) in enumerate(zip(predictions, references)):
            i, u = mask_counts(prediction, reference, index=self._samples_added + offset, threshold=threshold)
            intersections.append(i)
            unions.append(u)
        if self._pending is None:
            self._pending = {"intersection": [], "union": [], "group": []}
        self._pending["intersection"] += intersections
        self._pending["union"] += unions
        self._pending["group"] += groups
        self._samples_added += len(unions)
        self._grouped = groups[0] != NO_GROUP
        if len(self._pending["union"]) >= self.FLUSH_EVERY:
            self._flush()

    def add(self, *, prediction=None, reference=None, group=None, threshold=None):
        """Add one mask pair (see `add_batch`)."""
        groups = None if group is None else [group]
        self.add_batch(predictions=[prediction], references=[reference], groups=groups, threshold=threshold)

    def compute(self, *, predictions=None, references=None, groups=None, threshold=None):
        """Score what was added (plus `predictions`/`references`, if given); see the module card."""
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references, groups=groups, threshold=threshold)
        elif groups is not None:
            raise ValueError("groups given without predictions and references")
        if self.num_process == 1 and not self._samples_added:
            raise ValueError("nothing to score: pass predictions and references, or add them first")
        try:
            self._flush()
            return super().compute()
        finally:
            self._reset_stream()

    def _compute(self, intersection, union, group):
        scorer = StreamingScorer()
        grouped = any(label != NO_GROUP for label in group)
        if grouped and NO_GROUP in group:
            raise ValueError("groups must be given for every sample or for none (processes disagree)")
        for i, u, label in zip(intersection, union, group):
            scorer.add_counts(i, u, labels={"group": label} if grouped else None)
        result = {**scorer.compute(), "num_samples": len(scorer)}
        if grouped:
            sizes = scorer.group_sizes("group")
            result["groups"] = {
                name: {**metrics, "num_samples": sizes[name]} for name, metrics in scorer.compute(by="group").items()
            }
        return result
