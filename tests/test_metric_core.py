"""The numpy core against hand-computed cases, a naive per-pixel loop (hypothesis) and LISA's arithmetic."""

import pickle
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from instructpart_metric import (
    METRIC_KEYS,
    StreamingScorer,
    format_table,
    mask_counts,
    metrics_from_counts,
    results_dict,
)


def masks_with(shape, intersection, prediction_only, reference_only):
    """A (prediction, reference) pair with exactly these pixel counts, laid out row-major."""
    prediction, reference = np.zeros(shape, bool), np.zeros(shape, bool)
    flat_p, flat_r = prediction.reshape(-1), reference.reshape(-1)
    a, b, c = intersection, intersection + prediction_only, intersection + prediction_only + reference_only
    flat_p[:a] = flat_r[:a] = True
    flat_p[a:b] = True
    flat_r[b:c] = True
    return prediction, reference


# ---------------------------------------------------------------- hand-made cases, values by hand


def test_exact_tie_at_one_half_counts_for_p50_only():
    prediction, reference = masks_with((4, 5), intersection=2, prediction_only=0, reference_only=2)  # I=2, U=4
    scorer = StreamingScorer()
    assert scorer.add(prediction, reference) == 0.5
    assert scorer.compute() == {"gIoU": 0.5, "cIoU": 0.5, "P@50:95": 0.1, "P@50": 1.0}


def test_exact_tie_at_three_quarters_counts_for_six_thresholds():
    prediction, reference = masks_with((4, 5), intersection=3, prediction_only=1, reference_only=0)  # I=3, U=4
    result = StreamingScorer()
    result.add(prediction, reference)
    # 0.75 >= t for t = .50 .55 .60 .65 .70 .75: six of ten thresholds.
    assert result.compute()["P@50:95"] == 0.6


def test_threshold_decided_in_integers_not_floats():
    # IoU = 7/10 exactly; a float grid (np.arange(0.5, 1, 0.05)[4] = 0.7000000000000002) would miss it.
    prediction, reference = masks_with((5, 5), intersection=7, prediction_only=3, reference_only=0)
    assert np.arange(0.5, 1.0, 0.05)[4] > 7 / 10  # the trap the integer rule avoids
    scorer = StreamingScorer()
    scorer.add(prediction, reference)
    assert scorer.compute()["P@50:95"] == 0.5  # t = .50 .55 .60 .65 .70


def test_empty_prediction_and_empty_truth_is_a_perfect_sample():
    empty = np.zeros((3, 7), bool)
    assert mask_counts(empty, empty) == (0, 0)
    scorer = StreamingScorer()
    assert scorer.add(empty, empty) == 1.0
    assert scorer.compute() == {"gIoU": 1.0, "cIoU": 1.0, "P@50:95": 1.0, "P@50": 1.0}


def test_empty_prediction_disjoint_and_full_image_cases_together():
    truth = np.zeros((4, 5), bool)
    truth[1:3, 1:4] = True  # 6 pixels
    disjoint = np.zeros((4, 5), bool)
    disjoint[0, :] = True  # 5 pixels, none in the truth
    full = np.ones((4, 5), bool)
    scorer = StreamingScorer()
    assert scorer.add(np.zeros((4, 5), bool), truth) == 0.0  # I=0, U=6
    assert scorer.add(disjoint, truth) == 0.0  # I=0, U=11
    assert scorer.add(full, truth) == 6 / 20  # I=6, U=20
    assert scorer.add(truth, truth) == 1.0  # I=6, U=6
    result = scorer.compute()
    assert result["gIoU"] == pytest.approx((0 + 0 + 0.3 + 1) / 4, abs=1e-15)
    assert result["cIoU"] == 12 / 43  # (0+0+6+6) / (6+11+20+6)
    assert result["P@50"] == 0.25
    assert result["P@50:95"] == 0.25


