"""On the real 60-entry sample (INSTRUCTPART_SAMPLE_DIR): the truth scores 1 everywhere, empty masks 0."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from instructpart_metric.cli import main

PERFECT = {"gIoU": 1.0, "cIoU": 1.0, "P@50:95": 1.0, "P@50": 1.0}
NOTHING = {"gIoU": 0.0, "cIoU": 0.0, "P@50:95": 0.0, "P@50": 0.0}


def score(capsys, predictions, data_dir, out):
    arguments = ["--predictions", str(predictions), "--data-dir", data_dir, "--json", str(out), "--num-workers", "1"]
    code = main(["score", *arguments])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    return {key: results["configs"]["trps"]["all"][key] for key in PERFECT}, results


@pytest.mark.slow
def test_truth_scores_one_and_empty_masks_score_zero(sample_dir, tmp_path, capsys):
    masks = os.path.join(sample_dir, "test", "masks")
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    for kind in ("human", "gpt4"):
        os.makedirs(perfect / kind)
        os.makedirs(empty / kind)
    names = sorted(os.listdir(masks))
    for name in names:
        for kind in ("human", "gpt4"):
            shutil.copy(os.path.join(masks, name), perfect / kind / name)
        with Image.open(os.path.join(masks, name)) as mask:
            assert np.asarray(mask).any()  # every released part has pixels, so empty predictions score 0
            Image.new("1", mask.size).save(empty / "human" / name)
        shutil.copy(empty / "human" / name, empty / "gpt4" / name)

    overall, results = score(capsys, perfect, sample_dir, tmp_path / "perfect.json")
    assert overall == PERFECT
    assert results["configs"]["trps"]["all"]["num_samples"] == 2 * len(names)
    assert score(capsys, empty, sample_dir, tmp_path / "empty.json")[0] == NOTHING
