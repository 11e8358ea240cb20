"""`PATH` or `pisa:PATH` — a PISA checkpoint (`PisaForPartSegmentation.from_pretrained`, with its saved processor).

Prompt      the instruction in PISA's own template (LISA's "USER: <image>\\n{instruction} Please output
            segmentation mask. ASSISTANT:"), the answer " Sure, it is [SEG]." teacher-forced (the default, as in
            LISA's validation); with `generate=true` the answer is generated greedily (`max_new_tokens`, default
            32) and the mask read from its first `[SEG]` (none: an empty mask), the answers going to
            `predictions/answers.jsonl`. See `PisaForPartSegmentation.predict` and `PisaProcessor`.
Resolution  the mask branch sees each image resized to a longest side of `mask_input_size` and padded to a
            square; `PisaProcessor.post_process_masks` upsamples the low-resolution logits, crops the padding
            and resizes to the image's own (H, W).
Threshold   mask logit > 0.
Batching    the whole batch goes to one `predict` call (padded text is masked; the image inputs have a fixed
            size), so a batch gives the masks of one-at-a-time runs.
"""

from .base import (
    Adapter,
    check_batch,
    dtype_options,
    load_pretrained,
    prepare_model,
    require_argument,
    resolve_dtype,
)


class PisaAdapter(Adapter):
    extras_name = "answers"

    def __init__(self, model, *, name: str = "pisa", generate: bool = False, max_new_tokens: int = 32):
        self.model, self.name = model, name
        self.generate, self.max_new_tokens = bool(generate), int(max_new_tokens)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.answer_mode = "generated" if self.generate else "teacher-forced"

    def predict(self, images, instructions):
        return self.predict_with_extras(images, instructions)[0]

    def predict_with_extras(self, images, instructions):
        check_batch(images, instructions)
        if not images:
            return [], (None if not self.generate else [])
        masks, answers, has_seg = self.model.predict(
            list(images),
            list(instructions),
            batch_size=len(images),
            generate=self.generate,
            max_new_tokens=self.max_new_tokens,
            return_answers=True,
            return_has_seg=True,  # by token id: the rule that decides the mask, not the decoded text
        )
        if not self.generate:  # the answer is the fixed one: nothing to record
            return masks, None
        return masks, [{"answer": answer, "has_seg": bool(seg)} for answer, seg in zip(answers, has_seg)]

    def summarize_extras(self, records: list) -> dict:
        with_seg = sum(1 for record in records if record.get("has_seg"))
        return {"answers": {"mode": self.answer_mode, "rows": len(records), "with_seg": with_seg}}


def _pisa(argument, *, device=None, dtype=None, generate: bool = False, max_new_tokens: int = 32):
    from ..modeling_pisa import PisaForPartSegmentation

    checkpoint = require_argument("pisa", argument, "pisa:CHECKPOINT (or the checkpoint folder alone)")
    model = load_pretrained(PisaForPartSegmentation.from_pretrained, checkpoint, "pisa", **dtype_options(dtype))
    model = prepare_model(model, device, resolve_dtype(dtype))
    try:  # load it now: a checkpoint without one is refused before any prediction
        model.get_processor()
    except (OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"the pisa checkpoint {checkpoint!r} has no usable processor: {reason}") from None
    return PisaAdapter(model, name=checkpoint, generate=generate, max_new_tokens=max_new_tokens)