def test_integer_and_image_inputs_mean_non_zero_is_foreground():
    truth = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)
    as_uint8 = np.array([[0, 255, 7], [1, 0, 0]], dtype=np.uint8)  # 3 foreground pixels, 2 in the truth
    as_int = np.array([[0, -1, 2], [9, 0, 0]], dtype=np.int64)
    expected = (2, 4)
    assert mask_counts(as_uint8, truth) == expected
    assert mask_counts(as_int, truth) == expected
    assert mask_counts(Image.fromarray(as_uint8, "L"), truth) == expected
    assert mask_counts(Image.fromarray(as_uint8 > 0), Image.fromarray(truth)) == expected  # mode "1"
    assert mask_counts(as_uint8.tolist(), truth.tolist()) == expected


def test_float_predictions_need_a_threshold_and_use_greater_than():
    truth = np.array([[1, 1, 0, 0]], dtype=bool)
    probabilities = np.array([[0.9, 0.5, 0.7, 0.1]])
    with pytest.raises(ValueError, match="sample 3: prediction has float dtype float64: pass threshold="):
        mask_counts(probabilities, truth, index=3)
    assert mask_counts(probabilities, truth, threshold=0.5) == (1, 3)  # 0.5 itself is background
    with pytest.raises(ValueError, match="contains NaN"):
        mask_counts(np.array([[np.nan, 1.0, 0, 0]]), truth, threshold=0.5)
    with pytest.raises(ValueError, match="reference has float dtype"):
        mask_counts(truth, truth.astype(float), threshold=0.5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.float32])
def test_a_threshold_applies_to_integer_predictions_too(dtype):
    # The case: every pixel 10, the threshold 127, so nothing is foreground (before: all of it was).
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    assert mask_counts(np.full((4, 4), 10, dtype), truth, threshold=127) == (0, 8)
    scores = np.array([[0, 127, 128, 255], [200, 10, 0, 255], [0, 0, 0, 0], [0, 0, 0, 0]], dtype)
    # value > 127 by hand: row 0 -> 128, 255 in the truth; row 1 -> 200, 255 in the truth. I = 4, U = 8.
    assert mask_counts(scores, truth, threshold=127) == (4, 8)
    assert mask_counts(scores, truth, threshold=127.5) == (4, 8)
    if np.dtype(dtype).kind != "f":
        assert mask_counts(scores, truth) == (6, 8)  # no threshold: every non-zero pixel
    assert StreamingScorer().add(scores, truth, threshold=127) == 4 / 8


def test_thresholds_outside_the_dtype_range_compare_exactly():
    truth = np.zeros((2, 2), bool)
    truth[0] = True
    wide = np.array([[40000, 300], [65535, 0]], np.uint16)
    assert mask_counts(wide, truth, threshold=32767) == (1, 3)  # 40000 and 65535
    assert mask_counts(wide.astype(np.uint8) * 0 + 255, truth, threshold=300) == (0, 2)  # no wrap-around to 44
    assert mask_counts(np.zeros((2, 2), np.uint8), truth, threshold=-1) == (2, 4)  # every value > -1


def test_a_threshold_on_a_bool_prediction_is_refused_unless_it_keeps_the_mask():
    truth = np.array([[1, 1, 0, 0]], dtype=bool)
    prediction = np.array([[1, 0, 1, 0]], dtype=bool)
    assert mask_counts(prediction, truth, threshold=0.5) == (1, 3)  # 0/1 > 0.5 is the mask itself
    with pytest.raises(
        ValueError, match="sample 2: prediction is a bool mask: threshold=127 would make it all background"
    ):
        mask_counts(prediction, truth, index=2, threshold=127)
    with pytest.raises(ValueError, match="would make it all foreground"):
        mask_counts(prediction, truth, threshold=-0.5)
    with pytest.raises(ValueError, match="threshold must be a number"):
        mask_counts(prediction.astype(np.uint8), truth, threshold="127")
    # references are never thresholded: an integer reference keeps "non-zero = foreground"
    assert mask_counts(np.array([[0, 200, 0, 0]], np.uint8), np.array([[1, 1, 0, 0]], np.uint8), threshold=127) == (
        1,
        2,
    )


