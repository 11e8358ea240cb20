"""The functions the InstructPart task YAML names: documents in, per-sample counts out, the four metrics by
`instructpart_metric.core` (the package's metric core, not a copy).

The model's answer follows lmms-eval's segmentation convention (its `sam3` model): a JSON object

    {"masks": [{"counts": "...", "size": [H, W]}, ...], "scores": [0.9, ...], ...}     # COCO RLE masks

or a bare RLE `{"counts": ..., "size": [H, W]}`, or a JSON list of RLEs. InstructPart asks for one mask, so of
several the best-scoring one is scored (the first of equal scores; the first when there are no scores) and the
sample records that a choice was made (`best_of_several`). `{"masks": []}` is an empty prediction. An answer that
is not such JSON, or whose mask is not a valid RLE of the image's size, is scored as an empty mask and counted
in `malformed`; the run goes on.
"""

import json
import math

import numpy as np

from instructpart_dataset.schema import row_key
from instructpart_metric.core import StreamingScorer, mask_counts
from instructpart_metric.rle import decode_rle


def instructpart_doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def instructpart_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """The instruction, with the task's `pre_prompt`/`post_prompt` around it (both empty by default)."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['instruction']}{kwargs.get('post_prompt', '')}"


def instructpart_doc_to_target(doc):
    return f"{doc['part']} of the {doc['object']}"


def _score(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"scores must be finite numbers, got {value!r}")
    return float(value)


def parse_answer(text, shape: tuple) -> tuple:
    """`(mask, info)` of a model's answer for an image of `shape` (H, W).

    mask: bool (H, W), empty when the answer is malformed or has no mask. info: `{"masks": n, "chosen": index or
    None, "best_of_several": bool, "malformed": None or the reason}`.
    """
    info = {"masks": 0, "chosen": None, "best_of_several": False, "malformed": None}
    empty = np.zeros(shape, dtype=bool)
    try:
        answer = json.loads(text) if isinstance(text, str) else text
        scores = None
        if isinstance(answer, dict) and "masks" in answer:
            masks, scores = answer["masks"], answer.get("scores")
        elif isinstance(answer, dict) and "counts" in answer:
            masks = [answer]
        elif isinstance(answer, list):
            masks = answer
        else:
            raise ValueError("not a JSON object with 'masks', a COCO RLE or a list of them")
        if not isinstance(masks, list):
            raise ValueError("'masks' is not a list")
        info["masks"] = len(masks)
        if not masks:
            return empty, info
        chosen = 0
        if len(masks) > 1:
            info["best_of_several"] = True
            if scores is not None:
                if not isinstance(scores, list) or len(scores) != len(masks):
                    raise ValueError(f"{len(masks)} masks but scores {scores!r:.60}")
                values = [_score(value) for value in scores]
                chosen = max(range(len(values)), key=lambda k: (values[k], -k))
        info["chosen"] = chosen
        rle = masks[chosen]
        size = rle.get("size") if isinstance(rle, dict) else None
        if isinstance(size, (list, tuple)) and list(size) != list(shape):
            raise ValueError(f"a mask of size {list(size)} for an image of size {list(shape)}")
        return decode_rle(rle), info
    except (ValueError, TypeError, KeyError, AttributeError) as error:  # JSONDecodeError is a ValueError
        info["malformed"] = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        info["chosen"] = None
        return empty, info


def instructpart_process_results(doc, results):
    """One sample's counts (the same dict for every metric; the aggregations reduce them)."""
    reference = np.asarray(doc["mask"], dtype=bool)
    mask, info = parse_answer(results[0] if results else "", reference.shape)
    intersection, union = mask_counts(mask, reference)
    sample = {
        "key": row_key(doc),
        "intersection": intersection,
        "union": union,
        **info,
    }
    return {name: sample for name in ("gIoU", "cIoU", "P@50", "P@50:95", "malformed", "best_of_several")}


def _metrics(items) -> dict:
    scorer = StreamingScorer()
    for item in items:
        scorer.add_counts(item["intersection"], item["union"], key=item["key"])
    return scorer.compute()


def instructpart_gIoU(items):
    return _metrics(items)["gIoU"]


def instructpart_cIoU(items):
    return _metrics(items)["cIoU"]


def instructpart_P50(items):
    return _metrics(items)["P@50"]


def instructpart_P50_95(items):
    return _metrics(items)["P@50:95"]


def instructpart_malformed(items):
    """How many answers were malformed (scored as empty masks)."""
    return sum(1 for item in items if item["malformed"])


def instructpart_best_of_several(items):
    """How many answers held several masks, of which the best-scoring one was scored."""
    return sum(1 for item in items if item["best_of_several"])
