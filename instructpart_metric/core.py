"""gIoU, cIoU, P@50 and P@50:95 of binary masks: a pure-numpy streaming core.

Every (prediction, reference) pair is reduced on arrival to two integers,
I = |pred ∧ ref| and U = |pred ∨ ref|; the scorer keeps only those counts (and
each sample's labels and key), so scorers of different processes merge exactly.

    IoU     = I / U per sample, and 1 when U = 0 (both masks empty: LISA's no-object rule)
    gIoU    = mean of the per-sample IoU
    cIoU    = ΣI / ΣU over all samples
    P@k/20  = share of samples with IoU >= k/20, decided in integers: 20·I >= k·U
    P@50    = P@10/20;  P@50:95 = mean of P@k/20 for k = 10, 11, ..., 19 (COCO's grid 0.50:0.05:0.95)

This module imports numpy only (no PIL, datasets, evaluate or torch): the
evaluate script ships it next to itself, so it must stay self-contained.
`read_mask_png`, the one rule for reading a mask file (score CLI, report, the metric Space),
imports PIL when it is called.
"""

import math
from collections.abc import Iterable
from typing import Any, Union

import numpy as np

# The order of the paper's tables.
METRIC_KEYS = ("gIoU", "cIoU", "P@50:95", "P@50")
# P@t for t = k / 20: the ten COCO thresholds 0.50, 0.55, ..., 0.95 as integer numerators over 20.
PRECISION_NUMERATORS = tuple(range(10, 20))
PRECISION_DENOMINATOR = 20
# Single-channel PIL modes whose pixel values are read as "non-zero = foreground".
MASK_IMAGE_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
# 20·I and k·U must not overflow int64 in the vectorised precision test.
MAX_COUNT = 2**58

Label = str | int


def _where(index) -> str:
    return "" if index is None else f"sample {index}: "


def as_mask(value: Any, *, role: str = "prediction", index=None, threshold: float | None = None) -> np.ndarray:
    """A 2-D bool or integer array (non-zero = foreground) from a mask given as an array, list or PIL image.

    Args:
        value: (H, W) bool or integer array (non-zero pixels are foreground), a nested list of
            those, a single-channel PIL image (modes 1, L, P, I, I;16) or anything `np.asarray` reads
            (a CPU tensor). With `threshold`, an integer or float prediction is thresholded
            (foreground = value > threshold); a bool one passes unchanged for a threshold in [0, 1)
            and is refused for any other (it would empty or fill it). Without it, float predictions
            are refused. References are never thresholded.
        role: "prediction" or "reference", for messages.
        index: the sample's index or key, for messages.
    Returns:
        An array of shape (H, W), dtype bool or integer, never copied when it already is one and no
        threshold is given.
    """
    where = _where(index)
    array = _mask_array(value, role, where)
    kind = array.dtype.kind
    if role == "prediction" and threshold is not None:
        _check_threshold(threshold)
        if kind == "b":
            _check_bool_mask_threshold(threshold, role, where)
            return array
    if kind == "b" or role != "prediction" or threshold is None:
        if kind == "f":
            raise ValueError(_unthresholded_float_message(array, role, where))
        return array
    if kind == "f" and np.isnan(array).any():
        raise ValueError(f"{where}{role} contains NaN")
    # numpy compares an integer array with a float threshold exactly (no wrap-around of the dtype).
    return array > threshold


def _mask_array(value: Any, role: str, where: str) -> np.ndarray:
    """`value` as a non-empty 2-D array of a bool, integer or float dtype, or a ValueError saying what it is."""
    if value is None:
        raise ValueError(f"{where}{role} is None")
    mode = getattr(value, "mode", None)
    if isinstance(mode, str) and hasattr(value, "getbands"):  # a PIL image, recognised without importing PIL
        if mode not in MASK_IMAGE_MODES:
            raise ValueError(
                f"{where}{role} is a PIL image of mode {mode!r}: expected a single-channel mask "
                f"(mode {', '.join(MASK_IMAGE_MODES[:5])})"
            )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{where}{role} is not an array: {str(error).splitlines()[0]}") from None
    if array.ndim != 2:
        raise ValueError(f"{where}{role} must be a 2-D (H, W) mask, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{where}{role} has no pixels (shape {array.shape})")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where}{role} has unsupported dtype {array.dtype}: expected a bool or integer mask")
    return array


