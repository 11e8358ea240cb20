"""PISA's real-size path on CPU: stored dtypes, generated answers, merged LoRA, the memory budget's counts."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from instructpart_dataset.synthetic import CATALOG, instructions_for, render_object
from pisa_model import PisaForPartSegmentation
from pisa_model.assembly import from_components, merge_lora_state_dict, read_sam_prompt_weights, save_merged
from pisa_model.tiny import REAL_STORED_DTYPES, save_tiny_components, tiny_pisa, tiny_pisa_config


def _samples(count, seed=0):
    rng = np.random.default_rng(seed)
    images, texts = [], []
    for i in range(count):
        name = list(CATALOG)[i % len(CATALOG)]
        image, _ = render_object(name, (90 + 10 * i, 70), rng)
        images.append(image)
        texts.append(instructions_for(name, CATALOG[name][i % 2], rng)[i % 6])
    return images, texts


@pytest.fixture(scope="module")
def mixed_components(tmp_path_factory):
    """Tiny parts stored like the real ones: LLaVA float16, DINOv2 bfloat16, SAM float32."""
    folder = str(tmp_path_factory.mktemp("mixed"))
    return save_tiny_components(folder, dtypes={**REAL_STORED_DTYPES, "dinov2": torch.bfloat16})


def _stored_dtypes(folder):
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as handle:
        return {handle.get_tensor(key).dtype for key in handle.keys()}


def test_mixed_stored_dtypes_assemble_and_predict(mixed_components):
    llava, dinov2, sam = mixed_components
    assert (_stored_dtypes(llava), _stored_dtypes(dinov2), _stored_dtypes(sam)) == (
        {torch.float16},
        {torch.bfloat16},
        {torch.float32},
    )
    images, texts = _samples(2)
    masks = {}
    for dtype in (None, torch.bfloat16, torch.float16):
        torch.manual_seed(0)
        model = from_components(llava, dinov2, sam, mask_input_size=64, lora_rank=8, dtype=dtype)
        trainable = {p.dtype for p in model.parameters() if p.requires_grad}
        frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
        assert trainable == {torch.float32}
        assert frozen == {dtype or torch.float32}
        masks[dtype] = model.predict(images, texts)
        assert [m.shape for m in masks[dtype]] == [(70, 90), (70, 100)]
    # Same weights (same seed for the new parts), the frozen ones rounded: the masks nearly agree.
    for dtype in (torch.bfloat16, torch.float16):
        agreement = np.mean([np.mean(a == b) for a, b in zip(masks[None], masks[dtype])])
        assert agreement > 0.9, (dtype, agreement)


def test_forward_refuses_unknown_keyword_arguments():
    model, processor = tiny_pisa(seed=0)
    images, texts = _samples(1)
    inputs = model.prepare_inputs(processor(images=images, text=texts))
    with pytest.raises(TypeError, match="mask_label"):
        model(**inputs, mask_label=torch.zeros(1, 64, 64))


def test_from_components_reads_only_the_sam_prompt_encoder_and_mask_decoder(mixed_components, monkeypatch):
    from transformers import SamModel

    _, _, sam = mixed_components
    config, parts = read_sam_prompt_weights(sam)
    assert set(parts) == {"prompt_encoder", "mask_decoder"}
    whole = SamModel.from_pretrained(sam)
    for part in parts:
        expected = getattr(whole, part).state_dict()
        assert set(parts[part]) == set(expected), part
        for name, tensor in parts[part].items():
            assert torch.equal(tensor, expected[name]), name

    def refuse(*args, **kwargs):
        raise AssertionError("from_components loaded the whole SAM")

    monkeypatch.setattr(SamModel, "from_pretrained", refuse)
    llava, dinov2, _ = mixed_components
    model = from_components(llava, dinov2, sam, mask_input_size=64)
    assert torch.equal(model.mask_decoder.iou_token.weight, whole.mask_decoder.iou_token.weight)


def _answer_chain(model, processor, chain):
    """Make greedy decoding follow `chain` (token -> next token) whatever the context: the token embeddings are
    scaled up so that a position's own token dominates the last hidden state, and the LM head row of each `next`
    points along its predecessor's embedding (every other row zero)."""
    vocab = processor.tokenizer.convert_tokens_to_ids
    embeddings = model.llava.get_input_embeddings().weight
    head = model.llava.lm_head.weight
    with torch.no_grad():
        embeddings.mul_(10.0)
        head.zero_()
        for token, following in chain:
            direction = embeddings[vocab(token)]
            head[vocab(following)] = 50.0 * direction / direction.norm()


