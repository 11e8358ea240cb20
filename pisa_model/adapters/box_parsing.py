"""Boxes out of VLM answers: one parser per model family, each with the coordinate frame its family answers in.

| format       | answer looks like                                    | frame of the numbers                         |
|--------------|------------------------------------------------------|----------------------------------------------|
| `qwen2.5-vl` | `{"bbox_2d": [x1, y1, x2, y2], ...}` (JSON, fenced)  | absolute pixels of the model's resized input |
|              |                                                      | (the processor's `smart_resize`: sides that  |
|              |                                                      | are multiples of 28 within its pixel budget) |
| `qwen3-vl`   | the same JSON                                        | a 0-1000 grid over the image, x and y        |
| `paligemma`  | `<loc0123><loc0456><loc0789><loc1000> handle`        | y0, x0, y1, x1 on a 1024 grid                |
| `json`       | `[x0, y0, x1, y1]` anywhere in the answer            | pixels of the image the model was shown      |

Every parser takes the FIRST box of the answer (a model asked for one part that lists several puts its best
first); text around it (prose, Markdown fences, a label) is ignored. Qwen answers without the `bbox_2d` key
fall back to their first list of four numbers. Reversed corners are put in order. `to_image_box` maps a box
from its frame to the image's own pixels and clips it to the image; a box with no area left after clipping is
None (the adapter abstains: an empty mask).
"""

import math
import re
from typing import NamedTuple

_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_FOUR_NUMBERS = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")
_BBOX_2D = re.compile(rf'"bbox_2d"\s*:\s*{_FOUR_NUMBERS.pattern}')
_LOC_BOX = re.compile(r"<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>")


class BoxFormat(NamedTuple):
    name: str
    parse: object  # answer -> (a, b, c, d) floats as written, or None
    frame: str  # "model-input" (the model's resized input pixels), "shown" (the image sent/shown), or "grid"
    grid: int | None  # the grid's size for frame "grid"
    y_first: bool  # the four numbers are y0, x0, y1, x1


def _first_list(answer: str):
    found = _FOUR_NUMBERS.search(answer)
    return tuple(float(v) for v in found.groups()) if found else None


def _qwen(answer: str):
    found = _BBOX_2D.search(answer)
    return tuple(float(v) for v in found.groups()) if found else _first_list(answer)


def _paligemma(answer: str):
    found = _LOC_BOX.search(answer)
    return tuple(float(v) for v in found.groups()) if found else None


BOX_FORMATS = {
    "qwen2.5-vl": BoxFormat("qwen2.5-vl", _qwen, "model-input", None, False),
    "qwen3-vl": BoxFormat("qwen3-vl", _qwen, "grid", 1000, False),
    "paligemma": BoxFormat("paligemma", _paligemma, "grid", 1024, True),
    "json": BoxFormat("json", _first_list, "shown", None, False),
}
# transformers' model_type -> the box format its family answers in; anything else answers in plain JSON.
FORMAT_OF_MODEL_TYPE = {
    "qwen2_vl": "qwen2.5-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "qwen3_vl_moe": "qwen3-vl",
    "paligemma": "paligemma",
}


def box_format(name: str) -> BoxFormat:
    if name not in BOX_FORMATS:
        raise ValueError(f"unknown box_format {name!r}: expected one of {', '.join(BOX_FORMATS)}")
    return BOX_FORMATS[name]


def parse_box(answer: str, format_name: str) -> tuple | None:
    """`(x0, y0, x1, y1)` in the format's frame, corners in order, or None when the answer holds no box."""
    spec = box_format(format_name)
    numbers = spec.parse(answer or "")
    if numbers is None or not all(math.isfinite(v) for v in numbers):
        return None
    a, b, c, d = numbers
    x0, y0, x1, y1 = (b, a, d, c) if spec.y_first else (a, b, c, d)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def to_image_box(box: tuple, format_name: str, image_size: tuple, frame_size: tuple | None = None) -> tuple | None:
    """A parsed box mapped to the image's pixels `(x0, y0, x1, y1)` and clipped to it; None when nothing is left.

    Args:
        box: from `parse_box`.
        image_size: `(width, height)` of the original image.
        frame_size: `(width, height)` of the frame for "model-input" and "shown" formats (ignored for grids).
    """
    spec = box_format(format_name)
    width, height = image_size
    if spec.frame == "grid":
        frame_width = frame_height = spec.grid
    else:
        if frame_size is None:
            raise ValueError(f"box format {format_name} needs the size of the image the model saw")
        frame_width, frame_height = frame_size
    x0, y0, x1, y1 = box
    x0, x1 = (min(max(v * width / frame_width, 0.0), float(width)) for v in (x0, x1))
    y0, y1 = (min(max(v * height / frame_height, 0.0), float(height)) for v in (y0, y1))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return x0, y0, x1, y1


def qwen_input_size(size: tuple, *, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 16384):
    """`(width, height)` a Qwen2.5-VL processor resizes an image of `size` to (transformers' `smart_resize`, with
    the released Qwen2.5-VL preprocessor's budget: 3,136 to 12,845,056 pixels, sides multiples of 28): the frame of
    its answers when the model is reached through an API and its processor cannot be asked."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    height, width = smart_resize(size[1], size[0], factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return width, height
