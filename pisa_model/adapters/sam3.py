"""`sam3:CKPT` — SAM3 (`Sam3Model`, e.g. `facebook/sam3`) with the instruction as its text prompt.

transformers 5.23 supports SAM3's text prompt (promptable concept segmentation): `Sam3Processor(images, text)`
then `Sam3Model(pixel_values, input_ids, attention_mask)` returns, per image, query masks, query scores and a
presence score.

Prompt      the instruction itself, unchanged, tokenized by the checkpoint's CLIP tokenizer padded to SAM3's
            32-token text context; longer instructions are cut to 32 tokens (SAM3 is trained on short noun
            phrases: the reason-then-ground adapter gives it "<part> of the <object>" instead).
Resolution  each image is resized to the checkpoint's square (1008 x 1008, aspect not kept) and normalised as
            the checkpoint's preprocessor config says. A query's mask probabilities (sigmoid of its logits,
            at SAM3's mask resolution) are resized bilinearly to the image's own (H, W), then > 0.5 — SAM3's
            own `post_process_instance_segmentation` steps.
Threshold   a query counts when its score, sigmoid(query logit) x sigmoid(presence logit), is > `threshold`
            (default 0.5); the prediction is the union of the masks of the queries that count (a part may be
            several instances, e.g. all cushions of a sofa). When none counts, the single best query is used:
            every sample has a target part, so the model's best guess is kept rather than an empty mask.
Batching    fixed image size and fixed text length: a batch gives the masks of one-at-a-time runs.

torchvision: transformers 5.23 ships `Sam3ImageProcessor` with a torchvision backend only. Where
torchvision is missing (CPU-only torch: PyPI's torchvision wheels are CUDA builds that fail to load against
`torch+cpu`), the same steps (resize with the configured resampling, rescale, normalise) run on transformers'
PIL backend (`PilBackend`) built from the checkpoint's preprocessor config. Its bilinear resize differs from
torchvision's by rounding only; install torchvision for numbers comparable with other SAM3 results.
"""

from .base import (
    Adapter,
    check_batch,
    checked_checkpoint,
    dtype_options,
    load_pretrained,
    prepare_model,
    require_argument,
    resolve_dtype,
    to_device,
    upsample_probabilities,
)

DEFAULT_THRESHOLD = 0.5
TEXT_CONTEXT = 32  # SAM3's CLIP text encoder position embeddings; Sam3Processor pads to it too
MASK_THRESHOLD = 0.5


def load_sam3_preprocessing(checkpoint: str) -> tuple:
    """`(image_processor, tokenizer)` of a SAM3 checkpoint, the image processor on PIL where torchvision is missing."""
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        processor = load_pretrained(AutoProcessor.from_pretrained, checkpoint, "sam3")
        return processor.image_processor, processor.tokenizer
    from transformers.image_processing_backends import PilBackend
    from transformers.image_processing_utils import ImageProcessingMixin

    config, _ = load_pretrained(ImageProcessingMixin.get_image_processor_dict, checkpoint, "sam3")
    config = {key: value for key, value in config.items() if key not in ("image_processor_type", "processor_class")}
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, checkpoint, "sam3")
    return PilBackend(**config), tokenizer


class Sam3Adapter(Adapter):
    def __init__(self, model, image_processor, tokenizer, *, threshold: float = DEFAULT_THRESHOLD, name="sam3"):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"sam3 threshold must be in [0, 1], got {threshold}")
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.threshold, self.name = float(threshold), name

    def predict_with_extras(self, images, instructions):
        import torch

        check_batch(images, instructions)
        if not images:
            return [], []
        pixel_values = self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        text = self.tokenizer(
            list(instructions), padding="max_length", truncation=True, max_length=TEXT_CONTEXT, return_tensors="pt"
        )
        inputs = to_device({"pixel_values": pixel_values["pixel_values"]}, self.model.device, self.model.dtype)
        inputs.update(
            to_device(
                {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}, self.model.device, None
            )
        )
        with torch.inference_mode():
            outputs = self.model(**inputs)
        scores = outputs.pred_logits.float().sigmoid()
        if outputs.presence_logits is not None:
            scores = scores * outputs.presence_logits.float().sigmoid()
        masks, extras = [], []
        for row, image in enumerate(images):
            keep = scores[row] > self.threshold
            if not keep.any():
                keep = scores[row] == scores[row].max()
            probabilities = outputs.pred_masks[row][keep].float().sigmoid()
            resized = upsample_probabilities(probabilities, (image.height, image.width))
            masks.append((resized > MASK_THRESHOLD).any(axis=0))
            extras.append({"instances": int(keep.sum()), "best_score": round(float(scores[row].max()), 4)})
        return masks, extras

    def predict(self, images, instructions):
        return self.predict_with_extras(images, instructions)[0]


def _sam3(argument, *, device=None, dtype=None, threshold: float = DEFAULT_THRESHOLD):
    from transformers import Sam3Model

    checkpoint = checked_checkpoint(require_argument("sam3", argument, "sam3:CHECKPOINT"), "sam3")
    model = load_pretrained(Sam3Model.from_pretrained, checkpoint, "sam3", **dtype_options(dtype))
    image_processor, tokenizer = load_sam3_preprocessing(checkpoint)
    return Sam3Adapter(
        prepare_model(model, device, resolve_dtype(dtype)),
        image_processor,
        tokenizer,
        threshold=threshold,
        name=f"sam3:{argument}",
    )
