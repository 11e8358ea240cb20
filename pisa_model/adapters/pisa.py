"""`PATH` or `pisa:PATH` — a PISA checkpoint (`PisaForPartSegmentation.from_pretrained`, with its saved processor).

Prompt      the instruction in PISA's own template (LISA's "USER: <image>\\n{instruction} Please output
            segmentation mask. ASSISTANT:"), the answer " Sure, it is [SEG]." teacher-forced: see
            `PisaForPartSegmentation.predict` and `PisaProcessor`.
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
    load_pretrained,
    prepare_model,
    require_argument,
    resolve_dtype,
)


class PisaAdapter(Adapter):
    def __init__(self, model, *, name: str = "pisa"):
        self.model, self.name = model, name

    def predict(self, images, instructions):
        check_batch(images, instructions)
        if not images:
            return []
        return self.model.predict(list(images), list(instructions), batch_size=len(images))


def _pisa(argument, *, device=None, dtype=None):
    from ..modeling_pisa import PisaForPartSegmentation

    checkpoint = require_argument("pisa", argument, "pisa:CHECKPOINT (or the checkpoint folder alone)")
    model = load_pretrained(PisaForPartSegmentation.from_pretrained, checkpoint, "pisa")
    model = prepare_model(model, device, resolve_dtype(dtype))
    try:  # load it now: a checkpoint without one is refused before any prediction
        model.get_processor()
    except (OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"the pisa checkpoint {checkpoint!r} has no usable processor: {reason}") from None
    return PisaAdapter(model, name=checkpoint)
