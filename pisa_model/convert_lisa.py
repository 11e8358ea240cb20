"""Convert a checkpoint released by LISA's authors into this package's model family (`mask_encoder="sam"`).

    python -m pisa_model.convert_lisa --checkpoint xinlai/LISA-7B-v1 --output out/lisa-7b-v1 [--dtype bfloat16]

Reads LISA's released layout (xinlai/LISA-7B-v1, xinlai/LISA-13B-llama2-v1 and the -explanatory variants, a local
folder or a Hub repo): a `LISAForCausalLM` config (a LLaMA config plus LLaVA's `mm_*` keys and LISA's `out_dim`),
`pytorch_model*.bin` (read only with `torch.load(weights_only=True)`) or safetensors shards, and LISA's slow LLaMA
tokenizer holding `[SEG]`, `<im_start>` and `<im_end>`. The CLIP vision tower is not in the checkpoint (LISA keeps it
frozen and its merge script drops it): it is read from the tower the config names (`vision_tower`), or from
`--vision-tower`. Writes a folder that `PisaForPartSegmentation.from_pretrained`, `AutoModel` with
`trust_remote_code=True` and the pipeline load like any PISA checkpoint (safetensors, sharded by `save_pretrained`).

Every source tensor is either used (`TENSOR_MAP`) or named as dropped (`DROPPED`). A tensor neither table names, a
tensor the model needs that the checkpoint lacks, or one of the wrong shape stops the conversion with one line
naming it (exit 2): nothing is ever left randomly initialised. All sizes are read from the checkpoint's config and
tensors; the one architecture constant shapes cannot tell, SAM's decoder attention heads, is LISA's own (8, fixed in
its `build_sam`).

Tokenization follows LISA's (transformers 4.31's slow LLaMA tokenizer): its added tokens swallow the whitespace on
both sides, so they are written as `AddedToken(lstrip=True, rstrip=True)`, and `<image>` is added as the placeholder
the processor repeats once per CLIP patch (LISA's `IMAGE_TOKEN_INDEX` expands to the same 256 positions). Its
embedding and LM-head rows are zeros: the first is always replaced by image features, the second is never
generated (`generate` suppresses it).
"""

import argparse
import json
import os
import re
import sys

PROG = "python -m pisa_model.convert_lisa"

# LISA's prompt (chat.py: the llava_v1 conversation, `<image>` wrapped in `<im_start>`/`<im_end>`) with the
# instruction sentence of LISA's reasoning-segmentation validation, and its trained answer.
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LISA_PROMPT_TEMPLATE = (
    LLAVA_V1_SYSTEM + " USER: <im_start><image><im_end>\n{instruction} Please output segmentation mask. ASSISTANT:"
)
LISA_ANSWER = "Sure, it is [SEG]."
LISA_TOKENS = ("[SEG]", "<im_start>", "<im_end>")
IMAGE_TOKEN = "<image>"
# SAM's decoder attention heads: not visible in any tensor shape; LISA's build_sam fixes them at 8.
SAM_DECODER_HEADS = 8
# The eps of the LayerNorms in SAM's two-way transformer: segment_anything builds them with nn.LayerNorm's default.
SAM_DECODER_LAYER_NORM_EPS = 1e-5
# SAM's pixel normalisation (0-255 values): the ImageNet statistics, as fractions for transformers' processors.
SAM_IMAGE_MEAN = [0.485, 0.456, 0.406]
SAM_IMAGE_STD = [0.229, 0.224, 0.225]

_SAM = r"model\.visual_model\."
_BLOCK = _SAM + r"image_encoder\.blocks\.(\d+)\."
_DECODER_LAYER = _SAM + r"mask_decoder\.transformer\.layers\.(\d+)\."
_ATTENTION = r"(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)"