def _check_threshold(threshold) -> None:
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got nan")


def _check_bool_mask_threshold(threshold, role: str, where: str) -> None:
    # As 0/1 values a bool mask passes any threshold in [0, 1) unchanged; any other would empty or fill it, which
    # is never what a threshold meant for scores wants.
    if not 0 <= threshold < 1:
        raise ValueError(
            f"{where}{role} is a bool mask: threshold={threshold} would make it all "
            f"{'background' if threshold >= 1 else 'foreground'}; thresholds apply to integer or float scores"
        )


def _unthresholded_float_message(array: np.ndarray, role: str, where: str) -> str:
    if role != "prediction":
        return f"{where}{role} has float dtype {array.dtype}: references must be bool or integer masks"
    return (
        f"{where}{role} has float dtype {array.dtype}: pass threshold= (foreground = value > threshold) "
        "or give a bool/integer mask"
    )


def _pixels(image) -> np.ndarray:
    """The (H, W) pixel values, viewed in place through Pillow's Arrow export where it can
    (np.asarray copies them, which costs about half as much as decoding the PNG)."""
    try:
        import pyarrow as pa

        flat = pa.array(image)
    except Exception:  # no pyarrow, or e.g. rows in several memory blocks: ValueError, TypeError, ArrowException
        return np.asarray(image)
    return flat.to_numpy(zero_copy_only=True).reshape(image.height, image.width)


def _unreadable(name: str, error: Exception) -> ValueError:
    return ValueError(f"{name}: unreadable PNG ({type(error).__name__}: {error})")


