"""Tiny random checkpoints of every model an adapter loads, built in code with no download.

    save_tiny_clipseg(folder)          CLIPSegForImageSegmentation + CLIPSegProcessor
    save_tiny_grounding_dino(folder)   GroundingDinoForObjectDetection + GroundingDinoProcessor
    save_tiny_sam(folder)              SamModel + SamProcessor
    save_tiny_sam3(folder)             Sam3Model + CLIP tokenizer + Sam3 preprocessor config
    save_tiny_vlm(folder)              LlavaForConditionalGeneration + LlavaProcessor with a chat template

Each writes a folder that `from_pretrained` / `AutoProcessor.from_pretrained` load exactly as they load the
released checkpoints, so the adapters run their real loading and inference code on them. Tokenizers are
character-level (a byte-level alphabet, no merges): any text tokenizes, nothing to download. Same seed, same
weights.
"""

import json
import os
import string

import torch

CLIPSEG_IMAGE_SIZE = 32
GROUNDING_DINO_SIZE = {"shortest_edge": 64, "longest_edge": 96}  # its GroupNorms need > 1 pixel at stride 64
SAM_IMAGE_SIZE = 64
SAM3_IMAGE_SIZE = 56  # 4x4 patches of 14
VLM_IMAGE_SIZE = 32

VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}\n{% else %}ASSISTANT: "
    "{% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


class _seeded:
    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.fork = torch.random.fork_rng()
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self.fork.__exit__(*exc)


