"""The adapter protocol every evaluated model satisfies, and the registry that builds one from a name.

An adapter turns a batch of (image, instruction) pairs into binary masks at each image's own size:

    masks = adapter.predict(images, instructions)   # list of bool (H, W) arrays, H, W = image.height, image.width

Models are named by a spec string (`python -m pisa_model.evaluate --model SPEC`); the names, their
syntax and modules are listed once, in `registry.py`, which builds an adapter from its spec.
This module holds the protocol and the helpers the adapter modules share; it imports none of them.
"""

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Adapter:
    """Base class of the adapters: `predict(images, instructions) -> list of bool (H, W) masks`.

    Subclasses set `name` (the spec it was built from, shown in reports) and implement `predict`. Those with
    per-sample by-products (the reason-then-ground phrase) override `predict_with_extras`.
    """

    name: str = "adapter"
    extras_name: str = "extras"  # the evaluate command writes the extras to predictions/<extras_name>.jsonl

    def predict(self, images: list, instructions: list) -> list:
        """Masks for a batch.

        Args:
            images (`list[PIL.Image.Image]`): RGB images, any sizes.
            instructions (`list[str]`): one instruction per image.

        Returns:
            `list[np.ndarray]`: bool arrays of shape (image.height, image.width), one per image.
        """
        raise NotImplementedError

    def predict_with_extras(self, images: list, instructions: list) -> tuple:
        """`(masks, extras)`: extras is None or one JSON-able dict per sample (kept next to the predictions)."""
        return self.predict(images, instructions), None

    def summarize_extras(self, records: list) -> dict:
        """Scores of the extras over a run, for results.json; records are the extras plus the row's id,
        instruction_type, instruction, object and part."""
        return {}

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class VLMAnswer(NamedTuple):
    """One answer of a VLM (`vlm.LocalVLM` or `api.ApiVLM`): what reason-then-ground and vlm-box read."""

    text: str  # the answer ("" when the request failed)
    shown_size: tuple  # (width, height) of the image the prompt describes: the original, or the one sent to an API
    model_input_size: tuple | None  # (width, height) the model's processor resized it to, when known
    error: str | None = None  # why no answer came (an API row that failed after its retries)


def check_batch(images: list, instructions: list) -> None:
    """One instruction per image, and images that have a size."""
    if len(images) != len(instructions):
        raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
    for image in images:
        if not hasattr(image, "size") or not hasattr(image, "convert"):
            raise ValueError(f"expected PIL images, got {type(image).__name__}")


def require_argument(name: str, argument: str | None, form: str) -> str:
    if not argument:
        raise ValueError(f"{name} needs a checkpoint: --model {form}")
    return argument


def checked_checkpoint(checkpoint: str, what: str) -> str:
    """A local folder (must exist) or a Hub repo id; a missing local folder is refused here, in one line."""
    expanded = os.path.expanduser(checkpoint)
    if os.path.isdir(expanded):
        return expanded
    looks_like_path = expanded.startswith((os.sep, ".", "~")) or expanded.count("/") > 1 or os.path.exists(expanded)
    if looks_like_path:
        raise FileNotFoundError(f"{what} checkpoint {checkpoint!r}: no such folder")
    return checkpoint


def load_pretrained(load: Callable, checkpoint: str, what: str, **kwargs):
    """`load(checkpoint, **kwargs)` (a `from_pretrained`), its errors turned into one line naming the checkpoint."""
    checkpoint = checked_checkpoint(checkpoint, what)
    try:
        return load(checkpoint, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot load the {what} checkpoint {checkpoint!r}: {first_line}") from None


def to_device(inputs, device, dtype) -> dict:
    """Tensors of a processor's output moved to `device`, floating ones cast to `dtype`."""
    import torch

    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        moved[key] = value
    return moved


def resolve_dtype(dtype):
    """`"bfloat16"` / `torch.bfloat16` / None -> a torch dtype or None."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(names)}")
    return names[dtype]


def dtype_options(dtype) -> dict:
    """`from_pretrained` keyword arguments loading a model in `dtype` (none: the checkpoint's own dtype).

    Loading in the dtype, not `.to(dtype)` afterwards, is what keeps the float32 buffers transformers keeps
    on purpose (e.g. the rotary embedding's inv_freq): `.to(torch.bfloat16)` would round them too."""
    dtype = resolve_dtype(dtype)
    return {} if dtype is None else {"dtype": dtype}


def prepare_model(model, device, dtype):
    """The model in eval mode on `device` (CPU by default), cast to `dtype` only if it was not loaded in it
    (see `dtype_options`)."""
    model.eval()
    dtype = resolve_dtype(dtype)
    if dtype is not None and model.dtype != dtype:
        model = model.to(dtype=dtype)
    return model.to(device=device or "cpu")


def upsample_probabilities(probabilities, size: tuple) -> np.ndarray:
    """(h, w) or (n, h, w) float tensor -> bilinear to (n, H, W) float32 numpy array; `size` is (H, W)."""
    import torch.nn.functional as F

    if probabilities.ndim == 2:
        probabilities = probabilities[None]
    resized = F.interpolate(probabilities[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return resized.cpu().numpy()


def as_bool_mask(mask, image) -> np.ndarray:
    """Check that a predicted mask is bool (image.height, image.width)."""
    mask = np.asarray(mask)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"predicted mask of shape {mask.shape} for an image of size {image.height}x{image.width}")
    return mask.astype(bool, copy=False)


def sam_box_masks(sam, sam_processor, images: list, boxes: list) -> tuple:
    """SAM's mask for one box per image: `(masks, scores)`, bool (H, W) arrays at each image's size and SAM's
    predicted IoU. SAM's processor resizes the longest side to its input size and pads to a square; its single
    low-resolution mask (`multimask_output=False`, SAM's choice for box prompts) is un-padded and resized to
    (H, W) by `post_process_masks`; threshold: mask logit > 0.

    Args:
        images (`list[PIL.Image.Image]`): RGB images.
        boxes (`list`): `(x0, y0, x1, y1)` in each image's pixels.
    """
    import torch

    if not images:
        return [], []
    inputs = sam_processor(images=images, input_boxes=[[list(box)] for box in boxes], return_tensors="pt")
    model_inputs = to_device({key: inputs[key] for key in ("pixel_values", "input_boxes")}, sam.device, sam.dtype)
    with torch.inference_mode():
        outputs = sam(**model_inputs, multimask_output=False)
    masks = sam_processor.image_processor.post_process_masks(
        outputs.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"], mask_threshold=0.0
    )
    scores = outputs.iou_scores.float().cpu().reshape(len(images), -1)[:, 0].tolist()
    return [mask[0, 0].numpy().astype(bool) for mask in masks], scores
