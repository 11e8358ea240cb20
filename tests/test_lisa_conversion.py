"""LISA in this package's model family, proven against LISA's own code.

tests/fixtures/lisa_reference/ holds a tiny random LISA built and run with LISA's own classes (lisa-on-cuda, its
torch 2.4 and transformers 4.31 pins) by make_reference.py in a separate environment: the checkpoint in LISA's
released layout, its CLIP tower, three images and what LISA computed on them (input ids, [SEG] embeddings, mask
logits at the image's size, generated ids). Here the checkpoint is converted with `pisa_model.convert_lisa` and run
with this package: everything must agree (logits within 1e-4 in float32, equal masks).
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from instructpart_dataset.toolbox.fresh_process import run_isolated
from pisa_model import PisaForPartSegmentation, convert_lisa

pytest.importorskip("sentencepiece", reason="reading LISA's sentencepiece tokenizer needs instructpart[lisa]")

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lisa_reference")
CHECKPOINT = os.path.join(FIXTURE, "lisa-tiny")
TOWER = os.path.join(FIXTURE, "clip-vit-tiny")
LOGIT_TOLERANCE = 1e-4
IMAGE_PLACEHOLDER = -200  # LISA's IMAGE_TOKEN_INDEX: one id in its input ids for the 256 image positions


def _cases():
    with open(os.path.join(FIXTURE, "cases.json"), encoding="utf-8") as handle:
        meta = json.load(handle)
    return meta, np.load(os.path.join(FIXTURE, "expected.npz"), allow_pickle=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("lisa") / "converted")
    status = convert_lisa.main(
        ["--checkpoint", CHECKPOINT, "--vision-tower", TOWER, "--output", output, "--dtype", "float32"]
    )
    assert status == 0
    return output


def _as_lisa_ids(ids, image_token_id):
    """Our ids with the run of image placeholders folded into LISA's single IMAGE_TOKEN_INDEX."""
    folded = []
    for token in ids:
        if token == image_token_id:
            if not folded or folded[-1] != IMAGE_PLACEHOLDER:
                folded.append(IMAGE_PLACEHOLDER)
        else:
            folded.append(token)
    return folded


