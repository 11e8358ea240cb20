"""Every prompt a VLM-driven adapter sends, in one place, one template per task form.

A row's form follows from its instruction type: TRPS rows (`human`, `gpt4`) carry a task to reason about, ORPS
question rows (`part_question`, `part_affordance_question`) a question naming the part, ORPS name rows
(`part_name`, `part_affordance_name`) a bare name. Called without instruction types (the library's
`predict(images, instructions)`), the TRPS form is used.

`prompt_record(table)` is what results.json's provenance keeps: the templates and a sha256 over them, so two
runs whose prompts differ never carry the same record and are never compared as equal.
"""

import hashlib
import json

from instructpart_dataset.schema import CONFIG_OF_TYPE

FORMS = ("trps", "orps_question", "orps_name")
_FORM_OF_TYPE = {
    "human": "trps",
    "gpt4": "trps",
    "part_question": "orps_question",
    "part_affordance_question": "orps_question",
    "part_name": "orps_name",
    "part_affordance_name": "orps_name",
}
assert set(_FORM_OF_TYPE) == set(CONFIG_OF_TYPE), "every instruction type has a prompt form"

# reason-then-ground: the VLM names the part; `{instruction}` is the row's instruction.
PHRASE_PROMPTS = {
    "trps": (
        "{instruction}\n"
        'Answer with one short phrase of the form "<part> of the <object>" naming the object part to use, '
        "and nothing else."
    ),
    "orps_question": (
        '{instruction}\nAnswer with one short phrase of the form "<part> of the <object>", and nothing else.'
    ),
    "orps_name": (
        'Find the {instruction} in this image. Answer with one short phrase of the form "<part> of the <object>", '
        "and nothing else."
    ),
}

# vlm-box: the VLM gives the box of the part; `{answer_format}` is the box format's own request (below).
BOX_PROMPTS = {
    "trps": "{instruction}\nLocate the one object part that serves this task. {answer_format}",
    "orps_question": "{instruction}\nLocate that part. {answer_format}",
    "orps_name": "Locate the {instruction} in this image. {answer_format}",
}
# How each box format is asked for; `{width}` and `{height}` are the pixels of the image the model is shown.
BOX_ANSWER_FORMATS = {
    "qwen2.5-vl": 'Output its bounding box in JSON format: {{"bbox_2d": [x1, y1, x2, y2], "label": "<part>"}}.',
    "qwen3-vl": 'Output its bounding box in JSON format: {{"bbox_2d": [x1, y1, x2, y2], "label": "<part>"}}.',
    "paligemma": "",  # PaliGemma is not prompted in sentences: see BOX_PROMPTS_PALIGEMMA
    "json": (
        "Answer with its bounding box as a JSON list [x0, y0, x1, y1] in pixels of this {width}x{height} image "
        "(x to the right, y down), and nothing else."
    ),
}
# PaliGemma's own detection task prompt: "detect <thing>" answers "<loc####>x4 <thing>".
BOX_PROMPTS_PALIGEMMA = {form: "detect {instruction}" for form in FORMS}


def prompt_form(instruction_type: str | None) -> str:
    """The task form of an instruction type (`trps`, `orps_question`, `orps_name`); None gives `trps`."""
    if instruction_type is None:
        return "trps"
    if instruction_type not in _FORM_OF_TYPE:
        raise ValueError(f"unknown instruction type {instruction_type!r}: expected one of {', '.join(_FORM_OF_TYPE)}")
    return _FORM_OF_TYPE[instruction_type]


def box_prompt_table(box_format: str) -> dict:
    """The vlm-box templates of one box format, per form, with its answer format filled in."""
    if box_format == "paligemma":
        return dict(BOX_PROMPTS_PALIGEMMA)
    answer_format = BOX_ANSWER_FORMATS[box_format]
    return {form: template.replace("{answer_format}", answer_format) for form, template in BOX_PROMPTS.items()}


def fill(template: str, instruction: str, size: tuple | None = None) -> str:
    """A template with the instruction (its end punctuation kept) and the shown image's size filled in."""
    width, height = size if size is not None else (None, None)
    return template.format(instruction=" ".join(instruction.split()), width=width, height=height)


def prompt_record(table: dict) -> dict:
    """`{"sha256", "templates"}`: the templates of a run and a hash that changes with any of their characters."""
    encoded = json.dumps(table, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"sha256": hashlib.sha256(encoded).hexdigest(), "templates": dict(table)}
