"""Every bad release gives one line naming the file or entry, through the loader, the export and the CLI."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from instructpart_dataset import ReleaseError, load_instructpart
from instructpart_dataset.export import export_release
from instructpart_dataset.synthetic import make_release


@pytest.fixture
def release(tmp_path):
    return make_release(str(tmp_path / "release"), seed=11, num_train=2, num_test=3, with_all=False)


def _json_path(root):
    return os.path.join(root, "test", "data_test.json")


def _first_id(root):
    return sorted(os.listdir(os.path.join(root, "test", "masks")))[0][: -len(".png")]


def _rewrite_json(root, change):
    with open(_json_path(root)) as f:
        records = json.load(f)
    with open(_json_path(root), "w") as f:
        json.dump(change(records), f)


def _expect_error(root, *fragments, config="trps", split="test"):
    with pytest.raises(ValueError) as info:
        load_instructpart(root, config, split)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_image(release):
    sid = _first_id(release)
    os.remove(os.path.join(release, "test", "images", sid + ".jpg"))
    _expect_error(release, f"images/{sid}.jpg", "missing")


def test_missing_mask(release):
    sid = _first_id(release)
    os.remove(os.path.join(release, "test", "masks", sid + ".png"))
    _expect_error(release, f"masks/{sid}.png", "missing")


def test_mask_of_another_size(release):
    sid = _first_id(release)
    path = os.path.join(release, "test", "masks", sid + ".png")
    mask = Image.open(path)
    mask.resize((mask.width + 1, mask.height)).save(path)
    _expect_error(release, f"masks/{sid}.png", "differs from image size")


def test_mask_values_other_than_binary(release):
    sid = _first_id(release)
    path = os.path.join(release, "test", "masks", sid + ".png")
    values = np.array(Image.open(path))
    values[0, 0] = 2
    Image.fromarray(values).save(path)
    _expect_error(release, f"masks/{sid}.png", "{0,1} or {0,255}", "[2]")
    values[values == 1] = 255
    values[0, 0] = 1  # 0, 1 and 255 mixed
    Image.fromarray(values).save(path)
    _expect_error(release, f"masks/{sid}.png", "[1]")


def test_masks_in_0_255_equal_masks_in_0_1(release):
    sid = _first_id(release)
    path = os.path.join(release, "test", "masks", sid + ".png")
    values = np.array(Image.open(path))
    Image.fromarray((values * 255).astype(np.uint8)).save(path)
    row = next(r for r in load_instructpart(release, "trps", "test") if r["id"] == sid)
    np.testing.assert_array_equal(row["mask"], values == 1)


@pytest.mark.parametrize("kind", ["images", "masks"])
def test_truncated_file(release, kind):
    sid = _first_id(release)
    path = os.path.join(release, "test", kind, sid + (".jpg" if kind == "images" else ".png"))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    _expect_error(release, f"{kind}/{sid}", "corrupt")


def test_json_not_a_list(release):
    _rewrite_json(release, lambda records: {"entries": records})
    _expect_error(release, "data_test.json", "expected a JSON list")


def test_malformed_json(release):
    with open(_json_path(release), "a") as f:
        f.write("]]")
    _expect_error(release, "data_test.json", "malformed JSON")


def test_entry_missing_a_field(release):
    def drop(records):
        del records[1]["part_list"][0]["affordance"]
        return records

    _rewrite_json(release, drop)
    _expect_error(release, "data_test.json", "entry 1", "'affordance'")


def test_instruction_list_not_of_length_six(release):
    def shorten(records):
        records[0]["part_list"][0]["instruction"] = records[0]["part_list"][0]["instruction"][:5]
        return records

    _rewrite_json(release, shorten)
    _expect_error(release, "data_test.json", "entry 0", "6 strings", "got 5")


def test_two_entries_with_the_same_id(release):
    _rewrite_json(release, lambda records: records + [records[0]])
    _expect_error(release, "data_test.json", "both map to id")


def test_folder_without_a_split(tmp_path):
    (tmp_path / "something").mkdir()
    _expect_error(str(tmp_path), "neither a release folder")
    with pytest.raises(ReleaseError, match="no recognisable split"):
        export_release(str(tmp_path), str(tmp_path / "out"))


def test_split_folder_without_its_json(release):
    os.remove(_json_path(release))
    _expect_error(release, "data_test.json", "missing")


def test_unknown_config_split_and_missing_split(release):
    _expect_error(release, "unknown config 'prts'", config="prts")
    _expect_error(release, "unknown split 'validation'", split="validation")
    root = make_release(release + "-test-only", seed=1, num_train=1, num_test=1, with_all=False)
    import shutil

    shutil.rmtree(os.path.join(root, "train"))
    _expect_error(root, "no 'train' split", "present: test", split="train600")


def test_exif_orientation_is_applied_to_the_image_and_the_mask_is_upright(release):
    """A JPEG stored 40x30 with Orientation 6 shows 30x40: rows give the upright image; masks are upright."""
    sid = _first_id(release)
    stored = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    image_path = os.path.join(release, "test", "images", sid + ".jpg")
    stored.save(image_path, exif=exif.tobytes(), quality=95)
    upright = ImageOps.exif_transpose(Image.open(image_path))
    assert upright.size == (30, 40)
    mask = np.zeros((40, 30), dtype=np.uint8)
    mask[5:20, 3:9] = 1
    Image.fromarray(mask).save(os.path.join(release, "test", "masks", sid + ".png"))
    row = next(r for r in load_instructpart(release, "trps", "test") if r["id"] == sid)
    assert row["image"].size == (30, 40)
    np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(upright))
    np.testing.assert_array_equal(row["mask"], mask == 1)
    # A mask drawn on the stored (sideways) grid is refused.
    Image.fromarray(np.zeros((30, 40), dtype=np.uint8)).save(os.path.join(release, "test", "masks", sid + ".png"))
    _expect_error(release, f"masks/{sid}.png", "mask size 40x30 differs from image size 30x40")


def test_failed_export_leaves_nothing_and_keeps_the_old_export(release, tmp_path):
    output = tmp_path / "exported"
    export_release(release, str(output))
    before = sorted(p.relative_to(output) for p in output.rglob("*"))
    sid = _first_id(release)
    with open(os.path.join(release, "test", "images", sid + ".jpg"), "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(ReleaseError, match=f"{sid}.jpg"):
        export_release(release, str(output), overwrite=True)
    assert sorted(p.relative_to(output) for p in output.rglob("*")) == before
    with pytest.raises(ReleaseError):
        export_release(release, str(tmp_path / "fresh"))
    assert sorted(os.listdir(tmp_path)) == ["exported", "release"]


def test_interrupted_export_leaves_no_folder(release, tmp_path, monkeypatch):
    import instructpart_dataset.export as export_module

    original, seen = export_module.read_sample_files, []

    def interrupting(sample):
        seen.append(sample.id)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return original(sample)

    monkeypatch.setattr(export_module, "read_sample_files", interrupting)
    with pytest.raises(KeyboardInterrupt):
        export_release(release, str(tmp_path / "out"))
    assert len(seen) >= 2
    assert sorted(os.listdir(tmp_path)) == ["release"]


def test_cli_prints_one_line_and_exits_2(release, tmp_path):
    sid = _first_id(release)
    os.remove(os.path.join(release, "test", "masks", sid + ".png"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "instructpart_dataset",
            "export",
            "--data-dir",
            release,
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m instructpart_dataset export: error: ")
    assert f"{sid}.png" in lines[0]
    assert not (tmp_path / "o").exists()


def test_non_rgb_image_rows_decode_to_rgb(release):
    sid = _first_id(release)
    path = os.path.join(release, "test", "images", sid + ".jpg")
    gray = Image.open(path).convert("L")
    buffer = io.BytesIO()
    gray.save(buffer, format="JPEG", quality=95)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    row = next(r for r in load_instructpart(release, "trps", "test") if r["id"] == sid)
    assert row["image"].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(row["image"])[..., 0], np.asarray(Image.open(path)))


def test_empty_annotation_file_is_an_error_naming_it(release, tmp_path):
    _rewrite_json(release, lambda records: [])
    _expect_error(release, _json_path(release), "no entries")
    with pytest.raises(ReleaseError, match="data_test.json: no entries"):
        export_release(release, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["release"]


def test_non_utf8_annotation_file_names_the_file_and_the_byte(release):
    with open(_json_path(release), "rb") as f:
        data = f.read()
    with open(_json_path(release), "wb") as f:
        f.write(data.replace(b'"image_path": "', b'"image_path": "\xff', 1))
    _expect_error(release, _json_path(release), "not UTF-8", "byte 0xff")


def test_utf8_with_a_byte_order_mark_is_read(release):
    with open(_json_path(release), "rb") as f:
        data = f.read()
    plain = load_instructpart(release, "trps", "test")["id"]
    with open(_json_path(release), "wb") as f:
        f.write(b"\xef\xbb\xbf" + data)
    assert load_instructpart(release, "trps", "test")["id"] == plain


def test_export_refuses_its_own_input(release, tmp_path):
    before = sorted(os.path.relpath(os.path.join(r, f), release) for r, _, fs in os.walk(release) for f in fs)
    for output, fragment in [
        (release, "is the release folder itself"),
        (os.path.join(release, "test"), "lies inside the release folder"),
        (os.path.join(release, "new", "out"), "lies inside the release folder"),
        (str(tmp_path), "holds the release folder"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            export_release(release, output, overwrite=True)
    # through a symlink to the release, too
    os.symlink(release, tmp_path / "link")
    with pytest.raises(ValueError, match="is the release folder itself"):
        export_release(str(tmp_path / "link"), release, overwrite=True)
    after = sorted(os.path.relpath(os.path.join(r, f), release) for r, _, fs in os.walk(release) for f in fs)
    assert after == before and sorted(os.listdir(tmp_path)) == ["link", "release"]


@pytest.fixture
def exported(release, tmp_path):
    # datasets keys a local folder's cache by its name and card, not its files: one name per test.
    output = str(tmp_path / f"exported-{tmp_path.name}")
    export_release(release, output, num_workers=1)
    return output


def _rewrite_parquet(path, change):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pq.write_table(change(table), path)


def test_exported_split_with_no_rows_names_its_parquet_files(exported):
    shard = os.path.join(exported, "orps", "test-00000-of-00001.parquet")
    _rewrite_parquet(shard, lambda table: table.slice(0, 0))
    message = _expect_error(exported, "no orps rows in split 'test'", config="orps")
    assert message.startswith(shard)
    assert len(load_instructpart(exported, "trps", "test")) > 0  # the other config is untouched


def test_exported_train_subset_with_no_rows_is_an_error(release, tmp_path):
    import shutil

    for n in (200, 600, 1200):  # every train row is then in train1800 only
        shutil.rmtree(os.path.join(release, "train", f"train{n}"))
    export_release(release, str(tmp_path / "exported"), num_workers=1)
    message = _expect_error(str(tmp_path / "exported"), "no trps rows in split 'train600'", split="train600")
    assert message.startswith(str(tmp_path / "exported" / "trps" / "train-00000-of-00001.parquet"))
    _expect_error(release, os.path.join(release, "train"), "no train<N>/ folder with N <= 600", split="train600")


def test_exported_rows_other_than_the_card_declares(exported):
    shard = os.path.join(exported, "trps", "test-00000-of-00001.parquet")
    _rewrite_parquet(shard, lambda table: table.slice(0, 2))
    _expect_error(exported, "README.md: dataset_info declares 6 trps test rows, its data files hold 2")


def test_exported_card_without_its_data_files(exported):
    import shutil

    shutil.rmtree(os.path.join(exported, "trps"))
    _expect_error(exported, exported, "the trps dataset has no 'test' split (no data files)")


def test_corrupt_parquet_file_in_an_export_is_named(exported):
    shard = os.path.join(exported, "trps", "test-00000-of-00001.parquet")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    _expect_error(exported, shard, "not a readable Parquet file")