# (LISA tensor name pattern, this package's name): every tensor the conversion uses.
TENSOR_MAP = [
    # LLaMA
    (r"model\.embed_tokens\.weight", "llava.model.language_model.embed_tokens.weight"),
    (
        r"model\.layers\.(\d+)\.((?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight)",
        r"llava.model.language_model.layers.\1.\2",
    ),
    (
        r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
        r"llava.model.language_model.layers.\1.\2.weight",
    ),
    (r"model\.norm\.weight", "llava.model.language_model.norm.weight"),
    (r"lm_head\.weight", "llava.lm_head.weight"),
    # LLaVA v1's single linear projector, and LISA's [SEG] projection (Linear, ReLU, Linear, Dropout)
    (r"model\.mm_projector\.(weight|bias)", r"llava.model.multi_modal_projector.linear.\1"),
    (r"model\.text_hidden_fcs\.0\.0\.(weight|bias)", r"text_projection.fc1.\1"),
    (r"model\.text_hidden_fcs\.0\.2\.(weight|bias)", r"text_projection.fc2.\1"),
    # SAM's image encoder (segment_anything's ImageEncoderViT -> transformers' SamVisionEncoder)
    (_SAM + r"image_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_encoder.patch_embed.projection.\1"),
    (_SAM + r"image_encoder\.pos_embed", "vision_encoder.pos_embed"),
    (_BLOCK + r"norm([12])\.(weight|bias)", r"vision_encoder.layers.\1.layer_norm\2.\3"),
    (_BLOCK + r"attn\.(qkv|proj)\.(weight|bias)", r"vision_encoder.layers.\1.attn.\2.\3"),
    (_BLOCK + r"attn\.(rel_pos_[hw])", r"vision_encoder.layers.\1.attn.\2"),
    (_BLOCK + r"mlp\.(lin[12])\.(weight|bias)", r"vision_encoder.layers.\1.mlp.\2.\3"),
    (_SAM + r"image_encoder\.neck\.0\.weight", "vision_encoder.neck.conv1.weight"),
    (_SAM + r"image_encoder\.neck\.1\.(weight|bias)", r"vision_encoder.neck.layer_norm1.\1"),
    (_SAM + r"image_encoder\.neck\.2\.weight", "vision_encoder.neck.conv2.weight"),
    (_SAM + r"image_encoder\.neck\.3\.(weight|bias)", r"vision_encoder.neck.layer_norm2.\1"),
    # SAM's prompt encoder
    (
        _SAM + r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    (_SAM + r"prompt_encoder\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.\1.weight"),
    (_SAM + r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    (_SAM + r"prompt_encoder\.mask_downscaling\.0\.(weight|bias)", r"prompt_encoder.mask_embed.conv1.\1"),
    (_SAM + r"prompt_encoder\.mask_downscaling\.1\.(weight|bias)", r"prompt_encoder.mask_embed.layer_norm1.\1"),
    (_SAM + r"prompt_encoder\.mask_downscaling\.3\.(weight|bias)", r"prompt_encoder.mask_embed.conv2.\1"),
    (_SAM + r"prompt_encoder\.mask_downscaling\.4\.(weight|bias)", r"prompt_encoder.mask_embed.layer_norm2.\1"),
    (_SAM + r"prompt_encoder\.mask_downscaling\.6\.(weight|bias)", r"prompt_encoder.mask_embed.conv3.\1"),
    # SAM's mask decoder
    (_SAM + r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
    (
        _DECODER_LAYER + r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\." + _ATTENTION,
        r"mask_decoder.transformer.layers.\1.\2.\3.\4",
    ),
    (_DECODER_LAYER + r"norm([1-4])\.(weight|bias)", r"mask_decoder.transformer.layers.\1.layer_norm\2.\3"),
    (_DECODER_LAYER + r"mlp\.(lin[12])\.(weight|bias)", r"mask_decoder.transformer.layers.\1.mlp.\2.\3"),
    (
        _SAM + r"mask_decoder\.transformer\.final_attn_token_to_image\." + _ATTENTION,
        r"mask_decoder.transformer.final_attn_token_to_image.\1.\2",
    ),
    (
        _SAM + r"mask_decoder\.transformer\.norm_final_attn\.(weight|bias)",
        r"mask_decoder.transformer.layer_norm_final_attn.\1",
    ),
    (_SAM + r"mask_decoder\.output_upscaling\.0\.(weight|bias)", r"mask_decoder.upscale_conv1.\1"),
    (_SAM + r"mask_decoder\.output_upscaling\.1\.(weight|bias)", r"mask_decoder.upscale_layer_norm.\1"),
    (_SAM + r"mask_decoder\.output_upscaling\.3\.(weight|bias)", r"mask_decoder.upscale_conv2.\1"),
    # segment_anything's MLP(layers=[first, middle..., last]) -> transformers' (proj_in, layers, proj_out): the
    # middle layers are renumbered (`_renumber_mlp`), so these patterns only tag the tensors.
    (_SAM + r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.(weight|bias)", None),
]

# (LISA tensor name pattern, why it is not converted).
DROPPED = [
    (
        r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
        "LLaMA's rotary frequencies, a buffer transformers recomputes from the config",
    ),
    (
        r"model\.vision_tower\..*",
        "the frozen CLIP tower, taken whole from the tower the config names (LISA never trains it)",
    ),
]


class ConversionError(ValueError):
    """Bad input: a one-line message naming the checkpoint file or tensor."""


def map_name(name: str, depths: dict) -> str | None:
    """This package's name for LISA tensor `name`, or None when `DROPPED` lists it; ConversionError when neither
    table names it. `depths` maps each segment_anything MLP prefix to its number of layers."""
    for pattern, target in TENSOR_MAP:
        match = re.fullmatch(pattern, name)
        if match:
            if target is None:
                return _renumber_mlp(match, depths)
            return match.expand(target)
    for pattern, _ in DROPPED:
        if re.fullmatch(pattern, name):
            return None
    raise ConversionError(f"unexpected tensor {name}: neither converted nor listed as dropped")


def _renumber_mlp(match, depths: dict) -> str:
    prefix, index, kind = match.group(1), int(match.group(2)), match.group(3)
    last = depths[prefix] - 1
    if index == 0:
        part = "proj_in"
    elif index == last:
        part = "proj_out"
    else:
        part = f"layers.{index - 1}"
    return f"mask_decoder.{prefix}.{part}.{kind}"


def _mlp_depths(names) -> dict:
    depths = {}
    for name in names:
        match = re.fullmatch(
            _SAM + r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.weight", name
        )
        if match:
            depths[match.group(1)] = max(depths.get(match.group(1), 0), int(match.group(2)) + 1)
    return depths


# --- reading the checkpoint ------------------------------------------------------------------------------------


def resolve_checkpoint(checkpoint: str) -> str:
    """A local folder, or a Hub repo downloaded (config, weights, tokenizer files only) into the Hub cache."""
    if os.path.isdir(checkpoint):
        return checkpoint
    if os.path.exists(checkpoint):
        raise ConversionError(f"{checkpoint}: not a folder (a LISA checkpoint folder or Hub repo id is needed)")
    from huggingface_hub import snapshot_download

    return snapshot_download(
        checkpoint,
        allow_patterns=["*.json", "*.bin", "*.safetensors", "tokenizer.model", "*.txt"],
    )


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing (not a LISA checkpoint)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path}: not a readable JSON file ({error})") from None
    if "LISAForCausalLM" not in (config.get("architectures") or []) or "out_dim" not in config:
        raise ConversionError(f"{path}: not a LISA checkpoint (architectures must name LISAForCausalLM, out_dim set)")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "mm_hidden_size"):
        if key not in config:
            raise ConversionError(f"{path}: missing {key!r}")
    if not config.get("mm_use_im_start_end", False):
        raise ConversionError(f"{path}: mm_use_im_start_end is false; only LISA's <im_start>/<im_end> prompts convert")
    return config


def weight_files(folder: str) -> list:
    """The checkpoint's weight files, from its index when sharded; safetensors preferred over .bin."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as handle:
                    weight_map = json.load(handle)["weight_map"]
            except (OSError, ValueError, KeyError) as error:
                raise ConversionError(f"{index}: not a readable weights index ({error})") from None
            return [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
        if os.path.isfile(os.path.join(folder, single)):
            return [os.path.join(folder, single)]
    raise ConversionError(f"{folder}: no pytorch_model*.bin or model*.safetensors weights")


def read_tensors(files: list) -> dict:
    """{name: tensor} from every file, with a progress bar; `.bin` files only through torch's weights-only loader."""
    import torch
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    tensors = {}
    for path in tqdm(files, desc="reading LISA's weights", unit="file", disable=len(files) < 2):
        if not os.path.isfile(path):
            raise ConversionError(f"{path}: missing (named by the weights index)")
        try:
            if path.endswith(".safetensors"):
                shard = load_file(path)
            else:
                shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # a corrupt or foreign file: name it, whatever the loader raised
            raise ConversionError(f"{path}: not a readable weights file ({_first_line(error)})") from None
        for name, tensor in shard.items():
            if name in tensors:
                raise ConversionError(f"{path}: tensor {name} appears in two weight files")
            tensors[name] = tensor
    return tensors


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _shape(tensors: dict, name: str) -> tuple:
    if name not in tensors:
        raise ConversionError(f"missing tensor {name}")
    return tuple(tensors[name].shape)


# --- sizes from the checkpoint -----------------------------------------------------------------------------------


def sam_configs(tensors: dict) -> tuple:
    """(SamVisionConfig, SamPromptEncoderConfig, SamMaskDecoderConfig) kwargs read from LISA's SAM tensors."""
    encoder = "model.visual_model.image_encoder."
    hidden, _, patch, _ = _shape(tensors, encoder + "patch_embed.proj.weight")
    _, grid, _, _ = _shape(tensors, encoder + "pos_embed")
    depth = 1 + max(int(m.group(1)) for m in _matches(tensors, re.escape(encoder) + r"blocks\.(\d+)\.norm1\.weight"))
    rel_lengths = [_shape(tensors, f"{encoder}blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
    head_dim = _shape(tensors, encoder + "blocks.0.attn.rel_pos_h")[1]
    global_layers = [i for i, length in enumerate(rel_lengths) if length == 2 * grid - 1]
    windowed = {length for length in rel_lengths if length != 2 * grid - 1}
    if len(windowed) > 1:
        raise ConversionError(f"SAM image encoder blocks use several window sizes ({sorted(windowed)})")
    window = (windowed.pop() + 1) // 2 if windowed else 0
    out_channels = _shape(tensors, encoder + "neck.0.weight")[0]
    vision = {
        "hidden_size": hidden,
        "output_channels": out_channels,
        "num_hidden_layers": depth,
        "num_attention_heads": hidden // head_dim,
        "image_size": grid * patch,
        "patch_size": patch,
        "mlp_dim": _shape(tensors, encoder + "blocks.0.mlp.lin1.weight")[0],
        "window_size": window,
        "global_attn_indexes": global_layers,
        "num_pos_feats": _shape(
            tensors, "model.visual_model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
        )[1],
    }
    decoder = "model.visual_model.mask_decoder."
    width = _shape(tensors, decoder + "iou_token.weight")[1]
    layers = 1 + max(
        int(m.group(1)) for m in _matches(tensors, re.escape(decoder) + r"transformer\.layers\.(\d+)\.norm1\.weight")
    )
    internal = _shape(tensors, decoder + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    iou_layers = _mlp_depths(tensors)["iou_prediction_head"]
    mask_decoder = {
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": SAM_DECODER_HEADS,
        "mlp_dim": _shape(tensors, decoder + "transformer.layers.0.mlp.lin1.weight")[0],
        "attention_downsample_rate": width // internal,
        "num_multimask_outputs": _shape(tensors, decoder + "mask_tokens.weight")[0] - 1,
        "iou_head_depth": iou_layers,
        "iou_head_hidden_dim": _shape(tensors, decoder + "iou_prediction_head.layers.0.weight")[0],
        # segment_anything's TwoWayTransformer norms are nn.LayerNorm's default (transformers' SAM port says 1e-6)
        "layer_norm_eps": SAM_DECODER_LAYER_NORM_EPS,
    }
    prompt = {
        "hidden_size": width,
        "image_size": grid * patch,
        "patch_size": patch,
        "mask_input_channels": _shape(tensors, "model.visual_model.prompt_encoder.mask_downscaling.3.weight")[0],
        "num_point_embeddings": len(
            _matches(tensors, r"model\.visual_model\.prompt_encoder\.point_embeddings\.\d+\.weight")
        ),
    }
    return vision, prompt, mask_decoder


def _matches(tensors: dict, pattern: str) -> list:
    found = [m for m in (re.fullmatch(pattern, name) for name in tensors) if m]
    if not found:
        raise ConversionError(f"missing tensors matching {pattern.replace(chr(92), '')}")
    return found


# --- the conversion ------------------------------------------------------------------------------------------------


def lisa_tokenizer(folder: str):
    """LISA's tokenizer as a fast tokenizer tokenizing as LISA's slow one does, with `<image>` added."""
    from transformers import AddedToken, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, ImportError) as error:
        raise ConversionError(f"{folder}: LISA's tokenizer does not load ({_first_line(error)})") from None
    vocab = tokenizer.get_vocab()
    for token in LISA_TOKENS:
        if token not in vocab:
            raise ConversionError(f"{folder}: the tokenizer has no {token} token (not a LISA tokenizer)")
    # transformers 4.31's slow tokenizers strip the whitespace around added tokens: say so explicitly.
    tokenizer.add_tokens([AddedToken("[SEG]", lstrip=True, rstrip=True, normalized=False, special=False)])
    tokenizer.add_tokens(
        [AddedToken(t, lstrip=True, rstrip=True, normalized=False, special=True) for t in ("<im_start>", "<im_end>")],
        special_tokens=True,
    )
    tokenizer.add_tokens(
        [AddedToken(IMAGE_TOKEN, lstrip=True, rstrip=True, normalized=False, special=True)], special_tokens=True
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _context_length(source: dict) -> int:
    return int(source.get("max_position_embeddings", 2048))


def lisa_processor(clip_processor, tokenizer, *, mask_size: int, patch_size: int, vision_feature_select_strategy):
    """LISA's processor in PISA's form: CLIP preprocessing on the language side, SAM's longest-side resize, padding
    and normalisation at `mask_size` on the mask side, LISA's llava_v1 prompt and answer."""
    from .processing_pisa import PisaProcessor, mask_branch_image_processor

    return PisaProcessor(
        image_processor=clip_processor,
        mask_image_processor=mask_branch_image_processor(mask_size, SAM_IMAGE_MEAN, SAM_IMAGE_STD),
        tokenizer=tokenizer,
        prompt_template=LISA_PROMPT_TEMPLATE,
        answer=LISA_ANSWER,
        image_token=IMAGE_TOKEN,
        patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,
    )


def convert(
    checkpoint: str, output: str, dtype: str | None = None, vision_tower: str | None = None, overwrite: bool = False
) -> dict:
    """Convert; returns {"used": n, "dropped": n, "dropped_names": [...]} (see the module docstring)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlavaConfig,
    )

    from instructpart_dataset.toolbox.files import publish_folder

    from .configuration_pisa import PisaConfig
    from .modeling_pisa import PisaForPartSegmentation

    folder = resolve_checkpoint(checkpoint)
    source = read_config(folder)
    tower = vision_tower or source.get("vision_tower") or source.get("mm_vision_tower")
    if not tower:
        raise ConversionError(f"{os.path.join(folder, 'config.json')}: names no vision tower (pass --vision-tower)")
    tensors = read_tensors(weight_files(folder))
    tokenizer = lisa_tokenizer(folder)
    tokenizer.model_max_length = _context_length(source)  # LISA's chat says 512, counting the image as one token

    depths = _mlp_depths(tensors)
    converted, dropped = {}, []
    for name in sorted(tensors):
        target = map_name(name, depths)
        if target is None:
            dropped.append(name)
        else:
            converted[target] = tensors[name]

    try:
        clip = CLIPVisionModel.from_pretrained(tower, dtype=torch.float32)
        clip_config = CLIPVisionConfig.from_pretrained(tower)
        clip_processor = CLIPImageProcessorPil.from_pretrained(tower)
    except (OSError, ValueError) as error:
        raise ConversionError(f"{tower}: the CLIP vision tower does not load ({_first_line(error)})") from None
    for name, tensor in clip.state_dict().items():
        converted[f"llava.model.vision_tower.{name}"] = tensor

    vocab_size = source["vocab_size"]
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    new_vocab = max(vocab_size, len(tokenizer))
    for key in ("llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight"):
        if key in converted and converted[key].shape[0] == vocab_size and new_vocab > vocab_size:
            old = converted[key]
            converted[key] = torch.cat([old, old.new_zeros(new_vocab - vocab_size, old.shape[1])])

    text_config = LlamaConfig(
        vocab_size=new_vocab,
        hidden_size=source["hidden_size"],
        intermediate_size=source["intermediate_size"],
        num_hidden_layers=source["num_hidden_layers"],
        num_attention_heads=source["num_attention_heads"],
        num_key_value_heads=source.get("num_key_value_heads", source["num_attention_heads"]),
        max_position_embeddings=_context_length(source),
        rms_norm_eps=source.get("rms_norm_eps", 1e-6),
        rope_theta=source.get("rope_theta", 10000.0),
        hidden_act=source.get("hidden_act", "silu"),
        bos_token_id=source.get("bos_token_id", 1),
        eos_token_id=source.get("eos_token_id", 2),
        pad_token_id=source.get("pad_token_id", 0),
        tie_word_embeddings=False,
    )
    patch_grid = clip_config.image_size // clip_config.patch_size
    llava_config = LlavaConfig(
        text_config=text_config.to_dict(),
        vision_config=clip_config.to_dict(),
        image_token_id=image_token_id,
        vision_feature_layer=source.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default"
        if source.get("mm_vision_select_feature", "patch") == "patch"
        else "full",
        image_seq_length=patch_grid**2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    vision, prompt, decoder = sam_configs(tensors)
    config = PisaConfig(
        llava_config=llava_config.to_dict(),
        mask_encoder="sam",
        projector_type="linear",
        sam_vision_config=vision,
        prompt_encoder_config=prompt,
        mask_decoder_config=decoder,
        seg_token_id=tokenizer.convert_tokens_to_ids("[SEG]"),
    )
    with init_empty_weights():
        model = PisaForPartSegmentation(config)
    expected = model.state_dict()
    sources = {}  # our name -> the LISA tensor it came from, to name it in errors
    for name in tensors:
        target = map_name(name, depths)
        if target is not None:
            sources[target] = name
    for key, value in expected.items():
        if key not in converted:
            raise ConversionError(f"missing tensor {_source_name(key)}: the checkpoint lacks it")
        if tuple(converted[key].shape) != tuple(value.shape):
            raise ConversionError(
                f"tensor {sources.get(key, key)} has shape {tuple(converted[key].shape)}, expected {tuple(value.shape)}"
            )
    for key in converted:
        if key not in expected:
            raise ConversionError(f"unexpected tensor {sources.get(key, key)}: the converted model has no {key}")

    target_dtype = _dtype(dtype, tensors)
    state = {key: value.to(target_dtype) if value.is_floating_point() else value for key, value in converted.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model._set_trainable()

    model.processor = lisa_processor(
        clip_processor,
        tokenizer,
        mask_size=vision["image_size"],
        patch_size=clip_config.patch_size,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
    )
    with publish_folder(output, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        with open(os.path.join(staging, "lisa_conversion.json"), "w", encoding="utf-8") as handle:
            json.dump(
                {"source": checkpoint, "vision_tower": tower, "used": len(tensors) - len(dropped), "dropped": dropped},
                handle,
                indent=1,
            )
    return {"used": len(tensors) - len(dropped), "dropped": len(dropped), "dropped_names": dropped}


def _source_name(key: str) -> str:
    """The LISA tensor name that would give `key` (for errors), by inverting the simple entries of TENSOR_MAP."""
    for pattern, target in TENSOR_MAP:
        if target is None:
            continue
        groups = re.findall(r"\\(\d)", target)
        regex = "^" + re.sub(r"\\\\(\d)", lambda m: f"(?P<g{m.group(1)}>[^.]+)", re.escape(target)) + "$"
        match = re.match(regex, key)
        if match:
            name = pattern
            for number in groups:
                name = re.sub(r"\((?:[^()]|\([^()]*\))*\)", match.group(f"g{number}"), name, count=1)
            return name.replace("\\", "")
    return key


def _dtype(name: str | None, tensors: dict):
    import torch

    if name is None:
        floating = {t.dtype for t in tensors.values() if t.is_floating_point()}
        return floating.pop() if len(floating) == 1 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def main(argv=None) -> int:
    from instructpart_dataset.toolbox.cli_errors import run_command

    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert a released LISA checkpoint into this package's model."
    )
    parser.add_argument(
        "--checkpoint", required=True, help="LISA checkpoint folder or Hub repo (e.g. xinlai/LISA-7B-v1)"
    )
    parser.add_argument("--output", required=True, help="the folder to write (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the checkpoint's")
    parser.add_argument(
        "--vision-tower", help="CLIP vision tower folder or Hub repo (default: the one the config names)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in --output")
    args = parser.parse_args(argv)

    def run():
        counts = convert(args.checkpoint, args.output, args.dtype, args.vision_tower, args.overwrite)
        kinds = sorted({re.sub(r"[.]\d+[.]", ".N.", name) for name in counts["dropped_names"]})
        print(
            f"{args.output}: converted {counts['used']} LISA tensors, dropped {counts['dropped']} "
            f"({', '.join(kinds) or 'none'})"
        )

    return run_command(PROG, run, bad_input=(ConversionError,))


if __name__ == "__main__":
    sys.exit(main())
