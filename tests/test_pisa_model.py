"""PisaForPartSegmentation on the tiny random config: gradients, losses, save/load, sizes, batching, options."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instructpart_dataset.synthetic import CATALOG, instructions_for, render_object
from pisa_model import PisaConfig, PisaForPartSegmentation
from pisa_model.tiny import tiny_pisa, tiny_pisa_config


def _samples(count, seed=0, size=(120, 100)):
    """`count` (image, instruction, mask) triples of generated objects, alternating objects and parts."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        name = list(CATALOG)[i % len(CATALOG)]
        image, masks = render_object(name, size, rng)
        spec = CATALOG[name][i % 2]
        out.append((image, instructions_for(name, spec, rng)[i % 6], masks[spec.part]))
    return out


@pytest.fixture(scope="module")
def tiny():
    return tiny_pisa(seed=0)


@pytest.fixture(scope="module")
def batch(tiny):
    _, processor = tiny
    images, texts, masks = zip(*_samples(3))
    return processor(images=list(images), text=list(texts), masks=list(masks))


def test_forward_backward_reaches_every_trainable_parameter_and_no_frozen_one(batch):
    model, _ = tiny_pisa(seed=0)
    model.train()
    outputs = model(**model.prepare_inputs(batch))
    outputs.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any()))
    frozen_with_grad = sorted(n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None)
    assert not no_grad, no_grad
    assert not frozen_with_grad, frozen_with_grad
    # What PISA freezes, by name: the whole DINOv2, SAM's prompt encoder, LLaVA's vision side, unread decoder heads.
    for prefix in (
        "dinov2.",
        "prompt_encoder.",
        "llava.model.vision_tower.",
        "llava.model.multi_modal_projector.",
        "mask_decoder.iou_prediction_head.",
        "mask_decoder.output_hypernetworks_mlps.1.",
    ):
        names = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
        assert names and not trainable & set(names), prefix
    for prefix in (
        "llava.model.language_model.",
        "llava.lm_head.",
        "text_projection.",
        "feature_neck.",
        "mask_decoder.transformer.",
    ):
        assert any(n.startswith(prefix) for n in trainable), prefix


def test_output_shapes_and_loss_terms_match_a_second_implementation(tiny, batch):
    model, processor = tiny
    with torch.no_grad():
        out = model(**model.prepare_inputs(batch))
    size, grid = processor.mask_input_size, model.config.mask_grid_size
    assert out.pred_masks.shape == (3, 1, 4 * grid, 4 * grid)
    assert out.image_embeddings.shape == (3, model.config.mask_decoder_config.hidden_size, grid, grid)

    # LM cross-entropy over the answer tokens (labels shifted by one), averaged over tokens.
    logits, labels = out.logits[:, :-1].double(), batch["labels"][:, 1:]
    keep = labels != -100
    expected_lm = F.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(out.lm_loss.double(), expected_lm, atol=1e-6)

    # BCE and Dice per mask over the unpadded pixels (numpy, pixel lists), then averaged over masks.
    up = F.interpolate(out.pred_masks.double(), (size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    bces, dices = [], []
    for i, (h, w) in enumerate(batch["reshaped_input_sizes"].tolist()):
        x, t = up[i, :h, :w].ravel(), batch["mask_labels"][i, :h, :w].double().numpy().ravel()
        bces.append(np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))))
        p = 1 / (1 + np.exp(-x))
        dices.append(1 - (2 * (p / 1000 * t).sum() + 1e-6) / ((p / 1000).sum() + (t / 1000).sum() + 1e-6))
        assert batch["mask_labels"][i, h:, :].sum() == 0 and batch["mask_labels"][i, :, w:].sum() == 0
    assert abs(out.mask_bce_loss.item() - np.mean(bces)) < 1e-5
    assert abs(out.mask_dice_loss.item() - np.mean(dices)) < 1e-5
    c = model.config
    expected = (
        c.ce_loss_weight * out.lm_loss + c.bce_loss_weight * out.mask_bce_loss + c.dice_loss_weight * out.mask_dice_loss
    )
    assert torch.allclose(out.loss, expected)