@pytest.mark.parametrize(
    "prediction, reference, message",
    [
        (
            np.zeros((4, 5), bool),
            np.zeros((4, 6), bool),
            r"sample 7: prediction shape \(4, 5\) does not match reference shape \(4, 6\)",
        ),
        (None, np.zeros((2, 2), bool), "sample 7: prediction is None"),
        (np.zeros((2, 2), bool), None, "sample 7: reference is None"),
        (np.zeros((2, 2, 1), bool), np.zeros((2, 2), bool), r"must be a 2-D \(H, W\) mask, got shape \(2, 2, 1\)"),
        (np.zeros((0, 5), bool), np.zeros((0, 5), bool), "has no pixels"),
        (np.array([["a", "b"]]), np.zeros((1, 2), bool), "unsupported dtype"),
        ([[1, 0], [1]], np.zeros((2, 2), bool), "sample 7: prediction is not an array"),
        (Image.new("RGB", (2, 2)), np.zeros((2, 2), bool), "PIL image of mode 'RGB'"),
    ],
)
def test_bad_inputs_get_one_line_errors_naming_the_sample(prediction, reference, message):
    with pytest.raises(ValueError, match=message) as error:
        mask_counts(prediction, reference, index=7)
    assert "\n" not in str(error.value)


def test_scorer_refuses_nothing_to_score_duplicate_keys_and_bad_counts():
    scorer = StreamingScorer()
    with pytest.raises(ValueError, match="no samples"):
        scorer.compute()
    with pytest.raises(ValueError, match="no samples"):
        metrics_from_counts([], [])
    scorer.add_counts(1, 2, key="a")
    with pytest.raises(ValueError, match="sample a: already scored"):
        scorer.add_counts(1, 2, key="a")
    with pytest.raises(ValueError, match="0 <= intersection <= union"):
        scorer.add_counts(3, 2)
    with pytest.raises(ValueError, match="integer pixel count"):
        scorer.add_counts(1.0, 2)
    with pytest.raises(ValueError, match="sample b: prediction shape"):
        scorer.add(np.zeros((2, 2)), np.zeros((2, 3), bool), key="b", threshold=0.5)
    assert len(scorer) == 1  # failed adds leave nothing behind


# ---------------------------------------------------------------- groups, tables, results


def test_groups_by_label_and_label_tuples():
    scorer = StreamingScorer()
    scorer.add_counts(1, 2, labels={"instruction_type": "human", "object": "kettle"})
    scorer.add_counts(3, 4, labels={"instruction_type": "gpt4", "object": "kettle"})
    scorer.add_counts(0, 5, labels={"instruction_type": "human", "object": "sofa"})
    by_type = scorer.compute(by="instruction_type")
    assert list(by_type) == ["human", "gpt4"]
    assert by_type["human"] == {"gIoU": 0.25, "cIoU": 1 / 7, "P@50:95": 0.05, "P@50": 0.5}
    assert by_type["gpt4"]["P@50:95"] == 0.6
    assert scorer.compute(by=("object", "instruction_type"))[("kettle", "gpt4")]["gIoU"] == 0.75
    assert scorer.group_sizes("object") == {"kettle": 2, "sofa": 1}
    scorer.add_counts(1, 1, labels={"instruction_type": "human"})
    with pytest.raises(ValueError, match="sample 3 has no label 'object'"):
        scorer.compute(by="object")


def test_format_table_prints_percentages_with_two_decimals_in_paper_order():
    rows = {
        "human": {"gIoU": 0.123456, "cIoU": 0.5, "P@50": 0.98765, "P@50:95": 0.0, "num_samples": 600},
        "gpt4": {"gIoU": 1.0, "cIoU": 0.00004, "P@50": 0.125, "P@50:95": 0.3333333, "num_samples": 600},
    }
    lines = format_table(rows).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["instruction_type", "gIoU", "cIoU", "P@50:95", "P@50", "N"]
    assert cells[2] == ["human", "12.35", "50.00", "0.00", "98.77", "600"]
    assert cells[3] == ["gpt4", "100.00", "0.00", "33.33", "12.50", "600"]
    assert "N" not in format_table({"a": {key: 0.5 for key in METRIC_KEYS}})


def test_results_dict_holds_overall_rows_and_sorted_breakdown():
    scorer = StreamingScorer()
    scorer.add_counts(1, 2, labels={"instruction_type": "human", "object": "sofa"})
    scorer.add_counts(2, 2, labels={"instruction_type": "gpt4", "object": "kettle"})
    results = results_dict(scorer, breakdown="object")
    assert results["overall"] == {"gIoU": 0.75, "cIoU": 0.75, "P@50:95": 0.55, "P@50": 1.0, "num_samples": 2}
    assert list(results["by"]["instruction_type"]) == ["human", "gpt4"]
    assert list(results["by"]["object"]) == ["kettle", "sofa"]
    assert results["by"]["object"]["sofa"]["num_samples"] == 1


