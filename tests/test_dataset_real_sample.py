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


@pytest.mark.slow
def test_real_sample_export_summary_and_card_sizes(sample_dir, tmp_path, capsys):
    """The exported real sample: same summary as the release, the card's sizes as measured on disk."""
    import yaml

    from instructpart_dataset.__main__ import main
    from instructpart_dataset.export import export_release

    output = tmp_path / "instructpart-real"
    export_release(sample_dir, str(output))
    with open(os.path.join(sample_dir, "test", "data_test.json")) as f:
        parts = [part for record in json.load(f) for part in record["part_list"]]
    objects, names = len({p["object"] for p in parts}), len({p["part"] for p in parts})
    expected = f"test: 60 entries (trps 120 rows, orps 240 rows); {objects} objects, {names} parts\n"
    for folder in (sample_dir, str(output)):
        assert main(["summary", "--data-dir", folder]) == 0
        assert capsys.readouterr().out == expected
    with open(output / "README.md") as f:
        infos = {i["config_name"]: i for i in yaml.safe_load(f.read().split("---\n")[1])["dataset_info"]}
    for config in ("trps", "orps"):
        on_disk = sum(entry.stat().st_size for entry in os.scandir(output / config))
        assert infos[config]["download_size"] == on_disk
    assert infos["orps"]["download_size"] < infos["orps"]["dataset_size"] / 3  # 4 rows share each image
