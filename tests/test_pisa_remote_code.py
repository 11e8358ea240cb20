"""Saved checkpoints load where this package cannot be imported (trust_remote_code), and from_components."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from instructpart_dataset.toolbox.fresh_process import run_isolated
from pisa_model import PisaForPartSegmentation
from pisa_model.assembly import from_components
from pisa_model.tiny import save_tiny_components, tiny_pisa

# Runs under fresh_process.run_isolated: our packages are unimportable there, as for a user of the Hub repo.
FRESH_PROCESS = """
    import json, sys
    try:
        import pisa_model
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("pisa_model is importable")

    import numpy as np
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline

    folder, image_path, out_path = sys.argv[1:4]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image = Image.open(image_path)
    (mask,) = model.predict([image], ["lid of the kettle"], processor=processor)
    pipe = pipeline(model=folder, trust_remote_code=True)
    (result,) = pipe(image, instruction="lid of the kettle")
    np.save(out_path, mask)
    model.save_pretrained(out_path + ".resaved")  # remote code saves complete checkpoints too
    print(json.dumps({
        "model_class": type(model).__module__ + "." + type(model).__name__,
        "processor_class": type(processor).__module__ + "." + type(processor).__name__,
        "pipeline_class": type(pipe).__name__,
        "label": result["label"], "score": result["score"],
        "pipeline_mask": np.asarray(result["mask"]).tolist(), "mask_mode": result["mask"].mode,
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "pisa_model"),
    }))
"""


@pytest.mark.slow
def test_fresh_process_loads_model_processor_and_pipeline_without_the_package(tmp_path):
    model, _ = tiny_pisa(seed=0)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_pisa.PisaForPartSegmentation"
    assert set(config["custom_pipelines"]) == {"instruction-part-segmentation"}
    for name in ("configuration_pisa.py", "modeling_pisa.py", "processing_pisa.py", "pipeline_pisa.py"):
        assert (folder / name).is_file(), name

    rng = np.random.default_rng(4)
    image = Image.fromarray(rng.integers(0, 255, (333, 517, 3), dtype=np.uint8))  # odd size, W=517 H=333
    image.save(tmp_path / "image.png")
    work = tmp_path / "cwd"
    work.mkdir()
    report = run_isolated(
        FRESH_PROCESS,
        str(work),
        "remote-code load",
        args=[folder, tmp_path / "image.png", tmp_path / "mask.npy"],
        timeout=300,
    )
    assert report["loaded"] == []
    assert report["model_class"].startswith("transformers_modules.") and report["model_class"].endswith(
        ".PisaForPartSegmentation"
    )
    assert report["processor_class"].endswith("processing_pisa.PisaProcessor")
    assert report["pipeline_class"] == "PisaPartSegmentationPipeline"

    expected = model.predict([Image.open(tmp_path / "image.png")], ["lid of the kettle"])[0]
    assert np.array_equal(np.load(tmp_path / "mask.npy"), expected) and expected.shape == (333, 517)
    # The pipeline's output format: label, score in [0, 1], mask as a mode-L 0/255 image of the same pixels.
    assert report["label"] == "lid of the kettle" and 0.0 <= report["score"] <= 1.0 and report["mask_mode"] == "L"
    assert np.array_equal(np.asarray(report["pipeline_mask"]) > 0, expected)
    resaved = PisaForPartSegmentation.from_pretrained(str(tmp_path / "mask.npy") + ".resaved")
    assert np.array_equal(resaved.predict([Image.open(tmp_path / "image.png")], ["lid of the kettle"])[0], expected)


def test_from_components_copies_the_pretrained_parts(tmp_path):
    llava_path, dinov2_path, sam_path = save_tiny_components(str(tmp_path / "parts"))
    from transformers import Dinov2Model, LlavaForConditionalGeneration, SamModel

    model = from_components(llava_path, dinov2_path, sam_path, mask_input_size=64, lora_rank=0)
    processor = model.processor
    assert processor.tokenizer.convert_ids_to_tokens(model.config.seg_token_id) == "[SEG]"
    assert model.config.seg_token_id == processor.seg_token_id == len(processor.tokenizer) - 1

    llava = LlavaForConditionalGeneration.from_pretrained(llava_path)
    for name, tensor in llava.state_dict().items():
        ours = model.llava.state_dict()[name]
        if ours.shape != tensor.shape:  # the resized token embeddings / LM head keep the old rows
            assert ours.shape[0] == tensor.shape[0] + 1 and torch.equal(ours[: tensor.shape[0]], tensor), name
        else:
            assert torch.equal(ours, tensor), name
    dinov2 = Dinov2Model.from_pretrained(dinov2_path)
    ours = model.dinov2.state_dict()
    for name, tensor in dinov2.state_dict().items():
        if name in ours:
            assert torch.equal(ours[name], tensor), name
    assert not any(p.requires_grad for p in model.dinov2.parameters())
    sam = SamModel.from_pretrained(sam_path)
    for part in ("prompt_encoder", "mask_decoder"):
        theirs = getattr(sam, part).state_dict()
        for name, tensor in getattr(model, part).state_dict().items():
            assert torch.equal(tensor, theirs[name]), f"{part}.{name}"
    # The DINOv2 processor's normalisation is the one the mask branch uses.
    assert list(processor.mask_image_processor.image_mean) == pytest.approx([0.485, 0.456, 0.406])

    folder = tmp_path / "assembled"
    model.save_pretrained(folder)
    loaded = PisaForPartSegmentation.from_pretrained(folder)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    assert np.array_equal(loaded.predict([image], ["armrest"])[0], model.predict([image], ["armrest"])[0])


HOSTILE_MODULE = """
import pathlib
pathlib.Path({ran!r}).write_text("imported")  # transformers imports a copy in its modules cache: an absolute path
from transformers import {base}