def read_mask_png(source, name: str, *, shape: tuple | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode a single-channel PNG (a path, a binary file or bytes) to a read-only (H, W) array, non-zero =
    foreground: the one rule every reader of mask files follows (PNG only; modes 1, L, P, I, I;16, so palette
    and 16-bit masks count their non-zero values; RGB/RGBA refused, since which channel holds the mask is a guess).

    The size is checked from the PNG header before anything is decoded: `shape` (H, W) must match exactly
    (masks are never resized), and at most `max_pixels` pixels are decoded. Errors are ValueErrors whose
    message starts with `name`.
    """
    import io

    from PIL import Image

    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except Exception as error:  # PIL reports unreadable files through several exception types
        raise _unreadable(name, error) from None
    with image:
        if image.format != "PNG":
            raise ValueError(f"{name}: not a PNG file ({image.format})")
        if image.mode not in MASK_IMAGE_MODES:
            raise ValueError(f"{name}: a mode-{image.mode} image; a mask must be single-channel (mode 1, L, P or I)")
        width, height = image.size
        if shape is not None and (height, width) != tuple(shape):
            raise ValueError(
                f"{name}: {width}x{height} pixels, but its ground-truth mask is {shape[1]}x{shape[0]}; "
                "masks are never resized"
            )
        if max_pixels is not None and width * height > max_pixels:
            raise ValueError(f"{name}: {width}x{height} pixels, more than the {max_pixels:,} this reader takes")
        try:
            image.load()
        except Exception as error:
            raise _unreadable(name, error) from None
        return _pixels(image)


def _popcount(packed: np.ndarray) -> int:
    """Set bits of a 1-D uint8 array: popcounts of 8-byte words, summed in uint32 where that is exact."""
    whole = packed.size - packed.size % 8
    accumulator = np.uint32 if 8 * packed.size < 2**32 else np.uint64  # uint32 sums run ~2x faster
    total = int(np.bitwise_count(packed[:whole].view(np.uint64)).sum(dtype=accumulator)) if whole else 0
    if whole < packed.size:
        total += int(np.bitwise_count(packed[whole:]).sum(dtype=np.uint64))
    return total


def array_counts(prediction: np.ndarray, reference: np.ndarray) -> tuple:
    """(I, U) of two same-shape bool/integer arrays, non-zero = foreground; no validation.

    Why bits: packing reads each mask once (the memory traffic of one count_nonzero pass) and
    the rest runs on 1/8 of the data, which keeps the core near the floor of counting the masks.
    """
    packed_prediction = np.packbits(prediction, axis=None)
    packed_reference = np.packbits(reference, axis=None)
    intersection = _popcount(packed_prediction & packed_reference)
    union = _popcount(np.bitwise_or(packed_prediction, packed_reference, out=packed_prediction))
    return intersection, union


def mask_counts(prediction: Any, reference: Any, *, index=None, threshold: float | None = None) -> tuple:
    """Validate one mask pair and return `(intersection, union)` as Python ints.

    The pair is compared at the reference's resolution: shapes must be equal (never resized).
    `index` (a sample index or key) prefixes every error message.
    """
    reference = as_mask(reference, role="reference", index=index)
    prediction = as_mask(prediction, role="prediction", index=index, threshold=threshold)
    if prediction.shape != reference.shape:
        raise ValueError(
            f"{_where(index)}prediction shape {prediction.shape} does not match reference shape {reference.shape}"
        )
    return array_counts(prediction, reference)


def check_counts(intersection: Any, union: Any, *, index=None) -> tuple:
    """`(intersection, union)` as Python ints after checking 0 <= I <= U."""
    values = []
    for name, value in (("intersection", intersection), ("union", union)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{_where(index)}{name} must be an integer pixel count, got {value!r}")
        values.append(int(value))
    intersection, union = values
    if not 0 <= intersection <= union:
        raise ValueError(f"{_where(index)}counts must satisfy 0 <= intersection <= union, got {intersection}, {union}")
    if union > MAX_COUNT:
        raise ValueError(f"{_where(index)}union {union} is larger than any mask ({MAX_COUNT})")
    return intersection, union


def sample_iou(intersection: int, union: int) -> float:
    """I / U, and 1.0 when U = 0 (both masks empty)."""
    return intersection / union if union else 1.0


def metrics_from_counts(intersections: Iterable[int], unions: Iterable[int]) -> dict:
    """gIoU, cIoU, P@50, P@50:95 of per-sample counts (fractions in [0, 1]).

    Precision is decided exactly in integers (20·I >= k·U); gIoU is the correctly rounded sum
    (math.fsum) of the correctly rounded per-sample ratios; cIoU is one division of two exact sums.
    cIoU is 1.0 when every sample has U = 0, consistently with the per-sample rule.
    """
    i, u = (np.asarray(c if isinstance(c, np.ndarray) else list(c), dtype=np.int64) for c in (intersections, unions))
    count = i.size
    if count == 0:
        raise ValueError("no samples to score")
    if u.size != count:
        raise ValueError(f"{count} intersections but {u.size} unions")
    nonempty = u > 0
    ious = np.ones(count, dtype=np.float64)
    ious[nonempty] = i[nonempty] / u[nonempty]
    scaled_i = PRECISION_DENOMINATOR * i
    hits = [int(np.count_nonzero(scaled_i >= k * u)) for k in PRECISION_NUMERATORS]
    total_i, total_u = int(i.sum()), int(u.sum())
    return {
        "gIoU": math.fsum(ious.tolist()) / count,
        "cIoU": total_i / total_u if total_u else 1.0,
        "P@50:95": sum(hits) / (len(PRECISION_NUMERATORS) * count),
        "P@50": hits[0] / count,
    }


class StreamingScorer:
    """Scores mask pairs as they arrive, holding only integer counts per sample.

    Each sample carries optional `labels` (e.g. instruction_type, object, part, affordance,
    action) for per-group results, and an optional `key` (e.g. the sample id) that must be unique:
    it guards against scoring a sample twice, also across `merge`.

        scorer = StreamingScorer()
        scorer.add(prediction, reference, labels={"instruction_type": "human"}, key="x-kettle-handle")
        scorer.compute()                          # {"gIoU": ..., "cIoU": ..., "P@50:95": ..., "P@50": ...}
        scorer.compute(by="instruction_type")     # {"human": {...}, ...}

    `state_dict()` is plain Python and numpy (picklable; gather it across processes with
    `accelerate.utils.gather_object`) and `from_state_dict` / `merge` rebuild the union.
    """

    STATE_FORMAT = "instructpart_metric.StreamingScorer/1"

    def __init__(self):
        self._intersections: list = []
        self._unions: list = []
        self._labels: list = []
        self._keys: list = []
        self._key_index: dict = {}

    def __len__(self) -> int:
        return len(self._unions)

    def __repr__(self) -> str:
        return f"StreamingScorer({len(self)} samples)"

    def _where(self, key) -> Any:
        return len(self) if key is None else key

    @staticmethod
    def _check_labels(labels, where) -> dict:
        if labels is None:
            return {}
        if not isinstance(labels, dict):
            raise ValueError(
                f"{_where(where)}labels must be a dict of label name -> value, got {type(labels).__name__}"
            )
        for name, value in labels.items():
            if not isinstance(name, str):
                raise ValueError(f"{_where(where)}label names must be strings, got {name!r}")
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, np.integer)):
                raise ValueError(f"{_where(where)}label {name!r} must be a string or an integer, got {value!r}")
        return {name: value if isinstance(value, str) else int(value) for name, value in labels.items()}

    def _check_key(self, key) -> None:
        if key is None:
            return
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
            raise ValueError(f"sample key must be a string or an integer, got {key!r}")
        if key in self._key_index:
            raise ValueError(f"sample {key}: already scored (keys must be unique)")

    def _append(self, intersection: int, union: int, labels: dict, key) -> None:
        if key is not None:
            key = key if isinstance(key, str) else int(key)
            self._key_index[key] = len(self._unions)
        self._intersections.append(intersection)
        self._unions.append(union)
        self._labels.append(labels)
        self._keys.append(key)

    def add(
        self,
        prediction: Any,
        reference: Any,
        labels: dict | None = None,
        key: Label | None = None,
        *,
        threshold: float | None = None,
    ) -> float:
        """Score one pair (see `as_mask` for accepted masks); returns its IoU."""
        where = self._where(key)
        self._check_key(key)
        labels = self._check_labels(labels, where)
        intersection, union = mask_counts(prediction, reference, index=where, threshold=threshold)
        self._append(intersection, union, labels, key)
        return sample_iou(intersection, union)

    def add_counts(self, intersection: int, union: int, labels: dict | None = None, key: Label | None = None) -> float:
        """Add one sample already reduced to its counts; returns its IoU."""
        where = self._where(key)
        self._check_key(key)
        labels = self._check_labels(labels, where)
        intersection, union = check_counts(intersection, union, index=where)
        self._append(intersection, union, labels, key)
        return sample_iou(intersection, union)

    def _group_indices(self, by) -> dict:
        names = (by,) if isinstance(by, str) else tuple(by)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"by must be a label name or a tuple of label names, got {by!r}")
        groups: dict = {}
        for position, labels in enumerate(self._labels):
            try:
                value = tuple(labels[name] for name in names)
            except KeyError as missing:
                key = self._keys[position]
                raise ValueError(
                    f"sample {position if key is None else key} has no label {missing.args[0]!r} "
                    f"(its labels: {', '.join(labels) or 'none'})"
                ) from None
            groups.setdefault(value if len(names) > 1 else value[0], []).append(position)
        return groups

    def compute(self, by: None | str | tuple = None) -> dict:
        """The four metrics over all samples, or `{label value: metrics}` per group (first-seen order).

        `by` is a label name, or a tuple of names (then the groups are keyed by value tuples).
        """
        if not len(self):
            raise ValueError("no samples to score")
        intersections = np.asarray(self._intersections, dtype=np.int64)
        unions = np.asarray(self._unions, dtype=np.int64)
        if by is None:
            return metrics_from_counts(intersections, unions)
        return {
            value: metrics_from_counts(intersections[positions], unions[positions])
            for value, positions in self._group_indices(by).items()
        }

    def group_sizes(self, by: str | tuple) -> dict:
        """`{label value: number of samples}`, in the order of `compute(by=...)`."""
        return {value: len(positions) for value, positions in self._group_indices(by).items()}

    def samples(self) -> list:
        """One dict per sample, in arrival order: key, labels, intersection, union, iou."""
        return [
            {"key": key, "labels": dict(labels), "intersection": i, "union": u, "iou": sample_iou(i, u)}
            for key, labels, i, u in zip(self._keys, self._labels, self._intersections, self._unions)
        ]

    def state_dict(self) -> dict:
        """Everything the scorer holds, as plain Python and numpy (picklable, JSON-able after tolist)."""
        return {
            "format": self.STATE_FORMAT,
            "intersection": np.asarray(self._intersections, dtype=np.int64),
            "union": np.asarray(self._unions, dtype=np.int64),
            "labels": [dict(labels) for labels in self._labels],
            "keys": list(self._keys),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "StreamingScorer":
        scorer = cls()
        scorer.merge(state)
        return scorer

    def merge(self, other: Union["StreamingScorer", dict], *, duplicates: str = "error") -> "StreamingScorer":
        """Add another scorer's samples (or a `state_dict`) in place; returns self.

        The result equals scoring the union of both sample sets. A key present in both is an error,
        or with `duplicates="drop"` the other's copy is dropped when its counts and labels are the
        same (e.g. the samples a distributed sampler repeats to even out the last batch).
        """
        if duplicates not in ("error", "drop"):
            raise ValueError(f"duplicates must be 'error' or 'drop', got {duplicates!r}")
        state = other.state_dict() if isinstance(other, StreamingScorer) else other
        if not isinstance(state, dict) or state.get("format") != self.STATE_FORMAT:
            raise ValueError(f"not a StreamingScorer state (expected format {self.STATE_FORMAT!r})")
        intersections, unions = np.asarray(state["intersection"]), np.asarray(state["union"])
        labels, keys = state["labels"], state["keys"]
        if not len(intersections) == len(unions) == len(labels) == len(keys):
            raise ValueError("corrupt StreamingScorer state: its columns differ in length")
        incoming = []
        rows = zip(intersections.tolist(), unions.tolist(), labels, keys)
        for position, (i, u, sample_labels, key) in enumerate(rows):
            where = position if key is None else key
            i, u = check_counts(i, u, index=where)
            sample_labels = self._check_labels(sample_labels, where)
            if key is not None and key in self._key_index:
                mine = self._key_index[key]
                same = (self._intersections[mine], self._unions[mine], self._labels[mine]) == (i, u, sample_labels)
                if duplicates == "drop" and same:
                    continue
                detail = "" if same else " with different counts or labels"
                raise ValueError(f"sample {key}: present in both scorers{detail}")
            incoming.append((i, u, sample_labels, key))
        seen = set()
        for _, _, _, key in incoming:
            if key is not None:
                if key in seen:
                    raise ValueError(f"sample {key}: appears twice in the merged state")
                seen.add(key)
        for i, u, sample_labels, key in incoming:
            self._append(i, u, sample_labels, key)
        return self
