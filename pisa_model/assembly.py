"""Building a PISA model, in the spirit of transformers' conversion scripts: code that runs when a model is made
(assembled from pretrained parts, or a LoRA model folded into plain weights for inference), never when a saved
checkpoint is loaded or run. Unlike `modeling_pisa.py`, this file does not travel with checkpoints.

    model = from_components("llava-hf/llava-1.5-7b-hf", "facebook/dinov2-large", "facebook/sam-vit-huge", lora_rank=8)
    model = from_lisa("out/lisa-7b", "facebook/dinov2-large", lora_rank=8)   # PISA started from a converted LISA
    save_merged(model, "out/merged")   # LoRA folded in: the checkpoint loads without peft
"""

import copy
import json
import os

import torch
from safetensors import safe_open
from transformers import (
    AddedToken,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    Dinov2Backbone,
    Dinov2Config,
    SamConfig,
)
from transformers.utils import cached_file

from .configuration_pisa import DEFAULT_MASK_INPUT_SIZE, PisaConfig
from .modeling_pisa import PisaForPartSegmentation
from .processing_pisa import PisaProcessor, mask_branch_image_processor


def read_sam_prompt_weights(sam: str) -> tuple:
    """`(SamConfig, {"prompt_encoder": state_dict, "mask_decoder": state_dict})` from a SAM checkpoint (Hub id or
    folder), reading only those tensors from its safetensors file(s): the image encoder is never loaded."""
    config = SamConfig.from_pretrained(sam)
    index = cached_file(sam, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index is not None:
        with open(index) as handle:
            weight_map = json.load(handle)["weight_map"]
        folder = os.path.dirname(index)
        files = {key: os.path.join(folder, name) for key, name in weight_map.items()}
        if not os.path.isdir(sam):  # a Hub repo: fetch only the shards holding the wanted tensors
            wanted = {n for k, n in weight_map.items() if k.startswith(("prompt_encoder.", "mask_decoder.", "shared"))}
            for name in wanted:
                cached_file(sam, name)
    else:
        single = cached_file(sam, "model.safetensors", _raise_exceptions_for_missing_entries=False)
        if single is None:
            raise ValueError(f"SAM checkpoint {sam!r}: no model.safetensors (weights are read only as safetensors)")
        with safe_open(single, "pt") as handle:
            files = dict.fromkeys(handle.keys(), single)
    parts = {"prompt_encoder": {}, "mask_decoder": {}}
    for key, path in files.items():
        part, _, rest = key.partition(".")
        # Recent checkpoints keep the positional table once, at SamModel level (the prompt encoder's is tied to it).
        if key == "shared_image_embedding.positional_embedding":
            part, rest = "prompt_encoder", "shared_embedding.positional_embedding"
            if f"prompt_encoder.{rest}" in files:
                continue
        if part in parts:
            with safe_open(path, "pt") as handle:
                parts[part][rest] = handle.get_tensor(key)
    return config, parts


def merge_lora_state_dict(state_dict: dict, scaling: float, adapter: str = "default") -> dict:
    """A state dict with every LoRA pair folded into its base weight: `W + scaling * B @ A` (computed in float32,
    stored in W's dtype) under the plain layer's names (`q_proj.weight`), the `lora_` entries dropped."""
    merged = {}
    suffix = f".lora_A.{adapter}.weight"
    layers = {key[: -len(suffix)] for key in state_dict if key.endswith(suffix)}
    for key, value in state_dict.items():
        prefix = key.split(".base_layer.")[0] if ".base_layer." in key else None
        if prefix in layers:
            merged[key.replace(".base_layer.", ".")] = value
        elif ".lora_" not in key:
            merged[key] = value
    for prefix in layers:
        base = state_dict[f"{prefix}.base_layer.weight"]
        lora_a = state_dict[f"{prefix}.lora_A.{adapter}.weight"].float()
        lora_b = state_dict[f"{prefix}.lora_B.{adapter}.weight"].float()
        merged[f"{prefix}.weight"] = (base.float() + scaling * lora_b.to(lora_a.device) @ lora_a).to(base.dtype)
    return merged


def save_merged(model: PisaForPartSegmentation, save_directory: str, **kwargs):
    """Save a LoRA model merged, for inference: every adapter folded into its base weight
    (`W + lora_alpha / lora_rank * B @ A`, see `merge_lora_state_dict`) and the saved config with `lora_rank=0`, so
    that the checkpoint loads without peft (its whole language model is then trainable again). The model in memory
    is not changed; a model without LoRA is saved as it is. Other keyword arguments go to `save_pretrained`."""
    if model.config.lora_rank == 0:
        return model.save_pretrained(save_directory, **kwargs)
    if kwargs.get("push_to_hub"):
        raise ValueError("save_merged with push_to_hub=True: save merged to a folder, then upload it")
    state_dict = kwargs.pop("state_dict", None)
    state_dict = state_dict if state_dict is not None else model.state_dict()
    kwargs["state_dict"] = merge_lora_state_dict(state_dict, model.config.lora_alpha / model.config.lora_rank)
    rank = model.config.lora_rank
    model.config.lora_rank = 0
    try:
        return model.save_pretrained(save_directory, **kwargs)
    finally:
        model.config.lora_rank = rank


def _dinov2_mask_image_processor(dinov2: str, mask_input_size: int):
    """SAM's resize-longest-side-and-pad at `mask_input_size`, normalised as DINOv2 was trained."""
    dinov2_processor = AutoImageProcessor.from_pretrained(dinov2)
    return mask_branch_image_processor(mask_input_size, dinov2_processor.image_mean, dinov2_processor.image_std)


def init_rows_with_mean(llava_model, new_ids, known_tokens: int) -> None:
    """Start the input-embedding and LM-head rows of `new_ids` (tokens just added to the tokenizer) at the mean of
    the rows of its `known_tokens` existing tokens, as `resize_token_embeddings` starts the rows it adds
    (`mean_resizing`, its default). Used when the new ids fall in spare rows of a padded embedding matrix, where
    no resize happens (llava-hf's 32,064 rows hold 32,002 tokens). transformers adds a draw of N(0, 1e-9 x the rows'
    covariance) to the mean so that several new rows differ; each new token here gets the exact mean."""
    new_ids = list(new_ids)
    if not new_ids:
        return
    tables = [llava_model.get_input_embeddings().weight]
    head = llava_model.get_output_embeddings()
    if head is not None and head.weight is not tables[0]:
        tables.append(head.weight)
    with torch.no_grad():
        for table in tables:
            mean = table[:known_tokens].to(torch.float32).mean(dim=0)
            table[new_ids] = mean.to(table.dtype).expand(len(new_ids), -1)
        if head is not None and getattr(head, "bias", None) is not None:
            head.bias[new_ids] = head.bias[:known_tokens].to(torch.float32).mean().to(head.bias.dtype)


def from_components(
    llava: str,
    dinov2: str,
    sam: str,
    *,
    dinov2_feature_layers=None,
    feature_fusion: str = "sum",
    mask_input_size: int = DEFAULT_MASK_INPUT_SIZE,
    dtype: torch.dtype | None = None,
    **config_kwargs,
) -> PisaForPartSegmentation:
    r"""
    Assemble a PISA model from pretrained parts (Hub ids or local folders), e.g. `llava-hf/llava-1.5-7b-hf`,
    `facebook/dinov2-large`, `facebook/sam-vit-huge`.

    LLaVA and its processor are loaded whole; `[SEG]` is added to the tokenizer and the embeddings resized; DINOv2
    is loaded as a frozen backbone on `dinov2_feature_layers`; of SAM only the prompt-encoder and mask-decoder
    tensors are read from its safetensors (not the 632 M-parameter image encoder). The feature neck and text
    projection start from random. The returned model has `processor` set. Extra keyword arguments go to
    `PisaConfig` (e.g. `lora_rank=8`).

    Dtypes: the parts are stored in different dtypes (llava-hf's LLaVA in float16, DINOv2 and SAM in float32).
    Whatever they are, the model follows `apply_dtype_policy(dtype)`: trainable parameters in float32, frozen
    ones in `dtype`. `dtype=None` means float32 throughout (exact, and what a CPU runs); pass `torch.bfloat16`
    for a GPU (what `pisa_model.train --mixed-precision bf16` does), which halves the frozen weights.
    """
    compute_dtype = torch.float32 if dtype is None else dtype
    llava_model = AutoModelForImageTextToText.from_pretrained(llava, dtype=compute_dtype)
    llava_processor = AutoProcessor.from_pretrained(llava)
    tokenizer = llava_processor.tokenizer
    known_tokens = len(tokenizer)
    image_token = getattr(llava_processor, "image_token", "<image>")
    # Matched before any normalisation (e.g. lower-casing), so that they keep their spelling.
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, normalized=False, special=True)], special_tokens=True)
    tokenizer.add_tokens([AddedToken("[SEG]", normalized=False, special=False)])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if len(tokenizer) > llava_model.get_input_embeddings().weight.shape[0]:
        llava_model.resize_token_embeddings(len(tokenizer))  # new rows: the mean of the old (`mean_resizing`)
    else:  # llava-hf pads its 32,002 tokens to 32,064 rows: the new tokens land in spare rows holding anything
        init_rows_with_mean(llava_model, range(known_tokens, len(tokenizer)), known_tokens)

    sam_config, sam_weights = read_sam_prompt_weights(sam)
    # The composite config gets copies: building it resets the attention implementation of the sub-configs.
    dinov2_config = Dinov2Config.from_pretrained(dinov2)
    config = PisaConfig(
        llava_config=llava_model.config.to_dict(),
        dinov2_config=dinov2_config,
        dinov2_feature_layers=dinov2_feature_layers,
        feature_fusion=feature_fusion,
        mask_input_size=mask_input_size,
        seg_token_id=tokenizer.convert_tokens_to_ids("[SEG]"),
        prompt_encoder_config=copy.deepcopy(sam_config.prompt_encoder_config),
        mask_decoder_config=copy.deepcopy(sam_config.mask_decoder_config),
        initialization=f"components: LLaVA {llava}, DINOv2 {dinov2}, SAM {sam} (new [SEG] row: the mean of the "
        "existing token rows; feature neck and text projection random)",
        **config_kwargs,
    )
    dinov2_model = Dinov2Backbone.from_pretrained(dinov2, out_indices=config.dinov2_feature_layers, dtype=compute_dtype)

    model = PisaForPartSegmentation(config, llava=llava_model, dinov2=dinov2_model)
    for name, module in (("prompt_encoder", model.prompt_encoder), ("mask_decoder", model.mask_decoder)):
        module.load_state_dict(sam_weights[name], strict=True)
    model.apply_dtype_policy(compute_dtype)

    vision = llava_model.config.vision_config
    model.processor = PisaProcessor(
        image_processor=llava_processor.image_processor,
        mask_image_processor=_dinov2_mask_image_processor(dinov2, mask_input_size),
        tokenizer=tokenizer,
        image_token=image_token,
        patch_size=getattr(llava_processor, "patch_size", None) or vision.patch_size,
        vision_feature_select_strategy=llava_model.config.vision_feature_select_strategy,
        num_additional_image_tokens=getattr(llava_processor, "num_additional_image_tokens", 1),
    )
    return model


