"""A transformers pipeline for PISA: (image, instruction) -> the image-segmentation output format.

Saved checkpoints declare it in `config.custom_pipelines`, so that

    pipeline(model=folder, trust_remote_code=True)(image, instruction="If I want to pour water, ...")

works in a process that cannot import this package. It returns
`[{"label": instruction, "score": float, "mask": PIL.Image (mode "L", 0/255)}]`, where the score is the mean
predicted probability over the mask's pixels (0.0 for an empty mask).

Images are read as `PisaForPartSegmentation.predict` reads them (`PisaProcessor`): PIL images of any mode,
uint8 (H, W, 3) arrays, local paths (opened without conversion) or URLs; an EXIF-rotated photo is made upright
and its mask has the upright size. `threshold` is a mask *logit* (default 0.0, i.e. probability 0.5): a pixel
is foreground where the logit exceeds it.

With `generate=True` (and optionally `max_new_tokens=32`) the answer is generated instead of teacher-forced (see
`PisaForPartSegmentation.generate_segmentation`) and each result also holds `"answer"`: the generated text. An
answer without `[SEG]` gives an empty mask.
"""

import os

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline
from transformers.image_utils import load_image

PIPELINE_TASK = "instruction-part-segmentation"


def pipeline_registration() -> dict:
    """The `custom_pipelines` entry written into saved configs (what `Pipeline.save_pretrained` would write)."""
    return {"impl": "pipeline_pisa.PisaPartSegmentationPipeline", "pt": ["AutoModel"], "tf": [], "type": "multimodal"}


class PisaPartSegmentationPipeline(Pipeline):
    """Segments the object part an instruction asks for. Call with `(image, instruction=...)`, or with a dict or a
    list of dicts `{"image": ..., "instruction": ...}`; images may be PIL images, uint8 (H, W, 3) arrays, paths
    or URLs. `threshold=` is a mask logit (default 0.0): pixels whose logit exceeds it are the mask."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, instruction=None, threshold=None, generate=None, max_new_tokens=None, **kwargs):
        preprocess = {"instruction": instruction} if instruction is not None else {}
        postprocess = {"threshold": threshold} if threshold is not None else {}
        forward = {}
        if generate is not None:
            forward["generate"] = bool(generate)
        if max_new_tokens is not None:
            forward["max_new_tokens"] = int(max_new_tokens)
        return preprocess, forward, postprocess

    def __call__(self, inputs, instruction=None, **kwargs):
        return super().__call__(inputs, instruction=instruction, **kwargs)

    def preprocess(self, inputs, instruction=None):
        if isinstance(inputs, dict):
            if "image" not in inputs:
                keys = ", ".join(map(repr, inputs)) or "none"
                raise ValueError(f"a pipeline input dict needs an 'image' key (and 'instruction'); got keys {keys}")
            instruction = inputs.get("instruction", instruction)
            inputs = inputs["image"]
        if not instruction:
            raise ValueError("PisaPartSegmentationPipeline needs an instruction: pipe(image, instruction='...')")
        path = inputs if isinstance(inputs, str) else None
        image = _open_image(path) if path is not None else inputs
        try:
            batch = self.processor(
                images=[image], text=[instruction], max_length=self.model.config.text_config.max_position_embeddings
            )
        except ValueError as error:
            if path is None:
                raise
            raise ValueError(f"{path}: {error}") from None
        batch["instruction"] = instruction
        return batch

    def _forward(self, model_inputs, generate=False, max_new_tokens=32):
        instruction = model_inputs.pop("instruction")
        answer = None
        if generate:
            outputs = self.model.generate_segmentation(model_inputs, self.processor, max_new_tokens=max_new_tokens)
            answer = outputs.answers[0]
        else:
            outputs = self.model(**self.model.prepare_inputs(model_inputs), logits_to_keep=1)
        return {
            "pred_masks": outputs.pred_masks,
            "original_sizes": model_inputs["original_sizes"],
            "reshaped_input_sizes": model_inputs["reshaped_input_sizes"],
            "instruction": instruction,
            "answer": answer,
        }

    def postprocess(self, model_outputs, threshold=0.0):
        logits = self.processor.post_process_masks(
            model_outputs["pred_masks"].float().cpu(),
            model_outputs["original_sizes"].cpu(),
            model_outputs["reshaped_input_sizes"].cpu(),
            threshold=None,
        )[0]
        mask = logits > threshold
        score = float(torch.sigmoid(logits[mask]).mean()) if bool(mask.any()) else 0.0
        image = Image.fromarray(mask.numpy().astype(np.uint8) * 255, mode="L")
        result = {"label": model_outputs["instruction"], "score": score, "mask": image}
        if model_outputs.get("answer") is not None:
            result["answer"] = model_outputs["answer"]
        return [result]


def _open_image(path_or_url: str) -> Image.Image:
    """A local file opened as stored (the processor converts its mode and orientation); URLs via transformers."""
    if os.path.isfile(path_or_url):
        try:
            image = Image.open(path_or_url)
            image.load()
        except (OSError, ValueError) as error:
            raise ValueError(f"{path_or_url}: not a readable image ({error})") from None
        return image
    if path_or_url.startswith(("http://", "https://")):
        return load_image(path_or_url)
    raise ValueError(f"{path_or_url}: no such image file")


__all__ = ["PIPELINE_TASK", "PisaPartSegmentationPipeline", "pipeline_registration"]
