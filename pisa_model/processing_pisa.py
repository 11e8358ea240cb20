"""PISA processor: prompt template + tokenizer, LLaVA image processor, and the mask branch's image processor.

The mask branch (frozen DINOv2 -> SAM decoder) sees each image resized so that
its longest side is `mask_input_size` and padded bottom/right to a square, the
way SAM feeds its encoder: this is what lets `post_process_masks` undo the
geometry exactly (upsample to the padded square, crop the padding, resize to
the original size). It is a `SamImageProcessorPil` with DINOv2's (ImageNet)
normalisation, because DINOv2's own processor centre-crops, which cannot be undone.

Images a user may hand over (`as_rgb_image`; `predict`, the pipeline and training all pass through it):
- a PIL image of any mode PIL can turn into RGB. The upright image is the reference, as in the dataset:
  an EXIF orientation is applied first, and masks come back at the upright size. 16-bit modes (I;16*) are
  scaled by 255/65535; mode I is read as 8-bit when its values fit 0-255, else as 16-bit (0-65535); mode F as
  0-1 when its values fit 0-1, else as 0-255. Anything else (negative or larger values, NaN, modes such as
  "La" that PIL cannot convert) is refused.
- a numpy array of shape (H, W, 3), dtype uint8 (channels last, 0-255). Float arrays, other shapes and arrays
  of shape (3, W, 3) (channels first or last?) are refused: convert them to uint8 or to a PIL image first.
- at least 1 pixel on each side and an aspect ratio of at most `MAX_ASPECT_RATIO` (32:1): beyond it the short
  side falls under one DINOv2 patch in the mask branch (14 of 448 pixels), and LLaVA's shortest-edge resize
  makes the long side more than 10,000 pixels. Such images are refused up front.
Instructions are non-empty text (no lone surrogates); one longer than the model's context (`max_length`) is
cut, never the answer and its `[SEG]`, with a warning.
"""

import json
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import BatchFeature, ProcessorMixin

# LISA's prompt and answer, in the llava-1.5-hf conversation format.
DEFAULT_PROMPT_TEMPLATE = "USER: <image>\n{instruction} Please output segmentation mask. ASSISTANT:"
DEFAULT_ANSWER = " Sure, it is [SEG]."
IGNORE_INDEX = -100
MAX_ASPECT_RATIO = 32
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def as_rgb_image(image, name: str = "image") -> Image.Image:
    """A PIL RGB image, upright, from a PIL image of any convertible mode or a uint8 (H, W, 3) array; anything
    else is refused with a one-line ValueError naming `name` (see the module docstring for the rules)."""
    if isinstance(image, np.ndarray):
        image = _array_to_image(image, name)
    elif not isinstance(image, Image.Image):
        raise ValueError(
            f"{name}: expected a PIL image or a uint8 numpy array of shape (H, W, 3), got {type(image).__name__}"
        )
    else:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        image = _pil_to_rgb(image, name)
    width, height = image.size
    if min(width, height) < 1:
        raise ValueError(f"{name} is empty ({width}x{height} pixels)")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(
            f"{name} is {width}x{height} pixels: PISA takes aspect ratios up to {MAX_ASPECT_RATIO}:1 "
            "(crop or pad it first)"
        )
    return image


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8:
        hint = " (floats in [0, 1]: (array * 255).round().astype(np.uint8))" if array.dtype.kind == "f" else ""
        raise ValueError(f"{name}: a numpy image must be uint8 with values 0-255, got {array.dtype}{hint}")
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{name}: a numpy image must have shape (H, W, 3), channels last; got {array.shape}")
    if array.shape[0] == 3:
        raise ValueError(
            f"{name}: a numpy image of shape {array.shape} could be channels first or last; "
            "pass a PIL image (Image.fromarray) instead"
        )
    return Image.fromarray(np.ascontiguousarray(array))


