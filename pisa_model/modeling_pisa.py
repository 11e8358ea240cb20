"""PISA: a LLaVA whose `[SEG]` token prompts a SAM mask decoder over frozen multi-layer DINOv2 features.

    image ──> LLaVA (CLIP + LM) ── hidden state that emits [SEG] ──> text projection ──> sparse prompt ─┐
      │                                                                                                 v
      └─> resize longest side + pad ─> frozen DINOv2 ─> layers i..k ─> per-layer Linear ─> fuse ─> SAM mask decoder
                                                                                                        │
                                         low-res mask logits (4x the patch grid) <──────────────────────┘

LISA is the same model with `mask_encoder="sam"`: the mask branch's frozen image encoder is SAM's own ViT and neck
(1024 px, a 64x64 embedding) instead of DINOv2 + neck; its original LLaVA v1 language side has one linear
projector (`projector_type="linear"`, `PisaLinearProjector`). Everything else is shared.

This file travels with saved checkpoints (`trust_remote_code=True`) and holds the model only: it imports only
torch, transformers and its sibling files that travel too (peft only when LoRA is on). What runs only when a
model is built or converted (assembling pretrained parts, folding LoRA in) lives in `assembly.py`, which does not
travel.

`predict` and `generate_segmentation` stay on the model, and so the model imports the processor. segment-anything
keeps its predictor outside the model and transformers' SamModel has none (the processor post-processes, a
pipeline predicts), so that the model is usable without them. Here the checkpoint's own users have only the files
that travel with it: `AutoModel.from_pretrained(repo, trust_remote_code=True).predict(images, instructions)` is
what its model card promises, so the predictor has to travel, and a separate predictor file would travel beside
this one anyway. The dependency runs one way (processing_pisa imports nothing of the model), and the generic
predictor outside the model exists too: the pipeline of `pipeline_pisa.py`.
"""

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import (
    Dinov2Backbone,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    SamConfig,
    SamVisionConfig,
)
from transformers.models.sam.modeling_sam import (
    SamMaskDecoder,
    SamPositionalEmbedding,
    SamPromptEncoder,
    SamVisionEncoder,
)
from transformers.utils import ModelOutput

from .configuration_pisa import PisaConfig
from .processing_pisa import PisaProcessor, as_image_batch, as_rgb_image

# The logit given to every pixel of an answer that holds no [SEG]: sigmoid(-1e4) is 0 in float32, so the mask is
# empty at any threshold >= -1e4 and its bilinear resizing stays finite.
NO_MASK_LOGIT = -1.0e4


@dataclass
class PisaSegmentationOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `ce_loss_weight * lm_loss + bce_loss_weight * mask_bce_loss + dice_loss_weight * mask_dice_loss`, over the
        terms whose labels were given.
    lm_loss (`torch.FloatTensor` of shape `()`, *optional*): language-model cross-entropy on the answer tokens.
    mask_bce_loss (`torch.FloatTensor` of shape `()`, *optional*): per-mask mean BCE over the unpadded pixels.
    mask_dice_loss (`torch.FloatTensor` of shape `()`, *optional*): per-mask Dice loss over the unpadded pixels.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        LM logits (only the last `logits_to_keep` positions when it is > 0).
    pred_masks (`torch.FloatTensor` of shape `(batch_size, 1, 4 * grid, 4 * grid)`):
        Low-res mask logits over the padded square mask input; `PisaProcessor.post_process_masks` maps them back
        to each image's original size.
    iou_scores (`torch.FloatTensor` of shape `(batch_size, 1)`): the SAM decoder's IoU head (untrained by PISA).
    seg_embeddings (`torch.FloatTensor` of shape `(batch_size, decoder_hidden_size)`): the projected `[SEG]` states.
    image_embeddings (`torch.FloatTensor` of shape `(batch_size, decoder_hidden_size, grid, grid)`):
        the decoder's image embedding: fused DINOv2 features, or SAM's image embedding with `mask_encoder="sam"`.
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    mask_bce_loss: torch.FloatTensor | None = None
    mask_dice_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    iou_scores: torch.FloatTensor | None = None
    seg_embeddings: torch.FloatTensor | None = None
    image_embeddings: torch.FloatTensor | None = None