def _byte_alphabet() -> list:
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def tiny_clip_tokenizer():
    """`CLIPTokenizer` over single byte-level characters (no merges): 514 tokens."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in _byte_alphabet():
            vocab[char + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_bert_tokenizer():
    """`BertTokenizer` over lower-case letters, digits and punctuation, word pieces of single characters."""
    from transformers import BertTokenizer

    symbols = string.ascii_lowercase + string.digits
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(symbols + string.punctuation)
    words += ["##" + char for char in symbols]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)})


def tiny_chat_tokenizer():
    """A byte-level tokenizer with <s>, </s>, <pad> and <image>, wrapped in `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(_byte_alphabet())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def save_tiny_clipseg(folder: str, seed: int = 0) -> str:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessorPil

    tokenizer = tiny_clip_tokenizer()
    config = CLIPSegConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=CLIPSEG_IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=16,
        extract_layers=[0, 1],
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
    )
    with _seeded(seed):
        model = CLIPSegForImageSegmentation(config)
    model.save_pretrained(folder)
    size = {"height": CLIPSEG_IMAGE_SIZE, "width": CLIPSEG_IMAGE_SIZE}
    CLIPSegProcessor(image_processor=ViTImageProcessorPil(size=size), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_grounding_dino(folder: str, seed: int = 0) -> str:
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    tokenizer = tiny_bert_tokenizer()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=GROUNDING_DINO_SIZE["shortest_edge"],
            patch_size=4,
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=2,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=64,
        ),
        num_queries=10,
        encoder_layers=1,
        decoder_layers=2,  # its box heads are tied across decoder layers: it takes two to tie
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=32,  # its GroupNorms have 32 groups
        max_text_len=64,
        encoder_n_points=1,
        decoder_n_points=1,
    )
    with _seeded(seed):
        model = GroundingDinoForObjectDetection(config)
    model.save_pretrained(folder)
    image_processor = GroundingDinoImageProcessorPil(size=dict(GROUNDING_DINO_SIZE))
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_sam(folder: str, seed: int = 0) -> str:
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    config = SamConfig(
        vision_config=dict(
            hidden_size=16,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=SAM_IMAGE_SIZE,
            patch_size=8,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=8,
            mlp_dim=32,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=SAM_IMAGE_SIZE, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    with _seeded(seed):
        model = SamModel(config)
    model.save_pretrained(folder)
    image_processor = SamImageProcessorPil(
        size={"longest_edge": SAM_IMAGE_SIZE}, pad_size={"height": SAM_IMAGE_SIZE, "width": SAM_IMAGE_SIZE}
    )
    SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return folder


def save_tiny_sam3(folder: str, seed: int = 0) -> str:
    from transformers import Sam3Config, Sam3Model

    tokenizer = tiny_clip_tokenizer()
    hidden = 32
    grid = SAM3_IMAGE_SIZE // 14
    config = Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=SAM3_IMAGE_SIZE,
                patch_size=14,
                window_size=2,
                global_attn_indexes=[1],
                pretrain_image_size=SAM3_IMAGE_SIZE,
            ),
            fpn_hidden_size=hidden,
            backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            projection_dim=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        geometry_encoder_config=dict(
            hidden_size=hidden, num_layers=1, num_attention_heads=2, intermediate_size=32, roi_size=2
        ),
        detr_encoder_config=dict(hidden_size=hidden, num_layers=1, num_attention_heads=2, intermediate_size=32),
        detr_decoder_config=dict(
            hidden_size=hidden, num_layers=1, num_queries=5, num_attention_heads=2, intermediate_size=32
        ),
        mask_decoder_config=dict(hidden_size=hidden, num_upsampling_stages=3, num_attention_heads=2),
    )
    with _seeded(seed):
        model = Sam3Model(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # What Sam3ImageProcessor(size=..., mask_size=...).save_pretrained writes; that class needs torchvision.
    preprocessor = {
        "image_processor_type": "Sam3ImageProcessor",
        "processor_class": "Sam3Processor",
        "size": {"height": SAM3_IMAGE_SIZE, "width": SAM3_IMAGE_SIZE},
        "mask_size": {"height": grid * 4, "width": grid * 4},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 2,
    }
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor, f, indent=2)
    return folder


def save_tiny_vlm(folder: str, seed: int = 0) -> str:
    """A tiny LLaVA (`AutoModelForImageTextToText` loads it) with a llava-1.5-style chat template."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = tiny_chat_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=VLM_IMAGE_SIZE,
            patch_size=8,
            projection_dim=16,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=image_token_id,
        image_seq_length=(VLM_IMAGE_SIZE // 8) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    with _seeded(seed):
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": VLM_IMAGE_SIZE}, crop_size={"height": VLM_IMAGE_SIZE, "width": VLM_IMAGE_SIZE}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    ).save_pretrained(folder)
    return folder


QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}  # smart_resize to at most 4x4 patches of 28


def image_only_qwen2_5_vl_processor_class():
    """Qwen2.5-VL's processor without its video half.

    transformers builds Qwen-VL processors only with their video processor, which needs torchvision; the CPU
    wheels of this environment have none that matches torch. Images go through the real Qwen2.5-VL processor
    code (its `__call__`, image-token expansion and image processor); only the video attribute is left out.
    Registered with AutoProcessor so that a saved folder loads as the adapter loads any checkpoint."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    AutoProcessor.register(Qwen2_5_VLConfig, ImageOnlyQwen2_5_VLProcessor, exist_ok=True)
    return ImageOnlyQwen2_5_VLProcessor


def save_tiny_qwen2_5_vl(folder: str, seed: int = 0) -> str:
    """A tiny Qwen2.5-VL (`AutoModelForImageTextToText` loads it) with Qwen's chat template and special tokens and
    its image processor (`smart_resize` within `QWEN_PIXELS`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    backend = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(_byte_alphabet())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_tokens(
        ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"], special_tokens=True
    )
    token = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=32,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )
    with _seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor_class = image_only_qwen2_5_vl_processor_class()
    image_processor = Qwen2VLImageProcessorPil(**QWEN_PIXELS)
    processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    ).save_pretrained(folder)
    return folder


def save_tiny_checkpoints(root: str, seed: int = 0) -> dict:
    """Every tiny checkpoint above, plus a tiny PISA, in subfolders of `root`: `{name: folder}`."""
    from pisa_model.tiny import save_tiny_pisa

    builders = {
        "clipseg": save_tiny_clipseg,
        "grounding_dino": save_tiny_grounding_dino,
        "sam": save_tiny_sam,
        "sam3": save_tiny_sam3,
        "vlm": save_tiny_vlm,
        "pisa": save_tiny_pisa,
    }
    return {name: build(os.path.join(root, name), seed=seed) for name, build in builders.items()}


def tiny_specs(folders: dict) -> dict:
    """`{adapter name: model spec}` over the folders of `save_tiny_checkpoints`, one spec per adapter."""
    grounded_sam = f"grounded-sam:{folders['grounding_dino']},{folders['sam']}"
    return {
        "full-image": "full-image",
        "clipseg": f"clipseg:{folders['clipseg']}",
        "grounded-sam": grounded_sam,
        "sam3": f"sam3:{folders['sam3']}",
        "reason-then-ground": f"reason-then-ground:{folders['vlm']},{grounded_sam}",
        "pisa": folders["pisa"],
    }


__all__ = [
    "save_tiny_checkpoints",
    "tiny_specs",
    "save_tiny_clipseg",
    "save_tiny_grounding_dino",
    "save_tiny_sam",
    "save_tiny_sam3",
    "save_tiny_vlm",
    "save_tiny_qwen2_5_vl",
    "image_only_qwen2_5_vl_processor_class",
    "tiny_bert_tokenizer",
    "tiny_chat_tokenizer",
    "tiny_clip_tokenizer",
]
