"""PISA model configuration.

PISA is LISA (a LLaVA whose `[SEG]` token prompts a SAM mask decoder) with SAM's
image encoder replaced by a frozen DINOv2 whose multi-layer features are fused
by linear layers. One config describes both members of the family: the mask
branch's image encoder is chosen by `mask_encoder` ("dinov2": PISA; "sam": LISA,
SAM's own ViT), and the language side is a llava-hf 1.5 model or an original
LLaVA v1 (one linear projector, `projector_type="linear"`). This file must stay
importable on its own next to a saved checkpoint (`trust_remote_code=True`): it
imports only torch-free transformers.
"""

from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    Dinov2Config,
    PreTrainedConfig,
    SamMaskDecoderConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from transformers.configuration_utils import SubConfigSpec

FUSION_MODES = ("sum", "concat")
# The mask branch's image encoder: PISA's frozen DINOv2 + feature neck, or LISA's frozen SAM ViT (with its own neck).
MASK_ENCODERS = ("dinov2", "sam")
# LLaVA's multimodal projector: llava-hf's two-layer MLP (LlavaMultiModalProjector), or original LLaVA v1's single
# linear layer (what LISA's checkpoints hold), which LlavaConfig cannot express (see PisaLinearProjector).
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
# SAM ViT-H, the image encoder of LISA's released checkpoints (facebook/sam-vit-huge's vision_config).
SAM_VIT_H = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "global_attn_indexes": (7, 15, 23, 31),
    "image_size": 1024,
    "patch_size": 16,
}
# DINOv2-L has 24 layers; LISA-style multi-level fusion takes every sixth one (1-based hidden-state indices).
DEFAULT_FEATURE_LAYERS = (6, 12, 18, 24)
# SAM's mask decoder was trained on a 64x64 image embedding (1024 px / patch 16), giving 256x256 low-res masks;
# DINOv2's patch 14 needs a 896 px input for the same grid.
DEFAULT_MASK_INPUT_SIZE = 896


