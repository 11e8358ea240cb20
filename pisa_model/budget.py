"""How much GPU memory inference and one training process need, to read before renting a GPU; no download, no GPU.

    python -m pisa_model.budget [--model pisa|lisa] [--lora-rank 8] [--batch-size 2] [--mixed-precision bf16]
        [--gradient-checkpointing] [--mask-input-size 896] [--text-tokens 64] [--predict-batch-size 8]

`--model pisa` (default): LLaVA-1.5-7B + frozen DINOv2-L + SAM-H's decoder. `--model lisa`: LISA-7B-v1 as
`pisa_model.convert_lisa` writes it: LLaVA v1 (LLaMA-7B, CLIP ViT-L/14 at 224 px, one linear projector; 32,000
LLaMA tokens + `[SEG]`, `<im_start>`, `<im_end>` as LISA's training adds them + the converter's `<image>`) with
SAM-H's own image encoder, frozen, at 1024 px. The inference section: every weight in the compute dtype, plus the
larger of the two stages' working sets per image (an analytic estimate, not checked against a GPU yet): the mask
image encoder's (SAM's global-attention layers hold a heads x N x N relative-position bias, N = 64 x 64 tokens, and
its sum; DINOv2 runs SDPA without one and keeps the fused layers' states) and the language model's (its logits in
the compute dtype and float32, one layer's activations, the KV cache of the prompt and 32 answer tokens).

The flags are `pisa_model.train`'s, with the README's full-size command as defaults. The model is built on the meta
device from the full-size configs shipped in `pisa_model/configs/` (llava-hf/llava-1.5-7b-hf, facebook/dinov2-large,
facebook/sam-vit-huge), with the LoRA adapters and freezing of the real run, and counted under the dtype policy of
`PisaForPartSegmentation.apply_dtype_policy`:

- weights: frozen parameters in the compute dtype (bf16/fp16, or fp32 with `--mixed-precision no`), trainable
  ones in float32;
- gradients: float32, one per trainable parameter; optimizer states: AdamW's two float32 moments;
- activations (an estimate): what autograd keeps for the backward pass, per sample of `image tokens + text tokens`
  positions. Per language-model layer and position it is *measured*: a decoder layer of the same kind, 16 times
  narrower (same head size), runs one forward on CPU under the same autocast and dtypes, and the bytes of the
  tensors it saves for backward are counted (each storage once) and scaled back up. With gradient checkpointing
  a layer keeps only its float32 input, plus one layer's full set while it is recomputed. Added analytically: the
  logits (bf16 logits, their float32 copy and log-softmax for the loss: 10 bytes per vocabulary entry and
  position), the compute-dtype copies autocast makes of the trainable weights, and the mask branch (the neck's
  inputs, 24 decoder-width maps at the grid, 8 float32 maps at the mask-input resolution for the loss). The frozen
  vision tower and DINOv2 keep nothing (no parameter of theirs needs a gradient). On the tiny model the estimate
  is within 12% of the bytes autograd saves in a whole forward (tests/test_pisa_scale.py checks 25%); at full size
  it is not yet checked against a GPU's measured peak (`bench/gpu_check.sh` prints both).

A card fits when the total is at most 90% of it (the CUDA context, cuBLAS workspaces and allocator fragmentation
take the rest). The last line is `fits 80 GB: yes` or `fits 80 GB: no`. `bench/gpu_check.sh` prints this estimate
next to the peak it measures.
"""

import argparse
import copy
import json
import os
import sys
from dataclasses import dataclass

import torch