@pytest.mark.slow
def test_converted_tiny_lisa_equals_lisas_own_outputs(converted):
    meta, expected = _cases()
    model = PisaForPartSegmentation.from_pretrained(converted).eval()
    processor = model.get_processor()
    image_token_id = model.llava.config.image_token_id
    assert model.config.mask_encoder == "sam" and model.config.projector_type == "linear"
    for index, case in enumerate(meta["cases"]):
        image = Image.open(os.path.join(FIXTURE, case["image"]))
        batch = processor(images=[image], text=[case["instruction"]])
        # The same tokens as LISA's tokenizer_image_token on its llava_v1 conversation.
        assert (
            _as_lisa_ids(batch["input_ids"][0].tolist(), image_token_id) == expected[f"case{index}_forced_ids"].tolist()
        )
        assert list(batch["reshaped_input_sizes"][0].tolist()) == case["resize"]
        with torch.no_grad():
            outputs = model(**model.prepare_inputs(batch))
        np.testing.assert_allclose(
            outputs.seg_embeddings[0].numpy(), expected[f"case{index}_forced_seg_embedding"], atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(
            outputs.image_embeddings[0].numpy(), expected[f"case{index}_image_embedding"], atol=1e-4, rtol=0
        )
        logits = processor.post_process_masks(
            outputs.pred_masks, batch["original_sizes"], batch["reshaped_input_sizes"], threshold=None
        )[0].numpy()
        lisa_logits = expected[f"case{index}_forced_mask_logits"]
        assert logits.shape == lisa_logits.shape == tuple(case["original_size"])
        assert np.abs(logits - lisa_logits).max() <= LOGIT_TOLERANCE
        assert (lisa_logits > 0).any() and (lisa_logits <= 0).any()  # the comparison of masks means something
        (mask,) = model.predict([image], [case["instruction"]])
        assert np.array_equal(mask, lisa_logits > 0)

        # Generated answer mode, as LISA's chat.py: the same greedy tokens and the first [SEG]'s mask.
        generation = model.generate_segmentation(batch, processor, max_new_tokens=meta["max_new_tokens"])
        prompt_length = len(expected[f"case{index}_prompt_ids"]) - 1 + model.config.llava_config.image_seq_length
        generated = generation.sequences[0, -(generation.sequences.shape[1] - prompt_length) :].tolist()
        assert generated == expected[f"case{index}_generated_ids"].tolist()
        assert bool(generation.has_seg[0]) == case["generated_has_seg"]
        generated_logits = processor.post_process_masks(
            generation.pred_masks, batch["original_sizes"], batch["reshaped_input_sizes"], threshold=None
        )[0].numpy()
        assert np.abs(generated_logits - expected[f"case{index}_generated_mask_logits"]).max() <= LOGIT_TOLERANCE
        (generated_mask,), _ = model.predict(
            [image], [case["instruction"]], generate=True, max_new_tokens=meta["max_new_tokens"], return_answers=True
        )
        assert np.array_equal(generated_mask, expected[f"case{index}_generated_mask_logits"] > 0)


def test_mapping_table_covers_every_fixture_tensor_and_copies_it(converted):
    with open(os.path.join(CHECKPOINT, "model.safetensors.index.json"), encoding="utf-8") as handle:
        names = sorted(json.load(handle)["weight_map"])
    depths = convert_lisa._mlp_depths(names)
    dropped = [name for name in names if convert_lisa.map_name(name, depths) is None]
    assert dropped and all(name.endswith("rotary_emb.inv_freq") for name in dropped)
    source = _fixture_tensors()
    ours = PisaForPartSegmentation.from_pretrained(converted).state_dict()  # the names in memory, as saved ones vary
    # A few tensors, by the names LISA's code gives them and the module each lands in here.
    pairs = {
        "model.mm_projector.weight": "llava.model.multi_modal_projector.linear.weight",
        "model.text_hidden_fcs.0.2.bias": "text_projection.fc2.bias",
        "model.visual_model.image_encoder.neck.2.weight": "vision_encoder.neck.conv2.weight",
        "model.visual_model.mask_decoder.iou_prediction_head.layers.2.weight": "mask_decoder.iou_prediction_head.proj_out.weight",
        "model.visual_model.mask_decoder.output_hypernetworks_mlps.0.layers.1.bias": "mask_decoder.output_hypernetworks_mlps.0.layers.0.bias",
        "model.visual_model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": "prompt_encoder.shared_embedding.positional_embedding",
    }
    for lisa_name, our_name in pairs.items():
        assert torch.equal(source[lisa_name], ours[our_name]), lisa_name
    # The <image> placeholder's row is new: LISA's embedding rows are kept as they are, the new one is zero.
    embed = ours["llava.model.language_model.embed_tokens.weight"]
    vocab = source["model.embed_tokens.weight"].shape[0]
    assert torch.equal(embed[:vocab], source["model.embed_tokens.weight"]) and not embed[vocab:].any()
    with open(os.path.join(converted, "lisa_conversion.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["used"] == len(names) - len(dropped) and record["dropped"] == dropped


def _fixture_tensors():
    """{name: tensor} of the fixture checkpoint's safetensors shards."""
    tensors = {}
    for shard in sorted(f for f in os.listdir(CHECKPOINT) if f.endswith(".safetensors")):
        tensors.update(load_file(os.path.join(CHECKPOINT, shard)))
    return tensors


def _released_layout(folder):
    """The fixture checkpoint as LISA's released checkpoints are stored: `pytorch_model-*.bin` shards (torch's
    zip pickles) and their index, with the same tensors in the same shards; the configs and tokenizer copied."""
    shutil.copytree(CHECKPOINT, folder, ignore=shutil.ignore_patterns("*.safetensors", "model.safetensors.index.json"))
    with open(os.path.join(CHECKPOINT, "model.safetensors.index.json"), encoding="utf-8") as handle:
        index = json.load(handle)
    renamed = {}
    for shard in sorted(set(index["weight_map"].values())):
        renamed[shard] = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(os.path.join(CHECKPOINT, shard)), os.path.join(folder, renamed[shard]))
    index["weight_map"] = {name: renamed[shard] for name, shard in index["weight_map"].items()}
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle)
    return str(folder)


def test_released_bin_layout_converts_to_the_same_weights(tmp_path, converted):
    folder = _released_layout(tmp_path / "released")
    output = tmp_path / "converted-from-bin"
    status = convert_lisa.main(
        ["--checkpoint", folder, "--vision-tower", TOWER, "--output", str(output), "--dtype", "float32"]
    )
    assert status == 0
    from_bin = PisaForPartSegmentation.from_pretrained(output).state_dict()
    from_safetensors = PisaForPartSegmentation.from_pretrained(converted).state_dict()
    assert from_bin.keys() == from_safetensors.keys()
    for name, tensor in from_safetensors.items():
        assert torch.equal(from_bin[name], tensor), name


def _edited_checkpoint(tmp_path, name, value):
    """A copy of the fixture checkpoint, in the released `.bin` layout, with tensor `name` removed (`value` None) or
    set to `value`."""
    folder = tmp_path / "edited"
    _released_layout(folder)
    index_path = folder / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    shard_name = index["weight_map"].get(name, sorted(set(index["weight_map"].values()))[0])
    state = torch.load(folder / shard_name, map_location="cpu", weights_only=True)
    if value is None:
        del state[name], index["weight_map"][name]
    else:
        state[name] = value
        index["weight_map"][name] = shard_name
    torch.save(state, folder / shard_name)
    index_path.write_text(json.dumps(index))
    return str(folder)


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("model.visual_model.mask_decoder.iou_token.weight", None, "missing tensor"),
        ("model.mm_projector.weight", None, "missing tensor"),
        ("model.layers.1.mlp.up_proj.weight", None, "missing tensor"),
        ("model.visual_model.extra_head.weight", torch.zeros(2), "unexpected tensor"),
        ("model.mm_projector.bias", torch.zeros(7), "has shape (7,)"),
    ],
    ids=["sam-tensor-removed", "projector-removed", "llama-tensor-removed", "one-extra", "one-mis-shaped"],
)
def test_converter_refuses_a_checkpoint_that_does_not_match_in_one_line(tmp_path, capsys, name, value, message):
    folder = _edited_checkpoint(tmp_path, name, value)
    output = tmp_path / "out"
    status = convert_lisa.main(["--checkpoint", folder, "--vision-tower", TOWER, "--output", str(output)])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("python -m pisa_model.convert_lisa: error:")]
    assert status == 2 and len(errors) == 1, lines
    assert name in errors[0] and message in errors[0], errors[0]
    assert not output.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


