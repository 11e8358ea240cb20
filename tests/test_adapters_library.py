"""The adapters' documented defaults (threshold, resizing) against a direct, one-image-at-a-time call of the
library each one wraps, on tiny random checkpoints (README: "Each adapter documents its prompt, threshold and
resolution handling")."""

import numpy as np
import torch
from test_adapters import INSTRUCTIONS, checkpoints, images  # noqa: F401  (module fixtures)

from pisa_model.adapters import load_adapter
from pisa_model.adapters.grounded_sam import grounding_prompt


def test_clipseg_default_is_sigmoid_above_one_half_of_the_bilinear_upsampled_square(checkpoints, images):  # noqa: F811
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    adapter = load_adapter(f"clipseg:{checkpoints['clipseg']}")  # no threshold given: the documented 0.5
    model = CLIPSegForImageSegmentation.from_pretrained(checkpoints["clipseg"]).eval()
    processor = CLIPSegProcessor.from_pretrained(checkpoints["clipseg"])
    square = processor.image_processor.size
    for image, text in zip(images, INSTRUCTIONS):
        inputs = processor(text=[text], images=[image], return_tensors="pt")
        # "resizes each image to its fixed square without keeping the aspect ratio"
        assert tuple(inputs["pixel_values"].shape[-2:]) == (square["height"], square["width"])
        with torch.inference_mode():
            logits = model(**inputs).logits.reshape(1, 1, square["height"], square["width"])
        upsampled = torch.nn.functional.interpolate(
            logits.sigmoid(), size=(image.height, image.width), mode="bilinear", align_corners=False
        )[0, 0]
        expected = upsampled.numpy() > 0.5
        ours = adapter.predict([image], [text])[0]
        assert ours.shape == (image.height, image.width)
        assert np.array_equal(ours, expected)


def test_grounded_sam_mask_is_sams_own_post_processing_of_the_best_box(checkpoints, images):  # noqa: F811
    from transformers import SamModel, SamProcessor

    adapter = load_adapter(f"grounded-sam:{checkpoints['grounding_dino']},{checkpoints['sam']}")
    sam = SamModel.from_pretrained(checkpoints["sam"]).eval()
    processor = SamProcessor.from_pretrained(checkpoints["sam"])
    longest = processor.image_processor.size["longest_edge"]
    masks, extras = adapter.predict_with_extras(images, INSTRUCTIONS)
    for image, text, mask, extra in zip(images, INSTRUCTIONS, masks, extras):
        ((box, _),) = adapter.boxes([image], [text])
        assert extra["box"] == [round(v, 2) for v in box]
        inputs = processor(images=image, input_boxes=[[box]], return_tensors="pt")
        # "resizes the longest side to <longest_edge> and pads to a square", aspect kept
        resized = inputs["reshaped_input_sizes"][0].tolist()
        assert max(resized) == longest
        assert abs(resized[0] / resized[1] - image.height / image.width) < 0.02
        with torch.inference_mode():
            low_res = sam(
                pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
            ).pred_masks
        # SAM's own post-processing with its defaults: binarised at logit 0
        expected = processor.image_processor.post_process_masks(
            low_res, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][0, 0].numpy()
        assert mask.shape == (image.height, image.width) and np.array_equal(mask, expected)
    assert grounding_prompt("Where is the  Lid?") == "where is the lid?."