class HostileProcessor({base}):
    pass
"""


def _plant_hostile_code(folder, filename, key_path, base):
    """Point one `auto_map` of a saved checkpoint's processor files at a module of the checkpoint's own."""
    ran = os.path.join(folder, "RAN")
    with open(os.path.join(folder, "hostile.py"), "w") as handle:
        handle.write(HOSTILE_MODULE.format(base=base, ran=ran))
    path = os.path.join(folder, filename)
    with open(path) as handle:
        data = json.load(handle)
    node = data
    for key in key_path:
        node = node[key]
    auto_class = "AutoTokenizer" if filename == "tokenizer_config.json" else "AutoImageProcessor"
    target = ["hostile.HostileProcessor", None] if auto_class == "AutoTokenizer" else "hostile.HostileProcessor"
    node["auto_map"] = {auto_class: target}
    with open(path, "w") as handle:
        json.dump(data, handle)
    return ran


@pytest.mark.parametrize(
    "filename,key_path,base,imported_with_consent",
    [
        ("processor_config.json", ("image_processor",), "CLIPImageProcessorPil", True),
        # Whether transformers imports the second image processor's own code once trusted changed in 5.25 (it
        # did not before): the contract checked here is the refusal without consent and a working load with it.
        ("processor_config.json", ("mask_image_processor",), "SamImageProcessorPil", None),
        ("tokenizer_config.json", (), "PreTrainedTokenizerFast", None),
    ],
)
def test_checkpoint_code_runs_only_with_the_users_consent(tmp_path, filename, key_path, base, imported_with_consent):
    model, _ = tiny_pisa(seed=0)
    model.save_pretrained(tmp_path)
    ran = _plant_hostile_code(str(tmp_path), filename, key_path, base)
    image = Image.new("RGB", (32, 24))

    # The processor loads with the model: the refusal comes at load time, before any prediction.
    with pytest.raises(ValueError) as error:
        PisaForPartSegmentation.from_pretrained(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert os.path.join(str(tmp_path), filename) in message and "hostile.HostileProcessor" in message
    assert "trust_remote_code=True" in message
    assert not os.path.exists(ran)

    # The processor loaded on its own refuses the same way; with consent the checkpoint's module is imported.
    from pisa_model import PisaProcessor

    with pytest.raises(ValueError, match="asks to run its own code"):
        PisaProcessor.from_pretrained(tmp_path)
    assert not os.path.exists(ran)
    if filename != "tokenizer_config.json":  # (the hostile tokenizer class is no tokenizer the processor accepts)
        trusted = PisaForPartSegmentation.from_pretrained(tmp_path, trust_remote_code=True)
        assert trusted.predict([image], ["where is the handle?"])[0].shape == (24, 32)
        if imported_with_consent:
            assert os.path.exists(ran)


def test_checkpoint_saved_by_this_package_loads_without_trust_remote_code(tmp_path):
    model, _ = tiny_pisa(seed=0)
    model.save_pretrained(tmp_path)
    image = Image.new("RGB", (40, 30), (120, 30, 200))
    expected = model.predict([image], ["where is the handle?"])[0]
    loaded = PisaForPartSegmentation.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.predict([image], ["where is the handle?"])[0], expected)
