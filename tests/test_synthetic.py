"""The one generator behind every fixture, benchmark and the demo: deterministic, official layout, sound masks."""

import filecmp
import json
import os

import numpy as np
import pytest

from instructpart_dataset import load_instructpart
from instructpart_dataset.synthetic import CATALOG, make_release, render_object


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = make_release(str(tmp_path / "a"), seed=4, num_train=3, num_test=2)
    b = make_release(str(tmp_path / "b"), seed=4, num_train=3, num_test=2)
    c = make_release(str(tmp_path / "c"), seed=5, num_train=3, num_test=2)
    files = sorted(os.path.relpath(os.path.join(r, f), a) for r, _, fs in os.walk(a) for f in fs)
    assert files and all(filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in files)
    assert sorted(os.listdir(os.path.join(c, "test", "images"))) != sorted(
        os.listdir(os.path.join(a, "test", "images"))
    )


@pytest.mark.parametrize("size", [(4, 4), (7, 5), (13, 9), (160, 97)])
def test_parts_are_disjoint_and_non_empty_at_any_size(size):
    rng = np.random.default_rng(0)
    for name, specs in CATALOG.items():
        image, masks = render_object(name, size, rng)
        assert image.size == size and sorted(masks) == sorted(spec.part for spec in specs)
        first, second = masks.values()
        assert first.shape == (size[1], size[0]) and not (first & second).any()
        if min(size) >= 13:
            assert first.any() and second.any()


def test_no_train_entries_make_a_test_only_release_that_loads(tmp_path):
    # bench/evaluate_harness.py generates such a release: an empty train json would be refused by the loader.
    root = make_release(str(tmp_path / "r"), seed=0, num_train=0, num_test=3)
    assert sorted(os.listdir(root)) == ["all", "test"]
    with open(os.path.join(root, "test", "data_test.json")) as f:
        parts = sum(len(entry["part_list"]) for entry in json.load(f))
    assert len(load_instructpart(root, "trps", split="test", cache_dir=str(tmp_path / "cache"))) == 2 * parts