def test_seg_state_is_the_one_before_the_seg_token(tiny, batch):
    model, processor = tiny
    inputs = model.prepare_inputs(batch)
    with torch.no_grad():
        hidden = model.llava.model(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]
        ).last_hidden_state
        out = model(**inputs)
    for row, ids in enumerate(batch["input_ids"].tolist()):
        position = ids.index(processor.seg_token_id)
        expected = model.text_projection(hidden[row, position - 1])
        assert torch.allclose(out.seg_embeddings[row], expected, atol=1e-6)


def test_save_and_load_round_trip_gives_identical_outputs(tiny, batch, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = PisaForPartSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.seg_token_id == model.config.seg_token_id
    assert loaded.config.dinov2_feature_layers == model.config.dinov2_feature_layers
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {name for name, p in loaded.named_parameters() if p.requires_grad} == trainable
    assert not any(name.startswith(("dinov2.", "prompt_encoder.")) for name in trainable)
    with torch.no_grad():
        a, b = model(**model.prepare_inputs(batch)), loaded(**loaded.prepare_inputs(batch))
    for key in ("loss", "logits", "pred_masks", "seg_embeddings"):
        assert torch.equal(a[key], b[key]), key
    # predict() finds the processor saved next to the weights.
    image, text, _ = _samples(1, seed=5)[0]
    assert np.array_equal(loaded.predict([image], [text])[0], model.predict([image], [text])[0])


@pytest.mark.parametrize("size", [(333, 517), (517, 333), (31, 7), (64, 64)])
def test_predict_returns_bool_masks_at_the_original_size(tiny, size):
    model, _ = tiny
    rng = np.random.default_rng(1)
    image, _ = render_object("kettle", size, rng)
    (mask,) = model.predict([image], ["lid of the kettle"])
    assert mask.dtype == bool and mask.shape == (size[1], size[0])


def test_batched_predict_equals_one_at_a_time(tiny):
    model, _ = tiny
    samples = _samples(5, seed=3) + [(render_object("sofa", (333, 517), np.random.default_rng(2))[0], "armrest", None)]
    images, texts = [s[0] for s in samples], [s[1] for s in samples]
    batched = model.predict(images, texts, batch_size=4)
    for image, text, mask in zip(images, texts, batched):
        single = model.predict([image], [text])[0]
        # Right padding cannot reach the [SEG] state of a causal LM: at most a pixel on a boundary may flip.
        assert (single != mask).sum() <= 1


def test_bad_inputs_raise_one_line_errors(tiny, batch):
    model, processor = tiny
    inputs = model.prepare_inputs(batch)
    no_seg = dict(inputs, input_ids=inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.seg_token_id, 5))
    with pytest.raises(ValueError, match=r"sequence 0 has 0 \[SEG\]"):
        model(**no_seg)
    wrong = dict(inputs, mask_pixel_values=inputs["mask_pixel_values"][..., :32, :32])
    with pytest.raises(ValueError, match="mask_pixel_values must have shape"):
        model(**wrong)
    with pytest.raises(ValueError, match="2 images and 1 instructions"):
        model.predict(_samples(2), ["x"])
    with pytest.raises(ValueError, match="no processor"):
        PisaForPartSegmentation(model.config).predict([], [])
    with pytest.raises(ValueError, match="feature_fusion"):
        tiny_pisa_config(feature_fusion="max")
    with pytest.raises(ValueError, match="dinov2_feature_layers"):
        tiny_pisa_config(dinov2_feature_layers=[0, 7])
    with pytest.raises(ValueError, match="multiple of the DINOv2 patch size"):
        tiny_pisa_config(mask_input_size=60)


