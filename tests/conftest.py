"""Shared fixtures: one generated release in the official layout, the real sample when present,
and one torch thread everywhere (tiny models on 2 cores run 30-60x slower with 2 threads)."""

import atexit
import os
import shutil
import tempfile

import pytest

# Subprocesses (accelerate launch, fresh-interpreter checks) inherit these.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# datasets, evaluate and transformers read their cache locations at import: keep the suite's caches
# (prepared Arrow files, copied metric scripts and remote code) away from ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="instructpart-tests-cache-")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE, "datasets")
os.environ["HF_MODULES_CACHE"] = os.path.join(_CACHE, "modules")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the dataset and metric tests run without torch
    pass

from instructpart_dataset.synthetic import make_release  # noqa: E402


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory):
    """A small generated release (seed 0): test/, train/train{200,600,1200,1800}/ and all/."""
    return make_release(str(tmp_path_factory.mktemp("release")), seed=0, num_train=18, num_test=8)


@pytest.fixture(scope="session")
def sample_dir():
    """The real 60-entry sample of the test split, where INSTRUCTPART_SAMPLE_DIR points to it."""
    path = os.environ.get("INSTRUCTPART_SAMPLE_DIR")
    if not path or not os.path.isdir(os.path.join(path, "test")):
        pytest.skip("INSTRUCTPART_SAMPLE_DIR is not set to the real sample")
    return path
