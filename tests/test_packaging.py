"""setup.cfg's ranges against what CI proves: every lower bound pinned in .ci/constraints-min.txt at that
version, [test] holding every extra, the licence file matching the metadata."""

import configparser
import os

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_TOOLS = {"pytest", "hypothesis", "ruff"}
PROJECT = "instructpart"


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read(os.path.join(ROOT, "setup.cfg"), encoding="utf-8")
    return config


def _requirements(text: str) -> list:
    return [Requirement(line) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _name(requirement) -> str:
    return requirement.name.lower().replace("_", "-")


def _extras() -> dict:
    """{extra: its requirements as strings}, an extra that names this project's own extras (`instructpart[test]`)
    holding theirs, as pip resolves it."""
    declared = {name: _requirements(text) for name, text in _setup_cfg()["options.extras_require"].items()}

    def expand(name: str) -> set:
        found = set()
        for requirement in declared[name]:
            if _name(requirement) == PROJECT:
                for extra in requirement.extras:
                    found |= expand(extra)
            else:
                found.add(str(requirement))
        return found

    return {name: expand(name) for name in declared}


def test_every_lower_bound_is_pinned_for_ci_at_that_version():
    config = _setup_cfg()
    requirements = _requirements(config["options"]["install_requires"])
    for text in config["options.extras_require"].values():
        requirements += _requirements(text)
    lower = {}
    for requirement in requirements:
        for specifier in requirement.specifier:
            if specifier.operator == ">=" and _name(requirement) not in TEST_TOOLS:
                lower[_name(requirement)] = Version(specifier.version)
    with open(os.path.join(ROOT, ".ci", "constraints-min.txt"), encoding="utf-8") as f:
        pinned = {}
        for requirement in _requirements(f.read()):
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", requirement
            pinned[_name(requirement)] = Version(specifier.version)
    assert set(lower) == set(pinned)
    for name, version in lower.items():
        assert pinned[name] == version, f"{name}: setup.cfg says >={version}, constraints-min.txt pins {pinned[name]}"
    # Every range closes before the next major version, except pyarrow and safetensors (no announced breaks)
    for requirement in requirements:
        uppers = [s for s in requirement.specifier if s.operator == "<"]
        if _name(requirement) in TEST_TOOLS | {PROJECT} or _name(requirement) in ("pyarrow", "safetensors", "tqdm"):
            continue
        assert uppers, f"{requirement} has no upper bound"


def test_the_test_extra_holds_every_other_extra():
    extras = _extras()
    # [lmms] is tested in its own venv (.ci/run): lmms-eval's CUDA torchvision breaks transformers on a CPU torch.
    assert "lmms" in extras and not extras["lmms"] & extras["test"]
    for name, requirements in extras.items():
        if name not in ("test", "dev", "lmms"):
            assert requirements <= extras["test"], name
    assert extras["test"] <= extras["dev"]


def test_the_licence_file_matches_the_metadata():
    metadata = _setup_cfg()["metadata"]
    assert metadata["license_expression"] == "MIT" and metadata["license_files"] == "LICENSE"
    assert "license" not in metadata  # the free-text field PEP 639 deprecates
    assert "classifiers" not in metadata or "License ::" not in metadata["classifiers"]
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        assert f.readline().strip() == "MIT License"