# What PISA takes from a converted LISA (`from_lisa`); the rest of LISA (SAM's image encoder) is left behind.
FROM_LISA = ("llava", "text_projection", "prompt_encoder", "mask_decoder")


def from_lisa(
    lisa: str,
    dinov2: str,
    *,
    dinov2_feature_layers=None,
    feature_fusion: str = "sum",
    mask_input_size: int = DEFAULT_MASK_INPUT_SIZE,
    dtype: torch.dtype | None = None,
    **config_kwargs,
) -> PisaForPartSegmentation:
    r"""
    PISA started from LISA, as the paper's baseline was: from the converted LISA checkpoint `lisa` (a folder written
    by `python -m pisa_model.convert_lisa`) the language model with its vision tower and projector (LLaVA v1's
    single linear one), its tokenizer and `[SEG]` row, the `[SEG]` text projection, SAM's prompt encoder and LISA's
    fine-tuned mask decoder, together with LISA's prompt, answer and CLIP preprocessing; DINOv2 from `dinov2`
    (frozen) and a feature neck that starts random. LISA's SAM image encoder is not used. Dtypes and extra keyword
    arguments as `from_components` (e.g. `lora_rank=8`).
    """
    compute_dtype = torch.float32 if dtype is None else dtype
    source = PisaForPartSegmentation.from_pretrained(lisa, dtype=compute_dtype)
    if source.config.mask_encoder != "sam":
        raise ValueError(
            f"{lisa}: not a converted LISA checkpoint (mask_encoder={source.config.mask_encoder!r}, LISA's is 'sam'); "
            "convert a released LISA with python -m pisa_model.convert_lisa"
        )
    if source.config.lora_rank:
        raise ValueError(
            f"{lisa}: holds unmerged LoRA adapters (lora_rank {source.config.lora_rank}); LISA's are merged"
        )
    lisa_processor = source.get_processor()
    config = PisaConfig(
        llava_config=source.llava.config.to_dict(),
        projector_type=source.config.projector_type,
        dinov2_config=Dinov2Config.from_pretrained(dinov2),
        dinov2_feature_layers=dinov2_feature_layers,
        feature_fusion=feature_fusion,
        mask_input_size=mask_input_size,
        seg_token_id=source.config.seg_token_id,
        prompt_encoder_config=copy.deepcopy(source.config.prompt_encoder_config),
        mask_decoder_config=copy.deepcopy(source.config.mask_decoder_config),
        text_projection_dropout=source.config.text_projection_dropout,
        initialization=f"LISA {lisa} (language model, projector, [SEG] row, text projection, prompt encoder and mask "
        f"decoder); DINOv2 {dinov2}; feature neck random",
        **config_kwargs,
    )
    dinov2_model = Dinov2Backbone.from_pretrained(dinov2, out_indices=config.dinov2_feature_layers, dtype=compute_dtype)
    model = PisaForPartSegmentation(config, llava=source.llava, dinov2=dinov2_model)
    for name in FROM_LISA[1:]:
        getattr(model, name).load_state_dict(getattr(source, name).state_dict(), strict=True)
    model.apply_dtype_policy(compute_dtype)
    model.processor = PisaProcessor(
        image_processor=lisa_processor.image_processor,
        mask_image_processor=_dinov2_mask_image_processor(dinov2, mask_input_size),
        tokenizer=lisa_processor.tokenizer,
        prompt_template=lisa_processor.prompt_template,
        answer=lisa_processor.answer,
        image_token=lisa_processor.image_token,
        seg_token=lisa_processor.seg_token,
        patch_size=lisa_processor.patch_size,
        vision_feature_select_strategy=lisa_processor.vision_feature_select_strategy,
        num_additional_image_tokens=lisa_processor.num_additional_image_tokens,
    )
    return model


__all__ = [
    "FROM_LISA",
    "from_components",
    "from_lisa",
    "init_rows_with_mean",
    "merge_lora_state_dict",
    "read_sam_prompt_weights",
    "save_merged",
]