from .configuration_pisa import DEFAULT_MASK_INPUT_SIZE, PisaConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
FULL_SIZE_PARTS = ("llava-1.5-7b-hf", "dinov2-large", "sam-vit-huge")
LISA_PARTS = ("LISA-7B-v1 (LLaMA-7B, CLIP ViT-L/14-224, linear projector)", "sam-vit-huge (image encoder frozen)")
# LISA-7B-v1's rows: LLaMA's 32,000 tokens + [SEG], <im_start>, <im_end> (LISA's training adds these three and
# resizes the embeddings to the tokenizer) + the <image> placeholder convert_lisa adds.
LISA_VOCAB_SIZE = 32_004
LISA_CLIP_IMAGE_SIZE = 224  # openai/clip-vit-large-patch14, LLaVA v1's tower: 256 image tokens
MODELS = ("pisa", "lisa")
ANSWER_TOKENS = 32  # generated answer tokens the inference estimate's KV cache holds
CARDS_GB = (24, 40, 80)
USABLE_FRACTION = 0.9
COMPUTE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GIB = 2**30
# The measured decoder layer is this many times narrower than the real one (head size kept).
NARROWING = 16
MEASURED_TOKENS = 32


def _read_config(name: str) -> dict:
    with open(os.path.join(CONFIG_DIR, name + ".json")) as handle:
        return json.load(handle)


def full_size_config(mask_input_size: int = DEFAULT_MASK_INPUT_SIZE, **config_kwargs) -> PisaConfig:
    """The paper's PisaConfig from the shipped configs: LLaVA-1.5-7B, DINOv2-L and SAM-H's decoder, `[SEG]` added
    after llava-hf's 32,002 tokens (it fits in the 32,064 padded embedding rows)."""
    llava, dinov2, sam = (_read_config(name) for name in FULL_SIZE_PARTS)
    return PisaConfig(
        llava_config=llava,
        dinov2_config=dinov2,
        prompt_encoder_config=sam["prompt_encoder_config"],
        mask_decoder_config=sam["mask_decoder_config"],
        mask_input_size=mask_input_size,
        seg_token_id=32002,
        **config_kwargs,
    )