TRAINED = [(":", "sure"), ("sure", ","), (",", "it"), ("it", "is"), ("is", "[SEG]"), ("[SEG]", "."), (".", "</s>")]


def test_generated_trained_answer_gives_the_teacher_forced_mask():
    model, processor = tiny_pisa(seed=0)
    _answer_chain(model, processor, TRAINED)
    images, texts = _samples(3, seed=1)  # instructions of different lengths: left padding is exercised
    assert len({len(t.split()) for t in texts}) > 1
    forced = model.predict(images, texts)
    generated, answers = model.predict(images, texts, generate=True, return_answers=True)
    assert answers == ["sure, it is [SEG]."] * 3
    for a, b in zip(forced, generated):
        assert a.any() or (~a).any()
        assert np.array_equal(a, b)
    # The logits themselves, from the state that emitted [SEG] in each mode.
    batch = processor(images=images, text=texts)
    with torch.no_grad():
        teacher = model(**model.prepare_inputs(batch), logits_to_keep=1).pred_masks
    output = model.generate_segmentation(batch, processor, max_new_tokens=10)
    assert output.has_seg.all()
    assert torch.allclose(output.pred_masks, teacher, atol=1e-5)


def test_an_answer_without_seg_gives_an_empty_mask_and_its_text():
    model, processor = tiny_pisa(seed=0)
    chain = [(":", "sure"), ("sure", ","), (",", "it"), ("it", "is"), ("is", "."), (".", "</s>")]
    _answer_chain(model, processor, chain)
    images, texts = _samples(2, seed=2)
    masks, answers = model.predict(images, texts, generate=True, return_answers=True)
    assert answers == ["sure, it is."] * 2
    assert [m.shape for m in masks] == [(70, 90), (70, 100)] and not any(m.any() for m in masks)
    # An answer that never ends stops at max_new_tokens.
    _answer_chain(model, processor, [(":", "sure"), ("sure", "sure")])
    output = model.generate_segmentation(processor(images=images, text=texts), processor, max_new_tokens=4)
    assert output.answers == ["sure sure sure sure"] * 2 and not output.has_seg.any()


def test_merged_lora_checkpoint_predicts_like_the_adapters(tmp_path):
    peft = pytest.importorskip("peft")
    model, processor = tiny_pisa(seed=0, lora_rank=4)
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: give the adapters something to merge
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    # The merge equals peft's own, layer by layer.
    merged = merge_lora_state_dict(model.state_dict(), model.config.lora_alpha / model.config.lora_rank)
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            expected = module.get_base_layer().weight + module.get_delta_weight("default")
            assert torch.allclose(merged[name + ".weight"], expected, atol=1e-6), name
    save_merged(model, tmp_path)
    assert model.config.lora_rank == 4  # the model in memory is unchanged
    with open(tmp_path / "config.json") as handle:
        assert json.load(handle)["lora_rank"] == 0
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert not any("lora_" in key or "base_layer" in key for key in handle.keys())
    loaded = PisaForPartSegmentation.from_pretrained(tmp_path).eval()
    assert not any("lora_" in name for name, _ in loaded.named_parameters())
    images, texts = _samples(3, seed=3)
    batch = processor(images=images, text=texts)
    with torch.no_grad():
        ours = model.eval()(**model.prepare_inputs(batch), logits_to_keep=1).pred_masks
        theirs = loaded(**loaded.prepare_inputs(batch), logits_to_keep=1).pred_masks
    # Tolerance: float32 rounding of W + BA against W x + B(A x), 1e-4 on the logits; masks equal off that band.
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert torch.equal((ours > 0)[ours.abs() > 1e-3], (theirs > 0)[ours.abs() > 1e-3])


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_budget_counts_equal_the_built_tiny_model(lora_rank):
    from pisa_model.budget import count_parameters

    config = tiny_pisa_config(lora_rank=lora_rank)
    total, trainable, weight_bytes = count_parameters(config, torch.bfloat16)
    model, _ = tiny_pisa(seed=0, lora_rank=lora_rank)
    assert total == sum(p.numel() for p in model.parameters())
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.apply_dtype_policy(torch.bfloat16)
    assert weight_bytes == sum(p.numel() * p.element_size() for p in model.parameters())


