"""`vlm-box:VLM,SAM_CKPT` — a vision-language model gives the box of the part that serves the task, SAM masks it
(Seg-Zero / VisionReasoner style), e.g. `vlm-box:Qwen/Qwen2.5-VL-7B-Instruct,facebook/sam-vit-huge` or, through
any OpenAI-compatible endpoint, `vlm-box:api:gpt-4o@https://api.openai.com/v1,facebook/sam-vit-huge` (see
`api.py`: one request per row, cached). VLM is a checkpoint or `api:MODEL@BASE_URL`; SAM_CKPT follows the last comma.

Prompt      one template per task form (`prompts.BOX_PROMPTS`: TRPS instruction, ORPS question, ORPS name), asking
            for the box in the answer format of the VLM's family (`prompts.BOX_ANSWER_FORMATS`); the templates and
            their sha256 go to results.json's provenance. Local VLMs: see `vlm.py` (greedy, `max_new_tokens`,
            default 32).
Box         parsed by the family's convention (`box_parsing.BOX_FORMATS`): `box_format` defaults to the local
            checkpoint's family (Qwen2-VL/Qwen2.5-VL: pixels of the processor's resized input; Qwen3-VL: 0-1000
            grid; PaliGemma: <loc> tokens) and to `json` for API models and other local ones (pixels of the image
            shown); `--adapter-arg box_format=qwen2.5-vl` for a Qwen2.5-VL behind an API maps its pixels through
            the released processor's `smart_resize` of the image sent. The box goes back to the image's pixels and
            is clipped to it.
Abstaining  an answer with no parsable box, or whose box has no area left inside the image, gives an empty mask
            and counts as `abstained` in results.json (`boxes`); an API row that failed after its retries counts
            as `failed` (see evaluate).
Mask        SAM (transformers `SamModel`) prompted with the box alone, its mask at the image's size
            (`base.sam_box_masks`: single-mask output, logit > 0).

Kept per row in `predictions/answers.jsonl`: the answer, the box as parsed (the model's frame), the box in the
image's pixels, SAM's predicted IoU, and the row's status (`box`, `abstained`, `failed`).
"""

import numpy as np

from . import prompts as prompt_table
from .api import API_OPTIONS
from .base import (
    Adapter,
    check_batch,
    checked_checkpoint,
    dtype_options,
    load_pretrained,
    prepare_model,
    require_argument,
    resolve_dtype,
    sam_box_masks,
)
from .box_parsing import BOX_FORMATS, FORMAT_OF_MODEL_TYPE, parse_box, qwen_input_size, to_image_box
from .box_parsing import box_format as format_spec

FORM = "vlm-box:VLM_CHECKPOINT,SAM_CHECKPOINT (VLM: a checkpoint or api:MODEL@BASE_URL)"


