"""The one place that builds a tiny random PISA (config, model, processor) in code, with no download.

Every test, the demo and the benchmarks use it:

    model, processor = tiny_pisa(seed=0)           # model.processor is set
    folder = save_tiny_pisa("/tmp/tiny", seed=0)   # a checkpoint folder that from_pretrained loads
    llava, dinov2, sam = save_tiny_components(folder)  # tiny LLaVA / DINOv2 / SAM folders for from_components

The tokenizer is a word-level `tokenizers` model whose vocabulary covers the
prompt template and every word the synthetic release's instructions use (other
words map to <unk>), wrapped in `PreTrainedTokenizerFast`.
"""

import os

import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    LlavaConfig,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .configuration_pisa import PisaConfig
from .modeling_pisa import PisaForPartSegmentation
from .processing_pisa import DEFAULT_ANSWER, DEFAULT_PROMPT_TEMPLATE, PisaProcessor, mask_branch_image_processor

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>"]
# How llava-hf/llava-1.5-7b-hf, facebook/dinov2-large and facebook/sam-vit-huge store their weights.
REAL_STORED_DTYPES = {"llava": torch.float16, "dinov2": torch.float32, "sam": torch.float32}
IMAGE_TOKEN, SEG_TOKEN = "<image>", "[SEG]"
TINY_LLAVA_IMAGE_SIZE = 28  # 2x2 CLIP patches of 14 -> 4 image tokens
TINY_MASK_INPUT_SIZE = 64  # 8x8 DINOv2 patches of 8 -> 32x32 low-res masks
TINY_PROMPT_ENCODER = {"hidden_size": 32, "image_size": TINY_MASK_INPUT_SIZE, "patch_size": 8}
TINY_MASK_DECODER = {
    "hidden_size": 32,
    "mlp_dim": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "iou_head_hidden_dim": 32,
}


def _corpus() -> list:
    """Every sentence whose words the tiny vocabulary must know."""
    from instructpart_dataset import synthetic

    texts = [DEFAULT_PROMPT_TEMPLATE.replace("{instruction}", ""), DEFAULT_ANSWER]
    for object_name, specs in synthetic.CATALOG.items():
        for spec in specs:
            fill = {"object": object_name, "task": spec.task}
            texts += [t.format(**fill) for t in synthetic.HUMAN_TEMPLATES + synthetic.GPT4_TEMPLATES]
            texts += synthetic.instructions_for(object_name, spec, _FixedRng())[2:]
            texts += [spec.affordance, spec.action]
    return texts


class _FixedRng:
    """instructions_for draws template indices; the fixed variants (2..5) do not depend on them."""

    def integers(self, high):
        return 0


def tiny_tokenizer(with_seg: bool = True) -> PreTrainedTokenizerFast:
    """A word-level, lower-casing tokenizer with `<image>` (and `[SEG]` unless `with_seg=False`), built in code."""
    split = pre_tokenizers.Whitespace()
    words = sorted({w.lower() for text in _corpus() for w, _ in split.pre_tokenize_str(text)} - {"<", ">", "[", "]"})
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + words)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = split
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    # Matched before lower-casing, so that they keep their spelling.
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
    if with_seg:
        tokenizer.add_tokens([AddedToken(SEG_TOKEN, normalized=False, special=False)])
    return tokenizer


def tiny_processor(tokenizer=None) -> PisaProcessor:
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    size = TINY_MASK_INPUT_SIZE
    return PisaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": TINY_LLAVA_IMAGE_SIZE},
            crop_size={"height": TINY_LLAVA_IMAGE_SIZE, "width": TINY_LLAVA_IMAGE_SIZE},
        ),
        mask_image_processor=mask_branch_image_processor(size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        tokenizer=tokenizer,
        image_token=IMAGE_TOKEN,
        seg_token=SEG_TOKEN,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def tiny_llava_config(tokenizer) -> LlavaConfig:
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TINY_LLAVA_IMAGE_SIZE,
        patch_size=14,
        projection_dim=16,
    )
    return LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(TINY_LLAVA_IMAGE_SIZE // 14) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def tiny_dinov2_config() -> Dinov2Config:
    return Dinov2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        image_size=TINY_MASK_INPUT_SIZE,
        patch_size=8,
    )