@dataclass
class PisaGenerationOutput(ModelOutput):
    r"""
    sequences (`torch.LongTensor` of shape `(batch_size, prompt_length + generated_length)`):
        The left-padded prompts followed by the greedily generated answers (`generate`'s output).
    answers (`list[str]`): each generated answer, decoded up to its EOS (the `[SEG]` token kept in the text).
    has_seg (`torch.BoolTensor` of shape `(batch_size,)`): whether the answer holds a `[SEG]` token.
    pred_masks (`torch.FloatTensor` of shape `(batch_size, 1, 4 * grid, 4 * grid)`):
        Low-res mask logits from the state that emitted the answer's first `[SEG]`; `NO_MASK_LOGIT` everywhere
        for an answer without one (an empty mask).
    """

    sequences: torch.LongTensor | None = None
    answers: list | None = None
    has_seg: torch.BoolTensor | None = None
    pred_masks: torch.FloatTensor | None = None


class PisaFeatureNeck(nn.Module):
    """Maps the selected DINOv2 feature maps to one decoder-width map: a Linear per layer, then sum or concat+Linear."""

    def __init__(self, config: PisaConfig):
        super().__init__()
        in_dim = config.dinov2_config.hidden_size
        out_dim = config.mask_decoder_config.hidden_size
        n_layers = len(config.dinov2_feature_layers)
        self.fusion = config.feature_fusion
        self.layer_projections = nn.ModuleList([nn.Linear(in_dim, out_dim) for _ in range(n_layers)])
        self.fuse = nn.Linear(n_layers * out_dim, out_dim) if self.fusion == "concat" else None
        self.layer_norm = nn.LayerNorm(out_dim, eps=config.mask_decoder_config.layer_norm_eps)

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(batch, dinov2_hidden, grid, grid) per layer -> (batch, decoder_hidden, grid, grid)."""
        projected = [proj(fmap.permute(0, 2, 3, 1)) for proj, fmap in zip(self.layer_projections, feature_maps)]
        fused = self.fuse(torch.cat(projected, dim=-1)) if self.fuse is not None else torch.stack(projected).sum(0)
        return self.layer_norm(fused).permute(0, 3, 1, 2)


class PisaLinearProjector(nn.Module):
    """Original LLaVA v1's multimodal projector, one `Linear(vision_hidden, text_hidden)` (LISA's `mm_projector`),
    which `LlavaConfig` cannot express (its projector is always Linear -> act -> Linear). Used in place of
    `LlavaMultiModalProjector` when `config.projector_type == "linear"`."""

    def __init__(self, config: PisaConfig):
        super().__init__()
        llava = config.llava_config
        self.linear = nn.Linear(
            llava.vision_config.hidden_size,
            llava.text_config.hidden_size,
            bias=getattr(llava, "multimodal_projector_bias", True),
        )

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(batch, image_tokens, vision_hidden) -> (batch, image_tokens, text_hidden)."""
        return self.linear(image_features)


class PisaTextProjection(nn.Module):
    """LISA's `text_hidden_fcs`: Linear -> ReLU -> Linear -> Dropout, from the LM width to the decoder width."""

    def __init__(self, config: PisaConfig):
        super().__init__()
        in_dim = config.text_config.hidden_size
        self.fc1 = nn.Linear(in_dim, in_dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(in_dim, config.mask_decoder_config.hidden_size)
        self.dropout = nn.Dropout(config.text_projection_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(hidden_states))))


def sam_config_for(config: PisaConfig) -> SamConfig:
    """The SamConfig that SamPromptEncoder expects (its vision part only sizes the positional encoding)."""
    width = config.mask_decoder_config.hidden_size
    # Copies: building a SamConfig resets the attention implementation of the sub-configs it is given.
    return SamConfig(
        vision_config=SamVisionConfig(num_pos_feats=width // 2),
        prompt_encoder_config=config.prompt_encoder_config.to_dict(),
        mask_decoder_config=config.mask_decoder_config.to_dict(),
    )


def masked_bce_dice(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor):
    """LISA's per-mask BCE (mean over pixels) and Dice (scale 1000, eps 1e-6), restricted to `valid` pixels.

    logits, targets, valid: (batch, H, W). Returns the two losses averaged over the batch.
    """
    logits, targets, valid = logits.flatten(1).float(), targets.flatten(1).float(), valid.flatten(1).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    bce = (bce * valid).sum(-1) / valid.sum(-1).clamp(min=1.0)
    probs = logits.sigmoid() * valid
    scale, eps = 1000.0, 1e-6
    numerator = 2 * (probs / scale * targets).sum(-1)
    denominator = (probs / scale).sum(-1) + (targets * valid / scale).sum(-1)
    dice = 1 - (numerator + eps) / (denominator + eps)
    return bce.mean(), dice.mean()


class PisaPreTrainedModel(PreTrainedModel):
    config: PisaConfig
    config_class = PisaConfig
    base_model_prefix = "pisa"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = [  # noqa: RUF012
        "SamMaskDecoder",
        "PisaFeatureNeck",
        "PisaTextProjection",
        "SamPromptEncoder",
        "SamVisionEncoder",
    ]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SamPositionalEmbedding):
            # Random Fourier features of unit scale, as SAM's PositionEmbeddingRandom.
            module.positional_embedding.normal_(0.0, 1.0)


