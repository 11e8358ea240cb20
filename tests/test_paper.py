"""The paper's table: published rows against the shared transcription, the paper layout and ORPS forms from
predictions with constructed IoUs, ranks (ties included), and the dataset fingerprint."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from instructpart_dataset import load_instructpart
from instructpart_dataset.schema import INSTRUCTION_TYPES
from instructpart_metric import paper
from instructpart_metric.cli import main as metric_main
from instructpart_metric.provenance import dataset_fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shared_csv():
    """../shared/paper/instructpart_table2.csv: where INSTRUCTPART_PAPER_DIR points, beside the checkout, or
    beside the real sample (INSTRUCTPART_SAMPLE_DIR)."""
    sample = os.environ.get("INSTRUCTPART_SAMPLE_DIR")
    for folder in (
        os.environ.get("INSTRUCTPART_PAPER_DIR"),
        os.path.join(ROOT, "..", "shared", "paper"),
        os.path.join(os.path.dirname(os.path.abspath(sample)), "paper") if sample else None,
    ):
        if folder and os.path.isfile(os.path.join(folder, "instructpart_table2.csv")):
            return os.path.join(folder, "instructpart_table2.csv")
    return None


SHARED_CSV = _shared_csv()
METRICS = ("gIoU", "cIoU", "P@50:95", "P@50")
GROUPS = ("orps_object_part", "orps_object_part_affordance", "trps_human", "trps_gpt4")


@pytest.mark.skipif(SHARED_CSV is None, reason="../shared/paper is absent (INSTRUCTPART_PAPER_DIR)")
def test_published_results_equal_the_shared_transcription_cell_for_cell():
    with open(SHARED_CSV, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    rows = paper.published_results()
    assert len(rows) == len(records) == 11
    for row, record in zip(rows, records):
        assert set(row) == set(record) | {"printed_average"}
        assert (row["method"], row["family"]) == (record["method"], record["family"])
        for column, cell in record.items():
            if column not in ("method", "family"):
                assert f"{row[column]:.2f}" == cell, (record["method"], column)  # to the digit, as printed
        assert row["printed_average"] is (record["method"] == "Average")
    assert [r["method"] for r in paper.published_results(include_average=False)] == [r["method"] for r in records][:-1]


def test_the_printed_average_row_is_kept_as_printed():
    """It differs from the mean of the ten rows in exactly the four cells the paper's README names."""
    rows = paper.published_results(include_average=False)
    average = paper.published_results()[-1]
    differing = {c for c in paper.PAPER_COLUMNS if abs(sum(r[c] for r in rows) / 10 - average[c]) > 0.006}
    assert differing == {
        "orps_object_part_affordance_gIoU",
        "orps_object_part_affordance_cIoU",
        "trps_human_P@50",
        "trps_gpt4_gIoU",
    }
    assert average["orps_object_part_affordance_gIoU"] == 21.95 and average["trps_gpt4_gIoU"] == 17.59


def test_columns_are_the_csv_header_in_the_papers_order():
    assert paper.PAPER_COLUMNS == tuple(f"{g}_{m}" for g in GROUPS for m in METRICS)
    assert [(g.question, g.name) for g in paper.COLUMN_GROUPS] == [
        ("part_question", "part_name"),
        ("part_affordance_question", "part_affordance_name"),
        ("human", "human"),
        ("gpt4", "gpt4"),
    ]


# ---------------------------------------------------------------- paper layout from constructed IoUs

# Per instruction type, the IoU each entry's prediction gets, as (kept truth rows, extra rows) of a
# 10-row truth band: a prediction covering `keep` of the 10 truth rows plus `extra` rows outside has
# I = keep * W and U = (10 + extra) * W, so IoU = keep / (10 + extra).
PLANS = {
    "human": [(10, 0), (5, 0)],  # IoU 1, 0.5
    "gpt4": [(7, 0), (2, 0)],  # 0.7, 0.2
    "part_question": [(10, 10), (9, 0)],  # 0.5, 0.9
    "part_affordance_question": [(6, 0), (0, 0)],  # 0.6, 0
    "part_name": [(10, 0), (10, 0)],  # 1, 1
    "part_affordance_name": [(3, 0), (10, 2)],  # 0.3, 10/12
}