def tiny_pisa_config(tokenizer=None, **overrides) -> PisaConfig:
    """A PisaConfig of a few hundred thousand parameters; keyword arguments override PisaConfig fields."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    kwargs = {
        "llava_config": tiny_llava_config(tokenizer),
        "dinov2_config": tiny_dinov2_config(),
        "dinov2_feature_layers": [1, 2],
        "prompt_encoder_config": TINY_PROMPT_ENCODER,
        "mask_decoder_config": TINY_MASK_DECODER,
        "mask_input_size": TINY_MASK_INPUT_SIZE,
        "seg_token_id": tokenizer.convert_tokens_to_ids(SEG_TOKEN),
        # With 32-wide layers the library's 0.02 keeps the decoder's logits and the [SEG] projection near zero
        # for hundreds of steps; 0.1 lets the tiny model learn the synthetic task in a few hundred.
        "initializer_range": 0.1,
    }
    kwargs.update(overrides)
    return PisaConfig(**kwargs)


def tiny_pisa(seed: int = 0, **config_overrides):
    """(model, processor): a tiny random PISA in eval mode with `model.processor` set. Same seed, same weights."""
    processor = tiny_processor()
    config = tiny_pisa_config(processor.tokenizer, **config_overrides)
    with _seeded(seed):
        model = PisaForPartSegmentation(config)
    model.processor = processor
    return model.eval(), processor


def save_tiny_pisa(folder: str, seed: int = 0, **config_overrides) -> str:
    """Save a tiny random PISA (weights, config, processor, custom code) to `folder`; returns `folder`."""
    model, _ = tiny_pisa(seed, **config_overrides)
    model.save_pretrained(folder)
    return folder


def save_tiny_components(folder: str, seed: int = 0, dtypes: dict | None = None):
    """Save tiny random LLaVA (+ its processor, tokenizer without [SEG]), DINOv2 (+ image processor) and SAM
    checkpoints under `folder`, laid out like llava-hf/llava-1.5-7b-hf, facebook/dinov2-large and
    facebook/sam-vit-huge, for `pisa_model.assembly.from_components`. Returns the three folders.

    `dtypes` maps "llava" / "dinov2" / "sam" to the dtype each is stored in (default float32);
    `REAL_STORED_DTYPES` are the real checkpoints' (LLaVA float16, DINOv2 and SAM float32)."""
    dtypes = {**dict.fromkeys(("llava", "dinov2", "sam"), torch.float32), **(dtypes or {})}
    from transformers import (
        BitImageProcessorPil,
        Dinov2Model,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SamConfig,
        SamModel,
        SamVisionConfig,
    )

    tokenizer = tiny_tokenizer(with_seg=False)
    llava_path, dinov2_path, sam_path = (os.path.join(folder, name) for name in ("llava", "dinov2", "sam"))
    with _seeded(seed):
        llava = LlavaForConditionalGeneration(tiny_llava_config(tokenizer))
        dinov2 = Dinov2Model(tiny_dinov2_config())
        sam = SamModel(
            SamConfig(
                vision_config=SamVisionConfig(
                    hidden_size=16,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=TINY_MASK_INPUT_SIZE,
                    patch_size=8,
                    output_channels=32,
                    global_attn_indexes=[0],
                    num_pos_feats=16,
                    mlp_dim=32,
                ),
                prompt_encoder_config=TINY_PROMPT_ENCODER,
                mask_decoder_config=TINY_MASK_DECODER,
            )
        )
    llava, dinov2, sam = llava.to(dtypes["llava"]), dinov2.to(dtypes["dinov2"]), sam.to(dtypes["sam"])
    llava.save_pretrained(llava_path)
    LlavaProcessor(
        image_processor=tiny_processor().image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(llava_path)
    dinov2.save_pretrained(dinov2_path)
    BitImageProcessorPil(image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD)).save_pretrained(
        dinov2_path
    )
    sam.save_pretrained(sam_path)
    return llava_path, dinov2_path, sam_path


class _seeded:
    """Seed torch's global generator inside the block and restore its state afterwards."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)
        return False


__all__ = [
    "REAL_STORED_DTYPES",
    "save_tiny_components",
    "save_tiny_pisa",
    "tiny_pisa",
    "tiny_pisa_config",
    "tiny_processor",
    "tiny_tokenizer",
]
