"""The script-free Hub export: Parquet + card, loaded back exactly as users load it."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from instructpart_dataset import load_instructpart
from instructpart_dataset.export import export_release


@pytest.fixture(scope="module")
def exported(release_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("hub") / "instructpart"
    counts = export_release(release_dir, str(output))
    return str(output), counts


def _card_yaml(folder):
    with open(os.path.join(folder, "README.md")) as f:
        text = f.read()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_layout_and_card_metadata(exported, release_dir):
    folder, counts = exported
    num_test = len(os.listdir(os.path.join(release_dir, "test", "masks")))
    num_train = len(os.listdir(os.path.join(release_dir, "train", "train1800", "masks")))
    assert counts == {
        "trps": {"test": 2 * num_test, "train": 2 * num_train},
        "orps": {"test": 4 * num_test, "train": 4 * num_train},
    }
    assert sorted(os.listdir(folder)) == ["README.md", "orps", "trps"]
    assert sorted(os.listdir(os.path.join(folder, "trps"))) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    meta, text = _card_yaml(folder)
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["trps"].get("default") is True and "default" not in configs["orps"]
    assert {f["split"]: f["path"] for f in configs["orps"]["data_files"]} == {
        "test": "orps/test-*",
        "train": "orps/train-*",
    }
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in infos["orps"]["splits"]} == counts["orps"]
    # The release grants no licence: the card claims none and says whom to ask.
    assert meta["license"] == "unknown" and meta["task_categories"] == ["image-segmentation"]
    assert "no licence file" in text and "Flickr" in text and "zifuwan.github.io/InstructPart" in text
    assert "MIT, as stated" not in text
    assert "[More Information Needed]" not in text
    assert "@inproceedings{wan2025instructpart" in text


def test_card_sizes_describe_the_files_as_written(exported):
    """download_size: the Parquet bytes on disk; num_bytes and dataset_size: the Arrow data once loaded."""
    import datasets

    folder, _ = exported
    infos = {i["config_name"]: i for i in _card_yaml(folder)[0]["dataset_info"]}
    for config in ("trps", "orps"):
        on_disk = sum(entry.stat().st_size for entry in os.scandir(os.path.join(folder, config)))
        assert infos[config]["download_size"] == on_disk
        loaded = {
            s["name"]: datasets.load_dataset(folder, config, split=s["name"]).data.nbytes
            for s in infos[config]["splits"]
        }
        assert {s["name"]: s["num_bytes"] for s in infos[config]["splits"]} == loaded
        assert infos[config]["dataset_size"] == sum(loaded.values())
    # orps stores each entry's image in four rows; Parquet keeps one copy a row group, Arrow all four
    assert infos["orps"]["download_size"] < infos["orps"]["dataset_size"] / 2


def test_rows_equal_the_release_rows(exported, release_dir):
    folder, _ = exported
    for config in ("trps", "orps"):
        for split in ("test", "train"):
            from_release = load_instructpart(release_dir, config, split)
            from_export = load_instructpart(folder, config, split)
            assert len(from_export) == len(from_release)
            for a, b in zip(from_release, from_export):
                assert {k: v for k, v in a.items() if k not in ("image", "mask")} == {
                    k: v for k, v in b.items() if k not in ("image", "mask")
                }
                np.testing.assert_array_equal(a["mask"], b["mask"])
                assert a["image"].size == b["image"].size


def test_image_bytes_are_stored_unchanged(exported, release_dir):
    import pyarrow.parquet as pq

    folder, _ = exported
    table = pq.read_table(os.path.join(folder, "trps", "test-00000-of-00001.parquet"), columns=["id", "image", "mask"])
    for sid, image, mask in zip(table["id"].to_pylist(), table["image"].to_pylist(), table["mask"].to_pylist()):
        with open(os.path.join(release_dir, "test", "images", sid + ".jpg"), "rb") as f:
            assert image["bytes"] == f.read()
        stored = Image.open(__import__("io").BytesIO(mask["bytes"]))
        assert stored.mode == "1"
        png = np.array(Image.open(os.path.join(release_dir, "test", "masks", sid + ".png")))
        np.testing.assert_array_equal(np.asarray(stored), png == 1)


def test_load_dataset_by_folder_name_offline(exported):
    """The user's call against the Hub repo, `load_dataset("instructpart", "trps")`, in a fresh process."""
    folder, counts = exported
    code = (
        "import datasets, numpy as np\n"
        "d = datasets.load_dataset('instructpart', 'trps')\n"
        "o = datasets.load_dataset('instructpart', 'orps', split='test')\n"
        "m = d['test'].with_format('numpy', columns=['mask'], output_all_columns=True)[0]['mask']\n"
        "print(len(d['test']), len(d['train']), len(o), m.dtype, m.ndim)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=os.path.dirname(folder), env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-5:] == [
        str(counts["trps"]["test"]),
        str(counts["trps"]["train"]),
        str(counts["orps"]["test"]),
        "bool",
        "2",
    ]


def test_export_refuses_to_overwrite_without_flag(exported, release_dir):
    folder, _ = exported
    with pytest.raises(FileExistsError, match="already exists"):
        export_release(release_dir, folder)


def test_shards_split_by_size(release_dir, tmp_path):
    output = tmp_path / "sharded"
    export_release(release_dir, str(output), max_shard_bytes=20_000)
    shards = sorted(os.listdir(output / "orps"))
    test_shards = [s for s in shards if s.startswith("test-")]
    assert len(test_shards) > 1 and all(s.endswith(f"-of-{len(test_shards):05d}.parquet") for s in test_shards)
    assert len(load_instructpart(str(output), "orps", "test")) == len(load_instructpart(release_dir, "orps", "test"))
