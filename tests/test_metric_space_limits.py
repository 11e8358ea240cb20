"""The metric Space's request handlers against hostile or unlucky uploads, in this process: zip bombs stay within
the stated memory bound (measured with tracemalloc), every refusal is one line naming the file, mask files are
read by the score CLI's rule, and only the datasets the Space was launched with can be scored."""

import html
import io
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image
from zip_bombs import MIB, write_zip_bomb

gradio = pytest.importorskip("gradio")

from instructpart_metric.space import app  # noqa: E402

GIB_IN_MIB = 1024


@pytest.fixture(scope="module")
def hub_folder(release_dir, tmp_path_factory):
    from instructpart_dataset.export import export_release

    folder = str(tmp_path_factory.mktemp("metric-space-limits") / "instructpart")
    export_release(release_dir, folder)
    return folder


@pytest.fixture(scope="module")
def cache(hub_folder):
    return app.TruthCache([hub_folder])


@pytest.fixture(scope="module")
def truths(cache, hub_folder):
    return cache.get(hub_folder, "trps", "test")


@pytest.fixture(scope="module")
def metric_script():
    return app.find_metric_script()


def _png(array, mode=None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _entry(key) -> str:
    return f"predictions/{key[0]}/{key[1]}.png"


def _truth(hub_folder, key) -> np.ndarray:
    """The ground truth of a row, read from the export another way (datasets' own decoding)."""
    import datasets

    rows = datasets.load_dataset(hub_folder, "trps", split="test").with_format("numpy")
    for row in rows:
        if (row["instruction_type"], row["id"]) == key:
            return np.asarray(row["mask"]) != 0
    raise KeyError(key)


def _refusal(error) -> str:
    """The refusal's text as the user reads it (gradio renders the escaped message as HTML)."""
    return html.unescape(getattr(error, "value", error).message)


def _score_within_bound(function, bound: int):
    """(function's result or raised Refused, peak traced bytes), asserting the peak stays within `bound`."""
    tracemalloc.start()
    try:
        try:
            outcome = function()
        except app.Refused as error:
            outcome = error
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= bound, f"{peak / MIB:.1f} MiB peak, bound {bound / MIB:.1f} MiB"
    return outcome, peak


# --- zip bombs (issue 20 item 1) -------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3], ids=["1 MB zip, one 1 GiB entry", "3 MB zip, three 1 GiB entries"])
def test_zip_bomb_entries_named_like_rows_are_refused_unread(count, truths, cache, hub_folder, metric_script, tmp_path):
    bomb = str(tmp_path / "bomb.zip")
    write_zip_bomb(bomb, [(_entry(key), GIB_IN_MIB) for key in truths.keys[:count]])
    assert os.path.getsize(bomb) < count * 1.1 * MIB
    bound = app.zip_memory_bound(truths.largest_pixels)
    refused, _ = _score_within_bound(
        lambda: app.score_zip(metric_script, cache, bomb, hub_folder, "trps", "test"), bound
    )
    assert isinstance(refused, app.Refused)
    first = truths.keys[0]
    assert _refusal(refused).startswith(f"{_entry(first)}: 1,073,741,824 bytes uncompressed, more than a PNG mask")


def test_zip_bomb_entries_for_no_row_are_never_read_and_the_rest_scores(
    truths, cache, hub_folder, metric_script, tmp_path
):
    path = str(tmp_path / "predictions.zip")
    write_zip_bomb(path, [(f"predictions/{kind}/not-a-row.png", GIB_IN_MIB) for kind in ("human", "gpt4", "x")])
    with zipfile.ZipFile(path, "a") as archive:
        for position, key in enumerate(truths.keys):
            archive.writestr(_entry(key), _png(truths.mask(position)))
    bound = app.zip_memory_bound(truths.largest_pixels)
    (overall, _), _ = _score_within_bound(
        lambda: app.score_zip(metric_script, cache, path, hub_folder, "trps", "test"), bound
    )
    assert overall["ignored_files"] == 3 and overall["num_samples"] == len(truths.keys)
    assert overall["gIoU"] == overall["cIoU"] == 100.0


def test_an_entry_whose_stream_outgrows_its_declared_size_is_refused_within_the_bound(
    truths, cache, hub_folder, metric_script, tmp_path
):
    bomb = str(tmp_path / "liar.zip")
    # Declares 2,000 bytes (under the size limit; compressed 1 MB, so no suspicious ratio): holds 1 GiB.
    write_zip_bomb(bomb, [(_entry(truths.keys[0]), GIB_IN_MIB, 2000)])
    refused, _ = _score_within_bound(
        lambda: app.score_zip(metric_script, cache, bomb, hub_folder, "trps", "test", True),
        app.zip_memory_bound(truths.largest_pixels),
    )
    assert isinstance(refused, app.Refused)
    assert _refusal(refused).startswith(f"{_entry(truths.keys[0])}: unreadable zip entry (BadZipFile")


def test_an_entry_compressed_far_beyond_a_png_is_refused_unread(truths, cache, hub_folder, metric_script, tmp_path):
    key = truths.keys[0]
    size = app.entry_size_limit(truths.shapes[0]) // 2  # passes the size check, meets the ratio check
    path = str(tmp_path / "squeezed.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(_entry(key), bytes(size))
        compressed = archive.getinfo(_entry(key)).compress_size
    with pytest.raises(app.Refused) as refused:
        app.score_zip(metric_script, cache, path, hub_folder, "trps", "test", True)
    assert _refusal(refused) == (
        f"{_entry(key)}: compressed {size / compressed:,.0f}:1 in the zip (a PNG does not shrink more than "
        f"{app.MAX_COMPRESSION_RATIO}:1); not read"
    )


def test_the_number_of_entries_is_capped_before_the_directory_is_parsed(
    truths, cache, hub_folder, metric_script, tmp_path, monkeypatch
):
    path = str(tmp_path / "many.zip")
    with zipfile.ZipFile(path, "w") as archive:
        for k in range(12):
            archive.writestr(f"p/human/{k}.png", b"")
    monkeypatch.setattr(app, "MAX_ZIP_ENTRIES", 11)
    parsed = []
    monkeypatch.setattr(app.zipfile, "ZipFile", lambda *a, **k: parsed.append(a))
    with pytest.raises(app.Refused, match="many.zip: 12 entries in a .*at most 11 entries"):
        app.score_zip(metric_script, cache, path, hub_folder, "trps", "test")
    assert parsed == []


def test_a_png_header_larger_than_the_truth_is_refused_before_decoding(
    truths, cache, hub_folder, metric_script, tmp_path
):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A 9000x9000 grey PNG header (81 MB decoded) with a few bytes of data.
    huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0))
    huge += chunk(b"IDAT", zlib.compress(b"\x00" * 9001)) + chunk(b"IEND", b"")
    path = str(tmp_path / "huge.zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(_entry(truths.keys[0]), huge)
    with pytest.raises(app.Refused) as refused:
        app.score_zip(metric_script, cache, path, hub_folder, "trps", "test", True)
    h, w = truths.shapes[0]
    assert _refusal(refused) == (
        f"{_entry(truths.keys[0])}: 9000x9000 pixels, but its ground-truth mask is {w}x{h}; masks are never resized"
    )


# --- what an upload is (issue 20 items 3 and 4) ----------------------------------------------------------------


def test_a_jpeg_named_png_in_a_zip_is_refused_naming_it(truths, cache, hub_folder, metric_script, tmp_path):
    path = str(tmp_path / "jpeg.zip")
    with zipfile.ZipFile(path, "w") as archive:
        for position, key in enumerate(truths.keys):
            mask = truths.mask(position).astype(np.uint8) * 255
            if position == 2:
                buffer = io.BytesIO()
                Image.fromarray(mask).save(buffer, format="JPEG")
                archive.writestr(_entry(key), buffer.getvalue())
            else:
                archive.writestr(_entry(key), _png(mask))
    with pytest.raises(app.Refused) as refused:
        app.score_zip(metric_script, cache, path, hub_folder, "trps", "test")
    assert _refusal(refused) == f"{_entry(truths.keys[2])}: not a PNG file (JPEG)"


@pytest.mark.parametrize("damage", ["truncated", "not a zip"])
def test_a_corrupt_zip_is_one_clear_refusal(damage, truths, cache, hub_folder, metric_script, tmp_path):
    path = tmp_path / "predictions.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(_entry(truths.keys[0]), _png(truths.mask(0)))
    path.write_bytes(buffer.getvalue()[:-30] if damage == "truncated" else b"%PDF-1.4 not a zip at all")
    with pytest.raises(app.Refused) as refused:
        app.score_zip(metric_script, cache, str(path), hub_folder, "trps", "test")
    assert _refusal(refused).startswith("predictions.zip: not a")
    assert "\n" not in _refusal(refused)


def _save(tmp_path, name, image) -> str:
    path = str(tmp_path / name)
    image.save(path)
    return path


def _naive_pair(prediction, truth) -> dict:
    i, u = int((prediction & truth).sum()), int((prediction | truth).sum())
    iou = i / u if u else 1.0
    return {"gIoU": round(100 * iou, 2), "cIoU": round(100 * iou, 2), "intersection": i, "union": u}


@pytest.fixture(scope="module")
def pair_metric(metric_script):
    import evaluate

    return evaluate.load(metric_script, keep_in_memory=True)


def _pair_masks():
    rng = np.random.default_rng(7)
    truth = np.zeros((30, 40), dtype=bool)
    truth[5:20, 8:30] = True
    return truth ^ (rng.random(truth.shape) < 0.1), truth


def test_sixteen_bit_palette_and_zero_one_masks_score_by_their_non_zero_values(pair_metric, tmp_path):
    prediction, truth = _pair_masks()
    truth_path = _save(tmp_path, "truth.png", Image.fromarray(truth))
    palette = Image.fromarray(prediction.astype(np.uint8) * 3, "L").convert("P")  # index 3 = the part
    uploads = {
        "16-bit.png": Image.fromarray(prediction.astype(np.uint16) * 1000),
        "palette.png": palette,
        "zero-one.png": Image.fromarray(prediction.astype(np.uint8)),
    }
    expected = _naive_pair(prediction, truth)
    for name, image in uploads.items():
        scores, _ = app.score_pair(pair_metric, _save(tmp_path, name, image), truth_path)
        assert {k: scores[k] for k in expected} == expected, name
        assert scores["IoU"] == expected["gIoU"]  # one unit: percent, like the others
        shown = np.asarray(app.preview(str(tmp_path / name)))
        assert np.array_equal(shown, np.where(prediction, 255, 0)), name  # a 0/1 mask previews visibly


def test_a_mask_drawn_in_alpha_is_refused_not_scored_as_empty(pair_metric, tmp_path):
    prediction, truth = _pair_masks()
    drawn = np.zeros((*prediction.shape, 4), dtype=np.uint8)
    drawn[..., :3] = 255
    drawn[..., 3] = prediction * 255  # white where the part is, transparent elsewhere
    truth_path = _save(tmp_path, "truth.png", Image.fromarray(truth))
    with pytest.raises(app.Refused) as refused:
        app.score_pair(pair_metric, _save(tmp_path, "drawn.png", Image.fromarray(drawn, "RGBA")), truth_path)
    assert _refusal(refused) == "drawn.png: a mode-RGBA image; a mask must be single-channel (mode 1, L, P or I)"


def test_a_file_that_is_no_image_is_refused_naming_it(pair_metric, tmp_path):
    _, truth = _pair_masks()
    (tmp_path / "notes.png").write_text("not a mask")
    with pytest.raises(app.Refused) as refused:
        app.score_pair(pair_metric, str(tmp_path / "notes.png"), _save(tmp_path, "truth.png", Image.fromarray(truth)))
    assert _refusal(refused).startswith("notes.png: unreadable PNG (UnidentifiedImageError")


def test_refusals_are_escaped_for_gradio_which_renders_them_as_html():
    refused = app.Refused("Upload a zip of <instruction_type>/<id>.png prediction masks.")
    assert refused.message == "Upload a zip of &lt;instruction_type&gt;/&lt;id&gt;.png prediction masks."


# --- the dataset box (issue 20 item 2) -------------------------------------------------------------------------


def test_only_offered_datasets_are_scored_and_unknown_ones_reveal_nothing(cache, metric_script, tmp_path):
    path = str(tmp_path / "any.zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("p/human/x.png", b"")
    messages = set()
    for dataset in ("/root", "/etc", "/nonexistent", "someone/else", "trps"):
        with pytest.raises(app.Refused) as refused:
            app.score_zip(metric_script, cache, path, dataset, "trps", "test")
        messages.add(_refusal(refused).replace(repr(dataset), "X"))
    assert messages == {f"X (trps/test) is not offered here; this Space scores: {cache.offered[0]}"}


def test_local_datasets_need_the_launch_flag(tmp_path):
    def error(message):
        raise SystemExit(message)

    folder = str(tmp_path)
    assert app.offered_datasets(["org/instructpart"], ["org/other"], False, error) == [
        "org/instructpart",
        "org/other",
    ]
    with pytest.raises(SystemExit, match="a local path; pass --allow-local-datasets"):
        app.offered_datasets(["org/instructpart"], [folder], False, error)
    assert app.offered_datasets([], [folder], True, error) == [folder]
    with pytest.raises(SystemExit, match="no such folder"):
        app.offered_datasets([], [folder + "/missing"], True, error)


def test_truths_are_loaded_once_per_config_and_split(hub_folder, monkeypatch):
    loads = []
    real = app.load_rows
    monkeypatch.setattr(app, "load_rows", lambda *key: loads.append(key) or real(*key))
    cache = app.TruthCache([hub_folder])
    first = cache.get(hub_folder, "trps", "test")
    assert cache.get(hub_folder, "trps", "test") is first
    cache.get(hub_folder, "orps", "test")
    assert loads == [(hub_folder, "trps", "test"), (hub_folder, "orps", "test")]
    key = first.keys[0]
    assert np.array_equal(first.mask(0), _truth(hub_folder, key))


def test_pairs_and_zips_have_separate_queues(hub_folder, metric_script):
    demo = app.build_demo(metric_script, [hub_folder], "")
    by_name = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert by_name["score_pair"].concurrency_id != by_name["score_zip"].concurrency_id


def test_the_card_states_the_bounds_the_app_enforces():
    with open(app.find_card(), encoding="utf-8") as f:
        card = " ".join(f.read().split())
    stated = [
        f"an upload of at most {app.MAX_UPLOAD[:-2]} MB",
        f"a mask pair of at most {app.MAX_MASK_PIXELS:,} pixels",
        f"a zip of at most {app.MAX_ZIP_ENTRIES:,} entries",
        f"compression ratio (at most {app.MAX_COMPRESSION_RATIO}:1)",
        f"about {app.ZIP_BASE_BYTES // MIB} MiB + {app.ZIP_BYTES_PER_PIXEL} bytes per pixel",
        f"({app.zip_memory_bound(2000 * 2000) / MIB:.0f} MiB for 2000 x 2000 masks)",
        f"at most {app.ZIP_TIME_LIMIT_S} s of scoring per zip",
        f"(at most {app.QUEUE_SIZE} requests each)",
    ]
    assert [text for text in stated if text not in card] == []