# ---------------------------------------------------------------- properties against a naive loop


def naive_counts(prediction, reference):
    """I and U by visiting every pixel in Python."""
    intersection = union = 0
    for p_row, r_row in zip(prediction.tolist(), reference.tolist()):
        for p, r in zip(p_row, r_row):
            intersection += bool(p) and bool(r)
            union += bool(p) or bool(r)
    return intersection, union


def naive_metrics(counts):
    """The definitions in exact rational arithmetic, rounded once at the end."""
    ious = [Fraction(i, u) if u else Fraction(1) for i, u in counts]
    n = len(ious)
    total_i, total_u = sum(i for i, _ in counts), sum(u for _, u in counts)
    precision = [Fraction(sum(iou >= Fraction(k, 20) for iou in ious), n) for k in range(10, 20)]
    return {
        "gIoU": float(sum(ious) / n),
        "cIoU": float(Fraction(total_i, total_u)) if total_u else 1.0,
        "P@50:95": float(sum(precision) / 10),
        "P@50": float(precision[0]),
    }


@st.composite
def mask_pairs(draw):
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 19))  # odd sizes exercise the bit-packing tails
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    reference = rng.random((height, width)) < density
    kind = draw(st.sampled_from(["random", "same", "uint8", "int32"]))
    if kind == "same":
        return reference.copy(), reference
    prediction = rng.random((height, width)) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    if kind == "uint8":
        prediction = prediction.astype(np.uint8) * rng.integers(1, 256, size=(height, width), dtype=np.uint8)
    elif kind == "int32":
        prediction = prediction.astype(np.int32) * rng.integers(-5, 6, size=(height, width), dtype=np.int32)
    return prediction, reference


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mask_pairs(), min_size=1, max_size=12))
def test_streaming_core_agrees_with_a_naive_pixel_loop(pairs):
    scorer = StreamingScorer()
    counts = []
    for prediction, reference in pairs:
        expected = naive_counts(prediction, reference)
        assert mask_counts(prediction, reference) == expected
        scorer.add(prediction, reference)
        counts.append(expected)
    result, expected = scorer.compute(), naive_metrics(counts)
    assert result["cIoU"] == expected["cIoU"]
    assert result["P@50"] == expected["P@50"]
    assert result["P@50:95"] == expected["P@50:95"]
    assert result["gIoU"] == pytest.approx(expected["gIoU"], rel=1e-15, abs=1e-15)


def test_large_masks_agree_with_logical_and_or():
    rng = np.random.default_rng(1)
    for shape in [(1999, 1024), (8, 8), (1, 65), (333, 777)]:
        prediction, reference = rng.random(shape) < 0.4, rng.random(shape) < 0.6
        expected = (int(np.logical_and(prediction, reference).sum()), int(np.logical_or(prediction, reference).sum()))
        assert mask_counts(prediction, reference) == expected
        assert mask_counts(prediction.T, reference.T) == expected  # non-contiguous views


labelled_counts = st.lists(
    st.tuples(
        st.integers(0, 50), st.integers(0, 50), st.sampled_from(["human", "gpt4"]), st.sampled_from(["kettle", "sofa"])
    ),
    min_size=0,
    max_size=15,
)


@settings(max_examples=60, deadline=None)
@given(labelled_counts, labelled_counts)
def test_merging_two_scorers_equals_scoring_the_union(first, second):
    def scorer_of(samples, prefix):
        scorer = StreamingScorer()
        for index, (a, b, kind, obj) in enumerate(samples):
            labels = {"instruction_type": kind, "object": obj}
            scorer.add_counts(min(a, b), max(a, b), labels=labels, key=f"{prefix}{index}")
        return scorer

    if not first and not second:
        return
    together = scorer_of(first, "a")
    for index, (a, b, kind, obj) in enumerate(second):
        together.add_counts(min(a, b), max(a, b), labels={"instruction_type": kind, "object": obj}, key=f"b{index}")
    # The other scorer travels as a state dict, as accelerate's gather_object moves it.
    right = StreamingScorer.from_state_dict(pickle.loads(pickle.dumps(scorer_of(second, "b").state_dict())))
    merged = scorer_of(first, "a").merge(right)
    assert merged.samples() == together.samples()
    assert merged.compute() == together.compute()
    assert scorer_of(second, "b").merge(scorer_of(first, "a")).compute() == together.compute()  # order-free
    for name in ("instruction_type", "object"):
        assert merged.compute(by=name) == together.compute(by=name)


