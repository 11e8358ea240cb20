"""The InstructPart lmms-eval task functions without lmms-eval: the answer parser on hand-written answers, the COCO
RLE codec against pycocotools, per-sample counts and the aggregations against a naive loop."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from instructpart_metric.lmms_eval_plugin import TASKS_DIR
from instructpart_metric.lmms_eval_plugin.tasks import utils
from instructpart_metric.rle import decode_rle, encode_rle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 3x4 mask written out by hand: column-major runs 1 (bg), 2 (fg), 5 (bg), 1 (fg), 3 (bg) -> the two pixels
# (1, 0), (2, 0) and (0, 2).
HAND_MASK = np.zeros((3, 4), dtype=bool)
HAND_MASK[1:3, 0] = True
HAND_MASK[0, 2] = True
HAND_RUNS = [1, 2, 3, 1, 5]


def test_rle_of_a_hand_written_mask():
    assert (decode_rle({"counts": HAND_RUNS, "size": [3, 4]}) == HAND_MASK).all()
    assert (decode_rle(encode_rle(HAND_MASK)) == HAND_MASK).all()


def test_rle_matches_pycocotools_both_ways():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for trial in range(200):
        height, width = (int(n) for n in rng.integers(1, 30, 2))
        mask = rng.random((height, width)) < rng.random()
        if trial % 4 == 0:  # large runs: the delta coding's long groups
            mask = np.zeros((height, width), dtype=bool)
            mask[rng.integers(0, height) :, rng.integers(0, width) :] = True
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = encode_rle(mask)
        assert ours == {"counts": theirs["counts"].decode("ascii"), "size": [height, width]}
        assert (decode_rle({"counts": theirs["counts"], "size": list(theirs["size"])}) == mask).all()
        assert (mask_utils.decode({"counts": ours["counts"].encode(), "size": ours["size"]}).astype(bool) == mask).all()


@pytest.mark.parametrize(
    "rle",
    [
        {"counts": "garbage!", "size": [3, 4]},  # "!" is outside COCO's alphabet
        {"counts": "", "size": [3, 4]},  # covers no pixel (pycocotools decodes it into noise)
        {"counts": [1, 2], "size": [3, 4]},  # covers 3 of 12
        {"counts": [1, -1, 12], "size": [3, 4]},
        {"counts": "1", "size": [3]},
        {"size": [3, 4]},
        ["not", "a", "dict"],
    ],
)
def test_decode_refuses_what_is_not_an_rle(rle):
    with pytest.raises(ValueError, match="not a COCO RLE"):
        decode_rle(rle)


def _answer(masks, scores=None) -> str:
    answer = {"masks": [encode_rle(mask) for mask in masks], "boxes": []}
    if scores is not None:
        answer["scores"] = scores
    return json.dumps(answer)


def test_parser_reads_sam3_style_json():
    mask, info = utils.parse_answer(_answer([HAND_MASK], [0.7]), (3, 4))
    assert (mask == HAND_MASK).all()
    assert info == {"masks": 1, "chosen": 0, "best_of_several": False, "malformed": None}


def test_parser_takes_the_best_scoring_of_several_masks_and_says_so():
    other = np.ones((3, 4), dtype=bool)
    mask, info = utils.parse_answer(_answer([other, HAND_MASK, other], [0.2, 0.9, 0.9]), (3, 4))
    assert (mask == HAND_MASK).all()  # 0.9 twice: the first of them
    assert info["chosen"] == 1 and info["best_of_several"] and info["masks"] == 3
    mask, info = utils.parse_answer(_answer([HAND_MASK, other]), (3, 4))  # no scores: the first
    assert (mask == HAND_MASK).all() and info["chosen"] == 0 and info["best_of_several"]


def test_parser_reads_a_bare_rle_and_a_list():
    mask, info = utils.parse_answer(json.dumps({"counts": HAND_RUNS, "size": [3, 4]}), (3, 4))
    assert (mask == HAND_MASK).all() and info["malformed"] is None
    mask, info = utils.parse_answer(json.dumps([encode_rle(HAND_MASK)]), (3, 4))
    assert (mask == HAND_MASK).all() and info["masks"] == 1


def test_no_mask_is_an_empty_prediction_not_a_malformed_one():
    mask, info = utils.parse_answer(json.dumps({"masks": [], "scores": []}), (3, 4))
    assert not mask.any() and mask.shape == (3, 4) and info["malformed"] is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("the handle, top left", "Expecting value"),
        ("", "Expecting value"),
        (json.dumps({"answer": "handle"}), "not a JSON object with 'masks'"),
        (json.dumps({"masks": "x"}), "'masks' is not a list"),
        (json.dumps({"masks": [{"counts": "0", "size": [2, 2]}]}), "a mask of size [2, 2] for an image of size [3, 4]"),
        (json.dumps({"counts": HAND_RUNS, "size": [4, 3]}), "size [4, 3]"),
        (json.dumps({"masks": [encode_rle(HAND_MASK)] * 2, "scores": [1.0]}), "2 masks but scores"),
        (json.dumps({"masks": [encode_rle(HAND_MASK)] * 2, "scores": ["a", 1]}), "finite numbers"),
        (json.dumps({"masks": [7]}), "not a COCO RLE"),
        (json.dumps({"counts": "!!", "size": [3, 4]}), "not a COCO RLE"),
    ],
)
def test_malformed_answers_are_empty_and_reported(answer, reason):
    mask, info = utils.parse_answer(answer, (3, 4))
    assert mask.shape == (3, 4) and not mask.any()
    assert reason in info["malformed"]


def _doc(mask, instruction_type="human", ident="x-cup-handle"):
    return {
        "id": ident,
        "instruction_type": instruction_type,
        "instruction": "If I want to hold the cup, which part should I use?",
        "object": "cup",
        "part": "handle",
        "image": Image.new("RGB", (mask.shape[1], mask.shape[0])),
        "mask": Image.fromarray(mask).convert("1"),
    }


def test_process_results_and_aggregations_against_a_naive_loop():
    rng = np.random.default_rng(1)
    items, naive = [], []
    for k in range(12):
        reference = rng.random((5, 7)) < 0.3
        if k == 0:
            reference[:] = False  # both empty: IoU 1
        prediction = np.zeros_like(reference) if k in (0, 3) else rng.random((5, 7)) < 0.4
        answer = "not json" if k == 3 else _answer([prediction], [0.5])
        results = utils.instructpart_process_results(_doc(reference, ident=f"id{k}"), [answer])
        assert set(results) == {"gIoU", "cIoU", "P@50", "P@50:95", "malformed", "best_of_several"}
        items.append(results["gIoU"])
        intersection = int(np.logical_and(prediction, reference).sum())
        union = int(np.logical_or(prediction, reference).sum())
        assert (results["gIoU"]["intersection"], results["gIoU"]["union"]) == (intersection, union)
        naive.append((intersection, union))
    ious = [i / u if u else 1.0 for i, u in naive]
    assert utils.instructpart_gIoU(items) == pytest.approx(sum(ious) / len(ious), abs=1e-15)
    assert utils.instructpart_cIoU(items) == sum(i for i, _ in naive) / sum(u for _, u in naive)
    assert utils.instructpart_P50(items) == sum(iou >= 0.5 for iou in ious) / len(ious)
    thresholds = [0.5 + 0.05 * k for k in range(10)]
    expected = sum(iou >= t - 1e-12 for iou in ious for t in thresholds) / (10 * len(ious))
    assert utils.instructpart_P50_95(items) == pytest.approx(expected, abs=1e-15)
    assert utils.instructpart_malformed(items) == 1
    assert utils.instructpart_best_of_several(items) == 0
    assert math.isclose(utils.instructpart_gIoU(items[::-1]), utils.instructpart_gIoU(items), abs_tol=0)


def test_prompt_is_the_instruction_with_the_tasks_pre_and_post_prompt():
    doc = _doc(HAND_MASK)
    assert utils.instructpart_doc_to_text(doc, None) == doc["instruction"]
    kwargs = {"pre_prompt": "Segment: ", "post_prompt": " Answer as COCO RLE JSON."}
    assert utils.instructpart_doc_to_text(doc, kwargs) == f"Segment: {doc['instruction']} Answer as COCO RLE JSON."


def test_task_folder_command_prints_the_packaged_folder():
    printed = subprocess.run(
        [sys.executable, "-m", "instructpart_metric", "lmms-eval-tasks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert printed == TASKS_DIR
    assert {"instructpart.yaml", "instructpart_trps.yaml", "instructpart_orps.yaml", "utils.py"} <= set(
        os.listdir(printed)
    )


def test_local_tasks_need_an_export(tmp_path, release_dir):
    completed = subprocess.run(
        [sys.executable, "-m", "instructpart_metric", "lmms-eval-tasks", "--data-dir", release_dir, "--output", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert (
        completed.stderr.strip()
        .splitlines()[-1]
        .startswith(f"python -m instructpart_metric lmms-eval-tasks: error: {release_dir}: not an exported dataset")
    )
    assert not (tmp_path / "x").exists()
