"""PISA's two starts (issue 18 item 6): from a converted LISA (`train --from-components DINOV2 --init-from-lisa DIR`),
and from llava-hf components, where the new `[SEG]` row starts at the mean of the existing token rows."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pisa_model import PisaForPartSegmentation
from pisa_model.assembly import FROM_LISA, from_components, from_lisa
from pisa_model.tiny import save_tiny_components

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lisa_reference")


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return save_tiny_components(str(tmp_path_factory.mktemp("components")))


@pytest.fixture(scope="module")
def converted_lisa(tmp_path_factory):
    pytest.importorskip("sentencepiece", reason="reading LISA's sentencepiece tokenizer needs instructpart[lisa]")
    from pisa_model import convert_lisa

    output = str(tmp_path_factory.mktemp("lisa") / "converted")
    arguments = ["--checkpoint", os.path.join(FIXTURE, "lisa-tiny"), "--output", output, "--dtype", "float32"]
    assert convert_lisa.main([*arguments, "--vision-tower", os.path.join(FIXTURE, "clip-vit-tiny")]) == 0
    return output


def test_from_lisa_takes_lisas_language_side_and_mask_decoder_and_starts_dinov2_and_the_neck_fresh(
    converted_lisa, components, tmp_path
):
    from transformers import Dinov2Backbone

    from pisa_model.model_card import render_model_card

    _, dinov2, _ = components
    lisa = PisaForPartSegmentation.from_pretrained(converted_lisa)
    lisa_state = lisa.state_dict()
    model = from_lisa(converted_lisa, dinov2, mask_input_size=64)
    state = model.state_dict()

    taken = [key for key in lisa_state if key.split(".")[0] in FROM_LISA]
    assert any(key.startswith("llava.model.multi_modal_projector.") for key in taken)  # LLaVA v1's linear one
    assert any(key.startswith("mask_decoder.") for key in taken) and any("text_projection" in key for key in taken)
    for key in taken:
        assert torch.equal(state[key], lisa_state[key]), key
    seg = lisa.config.seg_token_id
    assert model.config.seg_token_id == seg
    rows = "llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight"
    assert all(torch.equal(state[name][seg], lisa_state[name][seg]) for name in rows)
    # LISA's SAM image encoder is left behind; DINOv2 is the stored component, the neck is new.
    assert not any(key.startswith("vision_encoder.") for key in state)
    stored_dinov2 = Dinov2Backbone.from_pretrained(dinov2, out_indices=model.config.dinov2_feature_layers).state_dict()
    for key, value in stored_dinov2.items():
        assert torch.equal(state["dinov2." + key], value), key
    neck = {key: value for key, value in state.items() if key.startswith("feature_neck.")}
    assert neck and not set(neck) & set(lisa_state)
    for key, value in neck.items():
        if key.endswith("norm.weight"):
            assert torch.equal(value, torch.ones_like(value)), key
        elif key.endswith("bias"):
            assert torch.equal(value, torch.zeros_like(value)), key
        else:  # a projection: drawn from N(0, initializer_range)
            assert abs(value.std().item() - model.config.initializer_range) < 0.3 * model.config.initializer_range
    # LISA's prompt and answer go with its language model; the mask side is DINOv2's.
    processor, lisa_processor = model.processor, lisa.get_processor()
    assert (processor.prompt_template, processor.answer) == (lisa_processor.prompt_template, lisa_processor.answer)
    assert processor.mask_image_processor.size["longest_edge"] == 64
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    (mask,) = model.eval().predict([image], ["the handle of the cup"])
    assert mask.shape == (40, 56) and mask.dtype == bool

    model.save_pretrained(str(tmp_path / "pisa"))
    card = str(render_model_card(str(tmp_path / "pisa"), "someone/pisa-from-lisa"))
    assert f"| training started from | LISA {converted_lisa} (language model, projector, [SEG] row" in card


def test_from_lisa_refuses_a_pisa_checkpoint_in_one_line(components, tmp_path):
    from pisa_model.tiny import save_tiny_pisa

    folder = save_tiny_pisa(str(tmp_path / "pisa"))
    with pytest.raises(ValueError, match=r"not a converted LISA checkpoint \(mask_encoder='dinov2'"):
        from_lisa(folder, components[1], mask_input_size=64)


def test_train_init_from_lisa_wants_dinov2_alone_and_a_folder(
    release_dir, converted_lisa, components, tmp_path, capsys
):
    from pisa_model.train import main

    llava, dinov2, sam = components
    common = ["--data-dir", release_dir, "--output-dir", str(tmp_path / "run"), "--max-steps", "1"]
    cases = [
        (["--from-components", f"{llava},{dinov2},{sam}", "--init-from-lisa", converted_lisa], "names DINOV2 alone"),
        (["--from-components", dinov2, "--init-from-lisa", str(tmp_path / "none")], "none: no such folder"),
        (["--init-from", "tiny", "--init-from-lisa", converted_lisa], "goes with --from-components DINOV2"),
    ]
    for extra, message in cases:
        assert main([*common, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("python -m pisa_model.train: error:") and message in err[-1], err


def test_train_from_lisa_records_its_start(release_dir, converted_lisa, components, tmp_path):
    from pisa_model.train import train

    _, dinov2, _ = components
    out = train(
        ["--data-dir", release_dir, "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2"]
        + ["--grad-accum", "1", "--warmup-steps", "0", "--no-progress", "--mask-input-size", "64"]
        + ["--from-components", dinov2, "--init-from-lisa", converted_lisa]
    )
    trained = PisaForPartSegmentation.from_pretrained(out)
    assert trained.config.initialization.startswith(f"LISA {converted_lisa} ")
    assert trained.config.lora_rank == 8 and trained.config.projector_type == "linear"


def _padded_llava(llava: str, spare: int) -> tuple:
    """Re-save the tiny LLaVA with `spare` padding rows beyond its tokens (as llava-hf's 32,064 rows hold 32,002
    tokens), filled with a large value so that a row left as it is cannot pass for a mean."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(llava)
    known = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(known + spare, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[known:] = 7.0
        model.get_output_embeddings().weight[known:] = -7.0
    model.save_pretrained(llava)
    return known


def _stored_rows(llava: str) -> tuple:
    weights = load_file(os.path.join(llava, "model.safetensors"))
    embed = next(value for key, value in weights.items() if key.endswith("embed_tokens.weight"))
    head = next(value for key, value in weights.items() if key.endswith("lm_head.weight"))
    return embed.double(), head.double()


def test_seg_row_in_a_spare_padding_row_starts_at_the_mean_of_the_token_rows(tmp_path):
    llava, dinov2, sam = save_tiny_components(str(tmp_path / "components"))
    known = _padded_llava(llava, spare=5)
    embed, head = _stored_rows(llava)
    model = from_components(llava, dinov2, sam, mask_input_size=64)
    seg = model.config.seg_token_id
    assert seg == known  # the first spare row: no resize happened
    state = model.state_dict()
    got_embed = state["llava.model.language_model.embed_tokens.weight"].double()
    got_head = state["llava.lm_head.weight"].double()
    assert got_embed.shape[0] == known + 5
    mean_embed = sum(embed[i] for i in range(known)) / known  # a plain loop, not torch.mean
    mean_head = sum(head[i] for i in range(known)) / known
    assert torch.allclose(got_embed[seg], mean_embed, atol=1e-6) and torch.allclose(got_head[seg], mean_head, atol=1e-6)
    assert torch.equal(got_embed[:known], embed[:known]) and torch.equal(got_head[:known], head[:known])
    assert torch.equal(got_embed[seg + 1 :], embed[seg + 1 :])  # the other spare rows stay as stored
    assert model.config.initialization.startswith(f"components: LLaVA {llava}, DINOv2 {dinov2}, SAM {sam}")


def test_seg_row_added_by_a_resize_starts_at_the_mean_too(components):
    llava, dinov2, sam = components
    embed, head = _stored_rows(llava)
    known = embed.shape[0]
    model = from_components(llava, dinov2, sam, mask_input_size=64)
    seg = model.config.seg_token_id
    state = model.state_dict()
    assert seg == known and state["llava.model.language_model.embed_tokens.weight"].shape[0] == known + 1
    # transformers' mean_resizing: the mean plus a draw of N(0, 1e-9 x covariance), far below this tolerance.
    for name, stored in (("llava.model.language_model.embed_tokens.weight", embed), ("llava.lm_head.weight", head)):
        mean = sum(stored[i] for i in range(known)) / known
        assert torch.allclose(state[name][seg].double(), mean, atol=1e-4), name
