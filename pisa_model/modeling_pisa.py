"""PISA: a LLaVA whose `[SEG]` token prompts a SAM mask decoder over frozen multi-layer DINOv2 features.

    image ──> LLaVA (CLIP + LM) ── hidden state that emits [SEG] ──> text projection ──> sparse prompt ─┐
      │                                                                                                 v
      └─> resize longest side + pad ─> frozen DINOv2 ─> layers i..k ─> per-layer Linear ─> fuse ─> SAM mask decoder
                                                                                                        │
                                         low-res mask logits (4x the patch grid) <──────────────────────┘

This file travels with saved checkpoints (`trust_remote_code=True`): it imports
only torch, transformers and its sibling files (peft only when LoRA is on).
"""

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForImageTextToText,
    Dinov2Backbone,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    SamConfig,
    SamVisionConfig,
)
from transformers.models.sam.modeling_sam import SamMaskDecoder, SamPositionalEmbedding, SamPromptEncoder
from transformers.utils import ModelOutput

from .configuration_pisa import PisaConfig
from .processing_pisa import PisaProcessor


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
        fused DINOv2 features, the decoder's image embedding.
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
    _no_split_modules = ["SamMaskDecoder", "PisaFeatureNeck", "PisaTextProjection", "SamPromptEncoder"]  # noqa: RUF012

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
    otherwise they are built from the config. Use `from_components` to assemble pretrained parts.

    Trainable: LLaVA's language model (or its LoRA adapters + embeddings + LM head), the `[SEG]` text projection,
    the feature neck and SAM's mask decoder. Frozen: DINOv2, SAM's prompt encoder, LLaVA's vision tower and
    projector (`freeze_vision_tower`), and the decoder heads a single-mask output never reads.

    Attribute `processor` (not saved in the weights): the `PisaProcessor` that `predict` uses; `save_pretrained`
    writes it next to the weights and `from_pretrained` loads it back lazily from the same folder.
    """

    def __init__(self, config: PisaConfig, llava: nn.Module | None = None, dinov2: nn.Module | None = None):
        super().__init__(config)
        config = self.config  # PreTrainedModel may hold a copy: build from (and update) the one it keeps
        self.llava = llava if llava is not None else LlavaForConditionalGeneration(config.llava_config)
        self.dinov2 = dinov2 if dinov2 is not None else Dinov2Backbone(config.dinov2_config)
        # Given modules keep their own (already resolved) configs: make the composite config hold those objects.
        config.llava_config, config.dinov2_config = self.llava.config, self.dinov2.config
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
        frozen = [self.dinov2, self.prompt_encoder, self.mask_decoder.iou_prediction_head]
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

    def get_input_embeddings(self):
        return self.llava.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llava.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.llava.get_output_embeddings()

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
        """(batch, 3, S, S) -> fused frozen-DINOv2 features (batch, decoder_hidden, S / patch, S / patch)."""
        size = self.config.mask_input_size
        if mask_pixel_values.ndim != 4 or tuple(mask_pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"mask_pixel_values must have shape (batch, 3, {size}, {size}), got {tuple(mask_pixel_values.shape)}"
            )
        with torch.no_grad():
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
        **kwargs,
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
        """
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
        self, images, instructions, batch_size: int = 8, processor: PisaProcessor | None = None, progress=False
    ):
        r"""
        Segment the part each instruction asks for.

        The answer is teacher-forced ("Sure, it is [SEG]." is appended, as in training) rather than generated: one
        batched forward pass, identical to greedy generation whenever the model emits its trained answer.

        Args:
            images (`list[PIL.Image.Image]`): any sizes and modes.
            instructions (`list[str]`): one per image.
            batch_size (`int`, *optional*, defaults to 8).
            processor (`PisaProcessor`, *optional*): defaults to `get_processor()`.
            progress (`bool`, *optional*): show a tqdm bar.

        Returns:
            `list[np.ndarray]`: one bool (H, W) mask per image, at the image's original size (logit > 0).
        """
        processor = processor if processor is not None else self.get_processor()
        images, instructions = list(images), list(instructions)
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images and {len(instructions)} instructions")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="predict", unit="batch")
        masks = []
        try:
            for start in starts:
                batch = processor(
                    images=images[start : start + batch_size], text=instructions[start : start + batch_size]
                )
                outputs = self(**self.prepare_inputs(batch), logits_to_keep=1)
                for mask in processor.post_process_masks(
                    outputs.pred_masks, batch["original_sizes"], batch["reshaped_input_sizes"]
                ):
                    masks.append(mask.cpu().numpy().astype(bool))
        finally:
            self.train(was_training)
        return masks

    def prepare_inputs(self, batch) -> dict:
        """Move a processor batch to the model's device, floating-point inputs to the model's dtype."""
        device, dtype = self.device, self.dtype
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

    # --- saving and assembling ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the freezing again: loading materialises every weight as a new,
        trainable parameter, which would let an optimizer train DINOv2 and the other frozen parts."""
        trust_remote_code = bool(kwargs.get("trust_remote_code", False))
        model = super().from_pretrained(*args, **kwargs)
        model._set_trainable()
        model._trust_remote_code = trust_remote_code
        return model

    def save_pretrained(self, save_directory, is_main_process: bool = True, push_to_hub: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the custom pipeline's code and the attached processor.

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

    @classmethod
    def from_components(
        cls,
        llava: str,
        dinov2: str,
        sam: str,
        *,
        dinov2_feature_layers=None,
        feature_fusion: str = "sum",
        mask_input_size: int = 448,
        dtype: torch.dtype | None = None,
        **config_kwargs,
    ) -> "PisaForPartSegmentation":
        r"""
        Assemble a PISA model from pretrained parts (Hub ids or local folders), e.g. `llava-hf/llava-1.5-7b-hf`,
        `facebook/dinov2-large`, `facebook/sam-vit-huge`.

        LLaVA and its processor are loaded whole; `[SEG]` is added to the tokenizer and the embeddings resized; DINOv2
        is loaded as a frozen backbone on `dinov2_feature_layers`; SAM's prompt-encoder and mask-decoder weights are
        copied. The feature neck and text projection start from random. The returned model has `processor` set.
        Extra keyword arguments go to `PisaConfig` (e.g. `lora_rank=8`).
        """
        from transformers import (
            AddedToken,
            AutoImageProcessor,
            AutoProcessor,
            Dinov2Config,
            SamImageProcessorPil,
            SamModel,
        )

        llava_model = AutoModelForImageTextToText.from_pretrained(llava, dtype=dtype)
        llava_processor = AutoProcessor.from_pretrained(llava)
        tokenizer = llava_processor.tokenizer
        image_token = getattr(llava_processor, "image_token", "<image>")
        # Matched before any normalisation (e.g. lower-casing), so that they keep their spelling.
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(image_token, normalized=False, special=True)], special_tokens=True)
        tokenizer.add_tokens([AddedToken("[SEG]", normalized=False, special=False)])
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        if len(tokenizer) > llava_model.get_input_embeddings().weight.shape[0]:
            llava_model.resize_token_embeddings(len(tokenizer))

        # The composite config gets copies: building it resets the attention implementation of the sub-configs.
        dinov2_config = Dinov2Config.from_pretrained(dinov2)
        config = PisaConfig(
            llava_config=llava_model.config.to_dict(),
            dinov2_config=dinov2_config,
            dinov2_feature_layers=dinov2_feature_layers,
            feature_fusion=feature_fusion,
            mask_input_size=mask_input_size,
            seg_token_id=tokenizer.convert_tokens_to_ids("[SEG]"),
            **config_kwargs,
        )
        dinov2_model = Dinov2Backbone.from_pretrained(dinov2, out_indices=config.dinov2_feature_layers, dtype=dtype)
        sam_model = SamModel.from_pretrained(sam, dtype=dtype)
        config.prompt_encoder_config = copy.deepcopy(sam_model.config.prompt_encoder_config)
        config.mask_decoder_config = copy.deepcopy(sam_model.config.mask_decoder_config)

        model = cls(config, llava=llava_model, dinov2=dinov2_model)
        model.prompt_encoder.load_state_dict(sam_model.prompt_encoder.state_dict())
        model.mask_decoder.load_state_dict(sam_model.mask_decoder.state_dict())
        if dtype is not None:
            model.to(dtype)

        dinov2_processor = AutoImageProcessor.from_pretrained(dinov2)
        mask_image_processor = SamImageProcessorPil(
            size={"longest_edge": mask_input_size},
            pad_size={"height": mask_input_size, "width": mask_input_size},
            mask_size={"longest_edge": mask_input_size},
            mask_pad_size={"height": mask_input_size, "width": mask_input_size},
            image_mean=list(dinov2_processor.image_mean),
            image_std=list(dinov2_processor.image_std),
        )
        vision = llava_model.config.vision_config
        model.processor = PisaProcessor(
            image_processor=llava_processor.image_processor,
            mask_image_processor=mask_image_processor,
            tokenizer=tokenizer,
            image_token=image_token,
            patch_size=getattr(llava_processor, "patch_size", None) or vision.patch_size,
            vision_feature_select_strategy=llava_model.config.vision_feature_select_strategy,
            num_additional_image_tokens=getattr(llava_processor, "num_additional_image_tokens", 1),
        )
        return model


PisaForPartSegmentation.register_for_auto_class("AutoModel")

__all__ = ["PisaForPartSegmentation", "PisaPreTrainedModel", "PisaSegmentationOutput", "masked_bce_dice"]
