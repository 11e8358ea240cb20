"""`clipseg:CKPT` — CLIPSeg (`CLIPSegForImageSegmentation`, e.g. `CIDAS/clipseg-rd64-refined`), text = instruction.

Prompt      the instruction itself, unchanged, as CLIPSeg's text query; tokens past the text model's
            `max_position_embeddings` (77) are cut.
Resolution  the checkpoint's processor resizes each image to its fixed square (352 x 352 for the released
            checkpoints) without keeping the aspect ratio; the decoder's logits, at that square, are sigmoid-ed
            and resized bilinearly to the image's own (H, W).
Threshold   foreground where the upsampled probability > `threshold`, default 0.5 (logit 0): the
            decision boundary of CLIPSeg's binary training target. Set it with `--adapter-arg threshold=0.4`.
Batching    images and texts are batched as they come (fixed image size; padded text tokens are masked and
            sit after the EOS token that CLIP pools), so a batch gives the masks of one-at-a-time runs.
"""

from .base import (
    Adapter,
    check_batch,
    dtype_options,
    load_pretrained,
    prepare_model,
    require_argument,
    resolve_dtype,
    to_device,
    upsample_probabilities,
)

DEFAULT_THRESHOLD = 0.5


class ClipSegAdapter(Adapter):
    def __init__(self, model, processor, *, threshold: float = DEFAULT_THRESHOLD, name: str = "clipseg"):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"clipseg threshold must be in [0, 1], got {threshold}")
        self.model, self.processor, self.threshold, self.name = model, processor, float(threshold), name
        self.max_text_tokens = model.config.text_config.max_position_embeddings

    @property
    def device(self):
        return self.model.device

    def predict(self, images, instructions):
        import torch

        check_batch(images, instructions)
        if not images:
            return []
        inputs = self.processor(
            text=list(instructions),
            images=[image.convert("RGB") for image in images],
            padding=True,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        inputs = to_device(inputs, self.model.device, self.model.dtype)
        with torch.inference_mode():
            logits = self.model(**inputs).logits.reshape(len(images), *inputs["pixel_values"].shape[-2:])
        probabilities = logits.float().sigmoid()
        return [
            upsample_probabilities(probability, (image.height, image.width))[0] > self.threshold
            for probability, image in zip(probabilities, images)
        ]


def _clipseg(argument, *, device=None, dtype=None, threshold: float = DEFAULT_THRESHOLD):
    from transformers import AutoProcessor, CLIPSegForImageSegmentation

    checkpoint = require_argument("clipseg", argument, "clipseg:CHECKPOINT")
    model = load_pretrained(CLIPSegForImageSegmentation.from_pretrained, checkpoint, "clipseg", **dtype_options(dtype))
    processor = load_pretrained(AutoProcessor.from_pretrained, checkpoint, "clipseg")
    model = prepare_model(model, device, resolve_dtype(dtype))
    return ClipSegAdapter(model, processor, threshold=threshold, name=f"clipseg:{argument}")