def lisa_full_size_config(**config_kwargs) -> PisaConfig:
    """LISA-7B-v1 as `pisa_model.convert_lisa` writes it (see the module docstring), from the shipped configs: the
    LLaMA-7B text side of llava-1.5-7b-hf (the same Vicuna-7B dimensions), its CLIP ViT-L/14 at 224 px, SAM-H."""
    llava, sam = _read_config("llava-1.5-7b-hf"), _read_config("sam-vit-huge")
    text = dict(llava["text_config"], vocab_size=LISA_VOCAB_SIZE, pad_token_id=0)
    vision = dict(llava["vision_config"], image_size=LISA_CLIP_IMAGE_SIZE)
    patches = (LISA_CLIP_IMAGE_SIZE // vision["patch_size"]) ** 2
    llava_config = dict(
        model_type="llava",
        text_config=text,
        vision_config=vision,
        image_token_index=LISA_VOCAB_SIZE - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=patches,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    return PisaConfig(
        llava_config=llava_config,
        mask_encoder="sam",
        projector_type="linear",
        sam_vision_config=sam["vision_config"],
        prompt_encoder_config=sam["prompt_encoder_config"],
        mask_decoder_config=sam["mask_decoder_config"],
        seg_token_id=32_000,
        **config_kwargs,
    )


@dataclass
class Budget:
    """Per-process bytes of one training configuration (see the module docstring)."""

    parameters: int
    trainable: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    sequence_length: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes

    def fits(self, card_gb: float) -> bool:
        return self.total_bytes <= USABLE_FRACTION * card_gb * GIB


def count_parameters(config: PisaConfig, compute_dtype: torch.dtype = torch.float32) -> tuple:
    """(parameters, trainable, weight bytes) of `PisaForPartSegmentation(config)`, built on the meta device."""
    from .modeling_pisa import PisaForPartSegmentation

    with torch.device("meta"):
        model = PisaForPartSegmentation(config)
    total = trainable = weight_bytes = 0
    low = torch.empty((), dtype=compute_dtype).element_size()
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
        weight_bytes += param.numel() * (4 if param.requires_grad else low)
    return total, trainable, weight_bytes


def _saved_bytes(run, exclude: set) -> int:
    """Bytes of the storages autograd saves for backward while `run()` executes (each storage once), minus
    those in `exclude` (parameters, shared tables)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def decoder_layer_bytes_per_token(config: PisaConfig, compute_dtype: torch.dtype) -> float:
    """Saved-for-backward bytes per position of one language-model layer, measured on a narrowed copy."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    text = copy.deepcopy(config.text_config)
    head_dim = text.hidden_size // text.num_attention_heads
    heads = max(1, text.num_attention_heads // NARROWING)
    text.num_attention_heads, text.num_key_value_heads = heads, max(1, text.num_key_value_heads // NARROWING)
    text.head_dim, text.hidden_size = head_dim, heads * head_dim
    scale = config.text_config.hidden_size / text.hidden_size
    text.intermediate_size = round(config.text_config.intermediate_size / scale)
    text._attn_implementation = "sdpa"
    layer = torch.nn.Module()
    layer.layer = LlamaDecoderLayer(text, layer_idx=0)
    if config.lora_rank > 0:
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
        )
        inject_adapter_in_model(lora, layer)
        for name, param in layer.named_parameters():
            param.requires_grad_("lora_" in name)
    for param in layer.parameters():  # the dtype policy
        param.data = param.data.to(torch.float32 if param.requires_grad else compute_dtype)
    layer.train()
    # The residual stream is float32: it starts at the (trainable, float32) token embeddings.
    hidden = torch.randn(1, MEASURED_TOKENS, text.hidden_size, requires_grad=True)
    positions = torch.arange(MEASURED_TOKENS)[None]
    cos, sin = LlamaRotaryEmbedding(text)(hidden, positions)
    exclude = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    exclude |= {t.untyped_storage().data_ptr() for t in (cos, sin, hidden)}
    autocast = torch.autocast("cpu", dtype=compute_dtype, enabled=compute_dtype != torch.float32)

    def run():
        with autocast:
            layer.layer(hidden, position_embeddings=(cos, sin), position_ids=positions)

    return _saved_bytes(run, exclude) / MEASURED_TOKENS * scale


def activation_bytes(
    config: PisaConfig,
    batch_size: int,
    sequence_length: int,
    compute_dtype: torch.dtype,
    gradient_checkpointing: bool,
    trainable: int,
) -> int:
    """The activation estimate of the module docstring, for one process's micro-batch."""
    text = config.text_config
    per_layer = decoder_layer_bytes_per_token(config, compute_dtype) * sequence_length
    if gradient_checkpointing:
        language_model = text.num_hidden_layers * sequence_length * text.hidden_size * 4 + per_layer
    else:
        language_model = text.num_hidden_layers * per_layer
    low = torch.empty((), dtype=compute_dtype).element_size()
    logits = sequence_length * text.vocab_size * (low + 4 + 4)
    grid, size = config.mask_grid_size, config.mask_input_size
    decoder_width = config.mask_decoder_config.hidden_size
    neck_inputs = 0  # SAM's own neck is part of its frozen encoder: nothing of it is kept for backward
    if config.mask_encoder == "dinov2":
        neck_inputs = len(config.dinov2_feature_layers) * grid * grid * config.dinov2_config.hidden_size * low
    mask_branch = neck_inputs + 24 * grid * grid * decoder_width * low + 8 * size * size * 4
    weight_copies = trainable * low if compute_dtype != torch.float32 else 0
    return int(batch_size * (language_model + logits + mask_branch) + weight_copies)


def sequence_length_for(config: PisaConfig, text_tokens: int) -> int:
    """LLaVA's image tokens ((image / patch)^2, the CLS dropped by the "default" strategy) plus `text_tokens`."""
    vision = config.llava_config.vision_config
    image_tokens = (vision.image_size // vision.patch_size) ** 2
    if config.llava_config.vision_feature_select_strategy != "default":
        image_tokens += 1
    return image_tokens + text_tokens


def estimate(
    config: PisaConfig,
    batch_size: int = 2,
    mixed_precision: str = "bf16",
    gradient_checkpointing: bool = False,
    text_tokens: int = 64,
) -> Budget:
    """The `Budget` of training `config` (its LoRA settings included) with these `pisa_model.train` flags."""
    if mixed_precision not in COMPUTE_DTYPES:
        raise ValueError(f"mixed_precision must be one of {', '.join(COMPUTE_DTYPES)}, got {mixed_precision!r}")
    if batch_size < 1 or text_tokens < 1:
        raise ValueError(f"batch_size and text_tokens must be >= 1, got {batch_size} and {text_tokens}")
    compute_dtype = COMPUTE_DTYPES[mixed_precision]
    total, trainable, weight_bytes = count_parameters(config, compute_dtype)
    length = sequence_length_for(config, text_tokens)
    return Budget(
        parameters=total,
        trainable=trainable,
        weight_bytes=weight_bytes,
        gradient_bytes=4 * trainable,
        optimizer_bytes=8 * trainable,
        activation_bytes=activation_bytes(config, batch_size, length, compute_dtype, gradient_checkpointing, trainable),
        sequence_length=length,
    )


@dataclass
class InferenceBudget:
    """Bytes of predicting with one model copy (see the module docstring)."""

    parameters: int
    weight_bytes: int
    activation_bytes: int
    batch_size: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes

    def fits(self, card_gb: float) -> bool:
        return self.total_bytes <= USABLE_FRACTION * card_gb * GIB


def mask_encoder_bytes(config: PisaConfig, compute_dtype: torch.dtype) -> int:
    """The mask image encoder's working set for one image (module docstring)."""
    low = torch.empty((), dtype=compute_dtype).element_size()
    if config.mask_encoder == "sam":
        vision = config.sam_vision_config
        tokens = (_side(vision.image_size) // _side(vision.patch_size)) ** 2
        bias = vision.num_attention_heads * tokens * tokens * low if vision.global_attn_indexes else 0
        mlp = int(vision.hidden_size * vision.mlp_ratio)
        return 2 * bias + tokens * (4 * vision.hidden_size + mlp) * low
    dinov2 = config.dinov2_config
    tokens = (config.mask_input_size // _side(dinov2.patch_size)) ** 2 + 1
    mlp = int(dinov2.hidden_size * dinov2.mlp_ratio)
    kept = len(config.dinov2_feature_layers) * tokens * dinov2.hidden_size * low
    return kept + tokens * (4 * dinov2.hidden_size + mlp) * low


def language_model_bytes(config: PisaConfig, compute_dtype: torch.dtype, text_tokens: int) -> int:
    """The language model's working set for one sample (module docstring)."""
    low = torch.empty((), dtype=compute_dtype).element_size()
    text = config.text_config
    length = sequence_length_for(config, text_tokens)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    cache = 2 * text.num_hidden_layers * (length + ANSWER_TOKENS) * text.num_key_value_heads * head_dim * low
    logits = length * text.vocab_size * (low + 4)
    layer = length * (4 * text.hidden_size + 3 * text.intermediate_size) * low
    return cache + logits + layer


def inference_estimate(
    config: PisaConfig, batch_size: int = 8, mixed_precision: str = "bf16", text_tokens: int = 64
) -> InferenceBudget:
    """The `InferenceBudget` of predicting with `config` in batches of `batch_size` (`evaluate --batch-size`)."""
    if mixed_precision not in COMPUTE_DTYPES:
        raise ValueError(f"mixed_precision must be one of {', '.join(COMPUTE_DTYPES)}, got {mixed_precision!r}")
    compute_dtype = COMPUTE_DTYPES[mixed_precision]
    inference = copy.deepcopy(config)
    inference.lora_rank = 0  # a trained LoRA checkpoint is saved merged
    total, _, _ = count_parameters(inference, compute_dtype)
    low = torch.empty((), dtype=compute_dtype).element_size()
    per_sample = max(
        mask_encoder_bytes(config, compute_dtype), language_model_bytes(config, compute_dtype, text_tokens)
    )
    return InferenceBudget(
        parameters=total, weight_bytes=total * low, activation_bytes=batch_size * per_sample, batch_size=batch_size
    )


def _side(size) -> int:
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def format_inference(budget: InferenceBudget, args) -> str:
    low = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[args.mixed_precision]
    parts = " + ".join(LISA_PARTS if args.model == "lisa" else FULL_SIZE_PARTS)
    lines = [
        f"{args.model.upper()} inference budget: {parts}; batch {budget.batch_size}, {low}, "
        f"mask input {args.mask_input_size} px",
        f"parameters        {budget.parameters:>15,}",
        f"weights           {budget.weight_bytes / GIB:>12.2f} GiB  ({low})",
        f"activations       {budget.activation_bytes / GIB:>12.2f} GiB  (estimate, see python -m pisa_model.budget -h)",
        f"total             {budget.total_bytes / GIB:>12.2f} GiB",
    ]
    lines += [f"inference fits {card} GB: {'yes' if budget.fits(card) else 'no'}" for card in CARDS_GB]
    return "\n".join(lines)


def format_budget(budget: Budget, args) -> str:
    low = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[args.mixed_precision]
    checkpointing = "on" if args.gradient_checkpointing else "off"
    parts = " + ".join(LISA_PARTS if getattr(args, "model", "pisa") == "lisa" else FULL_SIZE_PARTS)
    lines = [
        f"{getattr(args, 'model', 'pisa').upper()} training budget per process: {parts}; LoRA r={args.lora_rank}, "
        f"batch {args.batch_size}, mixed precision {args.mixed_precision}, gradient checkpointing {checkpointing}, "
        f"mask input {args.mask_input_size} px, {budget.sequence_length} positions per sample",
        f"parameters        {budget.parameters:>15,}",
        f"trainable         {budget.trainable:>15,}",
        f"weights           {budget.weight_bytes / GIB:>12.2f} GiB  (frozen in {low}, trainable in float32)",
        f"gradients         {budget.gradient_bytes / GIB:>12.2f} GiB  (float32)",
        f"optimizer states  {budget.optimizer_bytes / GIB:>12.2f} GiB  (AdamW, 2 float32 moments)",
        f"activations       {budget.activation_bytes / GIB:>12.2f} GiB  (estimate, see python -m pisa_model.budget -h)",
        f"total             {budget.total_bytes / GIB:>12.2f} GiB",
    ]
    lines += [f"fits {card} GB: {'yes' if budget.fits(card) else 'no'}" for card in CARDS_GB]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pisa_model.budget",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", default="pisa", choices=MODELS, help="pisa (DINOv2) or lisa (LISA-7B-v1: SAM-H's encoder, 1024 px)"
    )
    parser.add_argument("--lora-rank", type=int, default=8, help="0: full fine-tuning of the language model")
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2, help="rows per process per micro-batch")
    parser.add_argument("--mixed-precision", default="bf16", choices=tuple(COMPUTE_DTYPES))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--mask-input-size", type=int, default=None, help="PISA's mask input (default 896); LISA's is SAM's 1024"
    )
    parser.add_argument("--predict-batch-size", type=int, default=8, help="rows per predict call (evaluate's)")
    parser.add_argument(
        "--text-tokens", type=int, default=64, help="prompt template + instruction + answer tokens per sample"
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.lora_rank < 0:
            raise ValueError(f"--lora-rank must be >= 0, got {args.lora_rank}")
        if args.predict_batch_size < 1:
            raise ValueError(f"--predict-batch-size must be >= 1, got {args.predict_batch_size}")
        lora = dict(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)
        if args.model == "lisa":
            config = lisa_full_size_config(
                **lora, **({"mask_input_size": args.mask_input_size} if args.mask_input_size else {})
            )
        else:
            config = full_size_config(mask_input_size=args.mask_input_size or DEFAULT_MASK_INPUT_SIZE, **lora)
        args.mask_input_size = config.mask_input_size
        inference = inference_estimate(config, args.predict_batch_size, args.mixed_precision, args.text_tokens)
        budget = estimate(config, args.batch_size, args.mixed_precision, args.gradient_checkpointing, args.text_tokens)
    except ValueError as error:
        print(f"pisa_model.budget: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(format_inference(inference, args))
    print(format_budget(budget, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "Budget",
    "InferenceBudget",
    "count_parameters",
    "estimate",
    "full_size_config",
    "inference_estimate",
    "lisa_full_size_config",
    "main",
]
