"""What predict and the pipeline accept, and how: every PIL mode, numpy arrays, EXIF rotation, thin and empty
images, odd instructions. Expected images are built by hand with numpy, never by the conversion under test."""

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pisa_model.pipeline_pisa import PisaPartSegmentationPipeline
from pisa_model.processing_pisa import MAX_ASPECT_RATIO, as_rgb_image
from pisa_model.tiny import tiny_pisa

INSTRUCTION = "lid of the kettle"


@pytest.fixture(scope="module")
def tiny():
    return tiny_pisa(seed=0)


@pytest.fixture(scope="module")
def pipe(tiny):
    model, processor = tiny
    return PisaPartSegmentationPipeline(model=model, processor=processor)


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.uint8)


def _cases():
    """(name, image, expected (H, W, 3) uint8 array)."""
    rng = np.random.default_rng(0)
    h, w = 24, 32
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    wide = rng.integers(0, 65536, (h, w)).astype(np.uint16)
    bits = rng.integers(0, 2, (h, w)).astype(bool)
    unit = rng.random((h, w)).astype(np.float32)
    cases = [
        ("RGB", Image.fromarray(rgb), rgb),
        ("L", Image.fromarray(gray), _rgb(gray)),
        ("1", Image.fromarray(bits), _rgb(bits * 255)),
        ("RGBA", Image.fromarray(np.dstack([rgb, alpha])), rgb),
        ("LA", Image.fromarray(np.dstack([gray, alpha])), _rgb(gray)),
        # 16 bits: v * 255 / 65535, rounded (PIL's own conversion clips everything above 255 to white).
        ("I;16", Image.fromarray(wide), _rgb(np.rint(wide / 257.0))),
        ("I;16B", Image.frombytes("I;16B", (w, h), wide.astype(">u2").tobytes()), _rgb(np.rint(wide / 257.0))),
        ("I 16-bit", Image.fromarray(wide.astype(np.int32)), _rgb(np.rint(wide / 257.0))),
        ("I 8-bit", Image.fromarray(gray.astype(np.int32)), _rgb(gray)),
        ("F 0-1", Image.fromarray(unit), _rgb(np.rint(unit * 255))),
        ("F 0-255", Image.fromarray(unit * 200 + 2), _rgb(np.rint(unit * 200 + 2))),
    ]
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indexed = Image.frombytes("P", (w, h), gray.tobytes())
    indexed.putpalette(palette.flatten().tolist())
    cases.append(("P", indexed, palette[gray]))
    return cases


@pytest.mark.parametrize("name,image,expected", _cases(), ids=[c[0] for c in _cases()])
def test_every_pil_mode_converts_like_a_hand_computed_rgb(name, image, expected):
    converted = as_rgb_image(image)
    assert converted.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(converted), expected)


def test_a_sixteen_bit_image_is_predicted_as_its_scaled_rgb_version(tiny, pipe, tmp_path):
    model, _ = tiny
    ramp = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (36, 1))  # full range: PIL would whiten 99%
    expected = model.predict([Image.fromarray(_rgb(np.rint(ramp / 257.0)), "RGB")], [INSTRUCTION])[0]
    np.testing.assert_array_equal(model.predict([Image.fromarray(ramp)], [INSTRUCTION])[0], expected)
    piped = np.asarray(pipe(Image.fromarray(ramp), instruction=INSTRUCTION)[0]["mask"]) > 0
    np.testing.assert_array_equal(piped, expected)
    Image.fromarray(ramp).save(tmp_path / "depth.png")  # a 16-bit PNG, by path
    piped = np.asarray(pipe(str(tmp_path / "depth.png"), instruction=INSTRUCTION)[0]["mask"]) > 0
    np.testing.assert_array_equal(piped, expected)
    with pytest.raises(ValueError, match=f"{tmp_path / 'missing.png'}: no such image file"):
        pipe(str(tmp_path / "missing.png"), instruction=INSTRUCTION)


@pytest.mark.parametrize(
    "image,message",
    [
        (Image.new("La", (20, 20)), "image 0: cannot convert a mode La image"),
        (Image.fromarray(np.full((4, 4), -5, np.int32), "I"), "neither 8-bit nor 16-bit"),
        (Image.fromarray(np.full((4, 4), np.nan, np.float32), "F"), "NaN"),
        (Image.fromarray(np.full((4, 4), 300.0, np.float32), "F"), "neither in 0-1 nor in 0-255"),
    ],
)
def test_unconvertible_images_are_refused_in_one_line(tiny, image, message):
    model, _ = tiny
    with pytest.raises(ValueError, match=message) as error:
        model.predict([image], [INSTRUCTION])
    assert "\n" not in str(error.value)


def _exif_rotated_png(pixels: np.ndarray, orientation: int) -> Image.Image:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    buffer.seek(0)
    return Image.open(buffer)


def test_exif_rotated_photos_are_read_upright_by_predict_and_the_pipeline(tiny, pipe):
    model, _ = tiny
    stored = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide, 30 high as stored
    photo = _exif_rotated_png(stored, orientation=6)  # "rotate 90 degrees clockwise to display"
    upright = Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1)), "RGB")  # 30 wide, 40 high
    expected = model.predict([upright], [INSTRUCTION])[0]
    assert expected.shape == (40, 30)
    np.testing.assert_array_equal(model.predict([photo], [INSTRUCTION])[0], expected)
    piped = np.asarray(pipe(_exif_rotated_png(stored, 6), instruction=INSTRUCTION)[0]["mask"]) > 0
    np.testing.assert_array_equal(piped, expected)