def test_concat_fusion_matches_its_definition(batch):
    model, _ = tiny_pisa(seed=0, feature_fusion="concat")
    inputs = model.prepare_inputs(batch)
    with torch.no_grad():
        maps = model.dinov2(inputs["mask_pixel_values"]).feature_maps
        neck = model.feature_neck
        per_layer = [proj(m.permute(0, 2, 3, 1)) for proj, m in zip(neck.layer_projections, maps)]
        expected = neck.layer_norm(neck.fuse(torch.cat(per_layer, -1))).permute(0, 3, 1, 2)
        assert torch.allclose(model.get_image_embeddings(inputs["mask_pixel_values"]), expected, atol=1e-6)
        summed = tiny_pisa(seed=0)[0]
        s_neck = summed.feature_neck
        s_expected = s_neck.layer_norm(sum(p(m.permute(0, 2, 3, 1)) for p, m in zip(s_neck.layer_projections, maps)))
        assert torch.allclose(
            summed.get_image_embeddings(inputs["mask_pixel_values"]), s_expected.permute(0, 3, 1, 2), atol=1e-6
        )
    assert len(maps) == len(model.config.dinov2_feature_layers)


def test_default_config_is_the_papers_model():
    config = PisaConfig()
    assert config.llava_config.text_config.hidden_size == 4096  # LLaVA-1.5-7B
    assert (config.dinov2_config.hidden_size, config.dinov2_config.num_hidden_layers) == (1024, 24)  # DINOv2-L
    assert config.dinov2_feature_layers == [6, 12, 18, 24]
    assert config.mask_decoder_config.hidden_size == 256  # SAM's decoder
    assert (config.bce_loss_weight, config.dice_loss_weight, config.ce_loss_weight) == (2.0, 0.5, 1.0)


def test_gradient_checkpointing_gives_the_same_gradients(batch):
    grads = []
    for checkpointing in (False, True):
        model, _ = tiny_pisa(seed=0)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**model.prepare_inputs(batch)).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_lora_trains_adapters_embeddings_and_head_only(batch, tmp_path):
    pytest.importorskip("peft")
    model, _ = tiny_pisa(seed=0, lora_rank=4)
    lm = {n for n, _ in model.named_parameters() if n.startswith("llava.model.language_model.")}
    trainable_lm = {n for n, p in model.named_parameters() if p.requires_grad and n in lm}
    assert trainable_lm == {n for n in lm if "lora_" in n} | {"llava.model.language_model.embed_tokens.weight"}
    assert any("q_proj.lora_A" in n for n in trainable_lm) and any("v_proj.lora_B" in n for n in trainable_lm)
    model.train()
    model(**model.prepare_inputs(batch)).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    model.save_pretrained(tmp_path)
    loaded = PisaForPartSegmentation.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            model(**model.prepare_inputs(batch)).pred_masks, loaded(**loaded.prepare_inputs(batch)).pred_masks
        )


def test_device_map_auto_loads_and_predicts_the_same(tiny, tmp_path):
    """What a GPU user's `device_map="auto"` runs, minus the split: the model is built on the meta device and its
    weights materialised by Accelerate's loading path, the device map inferred with `_no_split_modules`, then our
    `from_pretrained` checks and freezing on top. On one CPU every module lands on it, so this proves the path
    loads the model whole and predicts as the eagerly loaded one; it cannot prove a split across devices."""
    pytest.importorskip("accelerate")
    model, _ = tiny
    model.save_pretrained(tmp_path)
    mapped = PisaForPartSegmentation.from_pretrained(tmp_path, device_map="auto")
    assert mapped.device.type == "cpu"  # the only device here
    image, text, _ = _samples(1, seed=9)[0]
    assert np.array_equal(mapped.predict([image], [text])[0], model.predict([image], [text])[0])


def test_bf16_predict_agrees_with_fp32(tiny):
    model, _ = tiny
    image, text, _ = _samples(1, seed=11, size=(141, 103))[0]
    full = model.predict([image], [text])[0]
    half, _ = tiny_pisa(seed=0)
    half.to(torch.bfloat16)
    low = half.predict([image], [text])[0]
    assert low.dtype == bool and low.shape == (103, 141)
    assert (low == full).mean() > 0.95


def test_predict_on_the_real_sample_gives_each_images_size(tiny, sample_dir):
    from pisa_model.data import load_rows

    rows = load_rows(sample_dir, configs="trps,orps", split="test")
    picked = [rows[i] for i in range(0, len(rows), max(1, len(rows) // 6))][:6]
    model, _ = tiny
    masks = model.predict([r["image"] for r in picked], [r["instruction"] for r in picked], batch_size=3)
    assert [m.shape for m in masks] == [r["mask"].shape for r in picked]