def _constructed_release(root):
    """A release of 2 test entries whose masks are 10-row bands across a 40x30 image."""
    folder = os.path.join(root, "test")
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "masks"))
    records = []
    for n, obj in enumerate(("kettle", "cabinet")):
        stem = f"img{n}"
        sample = f"{stem}-{obj}-handle"
        Image.new("RGB", (40, 30), (40 * n, 90, 200)).save(os.path.join(folder, "images", f"{sample}.jpg"))
        mask = np.zeros((30, 40), np.uint8)
        mask[5:15] = 1
        Image.fromarray(mask, "L").save(os.path.join(folder, "masks", f"{sample}.png"))
        instructions = [f"{kind} instruction {n}" for kind in INSTRUCTION_TYPES]
        records.append(
            {
                "image_path": f"{stem}.jpg",
                "part_list": [
                    {
                        "object": obj,
                        "part": "handle",
                        "affordance": "hold",
                        "action": "open",
                        "instruction": instructions,
                    }
                ],
            }
        )
    with open(os.path.join(folder, "data_test.json"), "w") as f:
        json.dump(records, f)
    return root


def _expected(plan):
    """gIoU, cIoU, P@50:95, P@50 of one instruction type's (keep, extra) list, by hand (W cancels out)."""
    ious = [keep / (10 + extra) for keep, extra in plan]
    inter, union = sum(k for k, _ in plan), sum(10 + e for _, e in plan)
    thresholds = [k / 20 for k in range(10, 20)]
    return {
        "gIoU": sum(ious) / len(ious),
        "cIoU": inter / union,
        "P@50:95": sum(sum(iou >= t - 1e-12 for iou in ious) / len(ious) for t in thresholds) / 10,
        "P@50": sum(iou >= 0.5 for iou in ious) / len(ious),
    }


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    root = _constructed_release(str(tmp_path_factory.mktemp("constructed")))
    pred = tmp_path_factory.mktemp("constructed-pred")
    for kind, plan in PLANS.items():
        os.makedirs(pred / kind)
        for (keep, extra), (n, obj) in zip(plan, enumerate(("kettle", "cabinet"))):
            mask = np.zeros((30, 40), np.uint8)
            mask[5 : 5 + keep] = 255
            mask[15 : 15 + extra] = 255
            Image.fromarray(mask, "L").save(pred / kind / f"img{n}-{obj}-handle.png")
    return root, str(pred)


