"""The adapters: masks at each image's own size, batches equal to one-at-a-time runs, missing checkpoints refused
in one line, baselines against masks computed another way, the reason-then-ground answer parser."""

import glob
import math
import os
import shutil

import numpy as np
import pytest
import tiny_adapters as tiny
import torch
from PIL import Image, ImageDraw

from instructpart_dataset.synthetic import make_release
from pisa_model.adapters import load_adapter
from pisa_model.adapters.baselines import ellipse_mask, mean_relative_area
from pisa_model.adapters.reason_then_ground import (
    ReasonThenGroundAdapter,
    parse_part_phrase,
    phrase_for_segmenter,
    reasoning_scores,
)

ODD_SIZES = [(517, 333), (333, 517), (131, 97), (517, 333)]  # (width, height); the last repeats a size
INSTRUCTIONS = [
    "If I want to pour water, which part of the kettle should I use?",
    "lid of the trash can",
    "Where is the stem of the wine glass in this image?",
    "armrest",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny.save_tiny_checkpoints(str(tmp_path_factory.mktemp("tiny-checkpoints")))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ODD_SIZES]


@pytest.fixture(scope="module")
def adapters(checkpoints):
    built = {name: load_adapter(spec) for name, spec in tiny.tiny_specs(checkpoints).items()}
    built["centre-ellipse"] = load_adapter("centre-ellipse", relative_area=0.2)
    return built


ADAPTERS = ["full-image", "centre-ellipse", "clipseg", "grounded-sam", "sam3", "reason-then-ground", "pisa"]


@pytest.mark.parametrize("name", ADAPTERS)
def test_masks_are_bool_at_each_images_own_size_and_batches_match_single_runs(adapters, images, name):
    adapter = adapters[name]
    batch = adapter.predict(images, INSTRUCTIONS)
    assert [mask.shape for mask in batch] == [(h, w) for w, h in ODD_SIZES]
    assert all(mask.dtype == bool for mask in batch)
    singles = [adapter.predict([image], [text])[0] for image, text in zip(images, INSTRUCTIONS)]
    for index, (together, alone) in enumerate(zip(batch, singles)):
        assert np.array_equal(together, alone), f"{name}: image {index} differs between batch and single run"
    # Masks must depend on the model, not be constant: the random tiny models give partial masks.
    if name not in ("full-image", "centre-ellipse"):
        assert any(0 < mask.mean() < 1 for mask in batch), f"{name}: only empty or full masks"


@pytest.mark.parametrize("name", ADAPTERS)
def test_empty_batch(adapters, name):
    assert adapters[name].predict([], []) == []


def test_batch_and_instruction_counts_must_agree(adapters, images):
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        adapters["clipseg"].predict(images[:2], INSTRUCTIONS[:1])


# --- missing or unusable checkpoints: one line, naming the checkpoint -------------------------------------


def _missing_specs(c, missing):
    return [
        (f"clipseg:{missing}", missing),
        (f"grounded-sam:{missing},{c['sam']}", missing),
        (f"grounded-sam:{c['grounding_dino']},{missing}", missing),
        (f"sam3:{missing}", missing),
        (f"reason-then-ground:{missing},clipseg:{c['clipseg']}", missing),
        (f"reason-then-ground:{c['vlm']},clipseg:{missing}", missing),
        (f"pisa:{missing}", missing),
        (missing, missing),
    ]


def test_missing_checkpoints_are_refused_in_one_line(checkpoints, tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    for spec, named in _missing_specs(checkpoints, missing):
        with pytest.raises((FileNotFoundError, ValueError)) as caught:
            load_adapter(spec)
        message = str(caught.value)
        assert named in message and "\n" not in message, (spec, message)


def test_a_folder_that_is_not_a_checkpoint_is_refused_in_one_line(checkpoints, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for spec in (f"clipseg:{empty}", f"sam3:{empty}", f"grounded-sam:{empty},{checkpoints['sam']}", str(empty)):
        with pytest.raises(ValueError) as caught:
            load_adapter(spec)
        assert str(empty) in str(caught.value) and "\n" not in str(caught.value), spec


@pytest.mark.parametrize(
    "spec, options, message",
    [
        ("nonsense", {}, "unknown model 'nonsense'"),
        ("clipseg", {}, "clipseg needs a checkpoint"),
        ("grounded-sam:only-one", {}, "two checkpoints separated by a comma"),
        ("reason-then-ground:vlm-only", {}, "a VLM checkpoint and a segmenter spec"),
        ("full-image", {"threshold": 0.3}, "full-image has no option 'threshold'"),
        ("full-image:ckpt", {}, "full-image takes no checkpoint"),
        ("centre-ellipse", {}, "centre-ellipse needs the train split"),
        ("centre-ellipse", {"relative_area": 1.5}, "relative_area must be in"),
    ],
)
def test_bad_specs_and_options(spec, options, message):
    with pytest.raises(ValueError, match=message):
        load_adapter(spec, **options)


# --- thresholds and selections, against the model's raw outputs ---------------------------------------------


def test_clipseg_threshold_bounds(checkpoints, images):
    spec = f"clipseg:{checkpoints['clipseg']}"
    # sigmoid is in (0, 1): every pixel is above 0 and none above 1.
    assert all(m.all() for m in load_adapter(spec, threshold=0.0).predict(images, INSTRUCTIONS))
    assert not any(m.any() for m in load_adapter(spec, threshold=1.0).predict(images, INSTRUCTIONS))


def test_grounded_sam_box_is_the_libraries_top_scoring_box(adapters, images):
    """`boxes` against transformers' own Grounding DINO post-processing with no threshold, one image at a time."""
    adapter = adapters["grounded-sam"]
    ours = adapter.boxes(images, INSTRUCTIONS)
    processor = adapter.detector_processor
    for image, text, (box, score) in zip(images, INSTRUCTIONS, ours):
        inputs = processor(images=image, text=text.lower() + ("" if text.endswith(".") else "."), return_tensors="pt")
        with torch.inference_mode():
            outputs = adapter.detector(**inputs)
        result = processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(image.height, image.width)]
        )[0]
        top = int(result["scores"].argmax())
        expected = result["boxes"][top].clamp(min=0).tolist()
        expected = [
            min(expected[0], image.width),
            min(expected[1], image.height),
            min(expected[2], image.width),
            min(expected[3], image.height),
        ]
        assert score == pytest.approx(float(result["scores"][top]), abs=1e-5)
        assert box == pytest.approx(expected, abs=1e-3)


