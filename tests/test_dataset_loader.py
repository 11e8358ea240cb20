"""load_instructpart on a generated release: rows, columns, dtypes, masks, instruction mapping, subsets."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from instructpart_dataset import load_instructpart, sample_id
from instructpart_dataset.synthetic import make_release

EXPECTED_COLUMNS = [
    "id",
    "image",
    "mask",
    "object",
    "part",
    "affordance",
    "action",
    "instruction",
    "instruction_type",
    "train_subset",
]


def _entries(folder, name):
    """(id, part dict) pairs straight from a release json, without the package's reader."""
    with open(os.path.join(folder, f"data_{name}.json")) as f:
        records = json.load(f)
    return [
        (f"{r['image_path'][:-4]}-{p['object'].replace(' ', '_')}-{p['part'].replace(' ', '_')}", p)
        for r in records
        for p in r["part_list"]
    ]


def test_sample_id_replaces_spaces():
    assert sample_id("45514228_f89388bda9_o.jpg", "wine glass", "couch cushion") == (
        "45514228_f89388bda9_o-wine_glass-couch_cushion"
    )


@pytest.mark.parametrize("config, variants", [("trps", (0, 1)), ("orps", (2, 3, 4, 5))])
def test_test_split_rows_match_the_release_json(release_dir, config, variants):
    entries = _entries(os.path.join(release_dir, "test"), "test")
    dataset = load_instructpart(release_dir, config, "test")
    assert dataset.column_names == EXPECTED_COLUMNS
    assert len(dataset) == len(entries) * len(variants)
    types = {
        0: "human",
        1: "gpt4",
        2: "part_question",
        3: "part_affordance_question",
        4: "part_name",
        5: "part_affordance_name",
    }
    expected = {(sid, types[v]): p["instruction"][v] for sid, p in entries for v in variants}
    got = {
        (row["id"], row["instruction_type"]): row["instruction"]
        for row in dataset.select_columns(["id", "instruction_type", "instruction"])
    }
    assert got == expected
    meta = {sid: (p["object"], p["part"], p["affordance"], p["action"]) for sid, p in entries}
    for row in dataset.select_columns(["id", "object", "part", "affordance", "action", "train_subset"]):
        assert (row["object"], row["part"], row["affordance"], row["action"]) == meta[row["id"]]
        assert row["train_subset"] is None


def test_masks_are_bool_arrays_equal_to_the_pngs(release_dir):
    dataset = load_instructpart(release_dir, "trps", "test")
    assert any(" " in row["object"] or " " in row["part"] for row in dataset.select_columns(["object", "part"]))
    for row in dataset:
        png = np.array(Image.open(os.path.join(release_dir, "test", "masks", row["id"] + ".png")))
        assert row["mask"].dtype == np.bool_ and row["mask"].ndim == 2
        np.testing.assert_array_equal(row["mask"], png == 1)
        assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB"
        assert row["image"].size == (png.shape[1], png.shape[0])


def test_an_image_with_two_parts_gives_two_distinct_masks(release_dir):
    dataset = load_instructpart(release_dir, "trps", "test").filter(
        lambda t: t == "human", input_columns="instruction_type"
    )
    by_image = {}
    for row in dataset:
        by_image.setdefault(row["id"].split("-")[0], []).append(row["mask"])
    pairs = [masks for masks in by_image.values() if len(masks) == 2]
    assert pairs, "the fixture must hold an image with two annotated parts"
    for first, second in pairs:
        assert first.any() and second.any() and not (first & second).any()


def test_torch_and_pil_mask_formats(release_dir):
    torch = pytest.importorskip("torch")
    row = load_instructpart(release_dir, "trps", "test", mask_format="torch")[0]
    reference = load_instructpart(release_dir, "trps", "test")[0]["mask"]
    assert row["mask"].dtype == torch.bool and tuple(row["mask"].shape) == reference.shape
    assert np.array_equal(row["mask"].numpy(), reference)
    pil = load_instructpart(release_dir, "trps", "test", mask_format="pil")[0]["mask"]
    assert pil.mode == "1" and np.array_equal(np.asarray(pil), reference)


@pytest.mark.parametrize("subset", [200, 600, 1200, 1800])
def test_nested_train_subsets_select_exactly_their_folder(release_dir, subset):
    ids = {sid for sid, _ in _entries(os.path.join(release_dir, "train", f"train{subset}"), f"train{subset}")}
    dataset = load_instructpart(release_dir, "trps", f"train{subset}")
    assert sorted(set(dataset["id"])) == sorted(ids)
    assert len(dataset) == 2 * len(ids)


def test_train_rows_carry_their_smallest_subset(release_dir):
    smallest = {}
    for n in (1800, 1200, 600, 200):  # later (smaller) folders overwrite
        for sid, _ in _entries(os.path.join(release_dir, "train", f"train{n}"), f"train{n}"):
            smallest[sid] = n
    dataset = load_instructpart(release_dir, "orps", "train")
    assert len(dataset) == 4 * len(smallest)
    for row in dataset.select_columns(["id", "train_subset"]):
        assert row["train_subset"] == smallest[row["id"]]


def test_part_list_with_two_parts_in_one_entry(tmp_path):
    root = make_release(str(tmp_path / "grouped"), seed=3, num_train=2, num_test=6, group_parts=True, with_all=False)
    with open(os.path.join(root, "test", "data_test.json")) as f:
        assert any(len(record["part_list"]) == 2 for record in json.load(f))
    entries = _entries(os.path.join(root, "test"), "test")
    dataset = load_instructpart(root, "trps", "test")
    assert sorted(set(dataset["id"])) == sorted(sid for sid, _ in entries)


def test_all_folder_agreement_gives_no_warning_and_disagreement_is_reported(tmp_path, caplog):
    from instructpart_dataset import scan_release

    root = make_release(str(tmp_path / "r"), seed=5, num_train=4, num_test=3)
    assert scan_release(root).warnings == []
    path = os.path.join(root, "all", "data_all.json")
    with open(path) as f:
        records = json.load(f)
    records[0]["part_list"][0]["affordance"] = "changed"
    with open(path, "w") as f:
        json.dump(records[1:] + [records[0]], f)
    warnings = scan_release(root).warnings
    assert len(warnings) == 1 and "annotated differently in all/" in warnings[0] and "data_all.json" in warnings[0]
    with open(path, "w") as f:
        json.dump(records[1:], f)
    warnings = scan_release(root).warnings
    assert any("absent from all/" in message for message in warnings)


def test_cache_follows_changes_to_the_release(tmp_path):
    root = make_release(str(tmp_path / "r"), seed=6, num_train=2, num_test=2, with_all=False)
    first = load_instructpart(root, "trps", "test")
    path = os.path.join(root, "test", "data_test.json")
    with open(path) as f:
        records = json.load(f)
    records[0]["part_list"][0]["instruction"][0] = "A brand new instruction?"
    with open(path, "w") as f:
        json.dump(records, f)
    second = load_instructpart(root, "trps", "test")
    assert "A brand new instruction?" in second["instruction"]
    assert "A brand new instruction?" not in first["instruction"]
