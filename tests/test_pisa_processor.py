"""PisaProcessor: prompt and labels, image geometry and its exact undoing, save/load round trip, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from instructpart_dataset.synthetic import render_object
from pisa_model import PisaProcessor
from pisa_model.processing_pisa import DEFAULT_ANSWER, DEFAULT_PROMPT_TEMPLATE
from pisa_model.tiny import tiny_processor


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def test_tokens_prompt_answer_and_labels(processor):
    image, masks = render_object("kettle", (90, 70), np.random.default_rng(0))
    out = processor(
        images=[image, image],
        text=["lid of the kettle", "If I want to pour water, which part?"],
        masks=[masks["lid"], masks["handle"]],
    )
    tokenizer = processor.tokenizer
    answer = tokenizer(DEFAULT_ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for row in range(2):
        n = int(out["attention_mask"][row].sum())
        ids, labels = out["input_ids"][row].tolist(), out["labels"][row].tolist()
        # <s> USER : <image> x4 (2x2 CLIP patches of 14 on a 28 px crop, CLS dropped) ...
        assert ids[:3] == [tokenizer.bos_token_id] + tokenizer("USER:", add_special_tokens=False)["input_ids"]
        assert ids.count(processor.image_token_id) == 4 and ids[3:7] == [processor.image_token_id] * 4
        assert ids[n - len(answer) : n] == answer and ids.count(processor.seg_token_id) == 1
        assert labels[: n - len(answer)] == [-100] * (n - len(answer)) and labels[n - len(answer) : n] == answer
        assert set(labels[n:]) <= {-100} and set(ids[n:]) <= {tokenizer.pad_token_id}
    decoded = tokenizer.decode(out["input_ids"][0][: int(out["attention_mask"][0].sum())])
    assert "lid of the kettle please output segmentation mask" in decoded.lower()


@pytest.mark.parametrize("size", [(333, 517), (517, 333), (64, 64), (9, 200)])
def test_geometry_resize_pad_and_its_undoing(processor, size):
    width, height = size
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8))
    yy, xx = np.mgrid[0:height, 0:width]
    mask = ((xx - 0.6 * width) / (0.3 * width)) ** 2 + ((yy - 0.4 * height) / (0.35 * height)) ** 2 <= 1
    out = processor(images=image, text="armrest", masks=[mask])
    side = processor.mask_input_size
    # Longest side to `side`, rounded half up, the other scaled alike (SAM's rule), padded bottom/right.
    scale = side / max(width, height)
    expected = (int(height * scale + 0.5), int(width * scale + 0.5))
    assert out["original_sizes"].tolist() == [[height, width]]
    assert out["reshaped_input_sizes"].tolist() == [list(expected)]
    assert out["mask_pixel_values"].shape == (1, 3, side, side)
    h, w = expected
    assert torch.all(out["mask_pixel_values"][0, :, h:, :] == 0) and torch.all(
        out["mask_pixel_values"][0, :, :, w:] == 0
    )
    assert out["mask_labels"][0, h:, :].sum() == 0 and out["mask_labels"][0, :, w:].sum() == 0
    # Feeding the padded-frame target back as logits recovers the mask at the original size.
    logits = (out["mask_labels"][:, None] * 2 - 1) * 10
    (back,) = processor.post_process_masks(logits, out["original_sizes"], out["reshaped_input_sizes"])
    assert back.shape == (height, width) and back.dtype == torch.bool
    back = back.numpy()
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > (0.9 if min(h, w) >= 8 else 0.5), iou


def test_post_process_places_a_known_pixel(processor):
    # A 200x100 image becomes 64x32 in the padded 64x64 frame; a low-res logit map lit only on the image's
    # right half must come back lit on the right half of the original image.
    image = Image.new("RGB", (100, 200))
    out = processor(images=image, text="armrest")
    low = torch.full((1, 1, 32, 32), -10.0)
    low[..., :, 8:16] = 10.0  # columns 32..63 of the 64-wide frame = x in [16, 32) of the 32-wide image
    (mask,) = processor.post_process_masks(low, out["original_sizes"], out["reshaped_input_sizes"])
    columns = mask.numpy().mean(axis=0)
    assert columns[:45].max() == 0 and columns[55:].min() == 1


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = PisaProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert loaded.prompt_template == DEFAULT_PROMPT_TEMPLATE and loaded.answer == DEFAULT_ANSWER
    assert (loaded.image_token_id, loaded.seg_token_id) == (processor.image_token_id, processor.seg_token_id)
    image, masks = render_object("trash can", (141, 99), np.random.default_rng(2))
    a = processor(images=[image], text=["foot pedal of the trash can"], masks=[masks["foot pedal"]])
    b = loaded(images=[image], text=["foot pedal of the trash can"], masks=[masks["foot pedal"]])
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bad_input_raises_one_line_errors(processor):
    image = Image.new("RGB", (40, 30))
    with pytest.raises(ValueError, match="2 images and 1 instructions"):
        processor(images=[image, image], text=["a"])
    with pytest.raises(ValueError, match="mask 0 has shape"):
        processor(images=[image], text=["a"], masks=[np.zeros((40, 30), bool)])
    with pytest.raises(ValueError, match="instruction 0 must be a non-empty string"):
        processor(images=[image], text=["  "])
    with pytest.raises(ValueError, match="reserved token"):
        processor(images=[image], text=["where is [SEG]"])
    with pytest.raises(ValueError, match="needs both"):
        processor(images=[image])
    with pytest.raises(ValueError, match="exactly once"):
        PisaProcessor(
            processor.image_processor,
            processor.mask_image_processor,
            processor.tokenizer,
            prompt_template="{instruction}",
        )
    with pytest.raises(ValueError, match="pred_masks must have shape"):
        processor.post_process_masks(torch.zeros(1, 32, 32), [[30, 40]], [[48, 64]])
