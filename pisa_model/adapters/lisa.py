"""`lisa:PATH_OR_REPO` — LISA (Lai et al., CVPR 2024) as its authors released it, run by this package's model family.

PATH_OR_REPO is a folder written by `python -m pisa_model.convert_lisa`, or a released LISA checkpoint (a folder
or a Hub repo such as xinlai/LISA-7B-v1), converted once into a cache folder
(`$HF_HOME/instructpart/lisa/<name>-<hash>`) and read from there afterwards. The converted model equals LISA's own
code (tests/fixtures/lisa_reference); it is the system of the paper's published LISA row.

Prompt      LISA's chat prompt: the llava_v1 conversation, "<im_start><image><im_end>\\n{instruction} Please output
            segmentation mask.", CLIP's 224 px preprocessing for the language side; the answer "Sure, it is
            [SEG]." teacher-forced (default), or generated greedily with `generate=true` (`max_new_tokens`,
            default 32), the mask read from the first `[SEG]` (none: an empty mask).
Resolution  SAM's: the longest side resized to 1024, normalised, padded to 1024x1024; the low-resolution logits
            are upsampled, cropped and resized to the image's own (H, W).
Threshold   mask logit > 0.
Batching    as the pisa adapter (one `predict` call per batch).
Options     `vision_tower=FOLDER_OR_REPO`: the CLIP tower of a raw checkpoint (default: the one its config names).
"""

import hashlib
import json
import os

from .base import dtype_options, load_pretrained, prepare_model, require_argument, resolve_dtype
from .pisa import PisaAdapter


def _is_converted(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "pisa"


def cache_folder(checkpoint: str, vision_tower: str | None) -> str:
    """Where a raw LISA checkpoint's conversion is kept: one folder per (checkpoint, vision tower)."""
    from huggingface_hub import constants

    where = os.path.abspath(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    key = hashlib.sha256(json.dumps([where, vision_tower]).encode()).hexdigest()[:16]
    name = os.path.basename(os.path.normpath(checkpoint)) or "lisa"
    return os.path.join(constants.HF_HOME, "instructpart", "lisa", f"{name}-{key}")


def _lisa(argument, *, device=None, dtype=None, generate: bool = False, max_new_tokens: int = 32, vision_tower=None):
    from ..modeling_pisa import PisaForPartSegmentation

    checkpoint = require_argument("lisa", argument, "lisa:CONVERTED_FOLDER or lisa:LISA_CHECKPOINT")
    folder = checkpoint
    if not (os.path.isdir(checkpoint) and _is_converted(checkpoint)):
        from ..convert_lisa import convert

        folder = cache_folder(checkpoint, vision_tower)
        if not _is_converted(folder):
            convert(checkpoint, folder, vision_tower=vision_tower, overwrite=os.path.isdir(folder))
    model = load_pretrained(PisaForPartSegmentation.from_pretrained, folder, "lisa", **dtype_options(dtype))
    if model.config.mask_encoder != "sam":
        raise ValueError(f"lisa:{checkpoint}: a PISA checkpoint (mask_encoder={model.config.mask_encoder!r}), not LISA")
    model = prepare_model(model, device, resolve_dtype(dtype))
    model.get_processor()
    return PisaAdapter(model, name=f"lisa:{checkpoint}", generate=generate, max_new_tokens=max_new_tokens)