def _sam3_query_masks(adapter, image, text):
    """Per-query bool masks at the image's size and per-query scores, by a plain loop over queries."""
    pixel_values = adapter.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    tokens = adapter.tokenizer([text], padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        out = adapter.model(
            pixel_values=pixel_values, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
    presence = 1 / (1 + math.exp(-float(out.presence_logits[0, 0])))
    masks, scores = [], []
    for query in range(out.pred_masks.shape[1]):
        probability = out.pred_masks[0, query].sigmoid()[None, None]
        resized = torch.nn.functional.interpolate(probability, size=(image.height, image.width), mode="bilinear")
        masks.append(resized[0, 0].numpy() > 0.5)
        scores.append(1 / (1 + math.exp(-float(out.pred_logits[0, query]))) * presence)
    return masks, scores


def test_sam3_union_of_counted_queries_else_best(checkpoints, images):
    spec = f"sam3:{checkpoints['sam3']}"
    everything, nothing = load_adapter(spec, threshold=0.0), load_adapter(spec, threshold=1.0)
    for image, text in zip(images[:2], INSTRUCTIONS[:2]):
        masks, scores = _sam3_query_masks(everything, image, text)
        union = np.logical_or.reduce(masks)
        best = masks[int(np.argmax(scores))]
        assert np.array_equal(everything.predict([image], [text])[0], union)
        assert np.array_equal(nothing.predict([image], [text])[0], best)


# --- baselines -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(517, 333), (333, 517), (131, 97), (400, 400)])
@pytest.mark.parametrize("area", [0.02, 0.1426, 0.5])
def test_ellipse_area_by_pixel_count_matches_the_formula(width, height, area):
    mask = ellipse_mask(height, width, area)
    semi_x, semi_y = width * math.sqrt(area / math.pi), height * math.sqrt(area / math.pi)
    perimeter = math.pi * (3 * (semi_x + semi_y) - math.sqrt((3 * semi_x + semi_y) * (semi_x + 3 * semi_y)))
    # The pixel grid moves the count by at most about one pixel per unit of boundary length.
    assert abs(int(mask.sum()) - area * width * height) <= perimeter
    # Centred: symmetric under both flips (pixel centres are symmetric about the image centre).
    assert np.array_equal(mask, mask[::-1]) and np.array_equal(mask, mask[:, ::-1])


def test_ellipse_matches_pil_drawing_of_the_same_ellipse():
    width, height, area = 517, 333, 0.1426
    scale = math.sqrt(area / math.pi)
    box = (
        width / 2 - width * scale,
        height / 2 - height * scale,
        width / 2 + width * scale,
        height / 2 + height * scale,
    )
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).ellipse(box, fill=1)
    drawn, ours = np.asarray(canvas, dtype=bool), ellipse_mask(height, width, area)
    assert np.logical_and(drawn, ours).sum() / np.logical_or(drawn, ours).sum() > 0.97


def test_ellipse_edge_cases():
    assert not ellipse_mask(10, 20, 0.0).any()
    full = ellipse_mask(100, 60, 1.0)  # larger than the inscribed ellipse (pi / 4): clipped by the border
    assert full[50].all() and full[:, 30].all() and not full[0, 0]
    assert math.pi / 4 * 6000 <= full.sum() < 6000


def test_centre_ellipse_area_is_the_mean_relative_area_of_the_train_masks(release_dir):
    masks = [
        np.asarray(Image.open(p)) > 0
        for p in sorted(glob.glob(os.path.join(release_dir, "train", "train1800", "masks", "*.png")))
    ]
    expected = float(np.mean([m.sum() / m.size for m in masks]))
    assert len(masks) == 18
    assert load_adapter("centre-ellipse", data_dir=release_dir).relative_area == pytest.approx(expected, rel=1e-12)
    assert load_adapter("centre-ellipse", train_masks=masks).relative_area == pytest.approx(expected, rel=1e-12)
    assert mean_relative_area([np.ones((2, 2)), np.zeros((3, 5))]) == 0.5


def test_centre_ellipse_without_a_train_split_says_how_to_proceed(tmp_path):
    root = make_release(str(tmp_path / "r"), seed=3, num_train=2, num_test=2)
    shutil.rmtree(os.path.join(root, "train"))
    shutil.rmtree(os.path.join(root, "all"))
    with pytest.raises(ValueError, match="relative_area=FRACTION") as caught:
        load_adapter("centre-ellipse", data_dir=root)
    assert "\n" not in str(caught.value)


# --- reason-then-ground: the answer parser and the reasoning score ---------------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("handle of the kettle", ("handle", "kettle")),
        ("The Handle of the Kettle.", ("handle", "kettle")),
        ("HANDLE OF THE KETTLE", ("handle", "kettle")),
        ("You should hold the handle of the kettle in the image.", ("handle", "kettle")),
        ("Answer: the foot pedal of the trash can, which you step on.", ("foot pedal", "trash can")),
        ('"stem of the wine glass"', ("stem", "wine glass")),
        ("**Couch cushion** of the sofa", ("couch cushion", "sofa")),
        ("couch_cushion of the sofa", ("couch cushion", "sofa")),
        ("stem of wine glass", ("stem", "wine glass")),
        ("Which part of the kettle? The lid of the kettle.", ("lid", "kettle")),
        ("It is one of the handles of this kettle", ("handles", "kettle")),
        ("the lid of the kettle can be lifted", ("lid", "kettle")),
        ("the lid of the watering can", ("lid", "watering can")),
        ("I think the part you need is:\nthe armrest of the sofa", ("armrest", "sofa")),
    ],
)
def test_parse_part_phrase(answer, expected):
    assert parse_part_phrase(answer) == expected