@pytest.mark.parametrize(
    "size,message",
    [
        ((0, 0), r"is empty \(0x0 pixels\)"),
        ((40, 0), r"is empty \(40x0 pixels\)"),
        ((1, 5000), r"is 1x5000 pixels: PISA takes aspect ratios up to 32:1"),
        ((MAX_ASPECT_RATIO * 7 + 1, 7), f"is {MAX_ASPECT_RATIO * 7 + 1}x7 pixels: PISA takes aspect ratios up to"),
    ],
)
def test_empty_and_thin_images_are_refused_up_front(tiny, pipe, size, message):
    model, _ = tiny
    # The second image is named, and refused before the first one is predicted.
    with pytest.raises(ValueError, match="^image 1 " + message):
        model.predict([Image.new("RGB", (32, 32)), Image.new("RGB", size)], [INSTRUCTION] * 2)
    with pytest.raises(ValueError, match="^image 0 " + message):
        pipe(Image.new("RGB", size), instruction=INSTRUCTION)


def test_the_thinnest_accepted_image_gives_a_mask_of_its_size(tiny, pipe):
    model, _ = tiny
    image = Image.new("RGB", (MAX_ASPECT_RATIO * 7, 7), (90, 40, 10))
    assert model.predict(image, INSTRUCTION)[0].shape == (7, MAX_ASPECT_RATIO * 7)
    assert pipe(image, instruction=INSTRUCTION)[0]["mask"].size == (MAX_ASPECT_RATIO * 7, 7)


def test_numpy_images_are_uint8_channels_last_and_nothing_else(tiny, pipe):
    model, _ = tiny
    pixels = np.random.default_rng(4).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    expected = model.predict([Image.fromarray(pixels)], [INSTRUCTION])[0]
    np.testing.assert_array_equal(model.predict([pixels], [INSTRUCTION])[0], expected)
    np.testing.assert_array_equal(np.asarray(pipe(pixels, instruction=INSTRUCTION)[0]["mask"]) > 0, expected)
    refused = [
        (pixels.astype(np.float32) / 255, "must be uint8 .* got float32 .*astype"),
        (np.zeros((3, 40, 3), np.uint8), r"\(3, 40, 3\) could be channels first or last"),
        (np.zeros((3, 30, 40), np.uint8), r"shape \(H, W, 3\), channels last; got \(3, 30, 40\)"),
        (np.zeros((30, 40), np.uint8), "channels last"),
        (np.zeros((30, 40, 4), np.uint8), "channels last"),
        (torch.zeros(30, 40, 3, dtype=torch.uint8), "expected a PIL image or a uint8 numpy array"),
    ]
    for image, message in refused:
        with pytest.raises(ValueError, match=message):
            model.predict([image], [INSTRUCTION])
        with pytest.raises(ValueError, match=message):
            pipe(image, instruction=INSTRUCTION)


def test_instructions_a_string_is_one_and_bad_text_is_refused(tiny):
    model, _ = tiny
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    expected = model.predict([image], [INSTRUCTION])[0]
    np.testing.assert_array_equal(model.predict(image, INSTRUCTION)[0], expected)
    np.testing.assert_array_equal(model.predict([image], INSTRUCTION)[0], expected)
    with pytest.raises(ValueError, match="got 2 images and 1 instructions"):
        model.predict([image, image], INSTRUCTION)  # not 17 one-character instructions
    with pytest.raises(ValueError, match="instruction 0 is not valid text .*lone surrogate"):
        model.predict([image], ["lid \ud800 of the kettle"])
    for reserved in ("where is [SEG]", "the <image> lid"):
        with pytest.raises(ValueError, match="reserved token"):
            model.predict([image], [reserved])


def test_an_instruction_longer_than_the_context_is_cut_with_a_warning_never_the_answer(tiny):
    model, processor = tiny
    image = Image.new("RGB", (40, 30), (20, 120, 10))
    words = ("lid handle spout kettle of the " * 80).split()  # 480 known words, one token each
    context = model.config.text_config.max_position_embeddings
    tokenizer = processor.tokenizer
    bare = processor(images=[image], text=["x"])["input_ids"].shape[1] - 1  # every token but the instruction's
    fits = context - bare
    assert 0 < fits < len(words)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an instruction that fits gives no warning
        expected = model.predict([image], [" ".join(words[:fits])])[0]
    with pytest.warns(UserWarning, match=f"instruction 0 is {len(words)} tokens long.*first {fits} tokens"):
        got = model.predict([image], [" ".join(words)])[0]
    np.testing.assert_array_equal(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = processor(images=[image], text=[" ".join(words)], max_length=context)
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == context and ids.count(processor.seg_token_id) == 1
    answer = tokenizer(processor.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ids[-len(answer) :] == answer


def test_pipeline_input_dict_without_image_and_threshold_as_a_logit(tiny, pipe):
    model, processor = tiny
    with pytest.raises(ValueError, match="needs an 'image' key .* got keys 'instruction'"):
        pipe({"instruction": INSTRUCTION})
    image = Image.new("RGB", (40, 30), (60, 60, 160))
    batch = processor(images=[image], text=[INSTRUCTION])
    with torch.no_grad():
        logits = model(**model.prepare_inputs(batch), logits_to_keep=1).pred_masks
    logits = processor.post_process_masks(logits, batch["original_sizes"], batch["reshaped_input_sizes"], None)[0]
    for threshold in (-0.5, 0.0, float(logits.median())):
        mask = np.asarray(pipe(image, instruction=INSTRUCTION, threshold=threshold)[0]["mask"]) > 0
        np.testing.assert_array_equal(mask, (logits > threshold).numpy())
