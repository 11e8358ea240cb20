"""A local image-text-to-text model asked one question per image: what reason-then-ground and vlm-box send.

`LocalVLM` and `api.ApiVLM` answer the same call, `ask(images, prompts) -> list[VLMAnswer]`, so either serves as
the VLM of both adapters. A local model renders one user turn (the image, then the prompt) with its processor's
chat template and the generation prompt (a processor without a template, such as PaliGemma's, gets the prompt as
its text), decodes greedily (`do_sample=False`) at most `max_new_tokens` tokens, and left-pads a batch.
"""

from .base import VLMAnswer, to_device

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "LocalVLM", "VLMAnswer", "load_local_vlm", "load_vlm"]

DEFAULT_MAX_NEW_TOKENS = 32


class LocalVLM:
    """`ask(images, prompts)` with an `AutoModelForImageTextToText` model and its processor."""

    def __init__(self, model, processor, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model, self.processor = model, processor
        self.max_new_tokens = int(max_new_tokens)
        self.chat = getattr(processor, "chat_template", None) is not None
        # Decoder-only generation continues from the last position: pad on the left.
        self.processor.tokenizer.padding_side = "left"

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", "")

    def shown_size(self, image) -> tuple:
        return image.size

    def render(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)

    def _model_input_sizes(self, inputs) -> list | None:
        """(width, height) of each image as the model saw it, where the processor reports it (Qwen's grid)."""
        grid = inputs.get("image_grid_thw")
        patch = getattr(self.processor.image_processor, "patch_size", None)
        if grid is None or patch is None:
            return None
        return [(int(w) * patch, int(h) * patch) for _, h, w in grid.tolist()]

    def ask(self, images: list, prompts: list) -> list:
        import torch

        images = [image.convert("RGB") for image in images]
        inputs = self.processor(
            images=images, text=[self.render(p) for p in prompts], padding=True, return_tensors="pt"
        )
        sizes = self._model_input_sizes(inputs) or [None] * len(images)
        inputs = to_device(inputs, self.model.device, self.model.dtype)
        tokenizer = self.processor.tokenizer
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            generated = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_token_id
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [VLMAnswer(text.strip(), image.size, size) for text, image, size in zip(texts, images, sizes)]

    def record(self) -> dict:
        """What provenance keeps about how the answers were produced."""
        return {"kind": "local", "decoding": "greedy", "max_new_tokens": self.max_new_tokens}

    def usage(self) -> dict:
        return {}


def load_local_vlm(checkpoint: str, *, device=None, dtype=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .base import dtype_options, load_pretrained, prepare_model

    model = load_pretrained(AutoModelForImageTextToText.from_pretrained, checkpoint, "VLM", **dtype_options(dtype))
    processor = load_pretrained(AutoProcessor.from_pretrained, checkpoint, "VLM")
    return LocalVLM(prepare_model(model, device, dtype), processor, max_new_tokens=max_new_tokens)


def load_vlm(spec: str, *, device=None, dtype=None, max_new_tokens=None, api_options: dict | None = None):
    """`api:MODEL@BASE_URL` -> `ApiVLM`; a checkpoint -> `LocalVLM`. API options are refused for a local model."""
    api_options = {k: v for k, v in (api_options or {}).items() if v is not None}
    if spec.startswith("api:"):
        from .api import ApiVLM, parse_api_spec

        if max_new_tokens is not None:
            raise ValueError("max_new_tokens is for local VLMs; an API model takes max_tokens")
        return ApiVLM(*parse_api_spec(spec), **api_options)
    if api_options:
        raise ValueError(f"option(s) {', '.join(sorted(api_options))} are for api:MODEL@BASE_URL VLMs, not {spec!r}")
    from .base import checked_checkpoint

    checkpoint = checked_checkpoint(spec, "VLM")
    try:
        return load_local_vlm(
            checkpoint,
            device=device,
            dtype=dtype,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens,
        )
    except ImportError as error:  # e.g. Qwen-VL processors need torchvision for their video half
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot load the VLM checkpoint {spec!r}: {first_line}") from None
