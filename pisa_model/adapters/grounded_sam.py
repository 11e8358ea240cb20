"""`grounded-sam:DINO_CKPT,SAM_CKPT` — Grounding DINO finds a box for the instruction, SAM masks the box (the paper's
G-SAM row), e.g. `grounded-sam:IDEA-Research/grounding-dino-base,facebook/sam-vit-huge`.

Prompt      Grounding DINO gets the instruction lower-cased and ending with "." (its phrase separator);
            tokens past its `max_text_len` (256) are cut. SAM gets only the box.
Box         the single box of the highest-scoring query, a query's score being its highest token probability
            (sigmoid of the logits over the prompt's tokens, as Grounding DINO's own post-processing scores
            them). No box threshold: every InstructPart sample has exactly one target part, so the detector's
            best guess is always used rather than leaving the sample empty.
Resolution  Grounding DINO's processor resizes each image (shortest side 800, longest at most 1333, aspect
            kept); the normalised box is scaled back to the image's own pixels. SAM's processor resizes the
            longest side to 1024 and pads to a square; its single low-resolution mask (`multimask_output=False`,
            SAM's choice for box prompts) is un-padded and resized to (H, W) by `post_process_masks`.
Threshold   SAM's: mask logit > 0.
Batching    Grounding DINO pads a batch's images to a common size and its backbone would see that padding, so
            images are batched only with others of the same resized shape (one-at-a-time results, whatever the
            batch); SAM's input is always the same padded square, so it takes the whole batch.
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
    sam_box_masks,
    to_device,
)


def grounding_prompt(instruction: str) -> str:
    """Grounding DINO's text: lower case (its training captions are), ending with its "." phrase separator."""
    text = " ".join(instruction.split()).lower()
    return text if text.endswith(".") else text + "."


class GroundedSamAdapter(Adapter):
    def __init__(self, detector, detector_processor, sam, sam_processor, *, name: str = "grounded-sam"):
        self.detector, self.detector_processor = detector, detector_processor
        self.sam, self.sam_processor = sam, sam_processor
        self.name = name

    def boxes(self, images: list, instructions: list) -> list:
        """The detector's best box per image, `(x0, y0, x1, y1)` in the image's pixels, and its score."""
        import torch

        pixel_values = [
            self.detector_processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
            for image in images
        ]
        groups = {}
        for index, values in enumerate(pixel_values):
            groups.setdefault(tuple(values.shape[-2:]), []).append(index)
        results = [None] * len(images)
        device, dtype = self.detector.device, self.detector.dtype
        for indices in groups.values():
            text = self.detector_processor.tokenizer(
                [grounding_prompt(instructions[i]) for i in indices],
                padding=True,
                truncation=True,
                max_length=self.detector.config.max_text_len,
                return_tensors="pt",
            )
            batch = torch.cat([pixel_values[i] for i in indices])
            inputs = to_device(
                {"pixel_values": batch, "pixel_mask": torch.ones(batch.shape[0], *batch.shape[-2:], dtype=torch.long)},
                device,
                dtype,
            )
            inputs.update(to_device(text, device, None))
            with torch.inference_mode():
                outputs = self.detector(**inputs)
            scores = outputs.logits.float().sigmoid().amax(dim=-1)  # (batch, queries); masked tokens are -inf
            best = scores.argmax(dim=-1)
            for row, index in enumerate(indices):
                cx, cy, w, h = outputs.pred_boxes[row, best[row]].float().tolist()
                width, height = images[index].size
                box = [
                    min(max((cx - w / 2) * width, 0.0), width),
                    min(max((cy - h / 2) * height, 0.0), height),
                    min(max((cx + w / 2) * width, 0.0), width),
                    min(max((cy + h / 2) * height, 0.0), height),
                ]
                results[index] = (box, float(scores[row, best[row]]))
        return results

    def predict_with_extras(self, images, instructions):
        check_batch(images, instructions)
        if not images:
            return [], []
        images = [image.convert("RGB") for image in images]
        boxes = self.boxes(images, instructions)
        masks, _ = sam_box_masks(self.sam, self.sam_processor, images, [box for box, _ in boxes])
        extras = [{"box": [round(v, 2) for v in box], "box_score": round(score, 4)} for box, score in boxes]
        return masks, extras

    def predict(self, images, instructions):
        return self.predict_with_extras(images, instructions)[0]


def _grounded_sam(argument, *, device=None, dtype=None):
    from transformers import AutoProcessor, GroundingDinoForObjectDetection, SamModel

    argument = require_argument("grounded-sam", argument, "grounded-sam:DINO_CHECKPOINT,SAM_CHECKPOINT")
    parts = [part.strip() for part in argument.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"grounded-sam needs two checkpoints separated by a comma: grounded-sam:DINO_CHECKPOINT,SAM_CHECKPOINT "
            f"(got {argument!r})"
        )
    dino_checkpoint = checked_checkpoint(parts[0], "grounding-dino")  # both refused before either loads
    sam_checkpoint = checked_checkpoint(parts[1], "sam")
    dtype = resolve_dtype(dtype)
    detector = load_pretrained(
        GroundingDinoForObjectDetection.from_pretrained, dino_checkpoint, "grounding-dino", **dtype_options(dtype)
    )
    detector_processor = load_pretrained(AutoProcessor.from_pretrained, dino_checkpoint, "grounding-dino")
    sam = load_pretrained(SamModel.from_pretrained, sam_checkpoint, "sam", **dtype_options(dtype))
    sam_processor = load_pretrained(AutoProcessor.from_pretrained, sam_checkpoint, "sam")
    return GroundedSamAdapter(
        prepare_model(detector, device, dtype),
        detector_processor,
        prepare_model(sam, device, dtype),
        sam_processor,
        name=f"grounded-sam:{argument}",
    )
