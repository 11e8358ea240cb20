"""The loader on the 60 real entries of the released test split (INSTRUCTPART_SAMPLE_DIR)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from instructpart_dataset import load_instructpart


@pytest.mark.slow
def test_real_sample_rows_masks_and_sizes(sample_dir):
    with open(os.path.join(sample_dir, "test", "data_test.json")) as f:
        entries = sum(len(record["part_list"]) for record in json.load(f))
    assert entries == 60
    trps = load_instructpart(sample_dir, "trps", "test")
    orps = load_instructpart(sample_dir, "orps", "test")
    assert (len(trps), len(orps)) == (120, 240)
    assert sorted(set(trps["instruction_type"])) == ["gpt4", "human"]
    for row in trps:
        png = np.array(Image.open(os.path.join(sample_dir, "test", "masks", row["id"] + ".png")))
        np.testing.assert_array_equal(row["mask"], png > 0)
        assert row["image"].size == (png.shape[1], png.shape[0])
    for row in orps.select_columns(["id", "mask"]):
        png = np.array(Image.open(os.path.join(sample_dir, "test", "masks", row["id"] + ".png")))
        np.testing.assert_array_equal(row["mask"], png > 0)