@pytest.mark.parametrize("form", ["question", "name"])
def test_paper_layout_reads_the_variants_of_the_orps_form(constructed, tmp_path, capsys, form):
    root, pred = constructed
    out = tmp_path / "results.json"
    argv = ["score", "--predictions", pred, "--data-dir", root, "--config", "trps,orps", "--orps-form", form]
    assert metric_main([*argv, "--json", str(out), "--num-workers", "1"]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    source = {
        "question": ("part_question", "part_affordance_question", "human", "gpt4"),
        "name": ("part_name", "part_affordance_name", "human", "gpt4"),
    }[form]
    columns = results["paper"]["columns"]
    for group, kind in zip(GROUPS, source):
        for metric, value in _expected(PLANS[kind]).items():
            assert columns[f"{group}_{metric}"] == pytest.approx(value, abs=1e-12), (group, metric)
    assert results["paper"]["orps_form"] == form and results["provenance"]["orps_form"] == form
    assert list(results["configs"]) == ["trps", "orps"]
    # the hand values are distinct between the forms, so reading the wrong variant cannot pass
    assert _expected(PLANS["part_question"])["gIoU"] != _expected(PLANS["part_name"])["gIoU"]
    assert f"ORPS form: {form}" in printed and "TRPS (all)" in printed and "ORPS (all)" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| constructed-pred"))
    cells = [c.strip() for c in row.strip("|").split("|")][2:]
    assert cells == [f"{100 * columns[c]:.2f}" for c in paper.PAPER_COLUMNS]


def test_a_trps_only_run_leaves_the_orps_columns_empty(constructed, tmp_path, capsys):
    root, pred = constructed
    out = tmp_path / "results.json"
    assert metric_main(["score", "--predictions", pred, "--data-dir", root, "--json", str(out)]) == 0
    columns = json.loads(out.read_text())["paper"]["columns"]
    assert all(columns[f"orps_object_part_{m}"] is None for m in METRICS)
    assert columns["trps_human_gIoU"] == pytest.approx(0.75)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| constructed-pred"))
    assert row.count("—") == 8


def test_the_score_command_refuses_to_replace_results_without_overwrite(constructed, tmp_path, capsys):
    root, pred = constructed
    out = tmp_path / "results.json"
    out.write_text("{}")
    argv = ["score", "--predictions", pred, "--data-dir", root, "--json", str(out)]
    assert metric_main(argv) != 0
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(out) in error and "--overwrite" in error
    assert out.read_text() == "{}"
    assert metric_main([*argv, "--overwrite"]) == 0
    assert "configs" in json.loads(out.read_text())


# ---------------------------------------------------------------- ranks


def _row(**values):
    row = dict.fromkeys(paper.PAPER_COLUMNS)
    row.update({key.replace("__", "@").replace("_P50", "_P@50"): value for key, value in values.items()})
    return row


def test_ranks_count_strictly_better_entries_and_share_ties():
    # Published TRPS-human gIoU: 0.39 22.44 9.08 17.48 13.52 21.97 29.95 32.11 1.70 26.29.
    models = {
        "tie-ovseg": _row(trps_human_gIoU=0.22444),  # prints 22.44: ties OVSeg; better: 32.11 29.95 26.29
        "above": _row(trps_human_gIoU=0.5),
        "below": _row(trps_human_gIoU=0.001),  # prints 0.10: below every published value
        "just-over": _row(trps_human_gIoU=0.224451),  # prints 22.45: beats OVSeg, no tie
    }
    ranks = paper.rank_against_published(models)
    column = "trps_human_gIoU"
    assert ranks["above"][column] == {"rank": 1, "of": 14, "tied_with": []}
    assert ranks["just-over"][column] == {"rank": 5, "of": 14, "tied_with": []}  # 50, 32.11, 29.95, 26.29 above
    assert ranks["tie-ovseg"][column] == {"rank": 6, "of": 14, "tied_with": ["OVSeg"]}
    assert ranks["below"][column] == {"rank": 14, "of": 14, "tied_with": []}
    assert set(ranks["above"]) == {column}  # columns a model lacks are not ranked


def test_models_tied_with_each_other_share_a_rank_and_the_average_row_is_not_ranked():
    # Published ORPS object-part P@50: 22.50 22.33 10.17 14.83 10.50 17.50 28.83 32.67 4.17 33.17 (Average 19.67).
    models = {"a": _row(orps_object_part_P50=0.1967), "b": _row(orps_object_part_P50=0.19671)}
    ranks = paper.rank_against_published(models)
    column = "orps_object_part_P@50"
    better = sum(v > 19.67 for v in (22.50, 22.33, 10.17, 14.83, 10.50, 17.50, 28.83, 32.67, 4.17, 33.17))
    assert better == 5
    assert ranks["a"][column] == {"rank": 6, "of": 12, "tied_with": ["b"]}
    assert ranks["b"][column] == {"rank": 6, "of": 12, "tied_with": ["a"]}


def test_rank_lines_and_ordinals():
    assert [paper.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th",
    ]  # fmt: skip
    official = {"trps": paper.OFFICIAL_TEST_SPLIT["trps"]}
    text = paper.format_paper_table({"mine": _row(trps_human_gIoU=0.295)}, published=True, provenance=official)
    assert "gIoU TRPS-human: 3rd of 11" in text  # 32.11 and 29.95 are above 29.50
    assert "Average (as printed)" in text and "* mine" in text and "ORPS form: question" in text
    assert "No ranks" not in text


# ---------------------------------------------------------------- ranks only on the official test split

TRPS_OFFICIAL = "sha256:2e4ab46f4d8104b530dd76f6efa5ac536aa5508a0a7526dd2b71a17ae90eaf3b"  # from the issue, by hand
ORPS_OFFICIAL = "sha256:cddf043f2bb0baa8e973abfaa0784b781a70041d70bdef61aac898d6a43a9cf2"


def _identity(trps_rows=1200, trps=TRPS_OFFICIAL, orps_rows=2400, orps=ORPS_OFFICIAL, split="test", **more):
    return {
        "source": "/data/InstructPart",
        "split": split,
        "configs": {"trps": {"rows": trps_rows, "fingerprint": trps}, "orps": {"rows": orps_rows, "fingerprint": orps}},
        **more,
    }


def test_the_official_fingerprints_ship_with_the_package():
    assert paper.OFFICIAL_TEST_SPLIT == {
        "trps": {"rows": 1200, "fingerprint": TRPS_OFFICIAL},
        "orps": {"rows": 2400, "fingerprint": ORPS_OFFICIAL},
    }


def test_why_not_ranked_takes_a_provenance_a_dataset_block_or_fingerprints():
    official = _identity()
    assert paper.why_not_ranked(official, "trps,orps") is None
    assert paper.why_not_ranked({"command": "x", "dataset": official}, ("trps", "orps")) is None
    assert paper.why_not_ranked({"trps": TRPS_OFFICIAL}, "trps") is None
    assert paper.why_not_ranked({"orps": {"rows": 2400, "fingerprint": ORPS_OFFICIAL}}, ["orps"]) is None
    # 60 entries are 120 TRPS rows (2 per entry) and 240 ORPS rows (4 per entry)
    sample = _identity(120, "sha256:" + "1" * 64, 240, "sha256:" + "2" * 64)
    assert paper.why_not_ranked(sample, "trps,orps") == "not the official test split: 60 of 600 entries"
    assert paper.why_not_ranked(sample, "orps") == "not the official test split: 60 of 600 entries"
    assert paper.why_not_ranked({**sample, "synthetic": True}, "trps") == "synthetic data"
    assert paper.why_not_ranked({**sample, "split": "train600"}, "trps") == (
        "not the official test split: the train600 split"
    )
    other = _identity(trps="sha256:" + "3" * 64)
    assert paper.why_not_ranked(other, "orps") is None  # ORPS is official, TRPS is not
    assert paper.why_not_ranked(other, "trps") == (
        "not the official test split: same size, other data (its fingerprint differs)"
    )
    assert paper.why_not_ranked(_identity(trps_rows=7, trps="sha256:" + "3" * 64), "trps") == (
        "not the official test split: 7 of 1,200 TRPS rows"
    )
    assert paper.why_not_ranked(None, "trps") == "no dataset fingerprint recorded"
    assert paper.why_not_ranked({"trps": TRPS_OFFICIAL}, "trps,orps") == "no ORPS dataset fingerprint recorded"
    with pytest.raises(ValueError, match="xrps"):
        paper.why_not_ranked(official, "xrps")


def _perfect_predictions(release, folder):
    """Every test row predicted by its own truth mask (the score CLI's layout)."""
    for config in ("trps", "orps"):
        for row in load_instructpart(str(release), config, "test"):
            os.makedirs(folder / row["instruction_type"], exist_ok=True)
            mask = np.asarray(row["mask"], dtype=np.uint8) * 255
            Image.fromarray(mask, "L").save(folder / row["instruction_type"] / f"{row['id']}.png")
    return str(folder)


def test_ranks_appear_on_the_official_fingerprints_and_disappear_with_one_mask_pixel(
    release_dir, tmp_path, capsys, monkeypatch
):
    release = tmp_path / "release"
    shutil.copytree(os.path.join(release_dir, "test"), release / "test")
    pred = _perfect_predictions(release, tmp_path / "pred")
    official = {config: {"rows": 0, "fingerprint": ""} for config in ("trps", "orps")}
    for config in official:
        dataset = load_instructpart(str(release), config, "test")
        official[config] = {"rows": len(dataset), "fingerprint": dataset_fingerprint(dataset)}
    # This generated release plays the official test split: its fingerprints are the shipped ones.
    monkeypatch.setattr(paper, "OFFICIAL_TEST_SPLIT", official)
    argv = ["score", "--predictions", pred, "--data-dir", str(release), "--config", "trps,orps"]
    argv += ["--compare-published", "--num-workers", "1"]
    assert metric_main([*argv, "--json", str(tmp_path / "ranked.json")]) == 0
    printed = capsys.readouterr().out
    assert "gIoU TRPS-human: 1st of 11" in printed and "No ranks" not in printed  # 100.00 beats every method
    ranked = json.loads((tmp_path / "ranked.json").read_text())
    assert ranked["published_ranks"]["trps_human_gIoU"]["rank"] == 1 and "not_ranked" not in ranked

    victim = sorted((release / "test" / "masks").iterdir())[0]
    pixels = np.array(Image.open(victim))
    y, x = np.argwhere(pixels == 0)[0]
    pixels[y, x] = pixels.max()
    Image.fromarray(pixels).save(victim)
    # the prediction of that row is now one pixel short; the data is no longer the official split
    assert metric_main([*argv, "--json", str(tmp_path / "edited.json")]) == 0
    printed = capsys.readouterr().out
    reason = "not the official test split: same size, other data (its fingerprint differs)"
    assert f"No ranks against the published rows: {reason}" in printed
    assert " of 11" not in printed and "1st" not in printed
    edited = json.loads((tmp_path / "edited.json").read_text())
    assert "published_ranks" not in edited and edited["not_ranked"] == reason
    assert "OVSeg" in printed  # the published rows are still shown, for reference


# ---------------------------------------------------------------- fingerprint


def _fingerprint(root, config="trps"):
    return dataset_fingerprint(load_instructpart(str(root), config, "test"))


def test_the_fingerprint_changes_with_one_mask_pixel_and_only_then(release_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(release_dir, "test"), copy / "test")
    original = _fingerprint(release_dir)
    assert original.startswith("sha256:") and len(original) == len("sha256:") + 64
    assert _fingerprint(copy) == original  # another path, the same data
    masks = sorted((copy / "test" / "masks").iterdir())
    victim = masks[len(masks) // 2]
    pixels = np.array(Image.open(victim))
    Image.fromarray(pixels).save(victim, compress_level=9)  # another file, the same pixels
    assert _fingerprint(copy) == original
    y, x = np.argwhere(pixels == 0)[0]
    pixels[y, x] = pixels.max()
    Image.fromarray(pixels).save(victim)
    assert _fingerprint(copy) != original
    assert _fingerprint(copy, "orps") != _fingerprint(release_dir, "orps")
    pixels[y, x] = 0
    Image.fromarray(pixels).save(victim)
    assert _fingerprint(copy) == original


def test_the_fingerprint_changes_with_an_instruction_or_an_image(release_dir, tmp_path):
    original = _fingerprint(release_dir, "orps")
    edited = tmp_path / "instruction"
    shutil.copytree(os.path.join(release_dir, "test"), edited / "test")
    path = edited / "test" / "data_test.json"
    records = json.loads(path.read_text())
    records[0]["part_list"][0]["instruction"][4] += " please"
    path.write_text(json.dumps(records))
    assert _fingerprint(edited, "orps") != original

    image_copy = tmp_path / "image"
    shutil.copytree(os.path.join(release_dir, "test"), image_copy / "test")
    victim = sorted((image_copy / "test" / "images").iterdir())[0]
    picture = np.array(Image.open(victim))
    picture[0, 0] = 255 - picture[0, 0]
    Image.fromarray(picture).save(victim, format="JPEG", quality=100)
    assert _fingerprint(image_copy, "orps") != original


@pytest.mark.slow
def test_the_real_sample_is_not_ranked_and_its_export_has_the_same_fingerprint(sample_dir, tmp_path):
    from instructpart_dataset.export import export_release
    from instructpart_metric.provenance import dataset_identity

    hub = str(tmp_path / "hub")
    export_release(sample_dir, hub, num_workers=1)
    datasets = {c: load_instructpart(sample_dir, c, "test") for c in ("trps", "orps")}
    release = dataset_identity(sample_dir, "test", datasets)
    exported = dataset_identity(hub, "test", {c: load_instructpart(hub, c, "test") for c in ("trps", "orps")})
    assert exported["configs"] == release["configs"]
    assert release["configs"]["trps"]["rows"] == 120 and release["configs"]["orps"]["rows"] == 240
    assert paper.why_not_ranked(release, "trps,orps") == "not the official test split: 60 of 600 entries"
    assert paper.why_not_ranked(exported, "trps,orps") == "not the official test split: 60 of 600 entries"


def test_a_release_and_its_hub_export_have_the_same_fingerprint(release_dir, tmp_path):
    from instructpart_dataset.export import export_release

    hub = str(tmp_path / "hub")
    export_release(release_dir, hub, num_workers=1)
    for config in ("trps", "orps"):
        assert _fingerprint(hub, config) == _fingerprint(release_dir, config)
    assert _fingerprint(hub, "trps") != _fingerprint(hub, "orps")