@strict
class PisaConfig(PreTrainedConfig):
    r"""
    Configuration of [`PisaForPartSegmentation`]. The defaults describe the paper's model: LLaVA-1.5-7B
    (`llava-hf/llava-1.5-7b-hf`), DINOv2-L (`facebook/dinov2-large`) and the SAM-H prompt encoder and mask
    decoder (`facebook/sam-vit-huge`).

    Args:
        llava_config (`LlavaConfig` or `dict`, *optional*):
            The multimodal language model (its own `text_config` and `vision_config` inside).
        mask_encoder (`str`, *optional*, defaults to `"dinov2"`):
            The mask branch's frozen image encoder: `"dinov2"` (PISA: DINOv2 layers fused by the feature neck) or
            `"sam"` (LISA: SAM's own ViT and neck, `sam_vision_config`, at `sam_vision_config.image_size` px).
        sam_vision_config (`SamVisionConfig` or `dict`, *optional*):
            SAM's image encoder, used when `mask_encoder="sam"` (defaults to SAM ViT-H at 1024 px: a 64x64x256
            image embedding). Its `output_channels` must be the mask decoder's width.
        projector_type (`str`, *optional*, defaults to `"mlp2x_gelu"`):
            LLaVA's multimodal projector: `"mlp2x_gelu"` (llava-hf 1.5, `LlavaMultiModalProjector`) or `"linear"`
            (original LLaVA v1 as in LISA's checkpoints: one `Linear(vision_hidden, text_hidden)`).
        dinov2_config (`Dinov2Config` or `dict`, *optional*):
            The frozen image encoder of the mask branch when `mask_encoder="dinov2"`. Its `out_indices` (hidden-state indices, 0 = patch
            embeddings, i = output of layer i) are the layers fused into the decoder's image embedding; they are
            set from `dinov2_feature_layers`.
        dinov2_feature_layers (`list[int]`, *optional*):
            Which DINOv2 hidden states feed the decoder. Defaults to `dinov2_config.out_indices` when those were
            set, else to layers 6, 12, 18 and 24 of DINOv2-L's 24, scaled to the configured depth.
        feature_fusion (`str`, *optional*, defaults to `"sum"`):
            `"sum"`: each selected layer goes through its own `Linear(dinov2_hidden, decoder_hidden)` and the
            results are summed. `"concat"`: the per-layer projections are concatenated and mixed by one more
            `Linear(n_layers * decoder_hidden, decoder_hidden)`. Either way a LayerNorm follows, as SAM's neck ends.
        prompt_encoder_config (`SamPromptEncoderConfig` or `dict`, *optional*):
            SAM's prompt encoder (only its dense "no mask" embedding and positional encoding are used; frozen).
        mask_decoder_config (`SamMaskDecoderConfig` or `dict`, *optional*):
            SAM's mask decoder, run with a single mask output.
        mask_input_size (`int`, *optional*, defaults to 896, or `sam_vision_config.image_size` for SAM):
            Side of the square, padded mask-branch input (with `mask_encoder="sam"` it must be SAM's image size): images are resized so that their longest side is this
            long, then padded bottom/right. Must be a multiple of the DINOv2 patch size; the decoder's image
            embedding is `mask_input_size / patch_size` wide and its low-res masks 4 times that. The default,
            896 = 64 x 14, gives DINOv2-L the 64x64 grid SAM's pretrained decoder works on (256x256 masks). The
            mask loss compares the low-res logits, upsampled bilinearly, with the ground truth resized (nearest)
            to this full input resolution rather than to the logits' 256 px: InstructPart's images are mostly
            2000 px on the longest side, so a part is shrunk at most 2.2x (4.5x at 448 px, 7.8x at 256 px) and
            small or thin parts keep pixels in the target instead of vanishing from it.
        seg_token_id (`int`, *optional*):
            Id of the `[SEG]` token in the tokenizer.
        text_projection_dropout (`float`, *optional*, defaults to 0.0):
            Dropout closing the `[SEG]` hidden-state projection (Linear -> ReLU -> Linear -> Dropout).
        ce_loss_weight, bce_loss_weight, dice_loss_weight (`float`, *optional*, defaults to 1.0, 2.0, 0.5):
            Weights of the language-model cross-entropy, the mask binary cross-entropy and the mask Dice loss (LISA's).
        freeze_vision_tower (`bool`, *optional*, defaults to `True`):
            Keep LLaVA's vision tower and multimodal projector frozen, as LISA does.
        freeze_language_model (`bool`, *optional*, defaults to `False`):
            Freeze the whole language model (embeddings and head included).
        lora_rank (`int`, *optional*, defaults to 0):
            When > 0, LoRA adapters (peft) of this rank are put on the language model's `lora_target_modules` and
            its other weights are frozen, except the token embeddings and the LM head which learn the new tokens
            (LISA trains with r=8 on q_proj and v_proj).
        lora_alpha, lora_dropout, lora_target_modules: the LoRA settings.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the new layers.
        initialization (`str`, *optional*):
            Where the weights started, as `pisa_model.assembly` built the model (pretrained components, or LISA);
            the model card shows it.
    """

    model_type = "pisa"
    sub_configs_defaults = {  # noqa: RUF012 - a ClassVar of PreTrainedConfig
        "llava_config": SubConfigSpec(config_class=AutoConfig, model_type="llava"),
        "dinov2_config": SubConfigSpec(
            config_class=Dinov2Config,
            init_kwargs={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 518},
        ),
        "sam_vision_config": SubConfigSpec(config_class=SamVisionConfig, init_kwargs=dict(SAM_VIT_H)),
        "prompt_encoder_config": SamPromptEncoderConfig,
        "mask_decoder_config": SamMaskDecoderConfig,
    }

    llava_config: dict | PreTrainedConfig | None = None
    mask_encoder: str = "dinov2"  # checked in __post_init__, for a ValueError naming the choices
    projector_type: str = "mlp2x_gelu"
    dinov2_config: dict | PreTrainedConfig | None = None
    sam_vision_config: dict | PreTrainedConfig | None = None
    prompt_encoder_config: dict | PreTrainedConfig | None = None
    mask_decoder_config: dict | PreTrainedConfig | None = None
    dinov2_feature_layers: list[int] | tuple[int, ...] | None = None
    feature_fusion: str = "sum"  # checked in __post_init__, for a ValueError naming the choices
    mask_input_size: int | None = None
    seg_token_id: int | None = None
    text_projection_dropout: float = 0.0
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    freeze_vision_tower: bool = True
    freeze_language_model: bool = False
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | tuple[str, ...] = ("q_proj", "v_proj")
    initializer_range: float = 0.02
    initialization: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        depth = self.dinov2_config.num_hidden_layers
        if self.dinov2_feature_layers is None:
            configured = self.dinov2_config.out_indices
            if configured and list(configured) != [depth]:
                layers = list(configured)
            else:
                layers = sorted({max(1, round(i * depth / 24)) for i in DEFAULT_FEATURE_LAYERS})
        else:
            layers = [int(i) for i in self.dinov2_feature_layers]
        if not layers or any(not 0 <= i <= depth for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(
                f"dinov2_feature_layers must be distinct hidden-state indices in [0, {depth}], got {layers}"
            )
        self.dinov2_feature_layers = sorted(layers)
        self.dinov2_config.set_output_features_output_indices(out_indices=self.dinov2_feature_layers, out_features=None)
        if self.feature_fusion not in FUSION_MODES:
            raise ValueError(f"feature_fusion must be one of {FUSION_MODES}, got {self.feature_fusion!r}")
        if self.mask_encoder not in MASK_ENCODERS:
            raise ValueError(f"mask_encoder must be one of {MASK_ENCODERS}, got {self.mask_encoder!r}")
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}")
        if self.mask_encoder == "sam":
            sam_size = _side(self.sam_vision_config.image_size)
            if self.mask_input_size is None:
                self.mask_input_size = sam_size
            if self.mask_input_size != sam_size:
                raise ValueError(
                    f"mask_input_size ({self.mask_input_size}) must be SAM's image size ({sam_size}) "
                    'with mask_encoder="sam": its position embeddings are learnt for that size'
                )
            if self.sam_vision_config.output_channels != self.mask_decoder_config.hidden_size:
                raise ValueError(
                    "sam_vision_config.output_channels and mask_decoder_config.hidden_size must match, got "
                    f"{self.sam_vision_config.output_channels} and {self.mask_decoder_config.hidden_size}"
                )
        else:
            if self.mask_input_size is None:
                self.mask_input_size = DEFAULT_MASK_INPUT_SIZE
            patch = _side(self.dinov2_config.patch_size)
            if self.mask_input_size <= 0 or self.mask_input_size % patch:
                raise ValueError(
                    f"mask_input_size ({self.mask_input_size}) must be a positive multiple of the DINOv2 patch size "
                    f"({patch})"
                )
        if self.prompt_encoder_config.hidden_size != self.mask_decoder_config.hidden_size:
            raise ValueError(
                "prompt_encoder_config.hidden_size and mask_decoder_config.hidden_size must match, got "
                f"{self.prompt_encoder_config.hidden_size} and {self.mask_decoder_config.hidden_size}"
            )
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        self.lora_target_modules = list(self.lora_target_modules)

    @property
    def text_config(self):
        return self.llava_config.text_config

    @property
    def mask_grid_size(self) -> int:
        """Side of the mask encoder's patch grid, i.e. of the decoder's image embedding."""
        encoder = self.sam_vision_config if self.mask_encoder == "sam" else self.dinov2_config
        return self.mask_input_size // _side(encoder.patch_size)

    def get_text_config(self, *args, **kwargs):
        return self.llava_config.get_text_config(*args, **kwargs)


def _side(size) -> int:
    """A square size given as an int or a (height, width) pair."""
    return int(size if isinstance(size, int) else size[0])


PisaConfig.register_for_auto_class("AutoConfig")

__all__ = ["DEFAULT_MASK_INPUT_SIZE", "MASK_ENCODERS", "PROJECTOR_TYPES", "PisaConfig"]