class PisaForPartSegmentation(PisaPreTrainedModel):
    r"""
    PISA for instruction-driven part segmentation.

    `llava` and `dinov2` may be given as already-built (e.g. pretrained) modules, as `EncoderDecoderModel` does;
    otherwise they are built from the config. `pisa_model.assembly.from_components` assembles pretrained parts.

    The mask branch's image encoder follows `config.mask_encoder`: `"dinov2"` (PISA) builds `dinov2` (frozen) and
    `feature_neck`; `"sam"` (LISA) builds `vision_encoder`, SAM's frozen ViT and neck (`SamVisionEncoder`), and no
    DINOv2. With `config.projector_type == "linear"` LLaVA's projector is a `PisaLinearProjector`.

    Trainable: LLaVA's language model (or its LoRA adapters + embeddings + LM head), the `[SEG]` text projection,
    the feature neck and SAM's mask decoder. Frozen: DINOv2 or SAM's image encoder, SAM's prompt encoder, LLaVA's
    vision tower and projector (`freeze_vision_tower`), and the decoder heads a single-mask output never reads.

    Attribute `processor` (not saved in the weights): the `PisaProcessor` that `predict` uses; `save_pretrained`
    writes it next to the weights and `from_pretrained` loads it back lazily from the same folder.
    """

    def __init__(self, config: PisaConfig, llava: nn.Module | None = None, dinov2: nn.Module | None = None):
        super().__init__(config)
        config = self.config  # PreTrainedModel may hold a copy: build from (and update) the one it keeps
        self.llava = llava if llava is not None else LlavaForConditionalGeneration(config.llava_config)
        # Given modules keep their own (already resolved) configs: make the composite config hold those objects.
        config.llava_config = self.llava.config
        if config.projector_type == "linear" and not isinstance(
            self.llava.model.multi_modal_projector, PisaLinearProjector
        ):
            self.llava.model.multi_modal_projector = PisaLinearProjector(config)
        if config.mask_encoder == "sam":
            if dinov2 is not None:
                raise ValueError('a DINOv2 module was given to a model with mask_encoder="sam"')
            self.vision_encoder = SamVisionEncoder(config.sam_vision_config)
        else:
            self.dinov2 = dinov2 if dinov2 is not None else Dinov2Backbone(config.dinov2_config)
            config.dinov2_config = self.dinov2.config
            self.feature_neck = PisaFeatureNeck(config)
        self.text_projection = PisaTextProjection(config)
        # The decoder's attention blocks read the implementation from their own config (as in SamModel).
        config.mask_decoder_config._attn_implementation = config._attn_implementation
        self.prompt_encoder = SamPromptEncoder(sam_config_for(config))
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config)
        if config.lora_rank > 0:
            self._inject_lora()
        self.processor = None
        self.post_init()
        self._set_trainable()

    # --- construction helpers -------------------------------------------------------------------------------

    def _inject_lora(self):
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as error:  # only LoRA checkpoints need peft
            raise ImportError("lora_rank > 0 needs peft: pip install peft (or instructpart[lora])") from error
        lora = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(self.config.lora_target_modules),
        )
        inject_adapter_in_model(lora, self.llava.model.language_model)

    def _set_trainable(self):
        """Freeze what PISA never trains; `requires_grad` is the single source of truth for the optimizer."""
        frozen = [self.mask_image_encoder, self.prompt_encoder, self.mask_decoder.iou_prediction_head]
        frozen += list(self.mask_decoder.output_hypernetworks_mlps[1:])  # multimask heads: unread with one mask
        if self.config.freeze_vision_tower:
            frozen += [self.llava.model.vision_tower, self.llava.model.multi_modal_projector]
        language_model, lm_head = self.llava.model.language_model, self.llava.lm_head
        if self.config.freeze_language_model:
            frozen += [language_model, lm_head]
        elif self.config.lora_rank > 0:
            for name, param in language_model.named_parameters():
                param.requires_grad_("lora_" in name)
            # The new [SEG] token's embedding and logit row must be learnt: LISA trains both in full.
            language_model.get_input_embeddings().weight.requires_grad_(True)
            lm_head.weight.requires_grad_(True)
        for module in frozen:
            module.requires_grad_(False)

    # --- dtypes ---------------------------------------------------------------------------------------------

    def apply_dtype_policy(self, compute_dtype: torch.dtype = torch.float32) -> "PisaForPartSegmentation":
        """Trainable parameters in float32, frozen ones in `compute_dtype`; returns the model.

        The optimizer only ever sees float32 master weights (AdamW's eps of 1e-8 underflows in float16, turning a
        parameter with a zero gradient into NaN), while the frozen bulk (DINOv2, the vision tower, a LoRA model's
        base weights) takes half the memory in bfloat16 / float16. Such a model runs under autocast to
        `compute_dtype` (see `autocast_if_mixed`). Buffers are left as they are.
        """
        if not compute_dtype.is_floating_point:
            raise ValueError(f"compute_dtype must be a floating-point dtype, got {compute_dtype}")
        for param in self.parameters():
            target = torch.float32 if param.requires_grad else compute_dtype
            if param.is_floating_point() and param.dtype != target:
                param.data = param.data.to(target)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype, float32 when they mix dtypes (see `apply_dtype_policy`): `save_pretrained` records
        it in the config and `from_pretrained` loads every weight in it, so a mixed checkpoint loads losslessly."""
        dtypes = {p.dtype for p in self.parameters() if p.is_floating_point()}
        return dtypes.pop() if len(dtypes) == 1 else torch.float32

    @property
    def mask_image_encoder(self) -> nn.Module:
        """The mask branch's frozen image encoder: DINOv2 (PISA) or SAM's ViT (`mask_encoder="sam"`, LISA)."""
        return self.vision_encoder if self.config.mask_encoder == "sam" else self.dinov2

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the frozen parts run in: the mask image encoder's (always frozen). Image inputs are cast to it."""
        return next(self.mask_image_encoder.parameters()).dtype

    def autocast_if_mixed(self):
        """An autocast to the compute dtype when the parameters hold several floating dtypes and no autocast is
        active on the model's device; otherwise a no-op context."""
        device_type = self.device.type
        dtypes = {p.dtype for p in self.parameters() if p.is_floating_point()}
        if len(dtypes) < 2 or torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        low = self.compute_dtype if self.compute_dtype != torch.float32 else min(dtypes - {torch.float32}, key=str)
        return torch.autocast(device_type, dtype=low)

    def get_input_embeddings(self):
        return self.llava.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llava.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.llava.get_output_embeddings()

    def activation_checkpointing_enable(self, *args, **kwargs):
        """transformers' activation checkpointing, except in the frozen towers (DINOv2, and LLaVA's vision tower
        and projector unless trained): nothing of theirs is recomputed for backward, so checkpointing them would
        only keep their layers' inputs for nothing."""
        super().activation_checkpointing_enable(*args, **kwargs)
        for tower in self._frozen_towers():
            for module in tower.modules():
                if getattr(module, "gradient_checkpointing", False):
                    module.gradient_checkpointing = False

    def _frozen_towers(self) -> list:
        towers = [self.dinov2]
        if self.config.freeze_vision_tower:
            towers += [self.llava.model.vision_tower, self.llava.model.multi_modal_projector]
        return towers

    def enable_input_require_grads(self):
        """Make the token embeddings' output require grad (activation checkpointing calls this, so that gradients
        reach LoRA adapters through checkpointed layers), and nothing else: transformers' version hooks every input
        embedding it finds, CLIP's patch embedding included, which would run the frozen vision tower and projector
        through backward, where LISA keeps them under no_grad."""

        def require_grads(module, inputs, output):
            output.requires_grad_(True)

        self._require_grads_hooks = [self.get_input_embeddings().register_forward_hook(require_grads)]
        self._require_grads_hook = self._require_grads_hooks[0]

    # --- forward --------------------------------------------------------------------------------------------

    def get_image_wide_positional_embeddings(self, grid: int) -> torch.Tensor:
        """SAM's dense positional encoding of a (grid x grid) map: (1, decoder_hidden, grid, grid)."""
        table = self.prompt_encoder.shared_embedding.positional_embedding
        ones = torch.ones((grid, grid), device=table.device, dtype=table.dtype)
        y_embed = (ones.cumsum(dim=0) - 0.5) / grid
        x_embed = (ones.cumsum(dim=1) - 0.5) / grid
        encoding = self.prompt_encoder.shared_embedding(torch.stack([x_embed, y_embed], dim=-1))
        return encoding.permute(2, 0, 1).unsqueeze(0)

    def get_image_embeddings(self, mask_pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, 3, S, S) -> the decoder's image embedding (batch, decoder_hidden, S / patch, S / patch): fused
        frozen-DINOv2 features, or the frozen SAM encoder's embedding with `mask_encoder="sam"`."""
        size = self.config.mask_input_size
        if mask_pixel_values.ndim != 4 or tuple(mask_pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"mask_pixel_values must have shape (batch, 3, {size}, {size}), got {tuple(mask_pixel_values.shape)}"
            )
        with torch.no_grad():
            if self.config.mask_encoder == "sam":
                return self.vision_encoder(mask_pixel_values).last_hidden_state
            feature_maps = self.dinov2(mask_pixel_values).feature_maps
        return self.feature_neck(feature_maps)

    def seg_hidden_states(self, input_ids: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """The last-layer state at the position that emits `[SEG]` (LISA's shift): (batch, text_hidden)."""
        seg_id = self.config.seg_token_id
        if seg_id is None:
            raise ValueError("config.seg_token_id is not set: the tokenizer's [SEG] id is needed")
        is_seg = input_ids == seg_id
        counts = is_seg.sum(dim=1)
        if bool((counts != 1).any()):
            bad = int(torch.nonzero(counts != 1)[0, 0])
            raise ValueError(
                f"sequence {bad} has {int(counts[bad])} [SEG] tokens (id {seg_id}); PISA needs exactly one"
            )
        positions = is_seg.int().argmax(dim=1)
        if bool((positions == 0).any()):
            raise ValueError("[SEG] cannot be the first token: the state that emits it is the one before")
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return hidden_states[rows, positions.to(hidden_states.device) - 1]

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        mask_pixel_values: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        mask_labels: torch.FloatTensor | None = None,
        reshaped_input_sizes: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
    ) -> PisaSegmentationOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): prompt + answer, one `[SEG]` each.
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): LLaVA's image input.
            mask_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, S, S)`): the mask branch's input.
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*).
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): LM targets, -100 ignored.
            mask_labels (`torch.FloatTensor` of shape `(batch_size, S, S)`, *optional*): 0/1 targets in the padded frame.
            reshaped_input_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*): (h, w) of each image
                inside the padded square; the mask loss ignores the padding. Without it every pixel counts.
            logits_to_keep (`int`, *optional*, defaults to 0): compute LM logits for the last N positions only
                (0: all). `predict` uses 1, as only the mask is needed.

        Unknown keyword arguments are refused (a misspelt `mask_label=` would otherwise drop the mask loss). A model
        holding parameters of several dtypes (see `apply_dtype_policy`) runs under autocast to its compute dtype
        unless an autocast is already active (Accelerate's mixed precision).
        """
        with self.autocast_if_mixed():
            return self._forward(
                input_ids,
                pixel_values,
                mask_pixel_values,
                attention_mask,
                labels,
                mask_labels,
                reshaped_input_sizes,
                logits_to_keep,
            )

    def _forward(
        self,
        input_ids,
        pixel_values,
        mask_pixel_values,
        attention_mask,
        labels,
        mask_labels,
        reshaped_input_sizes,
        logits_to_keep,
    ) -> PisaSegmentationOutput:
        text_outputs = self.llava.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            use_cache=False,
            return_dict=True,
        )
        hidden_states = text_outputs.last_hidden_state
        kept = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        logits = self.llava.lm_head(kept)

        seg_embeddings = self.text_projection(self.seg_hidden_states(input_ids, hidden_states))
        image_embeddings = self.get_image_embeddings(mask_pixel_values)
        batch_size, _, grid, _ = image_embeddings.shape
        positional = self.get_image_wide_positional_embeddings(grid).expand(batch_size, -1, -1, -1)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, grid, grid)
        low_res_masks, iou_scores = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=positional.to(image_embeddings.dtype),
            sparse_prompt_embeddings=seg_embeddings[:, None, None, :].to(image_embeddings.dtype),
            dense_prompt_embeddings=no_mask.to(image_embeddings.dtype),
            multimask_output=False,
        )
        pred_masks = low_res_masks[:, 0]  # (batch, 1, 4 grid, 4 grid)

        lm_loss = bce = dice = None
        terms = []
        if labels is not None:
            if logits_to_keep > 0:
                raise ValueError("labels need the logits of every position: leave logits_to_keep at 0")
            lm_loss = self.llava.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size
            )
            terms.append(self.config.ce_loss_weight * lm_loss)
        if mask_labels is not None:
            size = mask_labels.shape[-1]
            upsampled = F.interpolate(pred_masks.float(), (size, size), mode="bilinear", align_corners=False)[:, 0]
            valid = torch.ones_like(mask_labels, dtype=torch.bool)
            if reshaped_input_sizes is not None:
                rows = torch.arange(size, device=mask_labels.device)
                sizes = reshaped_input_sizes.to(mask_labels.device)
                valid = (rows[None, :, None] < sizes[:, 0, None, None]) & (
                    rows[None, None, :] < sizes[:, 1, None, None]
                )
            bce, dice = masked_bce_dice(upsampled, mask_labels.to(upsampled.device), valid.to(upsampled.device))
            terms += [self.config.bce_loss_weight * bce, self.config.dice_loss_weight * dice]
        loss = torch.stack([t.to(terms[0].device) for t in terms]).sum() if terms else None

        return PisaSegmentationOutput(
            loss=loss,
            lm_loss=lm_loss,
            mask_bce_loss=bce,
            mask_dice_loss=dice,
            logits=logits,
            pred_masks=pred_masks,
            iou_scores=iou_scores[:, 0],
            seg_embeddings=seg_embeddings,
            image_embeddings=image_embeddings,
        )

    # --- inference ------------------------------------------------------------------------------------------

    def get_processor(self) -> PisaProcessor:
        """The attached processor, else the one saved with the checkpoint this model was loaded from."""
        if self.processor is None:
            if not self.name_or_path:
                raise ValueError(
                    "no processor: pass processor=..., set model.processor, or load the model from a saved folder"
                )
            # Code saved in the checkpoint runs only where the caller passed trust_remote_code=True to from_pretrained.
            self.processor = PisaProcessor.from_pretrained(
                self.name_or_path, trust_remote_code=getattr(self, "_trust_remote_code", False)
            )
        return self.processor

    @torch.inference_mode()
    def predict(
        self,
        images,
        instructions,
        batch_size: int = 8,
        processor: PisaProcessor | None = None,
        progress=False,
        generate: bool = False,
        max_new_tokens: int = 32,
        return_answers: bool = False,
        return_has_seg: bool = False,
    ):
        r"""
        Segment the part each instruction asks for.

        By default the answer is teacher-forced ("Sure, it is [SEG]." is appended, as in training and in LISA's
        validation): one batched forward pass, identical to greedy generation whenever the model emits its trained
        answer. With `generate=True` the answer is generated greedily (at most `max_new_tokens` tokens) and the mask
        comes from the state that emitted its first `[SEG]`, as in LISA's chat; an answer without `[SEG]` gives an
        all-False mask. See `generate_segmentation`.

        Args:
            images (`list[PIL.Image.Image]` or `list[np.ndarray]`): PIL images of any mode, or uint8 (H, W, 3)
                arrays; a single image is a batch of one. EXIF-rotated photos are read upright (as the dataset
                does) and their masks have the upright size. See `processing_pisa.as_rgb_image` for what is refused.
            instructions (`list[str]` or `str`): one per image (a string is one instruction). An instruction
                longer than the model's context is cut, with a warning.
            batch_size (`int`, *optional*, defaults to 8).
            processor (`PisaProcessor`, *optional*): defaults to `get_processor()`.
            progress (`bool`, *optional*): show a tqdm bar.
            generate (`bool`, *optional*, defaults to `False`): generate the answer instead of teacher-forcing it.
            max_new_tokens (`int`, *optional*, defaults to 32): the bound on a generated answer's length.
            return_answers (`bool`, *optional*): also return the answers (the fixed answer when teacher-forced).
            return_has_seg (`bool`, *optional*): also return whether each answer holds the `[SEG]` token, decided by
                its id (`config.seg_token_id`), the rule that gives the mask (teacher-forced answers always do).

        Returns:
            `list[np.ndarray]`: one bool (H, W) mask per image, at the (upright) image's size (logit > 0); with
            `return_answers=True`, `(masks, answers)`; with `return_has_seg=True` too, `(masks, answers, has_seg)`
            (`(masks, has_seg)` without answers).
        """
        processor = processor if processor is not None else self.get_processor()
        images, instructions = as_image_batch(images, instructions)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Every image is checked (and made upright RGB) before the first batch runs.
        images = [as_rgb_image(image, f"image {index}") for index, image in enumerate(images)]
        if generate and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        was_training = self.training
        self.eval()
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="predict", unit="batch")
        masks, answers, has_seg = [], [], []
        try:
            for start in starts:
                batch = processor(
                    images=images[start : start + batch_size],
                    text=instructions[start : start + batch_size],
                    max_length=self.config.text_config.max_position_embeddings,
                )
                if generate:
                    outputs = self.generate_segmentation(batch, processor, max_new_tokens=max_new_tokens)
                    answers += outputs.answers
                    has_seg += outputs.has_seg.tolist()
                else:
                    outputs = self(**self.prepare_inputs(batch), logits_to_keep=1)
                    answers += [processor.answer.strip()] * len(batch["input_ids"])
                    has_seg += [True] * len(batch["input_ids"])
                for mask in processor.post_process_masks(
                    outputs.pred_masks, batch["original_sizes"], batch["reshaped_input_sizes"]
                ):
                    masks.append(mask.cpu().numpy().astype(bool))
        finally:
            self.train(was_training)
        extras = [answers] * return_answers + [has_seg] * return_has_seg
        return (masks, *extras) if extras else masks

    @torch.inference_mode()
    def generate_segmentation(self, batch, processor: PisaProcessor, max_new_tokens: int = 32) -> PisaGenerationOutput:
        r"""
        Generate each answer greedily, then segment from the state that emitted its first `[SEG]`.

        The prompts are cut out of the processor's teacher-forced sequences (prompt + answer + EOS, right-padded)
        and left-padded for batched generation. Each answer is cut after its first `[SEG]`, appended to its
        prompt, and the sequences (right-padded, as in training) go through `forward`: the `[SEG]` state is then
        computed exactly as in teacher forcing, so a generated answer equal to the trained one gives the
        teacher-forced mask.

        Args:
            batch (`BatchFeature`): `processor(images=..., text=...)`'s output (no masks needed).
            processor (`PisaProcessor`): the processor that built `batch`.
            max_new_tokens (`int`, *optional*, defaults to 32): the bound on each answer's length.
        """
        tokenizer = processor.tokenizer
        eos_id = tokenizer.eos_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
        seg_id = self.config.seg_token_id
        inputs = self.prepare_inputs(batch)
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        # The processor appends the same answer ids + EOS to every prompt (see PisaProcessor._tokenize).
        answer_length = len(tokenizer(processor.answer, add_special_tokens=False)["input_ids"]) + 1
        prompts = [row[: int(n) - answer_length] for row, n in zip(input_ids, attention_mask.sum(dim=1))]
        width = max(len(p) for p in prompts)
        prompt_ids = input_ids.new_full((len(prompts), width), pad_id)
        prompt_mask = torch.zeros_like(prompt_ids)
        for row, prompt in enumerate(prompts):
            prompt_ids[row, width - len(prompt) :] = prompt
            prompt_mask[row, width - len(prompt) :] = 1
        with self.autocast_if_mixed():
            sequences = self.llava.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                pixel_values=inputs["pixel_values"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                # The image placeholder is an input-only token (original LLaVA has no such row at all): never an answer.
                suppress_tokens=[self.llava.config.image_token_id],
            )
        answers, segmented, has_seg = [], [], []
        for row, tokens in enumerate(sequences[:, width:].tolist()):
            if eos_id in tokens:
                tokens = tokens[: tokens.index(eos_id)]
            answers.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
            has_seg.append(seg_id in tokens)
            if has_seg[-1]:
                answer = torch.as_tensor(tokens[: tokens.index(seg_id) + 1], device=input_ids.device)
                segmented.append((row, torch.cat([prompts[row], answer])))

        size = 4 * self.config.mask_grid_size
        pred_masks = torch.full((len(prompts), 1, size, size), NO_MASK_LOGIT, device=input_ids.device)
        if segmented:
            rows = [row for row, _ in segmented]
            length = max(len(ids) for _, ids in segmented)
            seg_ids = input_ids.new_full((len(rows), length), pad_id)
            seg_mask = torch.zeros_like(seg_ids)
            for position, (_, ids) in enumerate(segmented):
                seg_ids[position, : len(ids)] = ids
                seg_mask[position, : len(ids)] = 1
            outputs = self(
                input_ids=seg_ids,
                attention_mask=seg_mask,
                pixel_values=inputs["pixel_values"][rows],
                mask_pixel_values=inputs["mask_pixel_values"][rows],
                logits_to_keep=1,
            )
            pred_masks[rows] = outputs.pred_masks.float()
        return PisaGenerationOutput(
            sequences=sequences,
            answers=answers,
            has_seg=torch.as_tensor(has_seg, dtype=torch.bool),
            pred_masks=pred_masks,
        )

    def prepare_inputs(self, batch) -> dict:
        """Move a processor batch to the model's device, image inputs to its compute dtype (`compute_dtype`)."""
        device, dtype = self.device, self.compute_dtype
        keep = (
            "input_ids",
            "attention_mask",
            "pixel_values",
            "mask_pixel_values",
            "labels",
            "mask_labels",
            "reshaped_input_sizes",
        )
        inputs = {}
        for key in keep:
            if key in batch:
                value = batch[key]
                value = value.to(device=device, dtype=dtype) if key.endswith("pixel_values") else value.to(device)
                inputs[key] = value
        return inputs

    # --- loading and saving ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """`PreTrainedModel.from_pretrained`, checked, then the freezing again (loading materialises every weight
        as a new, trainable parameter, which would let an optimizer train DINOv2 and the other frozen parts).

        A PISA checkpoint must hold exactly the model's weights: missing or unexpected ones raise a one-line
        ValueError naming the checkpoint and the first keys, unless `strict=False` (they are then left as
        initialised, with transformers' warning). An unreadable (e.g. truncated) weights file raises an OSError
        naming it. The processor saved with the checkpoint is loaded now, so that a missing or broken tokenizer
        fails here rather than at the first `predict`.
        """
        trust_remote_code = bool(kwargs.get("trust_remote_code", False))
        wants_info = kwargs.pop("output_loading_info", False)
        where = str(pretrained_model_name_or_path)
        # Strict: the error below replaces transformers' multi-line load report.
        report_filter = _DropLoadReport() if strict else None
        loading_logger = logging.getLogger("transformers.modeling_utils")
        if report_filter is not None:
            loading_logger.addFilter(report_filter)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:  # it names no file
            raise OSError(f"{_weights_file(where)}: not a readable safetensors file ({_first_line(error)})") from None
        except RuntimeError as error:  # transformers' size-mismatch errors span lines and name no file
            if "state_dict" not in str(error) and "mismatched" not in str(error):
                raise
            raise ValueError(f"{where}: weights of the wrong shape for the checkpoint's config") from None
        finally:
            if report_filter is not None:
                loading_logger.removeFilter(report_filter)
        problems = [
            f"{len(keys)} {what} weight(s) ({', '.join(sorted(keys)[:3])}{', ...' if len(keys) > 3 else ''})"
            for what, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys")))
            if keys
        ]
        if strict and problems:
            raise ValueError(
                f"{where}: not a complete PISA checkpoint: {'; '.join(problems)} "
                "(strict=False loads it with those parts left as initialised)"
            )
        model._set_trainable()
        model._trust_remote_code = trust_remote_code
        if model.processor is None and _has_saved_processor(where):
            try:
                model.get_processor()
            except (OSError, ValueError, KeyError, TypeError) as error:
                reason = _first_line(error)
                if where in reason:  # already names the file (e.g. the refusal to run the checkpoint's code)
                    raise ValueError(reason) from None
                if os.path.isdir(where) and not os.path.isfile(os.path.join(where, "tokenizer.json")):
                    reason = f"tokenizer.json is missing: {reason}"
                raise ValueError(f"{where}: the checkpoint's processor does not load ({reason})") from None
        return (model, info) if wants_info else model

    def save_pretrained(
        self,
        save_directory,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """`PreTrainedModel.save_pretrained`, plus the custom pipeline's code and the attached processor.

        A LoRA model is saved with its adapters; `pisa_model.assembly.save_merged` writes it merged, for inference.

        With `push_to_hub=True` the complete folder is uploaded afterwards through `push_to_hub` (which saves
        again into a temporary folder), so that the pipeline and processor files travel too.
        """
        from transformers.dynamic_module_utils import custom_object_save

        from .pipeline_pisa import PIPELINE_TASK, PisaPartSegmentationPipeline, pipeline_registration

        hub_kwargs = {}
        if push_to_hub:
            for key in ("repo_id", "commit_message", "token", "private", "create_pr", "revision"):
                if key in kwargs:
                    hub_kwargs[key] = kwargs.pop(key)
        self.config.custom_pipelines = {PIPELINE_TASK: pipeline_registration()}
        result = super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            custom_object_save(PisaPartSegmentationPipeline, save_directory)
            if self.processor is None and self.name_or_path:
                try:  # a model loaded from a folder carries that folder's processor along
                    self.get_processor()
                except (OSError, ValueError):
                    pass
            if self.processor is not None:
                self.processor.save_pretrained(save_directory)
            if push_to_hub:
                repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
                return self.push_to_hub(repo_id, **hub_kwargs)
        return result


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _weights_file(where: str) -> str:
    """The weights file of a local checkpoint folder (the folder itself when it holds none, or a Hub id)."""
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.isfile(os.path.join(where, name)):
            return os.path.join(where, name)
    return where


def _has_saved_processor(where: str) -> bool:
    """A Hub checkpoint saved by this package always holds one; a local folder may be weights only."""
    return not os.path.isdir(where) or os.path.isfile(os.path.join(where, "processor_config.json"))


PisaForPartSegmentation.register_for_auto_class("AutoModel")

__all__ = [
    "NO_MASK_LOGIT",
    "PisaForPartSegmentation",
    "PisaGenerationOutput",
    "PisaPreTrainedModel",
    "PisaSegmentationOutput",
    "masked_bce_dice",
]