@pytest.mark.parametrize(
    "answer", ["", "   ", "The lid.", "I am not sure.", "of the kettle", "the part of the kettle", "handle of the ."]
)
def test_parse_part_phrase_without_a_usable_phrase(answer):
    assert parse_part_phrase(answer) is None


def test_phrase_for_segmenter_falls_back_to_the_answer_then_the_instruction():
    assert phrase_for_segmenter("The HANDLE of the kettle!", "pour?") == ("handle of the kettle", ("handle", "kettle"))
    assert phrase_for_segmenter("\n  The lid.\nMore text", "pour?") == ("The lid.", None)
    assert phrase_for_segmenter(" ?! \n", "Which part would I use to pour water?") == (
        "Which part would I use to pour water?",
        None,
    )


def test_reasoning_scores_by_hand():
    records = [
        {
            "instruction_type": "human",
            "part": "handle",
            "object": "kettle",
            "answer_part": "handle",
            "answer_object": "kettle",
        },
        {
            "instruction_type": "human",
            "part": "lid",
            "object": "kettle",
            "answer_part": "handle",
            "answer_object": "kettle",
        },
        {
            "instruction_type": "gpt4",
            "part": "foot pedal",
            "object": "trash can",
            "answer_part": "Foot  pedal",
            "answer_object": "bin",
        },
        {
            "instruction_type": "gpt4",
            "part": "couch_cushion",
            "object": "sofa",
            "answer_part": None,
            "answer_object": None,
        },
    ]
    scores = reasoning_scores(records)
    assert scores["all"] == {"samples": 4, "parsed": 0.75, "part": 0.5, "object": 0.5, "part_and_object": 0.25}
    assert scores["human"] == {"samples": 2, "parsed": 1.0, "part": 0.5, "object": 1.0, "part_and_object": 0.5}
    assert scores["gpt4"] == {"samples": 2, "parsed": 0.5, "part": 0.5, "object": 0.0, "part_and_object": 0.0}


def test_reason_then_ground_sends_the_parsed_phrase_to_the_segmenter(adapters, images):
    seen = []

    class Recorder(type(adapters["full-image"])):
        def predict(self, images, instructions):
            seen.extend(instructions)
            return super().predict(images, instructions)

    answers = ["Use the HANDLE of the kettle.", "no idea", "", "armrest of the sofa"]
    adapter = ReasonThenGroundAdapter(lambda images, instructions: list(answers), Recorder())
    masks, extras = adapter.predict_with_extras(images, INSTRUCTIONS)
    assert seen == ["handle of the kettle", "no idea", INSTRUCTIONS[2], "armrest of the sofa"]
    assert [e["answer_part"] for e in extras] == ["handle", None, None, "armrest"]
    assert [e["phrase"] for e in extras] == seen
    assert all(m.all() for m in masks)


def test_reason_then_ground_with_a_real_vlm_keeps_its_answers(adapters, images):
    masks, extras = adapters["reason-then-ground"].predict_with_extras(images, INSTRUCTIONS)
    assert len(masks) == len(extras) == len(images)
    for record in extras:
        assert isinstance(record["answer"], str) and record["phrase"]
        assert "box" in record  # the segmenter's own extras ride along