class VlmBoxAdapter(Adapter):
    """`vlm.ask(images, prompts)` -> a box per answer -> SAM's mask of each box."""

    extras_name = "answers"
    takes_instruction_types = True

    def __init__(self, vlm, sam, sam_processor, *, box_format_name: str, name: str = "vlm-box", allow_failures=False):
        format_spec(box_format_name)
        self.vlm, self.sam, self.sam_processor = vlm, sam, sam_processor
        self.box_format = box_format_name
        self.prompts = prompt_table.box_prompt_table(box_format_name)
        self.name, self.allow_failures = name, bool(allow_failures)

    def _frame(self, answer) -> tuple | None:
        frame = BOX_FORMATS[self.box_format].frame
        if frame == "shown":
            return answer.shown_size
        if frame == "model-input":
            if answer.model_input_size is not None:
                return answer.model_input_size
            if getattr(self.vlm, "record", lambda: {})().get("kind") == "api":
                return qwen_input_size(answer.shown_size)
            raise ValueError(
                f"box_format {self.box_format} needs the model's resized input size, which this VLM's processor "
                "does not report (no image_grid_thw): pick another box_format"
            )
        return None

    def predict_with_extras(self, images, instructions, instruction_types=None):
        check_batch(images, instructions)
        if not images:
            return [], []
        images = [image.convert("RGB") for image in images]
        kinds = list(instruction_types) if instruction_types is not None else [None] * len(images)
        prompts = [
            prompt_table.fill(self.prompts[prompt_table.prompt_form(kind)], text, self.vlm.shown_size(image))
            for image, text, kind in zip(images, instructions, kinds)
        ]
        answers = self.vlm.ask(images, prompts)
        extras, boxes = [], []
        for image, answer in zip(images, answers):
            record = {"answer": answer.text, "parsed_box": None, "box": None, "sam_score": None}
            if answer.error is not None:
                record.update(status="failed", failed=answer.error)
                boxes.append(None)
            else:
                parsed = parse_box(answer.text, self.box_format)
                box = None if parsed is None else to_image_box(parsed, self.box_format, image.size, self._frame(answer))
                record["parsed_box"] = None if parsed is None else [round(v, 2) for v in parsed]
                record["box"] = None if box is None else [round(v, 2) for v in box]
                record["status"] = "box" if box is not None else "abstained"
                boxes.append(box)
            extras.append(record)
        masks = [np.zeros((image.height, image.width), dtype=bool) for image in images]
        with_box = [index for index, box in enumerate(boxes) if box is not None]
        sam_masks, scores = sam_box_masks(
            self.sam, self.sam_processor, [images[i] for i in with_box], [boxes[i] for i in with_box]
        )
        for index, mask, score in zip(with_box, sam_masks, scores):
            masks[index] = mask
            extras[index]["sam_score"] = round(score, 4)
        return masks, extras

    def predict(self, images, instructions):
        return self.predict_with_extras(images, instructions)[0]

    def summarize_extras(self, records: list) -> dict:
        def counts(subset):
            statuses = [r.get("status") for r in subset]
            return {
                "rows": len(subset),
                "boxed": statuses.count("box"),
                "abstained": statuses.count("abstained"),
                "failed": statuses.count("failed"),
            }

        if not records:
            return {}
        summary = {"all": counts(records)}
        for kind in sorted({r["instruction_type"] for r in records if "instruction_type" in r}):
            summary[kind] = counts([r for r in records if r.get("instruction_type") == kind])
        return {"boxes": summary}

    def record(self) -> dict:
        return {
            "prompts": prompt_table.prompt_record(self.prompts),
            "box_format": self.box_format,
            "vlm": self.vlm.record(),
        }

    def usage(self) -> dict:
        return self.vlm.usage()


def split_vlm_and_sam(argument: str) -> tuple:
    """`"VLM,SAM"` -> `(VLM, SAM)`, split at the last comma (an API base URL holds none, a SAM checkpoint neither)."""
    vlm, comma, sam = argument.rpartition(",")
    vlm, sam = vlm.strip(), sam.strip()
    if not comma or not vlm or not sam:
        raise ValueError(f"vlm-box needs a VLM and a SAM checkpoint separated by a comma: {FORM} (got {argument!r})")
    return vlm, sam


def _vlm_box(
    argument,
    *,
    device=None,
    dtype=None,
    box_format: str | None = None,
    max_new_tokens: int | None = None,
    allow_failures: bool = False,
    **api_options,
):
    from transformers import AutoProcessor, SamModel

    from .vlm import load_vlm

    vlm_spec, sam_checkpoint = split_vlm_and_sam(require_argument("vlm-box", argument, FORM))
    if box_format is not None:
        format_spec(box_format)  # refused before anything loads
    sam_checkpoint = checked_checkpoint(sam_checkpoint, "sam")
    dtype = resolve_dtype(dtype)
    vlm = load_vlm(vlm_spec, device=device, dtype=dtype, max_new_tokens=max_new_tokens, api_options=api_options)
    sam = load_pretrained(SamModel.from_pretrained, sam_checkpoint, "sam", **dtype_options(dtype))
    sam_processor = load_pretrained(AutoProcessor.from_pretrained, sam_checkpoint, "sam")
    if box_format is None:
        box_format = FORMAT_OF_MODEL_TYPE.get(getattr(vlm, "model_type", ""), "json")
    return VlmBoxAdapter(
        vlm,
        prepare_model(sam, device, dtype),
        sam_processor,
        box_format_name=box_format,
        name=f"vlm-box:{argument}",
        allow_failures=allow_failures,
    )


_vlm_box.accepted_options = API_OPTIONS  # the API VLM's options (api.py), passed through **api_options