def test_budget_full_size_count_equals_the_parts_built_on_the_meta_device():
    from transformers import Dinov2Backbone, LlavaForConditionalGeneration
    from transformers.models.sam.modeling_sam import SamMaskDecoder, SamPromptEncoder

    from pisa_model.budget import count_parameters, full_size_config
    from pisa_model.modeling_pisa import sam_config_for

    config = full_size_config(lora_rank=8)
    total, trainable, _ = count_parameters(config)
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config.llava_config)
        dinov2 = Dinov2Backbone(config.dinov2_config)
        prompt = SamPromptEncoder(sam_config_for(config))
        decoder = SamMaskDecoder(config.mask_decoder_config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    text, width = config.text_config, config.mask_decoder_config.hidden_size
    neck = 4 * (1024 * width + width) + 2 * width
    projection = text.hidden_size * text.hidden_size + text.hidden_size + text.hidden_size * width + width
    lora = text.num_hidden_layers * 2 * 8 * (text.hidden_size + text.hidden_size)
    assert total == count(llava) + count(dinov2) + count(prompt) + count(decoder) + neck + projection + lora
    # The published sizes: llava-hf/llava-1.5-7b-hf 7.06 B, facebook/dinov2-large 304 M (its backbone here).
    assert (round(count(llava) / 1e7), round(count(dinov2) / 1e6)) == (706, 304)
    # Trainable with LoRA: adapters, token embeddings and LM head, projection, neck, the decoder's read parts.
    decoder_read = count(decoder) - count(decoder.iou_prediction_head)
    decoder_read -= sum(count(m) for m in decoder.output_hypernetworks_mlps[1:])
    embeddings = 2 * text.vocab_size * text.hidden_size
    assert trainable == lora + embeddings + projection + neck + decoder_read


def test_budget_command_ends_with_the_80_gb_verdict(capsys):
    from pisa_model.budget import main

    assert main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "fits 80 GB: yes"
    assert main(["--lora-rank", "0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "fits 80 GB: no"


def test_the_80_gb_verdicts_follow_from_counts_made_here(capsys):
    """The command's verdicts against totals computed another way: parameters counted on the full-size model built
    on the meta device, the bytes per parameter of the dtype policy (frozen bfloat16, trainable float32 with a
    float32 gradient and AdamW's two float32 moments), and for activations a published upper bound instead of
    the budget's measured estimate: Korthikanti et al. 2022 (arXiv 2205.05198), s*b*h*(34 + 5*a*s/h) bytes per
    transformer layer in 16-bit, which counts every layer's inputs as saved although frozen weights need none."""
    from pisa_model.budget import full_size_config, main
    from pisa_model.modeling_pisa import PisaForPartSegmentation

    usable, gib = 0.9 * 80, 2**30  # a card fits at 90% of it (the budget's documented rule)

    def counts(lora_rank):
        config = full_size_config(lora_rank=lora_rank)
        with torch.device("meta"):
            model = PisaForPartSegmentation(config)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        return config, trainable, frozen

    # Full fine-tuning: weights, gradients and AdamW alone exceed the card, whatever the activations.
    _, trainable, frozen = counts(0)
    assert (2 * frozen + 16 * trainable) / gib > usable
    assert main(["--lora-rank", "0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "fits 80 GB: no"

    # LoRA r=8 at the defaults (batch 2, bf16, no checkpointing, 64 text tokens): fits even with the upper bound.
    config, trainable, frozen = counts(8)
    text, vision = config.text_config, config.llava_config.vision_config
    batch, length = 2, (vision.image_size // vision.patch_size) ** 2 + 64
    h, heads = text.hidden_size, text.num_attention_heads
    layers = text.num_hidden_layers * length * batch * h * (34 + 5 * heads * length / h)
    logits = batch * length * text.vocab_size * (2 + 4 + 4)  # bf16 logits, their float32 copy and its gradient
    mask_branch = batch * 256 * 2**20  # generous: about 110 MiB per sample at 896 px (4 DINOv2 maps, decoder, loss)
    total = 2 * frozen + 16 * trainable + layers + logits + mask_branch
    assert total / gib < usable
    assert main([]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "fits 80 GB: yes"


def test_dinov2_grid_matches_sams_decoder_by_default():
    from pisa_model import PisaConfig

    config = PisaConfig()
    assert config.mask_input_size == 896 and config.mask_grid_size == 64  # SAM-H: 1024 px / 16 = 64


def test_pipeline_returns_the_generated_answer_with_the_mask(tmp_path):
    from pisa_model.pipeline_pisa import PisaPartSegmentationPipeline

    model, processor = tiny_pisa(seed=0)
    _answer_chain(model, processor, TRAINED)
    pipe = PisaPartSegmentationPipeline(model=model, processor=processor)
    images, texts = _samples(1, seed=4)
    forced = pipe(images[0], instruction=texts[0])[0]
    generated = pipe(images[0], instruction=texts[0], generate=True, max_new_tokens=8)[0]
    assert "answer" not in forced and generated["answer"] == "sure, it is [SEG]."
    assert np.array_equal(np.asarray(forced["mask"]), np.asarray(generated["mask"]))
    _answer_chain(model, processor, [(":", "sure"), ("sure", "</s>")])
    empty = pipe(images[0], instruction=texts[0], generate=True)[0]
    assert empty["answer"] == "sure" and not np.asarray(empty["mask"]).any() and empty["score"] == 0.0


def test_evaluate_generate_mode_records_answers_and_mode(release_dir, tmp_path):
    from pisa_model.evaluate import main

    model, processor = tiny_pisa(seed=0)
    _answer_chain(model, processor, TRAINED)
    model.save_pretrained(tmp_path / "model")
    results = {}
    for mode in ("teacher-forced", "generated"):
        out = tmp_path / mode
        extra = ["--adapter-arg", "generate=true", "--adapter-arg", "max_new_tokens=8"] if mode == "generated" else []
        argv = ["--model", str(tmp_path / "model"), "--data-dir", release_dir, "--output-dir", str(out)]
        assert main([*argv, "--no-progress", "--limit", "5", *extra]) == 0
        with open(out / "results.json") as handle:
            results[mode] = json.load(handle)
        assert results[mode]["provenance"]["answer_mode"] == mode
    with open(tmp_path / "generated" / "predictions" / "answers.jsonl") as handle:
        answers = [json.loads(line) for line in handle]
    assert [a["answer"] for a in answers] == ["sure, it is [SEG]."] * 5 and all(a["has_seg"] for a in answers)
    assert results["generated"]["answers"] == {"mode": "generated", "rows": 5, "with_seg": 5}
    assert not (tmp_path / "teacher-forced" / "predictions").exists()
    # The trained answer generated: the same masks, the same numbers.
    assert results["generated"]["configs"] == results["teacher-forced"]["configs"]


def test_worker_decoding_and_threaded_writes_give_the_inline_results(release_dir, tmp_path):
    from instructpart_dataset import load_instructpart
    from pisa_model.evaluate import evaluate_model

    dataset = load_instructpart(release_dir, config="orps", split="test")
    runs = {}
    for workers, threads in ((0, 0), (2, 2)):
        folder = tmp_path / f"{workers}-{threads}"
        scorer, _ = evaluate_model(
            "centre-ellipse",
            dataset,
            batch_size=3,
            prediction_dir=str(folder),
            adapter_options={"relative_area": 0.2},
            progress=False,
            num_workers=workers,
            write_threads=threads,
        )
        files = sorted(p.relative_to(folder) for p in folder.rglob("*.png"))
        runs[workers] = (scorer.state_dict(), {f: Image.open(folder / f).tobytes() for f in files})
    assert len(runs[0][1]) == len(dataset)
    assert runs[0][1] == runs[2][1]
    assert json.dumps(runs[0][0], sort_keys=True, default=str) == json.dumps(runs[2][0], sort_keys=True, default=str)


@pytest.mark.slow
def test_gpu_check_tiny_trains_mixed_dtype_parts_in_bf16_and_evaluates_both_modes(tmp_path):
    """`bash bench/gpu_check.sh --tiny`: tiny parts stored as the real ones (LLaVA float16, DINOv2 and SAM float32),
    3 steps of `accelerate launch -m pisa_model.train --from-components ... --mixed-precision bf16` on CPU, then
    evaluation in both answer modes. The trained checkpoint holds float32 trainable parameters, every one changed."""
    import subprocess

    from accelerate.utils import set_seed

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = tmp_path / "work"
    run = subprocess.run(
        ["bash", os.path.join(root, "bench", "gpu_check.sh"), "--tiny", "--work-dir", str(work), "--test-rows", "8"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},  # this interpreter, wherever the suite runs from
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "finite: yes" in out and "gpu check: ok" in out
    assert "predict (teacher-forced):" in out and "predict (generated):" in out
    with open(work / "trained" / "metrics.jsonl") as handle:
        losses = [json.loads(line)["loss"] for line in handle]
    assert len(losses) == 3 and all(np.isfinite(losses))

    llava, dinov2, sam = (str(work / "components" / name) for name in ("llava", "dinov2", "sam"))
    set_seed(0)  # as pisa_model.train does before building the model
    start = from_components(llava, dinov2, sam, mask_input_size=64, dtype=torch.bfloat16, lora_rank=8, lora_alpha=16)
    trainable = {name for name, param in start.named_parameters() if param.requires_grad}
    assert any("lora_A" in name for name in trainable)
    with safe_open(str(work / "trained" / "model.safetensors"), "pt") as handle:
        stored = {key: handle.get_tensor(key) for key in handle.keys()}
    trained = PisaForPartSegmentation.from_pretrained(str(work / "trained")).state_dict()
    initial = start.state_dict()
    for name in trainable:
        assert not torch.equal(trained[name].float(), initial[name].float()), f"{name} did not change"
    # No low-precision trainable parameter reached the optimizer: the checkpoint stores them in float32, the frozen
    # parts in bfloat16 (its config says float32, so that loading it back loses nothing).
    assert all(stored[key].dtype == torch.float32 for key in stored if "lora_" in key or "text_projection" in key)
    frozen = [key for key in stored if key.startswith("dinov2.") and key.endswith("weight")]
    assert frozen and all(stored[key].dtype == torch.bfloat16 for key in frozen)


def test_model_card_says_which_answer_mode_produced_each_number(tmp_path):
    from instructpart_metric import StreamingScorer
    from instructpart_metric.results import build_results
    from pisa_model.model_card import render_model_card
    from pisa_model.tiny import save_tiny_pisa

    folder = save_tiny_pisa(str(tmp_path / "model"))
    scorer = StreamingScorer()
    for index, kind in enumerate(("human", "gpt4", "part_name", "part_question")):
        scorer.add_counts(3, 4, labels={"instruction_type": kind}, key=f"{kind}/{index}")
    files = []
    for name, config, mode in (("generated", "trps", "generated"), ("older", "orps", None)):
        provenance = {"command": "python -m pisa_model.evaluate", "orps_form": "question"}
        if mode:
            provenance["answer_mode"] = mode
        results = build_results(scorer, (config,), orps_form="question", provenance=provenance)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(results))
        files.append(str(path))
    text = str(render_model_card(folder, "org/pisa", results_files=files))
    assert "with the answer generated;" in text
    assert "with the answer teacher-forced;" in text  # results written before answer_mode existed


def test_train_defaults_are_lisas_for_pretrained_parts_only():
    from pisa_model.train import _apply_lisa_defaults, _lora_options, build_parser

    common = ["--data-dir", "d", "--output-dir", "o", "--max-steps", "1"]
    parts = _apply_lisa_defaults(build_parser().parse_args([*common, "--from-components", "l,d,s"]))
    assert _lora_options(parts) == {
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
    }
    assert parts.mask_input_size == 896
    full = _apply_lisa_defaults(build_parser().parse_args([*common, "--from-components", "l,d,s", "--lora-rank", "0"]))
    assert full.lora_rank == 0  # full fine-tuning only when asked
    assert _apply_lisa_defaults(build_parser().parse_args([*common, "--init-from", "tiny"])).lora_rank == 0


@pytest.mark.parametrize("lora_rank, dtype", [(0, torch.float32), (4, torch.bfloat16)])
def test_budget_activation_estimate_matches_a_measured_tiny_forward(lora_rank, dtype):
    """The estimate (a narrowed decoder layer measured, logits / mask branch / weight copies by formula) against the
    bytes autograd really saves in a whole tiny PISA forward with the same policy: within 25%."""
    from pisa_model.budget import activation_bytes, count_parameters

    model, processor = tiny_pisa(seed=0, lora_rank=lora_rank)
    model.apply_dtype_policy(dtype).train()
    images, texts = _samples(2, seed=5)
    masks = [np.zeros((image.height, image.width), dtype=bool) for image in images]
    inputs = model.prepare_inputs(processor(images=images, text=texts, masks=masks))
    exclude = {param.untyped_storage().data_ptr() for param in model.parameters()}

    def forward():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(**inputs)

    # Measured here, not with the helper the estimate uses: every tensor autograd saves for backward, its storage's
    # bytes counted once per storage (views and repeated saves share one), parameters left out.
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    measured = sum(saved.values())
    config = tiny_pisa_config(lora_rank=lora_rank)
    _, trainable, _ = count_parameters(config, dtype)
    estimate = activation_bytes(config, 2, inputs["input_ids"].shape[1], dtype, False, trainable)
    assert 0.75 < estimate / measured < 1.25, (estimate, measured)