def _pil_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """PIL's own conversion, except for the modes it would clip: 16-bit and 32-bit integers and floats."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: mode {mode} image holds NaN or infinite values")
        if mode in _SIXTEEN_BIT_MODES:
            scale = 255 / 65535
        elif mode == "I":
            if low < 0 or high > 65535:
                raise ValueError(f"{name}: mode I values {low:g}..{high:g} are neither 8-bit nor 16-bit")
            scale = 1.0 if high <= 255 else 255 / 65535
        else:
            if low < 0 or high > 255:
                raise ValueError(f"{name}: mode F values {low:g}..{high:g} are neither in 0-1 nor in 0-255")
            scale = 255.0 if high <= 1 else 1.0
        gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"{name}: cannot convert a mode {mode} image to RGB ({error})") from None


def mask_branch_image_processor(size: int, image_mean, image_std):
    """The mask branch's `SamImageProcessorPil`: longest side resized to `size` and padded bottom/right to a
    `size` square (images and masks alike), normalised by `image_mean` / `image_std` (0-1 scale)."""
    from transformers import SamImageProcessorPil

    return SamImageProcessorPil(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        mask_size={"longest_edge": size},
        mask_pad_size={"height": size, "width": size},
        image_mean=list(image_mean),
        image_std=list(image_std),
    )


def as_image_batch(images, instructions) -> tuple:
    """(list of images, list of instructions) from a batch or from a single image and a single instruction. A
    string is one instruction (never a list of characters); the counts must agree."""
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    elif isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise ValueError(f"images must be a PIL image, a numpy array or a list of them, got {type(images).__name__}")
    if isinstance(instructions, str):
        instructions = [instructions]
    elif not hasattr(instructions, "__iter__"):
        raise ValueError(f"instructions must be a string or a list of strings, got {type(instructions).__name__}")
    images, instructions = list(images), list(instructions)
    if len(images) != len(instructions):
        raise ValueError(f"got {len(images)} images and {len(instructions)} instructions")
    return images, instructions


class PisaProcessor(ProcessorMixin):
    r"""
    Builds PISA's inputs from images, instructions and (for training) ground-truth masks.

    Each instruction becomes `prompt_template.format(instruction=...)` (its `<image>` expanded to one token per
    LLaVA image feature) followed by the fixed `answer` and EOS: the model reads the `[SEG]` in the answer, so
    the same token sequence is used in training (teacher forcing, loss on the answer only) and prediction.

    Args:
        image_processor: LLaVA's image processor (CLIP).
        mask_image_processor (`SamImageProcessorPil`): the mask branch's resize-longest-side + pad processor.
        tokenizer: a tokenizer holding `image_token` and `seg_token`.
        prompt_template (`str`): must contain `<image>` (the `image_token`) and `{instruction}` once each.
        answer (`str`): the assistant's answer; must contain `seg_token` once.
        patch_size, vision_feature_select_strategy, num_additional_image_tokens: as in `LlavaProcessor`, to count
            the image tokens (`(H / patch) * (W / patch) + num_additional_image_tokens`, minus the CLS token for
            the "default" strategy).
    """

    def __init__(
        self,
        image_processor=None,
        mask_image_processor=None,
        tokenizer=None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        answer: str = DEFAULT_ANSWER,
        image_token: str = "<image>",
        seg_token: str = "[SEG]",
        patch_size: int = 14,
        vision_feature_select_strategy: str = "default",
        num_additional_image_tokens: int = 1,
        chat_template=None,
        **kwargs,
    ):
        self.prompt_template = prompt_template
        self.answer = answer
        self.image_token = image_token
        self.seg_token = seg_token
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        if prompt_template.count(image_token) != 1 or prompt_template.count("{instruction}") != 1:
            raise ValueError(
                f"prompt_template must contain {image_token!r} and '{{instruction}}' exactly once: {prompt_template!r}"
            )
        if answer.count(seg_token) != 1:
            raise ValueError(f"answer must contain {seg_token!r} exactly once: {answer!r}")
        super().__init__(image_processor, mask_image_processor, tokenizer, chat_template=chat_template)
        for token in (image_token, seg_token):
            ids = tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no single token for {token!r} (got ids {ids})")
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.seg_token_id = tokenizer.convert_tokens_to_ids(seg_token)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, trust_remote_code: bool = False, **kwargs):
        """`ProcessorMixin.from_pretrained` that runs no code from the checkpoint unless `trust_remote_code=True`.

        A saved PISA processor names only this class and transformers' own image processors and tokenizers. A
        checkpoint whose processor or tokenizer files point an `auto_map` at any other module asks to run that
        module: without the caller's `trust_remote_code=True` that is refused here, before anything is imported.
        """
        if not trust_remote_code:
            foreign = _foreign_code_requests(pretrained_model_name_or_path, **kwargs)
            if foreign:
                where, name = foreign[0]
                raise ValueError(
                    f"{where}: the checkpoint asks to run its own code ({name}); "
                    "pass trust_remote_code=True only if you trust that repository"
                )
            # The tokenizer's loader reads the checkpoint's config through AutoConfig: this class's own
            # PisaConfig answers it (instead of a generic config and a "model of type pisa" warning).
            from transformers import AutoConfig

            from .configuration_pisa import PisaConfig

            AutoConfig.register(PisaConfig.model_type, PisaConfig, exist_ok=True)
        return super().from_pretrained(pretrained_model_name_or_path, trust_remote_code=trust_remote_code, **kwargs)

    @staticmethod
    def get_possibly_dynamic_module(module_name):
        """transformers saves `SamImageProcessorPil` under the name `SamImageProcessor`, whose default backend
        needs torchvision: resolving that name without torchvision falls back to the Pil class with a warning
        on every load. Without torchvision, take the Pil class directly (the one that was saved)."""
        import transformers

        if module_name.endswith("ImageProcessor") and not transformers.is_torchvision_available():
            pil_class = getattr(transformers, f"{module_name}Pil", None)
            if pil_class is not None:
                return pil_class
        return ProcessorMixin.get_possibly_dynamic_module(module_name)

    @property
    def mask_input_size(self) -> int:
        return int(self.mask_image_processor.pad_size["height"])

    def num_image_tokens(self, height: int, width: int) -> int:
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def __call__(
        self, images=None, text=None, masks=None, return_tensors="pt", max_length: int | None = None, **kwargs
    ) -> BatchFeature:
        r"""
        Args:
            images (`PIL.Image.Image`, `np.ndarray` or a list of them): PIL images of any mode, or uint8 (H, W, 3)
                arrays (see `as_rgb_image`); EXIF-rotated images are made upright first.
            text (`str` or `list[str]`): one instruction per image.
            masks (`np.ndarray` or list of them, *optional*): ground-truth part masks, bool or 0/1, each of its
                (upright) image's size (H, W). When given, `labels` and `mask_labels` are returned too.
            max_length (`int`, *optional*): the model's context in tokens; a longer sequence has its instruction
                cut (never the answer and `[SEG]`), with a warning. None: no limit.

        Returns:
            `BatchFeature` with
            - `input_ids`, `attention_mask` (B, L): right-padded token ids of prompt + answer + EOS.
            - `pixel_values` (B, 3, h, w): LLaVA's image input.
            - `mask_pixel_values` (B, 3, S, S): the mask branch's input, S = `mask_input_size`.
            - `original_sizes`, `reshaped_input_sizes` (B, 2): (H, W) before and after the resize.
            - with masks: `labels` (B, L), the token ids with everything but the answer and EOS set to -100,
              and `mask_labels` (B, S, S) float 0/1, the masks resized (nearest) and padded like `mask_pixel_values`.
        """
        if images is None or text is None:
            raise ValueError("PisaProcessor needs both `images` and `text` (one instruction per image)")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        text = [text] if isinstance(text, str) else list(text)
        if len(images) != len(text):
            raise ValueError(f"got {len(images)} images and {len(text)} instructions: need one instruction per image")
        for index, instruction in enumerate(text):
            if not isinstance(instruction, str) or not instruction.strip():
                raise ValueError(f"instruction {index} must be a non-empty string, got {instruction!r}")
            if self.image_token in instruction or self.seg_token in instruction:
                raise ValueError(
                    f"instruction {index} contains a reserved token ({self.image_token} or {self.seg_token})"
                )
            try:
                instruction.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"instruction {index} is not valid text (a lone surrogate at character {error.start})"
                ) from None
        images = [as_rgb_image(image, f"image {index}") for index, image in enumerate(images)]
        if masks is not None:
            masks = list(masks) if isinstance(masks, (list, tuple)) else [masks]
            if len(masks) != len(images):
                raise ValueError(f"got {len(masks)} masks for {len(images)} images")
            masks = [self._check_mask(mask, image, index) for index, (mask, image) in enumerate(zip(masks, images))]

        llava_inputs = self.image_processor(images, return_tensors="pt")
        mask_inputs = self.mask_image_processor(images, segmentation_maps=masks, return_tensors="pt")
        height, width = llava_inputs["pixel_values"].shape[-2:]
        ids, labels = self._tokenize(text, self.num_image_tokens(height, width), max_length)

        data = {
            "pixel_values": llava_inputs["pixel_values"],
            "mask_pixel_values": mask_inputs["pixel_values"],
            "original_sizes": torch.as_tensor(np.asarray(mask_inputs["original_sizes"]), dtype=torch.long),
            "reshaped_input_sizes": torch.as_tensor(np.asarray(mask_inputs["reshaped_input_sizes"]), dtype=torch.long),
        }
        data.update(self._pad(ids, labels if masks is not None else None))
        if masks is not None:
            data["mask_labels"] = torch.stack([torch.as_tensor(m) for m in mask_inputs["labels"]]).float()
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _check_mask(mask, image, index: int) -> np.ndarray:
        mask = np.asarray(mask)
        width, height = (
            image.size if hasattr(image, "size") and not isinstance(image, np.ndarray) else image.shape[1::-1]
        )
        if mask.shape != (height, width):
            raise ValueError(f"mask {index} has shape {mask.shape}, its image is {height}x{width} (H x W)")
        return (mask > 0).astype(np.uint8)

    def _prompt(self, instruction: str, num_image_tokens: int) -> str:
        return self.prompt_template.replace(self.image_token, self.image_token * num_image_tokens).replace(
            "{instruction}", instruction.strip()
        )

    def _tokenize(self, instructions, num_image_tokens, max_length=None):
        tokenizer = self.tokenizer
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs an EOS token")
        prompts = [self._prompt(instruction, num_image_tokens) for instruction in instructions]
        # Prompt and answer are tokenized apart so that the answer's ids (and the [SEG] position) are identical
        # whatever the instruction: the boundary between prompt and answer is exact for every tokenizer.
        prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        answer_ids = tokenizer(self.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if max_length is not None:
            budget = max_length - len(answer_ids)
            for row, ids in enumerate(prompt_ids):
                if len(ids) > budget:
                    prompt_ids[row] = self._truncated_prompt(instructions[row], row, num_image_tokens, budget)
        ids = [list(p) + answer_ids for p in prompt_ids]
        labels = [[IGNORE_INDEX] * len(p) + answer_ids for p in prompt_ids]
        return ids, labels

    def _truncated_prompt(self, instruction: str, index: int, num_image_tokens: int, budget: int) -> list:
        """The prompt's ids with the instruction cut to its longest token prefix that fits in `budget` tokens."""
        tokenizer = self.tokenizer
        encoded = tokenizer(instruction.strip(), add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
        tokens = encoded["input_ids"]
        bare = len(tokenizer(self._prompt("", num_image_tokens), add_special_tokens=True)["input_ids"])
        if bare >= budget:
            raise ValueError(
                f"instruction {index}: the prompt and answer alone take more than the model's context "
                f"({bare} + answer tokens > {budget} + answer tokens)"
            )
        keep = min(len(tokens), budget - bare)
        while True:  # re-tokenizing the cut prompt may merge tokens differently: shrink until it fits
            if tokenizer.is_fast:
                cut = instruction.strip()[: encoded["offset_mapping"][keep - 1][1]] if keep > 0 else ""
            else:
                cut = tokenizer.decode(tokens[:keep])
            ids = tokenizer(self._prompt(cut, num_image_tokens), add_special_tokens=True)["input_ids"]
            if len(ids) <= budget or keep == 0:
                break
            keep -= 1
        warnings.warn(
            f"instruction {index} is {len(tokens)} tokens long and does not fit in the model's context with the "
            f"image and the answer: only its first {keep} tokens are read",
            stacklevel=3,
        )
        return ids

    def _pad(self, ids, labels=None) -> dict:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        length = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.as_tensor(tokens)
            attention_mask[row, : len(tokens)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if labels is not None:
            padded = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
            for row, tokens in enumerate(labels):
                padded[row, : len(tokens)] = torch.as_tensor(tokens)
            out["labels"] = padded
        return out

    def post_process_masks(self, pred_masks, original_sizes, reshaped_input_sizes, threshold: float = 0.0):
        r"""
        Undo the mask branch's resize and padding.

        Args:
            pred_masks (`torch.Tensor` of shape (B, 1, h, w)): the model's low-res mask logits.
            original_sizes, reshaped_input_sizes (B, 2): as returned by `__call__`.
            threshold (`float` or `None`): binarise at logit > threshold; `None` returns the logits.

        Returns:
            list of B tensors of shape (H_i, W_i) at each image's original size: bool, or float logits.
        """
        if pred_masks.ndim != 4 or pred_masks.shape[1] != 1:
            raise ValueError(f"pred_masks must have shape (batch, 1, height, width), got {tuple(pred_masks.shape)}")
        logits = [mask[None].float() for mask in pred_masks]
        out = self.mask_image_processor.post_process_masks(
            logits,
            original_sizes,
            reshaped_input_sizes,
            mask_threshold=0.0 if threshold is None else threshold,
            binarize=threshold is not None,
        )
        return [mask[0, 0] for mask in out]

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "mask_pixel_values"]


# The only module a saved PISA processor's `auto_map` entries may name: this file, which the installed package (or
# the user's own `trust_remote_code=True`) provides; the saved copy is never imported without that flag.
_OWN_MODULE = "processing_pisa"
_PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json")


def _auto_map_targets(node):
    """Every class reference ("module.Class", or "repo--module.Class") held by an `auto_map` anywhere in `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "auto_map" and isinstance(value, dict):
                for target in value.values():
                    for name in target if isinstance(target, (list, tuple)) else [target]:
                        if isinstance(name, str):
                            yield name
            else:
                yield from _auto_map_targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _auto_map_targets(value)


def _read_json_file(folder_or_repo, filename: str, **kwargs):
    """The parsed JSON of one processor file of a local folder or a Hub repo; None where the file is absent."""
    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(folder_or_repo):
        path = os.path.join(folder_or_repo, subfolder, filename)
        if not os.path.isfile(path):
            return path, None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = hf_hub_download(
                folder_or_repo,
                filename,
                subfolder=subfolder or None,
                revision=kwargs.get("revision"),
                cache_dir=kwargs.get("cache_dir"),
                token=kwargs.get("token"),
                local_files_only=kwargs.get("local_files_only", False),
            )
        except EntryNotFoundError:
            return filename, None
    try:
        with open(path, encoding="utf-8") as handle:
            return path, json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None


def _foreign_code_requests(folder_or_repo, **kwargs) -> list:
    """(file, "module.Class") for every `auto_map` entry of the processor files that names a module not ours."""
    requests = []
    for filename in _PROCESSOR_FILES:
        path, data = _read_json_file(str(folder_or_repo), filename, **kwargs)
        for name in _auto_map_targets(data):
            module = name.split("--")[-1].rsplit(".", 1)[0]
            if module != _OWN_MODULE:
                requests.append((path, name))
    return requests


PisaProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "DEFAULT_ANSWER",
    "DEFAULT_PROMPT_TEMPLATE",
    "IGNORE_INDEX",
    "MAX_ASPECT_RATIO",
    "PisaProcessor",
    "as_image_batch",
    "as_rgb_image",
    "mask_branch_image_processor",
]