@pytest.mark.slow
def test_converted_lisa_loads_through_automodel_with_the_project_not_importable(converted, tmp_path):
    meta, expected = _cases()
    case = meta["cases"][1]
    work = tmp_path / "cwd"
    work.mkdir()
    report = run_isolated(
        """
        import json, sys
        try:
            import pisa_model
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("pisa_model is importable")
        import numpy as np
        from PIL import Image
        from transformers import AutoModel, pipeline

        folder, image_path, instruction, out_path = sys.argv[1:5]
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        (mask,) = model.predict([Image.open(image_path)], [instruction])
        (result,) = pipeline(model=folder, trust_remote_code=True)(Image.open(image_path), instruction=instruction)
        np.save(out_path, mask)
        np.save(out_path + ".pipeline.npy", np.asarray(result["mask"]) > 0)
        print(json.dumps({"model_class": type(model).__name__, "mask_encoder": model.config.mask_encoder}))
        """,
        str(work),
        "remote-code load of a converted LISA",
        args=[converted, os.path.join(FIXTURE, case["image"]), case["instruction"], tmp_path / "mask.npy"],
        timeout=300,
    )
    assert report == {"model_class": "PisaForPartSegmentation", "mask_encoder": "sam"}
    lisa_mask = expected["case1_forced_mask_logits"] > 0
    assert np.array_equal(np.load(tmp_path / "mask.npy"), lisa_mask)
    assert np.array_equal(np.load(tmp_path / "mask.npy.pipeline.npy"), lisa_mask)


@pytest.mark.slow
def test_lisa_adapter_converts_a_raw_checkpoint_once_and_reads_a_converted_folder(converted, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from pisa_model.adapters import load_adapter

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    meta, expected = _cases()
    case = meta["cases"][0]
    image = Image.open(os.path.join(FIXTURE, case["image"]))
    lisa_mask = expected["case0_forced_mask_logits"] > 0
    raw = load_adapter(f"lisa:{CHECKPOINT}", vision_tower=TOWER, dtype="float32")
    cached = os.listdir(tmp_path / "hf" / "instructpart" / "lisa")
    assert len(cached) == 1 and raw.name == f"lisa:{CHECKPOINT}"
    assert np.array_equal(raw.predict([image], [case["instruction"]])[0], lisa_mask)
    again = load_adapter(f"lisa:{CHECKPOINT}", vision_tower=TOWER, dtype="float32")  # read from the cache
    assert os.listdir(tmp_path / "hf" / "instructpart" / "lisa") == cached
    assert np.array_equal(again.predict([image], [case["instruction"]])[0], lisa_mask)
    folder = load_adapter(f"lisa:{converted}")
    assert np.array_equal(folder.predict([image], [case["instruction"]])[0], lisa_mask)


def test_compare_published_names_lisa_runs_as_the_published_lisa_row():
    from instructpart_metric.paper import PAPER_COLUMNS, format_paper_table, published_counterpart

    columns = dict.fromkeys(PAPER_COLUMNS, 0.1)
    assert published_counterpart("lisa:xinlai/LISA-7B-v1") == "LISA" and published_counterpart("out/pisa") is None
    text = format_paper_table({"lisa:out/lisa-7b-v1": columns, "out/pisa": columns}, published=True)
    linked = [line for line in text.splitlines() if "same system as the published" in line]
    assert len(linked) == 1 and linked[0].startswith("lisa:out/lisa-7b-v1 ") and "LISA row" in linked[0]
