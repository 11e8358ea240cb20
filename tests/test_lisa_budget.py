"""`python -m pisa_model.budget --model lisa` (issue 18 item 8): LISA-7B-v1's counts against its parts built on the
meta device and their published sizes, and the command's inference and training sections."""

import torch

from pisa_model.budget import count_parameters, inference_estimate, lisa_full_size_config, main


def test_lisa_budget_count_equals_the_parts_built_on_the_meta_device():
    from transformers import CLIPVisionModel, LlamaForCausalLM
    from transformers.models.sam.modeling_sam import SamMaskDecoder, SamPromptEncoder, SamVisionEncoder

    from pisa_model.modeling_pisa import sam_config_for

    config = lisa_full_size_config(lora_rank=8)
    assert config.mask_encoder == "sam" and config.projector_type == "linear" and config.mask_input_size == 1024
    total, trainable, _ = count_parameters(config)
    with torch.device("meta"):
        llama = LlamaForCausalLM(config.text_config)
        clip = CLIPVisionModel(config.llava_config.vision_config)
        sam_encoder = SamVisionEncoder(config.sam_vision_config)
        prompt = SamPromptEncoder(sam_config_for(config))
        decoder = SamMaskDecoder(config.mask_decoder_config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    text, width = config.text_config, config.mask_decoder_config.hidden_size
    projector = 1024 * text.hidden_size + text.hidden_size  # LLaVA v1: one Linear(1024, 4096)
    projection = text.hidden_size * text.hidden_size + text.hidden_size + text.hidden_size * width + width
    lora = text.num_hidden_layers * 2 * 8 * (text.hidden_size + text.hidden_size)
    parts = count(llama) + count(clip) + projector + count(sam_encoder) + count(prompt) + count(decoder)
    assert total == parts + projection + lora
    # Published sizes: LLaMA-7B 6,738,415,616 with 32,000 rows (here 4 more rows, in the embeddings and the head),
    # CLIP ViT-L/14's vision tower 303 M, SAM ViT-H 641 M (image encoder, prompt encoder and mask decoder).
    assert count(llama) == 6_738_415_616 + 2 * 4 * text.hidden_size
    assert round(count(clip) / 1e6) == 303
    assert round((count(sam_encoder) + count(prompt) + count(decoder)) / 1e6) == 641
    # Trainable with LoRA: adapters, token embeddings and LM head, [SEG] projection, the decoder's read parts;
    # SAM's image encoder, CLIP and the projector are frozen.
    decoder_read = count(decoder) - count(decoder.iou_prediction_head)
    decoder_read -= sum(count(m) for m in decoder.output_hypernetworks_mlps[1:])
    assert trainable == lora + 2 * text.vocab_size * text.hidden_size + projection + decoder_read

    inference = inference_estimate(config, batch_size=1)
    assert inference.parameters == total - lora  # saved merged
    assert inference.weight_bytes == 2 * (total - lora)  # every weight in bfloat16


def test_budget_command_prints_lisa_inference_and_training(capsys):
    assert main(["--model", "lisa"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("LISA inference budget: LISA-7B-v1") and "mask input 1024 px" in out[0]
    training = next(i for i, line in enumerate(out) if line.startswith("LISA training budget per process"))
    assert "mask input 1024 px, 320 positions per sample" in out[training]  # 256 CLIP-224 tokens + 64
    assert "inference fits 80 GB: yes" in out[:training] and out[-1] == "fits 80 GB: yes"
    assert main(["--model", "lisa", "--mask-input-size", "896"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pisa_model.budget: error: mask_input_size (896) must be SAM's")