def test_merge_refuses_or_drops_duplicate_keys():
    first, second = StreamingScorer(), StreamingScorer()
    first.add_counts(1, 2, labels={"instruction_type": "human"}, key="s1")
    second.add_counts(1, 2, labels={"instruction_type": "human"}, key="s1")  # e.g. a sampler's padding repeat
    second.add_counts(2, 2, labels={"instruction_type": "human"}, key="s2")
    with pytest.raises(ValueError, match="sample s1: present in both scorers"):
        StreamingScorer().merge(first).merge(second)
    merged = StreamingScorer().merge(first).merge(second, duplicates="drop")
    assert [sample["key"] for sample in merged.samples()] == ["s1", "s2"]
    conflicting = StreamingScorer()
    conflicting.add_counts(0, 2, labels={"instruction_type": "human"}, key="s1")
    with pytest.raises(ValueError, match="with different counts or labels"):
        StreamingScorer().merge(first).merge(conflicting, duplicates="drop")
    with pytest.raises(ValueError, match="not a StreamingScorer state"):
        StreamingScorer().merge({"intersection": [1]})


# ---------------------------------------------------------------- LISA's arithmetic


def lisa_giou_ciou(intersections, unions):
    """gIoU and cIoU as LISA's validate() computes them: +1e-5 on U, sequential float32 sums (AverageMeter)."""
    i, u = np.asarray(intersections).astype(np.float32), np.asarray(unions).astype(np.float32)
    acc = i / (u + np.float32(1e-5)) + (u == 0).astype(np.float32)  # the no-object rule
    acc_sum, i_sum, u_sum = (np.cumsum(x, dtype=np.float32)[-1] for x in (acc, i, u))  # one addition at a time
    return float(acc_sum / np.float32(len(u))), float(i_sum / (u_sum + np.float32(1e-10)))


def lisa_gaps(sets=200, size=600, seed=0):
    """Largest |ours - LISA| of gIoU and cIoU over random sets of real-world mask sizes."""
    rng = np.random.default_rng(seed)
    worst_giou = worst_ciou = 0.0
    for _ in range(sets):
        unions = rng.integers(1000, 4_000_000, size=size)
        intersections = (unions * rng.random(size)).astype(np.int64)
        unions[:5], intersections[:5] = 0, 0  # a few no-object samples
        ours = metrics_from_counts(intersections, unions)
        lisa_giou, lisa_ciou = lisa_giou_ciou(intersections, unions)
        worst_giou = max(worst_giou, abs(ours["gIoU"] - lisa_giou))
        worst_ciou = max(worst_ciou, abs(ours["cIoU"] - lisa_ciou))
    return worst_giou, worst_ciou


def test_lisa_float32_arithmetic_differs_by_less_than_one_millionth():
    # The module card quotes these two maxima (200 sets of 600 samples).
    worst_giou, worst_ciou = lisa_gaps()
    assert worst_giou < 1e-6
    assert worst_ciou < 1e-6


def test_the_lisa_replay_matches_a_scalar_float32_loop():
    intersections, unions = [3, 0, 5, 7], [4, 0, 9, 1000]
    acc_sum = i_sum = u_sum = np.float32(0)
    for i, u in zip(intersections, unions):
        acc = np.float32(i) / (np.float32(u) + np.float32(1e-5)) + np.float32(u == 0)
        acc_sum = np.float32(acc_sum + acc)
        i_sum, u_sum = np.float32(i_sum + np.float32(i)), np.float32(u_sum + np.float32(u))
    expected = (float(acc_sum / np.float32(4)), float(i_sum / (u_sum + np.float32(1e-10))))
    assert lisa_giou_ciou(intersections, unions) == expected
