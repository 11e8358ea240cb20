"""Every adapter of the registry as an lmms-eval model: `python -m lmms_eval --model instructpart --model_args
spec=SPEC ...`.

SPEC is anything `python -m pisa_model.evaluate --model` takes (a PISA checkpoint folder, `full-image`,
`clipseg:CKPT`, ...; a spec holding a comma is quoted: `--model_args 'spec="grounded-sam:A,B"'`). Other
model_args are the adapter's options (`threshold=0.4`), plus `dtype` and `device`. Each request's text is the
instruction (the InstructPart tasks' default prompt is the bare instruction) and its visual the photo; the answer
is lmms-eval's segmentation convention, as its `sam3` model writes it:

    {"masks": [{"counts": "<COCO RLE>", "size": [H, W]}], "scores": [1.0]}

Registered through the `lmms_eval.models` entry point (setup.cfg): lmms-eval calls `model_manifest()`.
"""

import json

from tqdm.auto import tqdm

from instructpart_dataset.toolbox.extras import require
from instructpart_metric.rle import encode_rle

from .adapters import load_adapter

lmms = require("lmms_eval.api.model", "lmms", "the instructpart lmms-eval model").lmms

MODEL_ID = "instructpart"


def model_manifest():
    """The `lmms_eval.models` entry point: the `instructpart` model's manifest."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.InstructPartModel")


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


class InstructPartModel(lmms):
    """An adapter (`pisa_model.adapters.load_adapter(spec)`) answering lmms-eval's `generate_until` requests."""

    is_simple = True

    def __init__(self, spec: str = None, batch_size=1, device=None, dtype=None, **adapter_options) -> None:
        super().__init__()
        if not spec:
            raise ValueError("the instructpart model needs --model_args spec=SPEC (an adapter spec or PISA checkpoint)")
        self.spec = _unquote(str(spec))
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._rank, self._world_size = 0, 1
        if isinstance(device, str) and device.startswith("cuda"):
            import torch

            device = device if torch.cuda.is_available() else None  # lmms-eval's CLI default is "cuda"
        self.adapter = load_adapter(self.spec, device=device, dtype=dtype, **adapter_options)

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    def loglikelihood(self, requests):
        raise NotImplementedError("the instructpart model answers with masks (generate_until), not likelihoods")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the instructpart model answers each instruction once")

    def generate_until(self, requests) -> list:
        answers = []
        size = self.batch_size_per_gpu
        with tqdm(total=len(requests), desc=f"instructpart {self.adapter.name}", disable=self.rank != 0) as progress:
            for start in range(0, len(requests), size):
                batch = requests[start : start + size]
                images, instructions = [], []
                for request in batch:
                    text, _, doc_to_visual, doc_id, task, split = request.args
                    visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                    if len(visuals) != 1:
                        raise ValueError(f"{task} document {doc_id}: expected one image, got {len(visuals)} visuals")
                    images.append(visuals[0].convert("RGB"))
                    instructions.append(text)
                masks = self.adapter.predict(images, instructions)
                if len(masks) != len(batch):
                    raise ValueError(f"{self.adapter.name} returned {len(masks)} masks for {len(batch)} requests")
                answers.extend(json.dumps({"masks": [encode_rle(mask)], "scores": [1.0]}) for mask in masks)
                progress.update(len(batch))
        return answers


__all__ = ["InstructPartModel", "model_manifest"]
