"""pisa_model.data: InstructPart rows of both configs, collated into model inputs with their ids."""

import pytest
import torch

from instructpart_dataset.schema import CONFIGS
from pisa_model.data import PisaCollator, load_rows, parse_configs
from pisa_model.tiny import tiny_processor


def test_load_rows_concatenates_the_configs(release_dir):
    both = load_rows(release_dir, configs="trps,orps", split="train")
    trps = load_rows(release_dir, configs=["trps"], split="train")
    orps = load_rows(release_dir, configs=("orps",), split="train")
    assert len(both) == len(trps) + len(orps) and len(orps) == 2 * len(trps)
    types = set(both["instruction_type"])
    assert types == set(CONFIGS["trps"]) | set(CONFIGS["orps"])
    row = both[len(both) - 1]
    assert row["mask"].dtype == bool and row["mask"].shape == (row["image"].height, row["image"].width)


def test_collator_builds_model_inputs_and_keeps_ids(release_dir):
    rows = load_rows(release_dir, configs="trps", split="test")
    picked = [rows[i] for i in range(3)]
    batch = PisaCollator(tiny_processor(), with_labels=True)(picked)
    assert batch["id"] == [r["id"] for r in picked]
    assert batch["instruction_type"] == [r["instruction_type"] for r in picked]
    assert batch["mask_labels"].shape == (3, 64, 64) and batch["labels"].shape == batch["input_ids"].shape
    assert batch["original_sizes"].tolist() == [[r["image"].height, r["image"].width] for r in picked]
    # The mask labels hold each row's own mask: the foreground share survives the resize.
    for i, row in enumerate(picked):
        h, w = batch["reshaped_input_sizes"][i].tolist()
        share = batch["mask_labels"][i, :h, :w].float().mean().item()
        assert share == pytest.approx(row["mask"].mean(), abs=0.03)
    unlabelled = PisaCollator(tiny_processor(), with_labels=False)(picked)
    assert "labels" not in unlabelled and "mask_labels" not in unlabelled
    assert torch.equal(unlabelled["input_ids"], batch["input_ids"])


def test_bad_input_raises_one_line_errors():
    with pytest.raises(ValueError, match="unknown config 'tprs'"):
        parse_configs("trps,tprs")
    with pytest.raises(ValueError, match="no config given"):
        parse_configs(" , ")
    with pytest.raises(ValueError, match="row 'x' lacks mask"):
        PisaCollator(tiny_processor())([{"id": "x", "image": None, "instruction": "a"}])
    with pytest.raises(ValueError, match="empty list"):
        PisaCollator(tiny_processor())([])
