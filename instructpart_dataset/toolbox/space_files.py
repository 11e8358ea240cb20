"""The files every Gradio Space of the project gets beside its app: `app.py`, a `requirements.txt` holding this
distribution's own version ranges, and the card (README.md) with the metadata the Hub reads.

The Spaces stage themselves (`instructpart_metric.space.stage_space`, `pisa_model.space.stage_space`); upload.py
launches what they staged before anything is pushed.
"""

import os
import shutil

from .cli_errors import OperationFailed

DISTRIBUTION = "instructpart"  # whose install_requires the Spaces' requirements.txt copy


def space_requirements(names) -> str:
    """requirements.txt of a Space: the version ranges of `names` exactly as this project's installed
    distribution declares them (setup.cfg's install_requires, else its extras), so that the Space runs what the
    tests ran."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        declared = [Requirement(line) for line in requires(DISTRIBUTION) or []]
    except PackageNotFoundError:
        raise OperationFailed(f"{DISTRIBUTION} is not installed: run `pip install -e .` in the clone") from None
    ranges = {}
    for req in sorted(declared, key=lambda req: req.marker is not None):  # install_requires first, then extras
        if req.marker is None or "extra" in str(req.marker):
            ranges.setdefault(req.name.lower().replace("_", "-"), f"{req.name}{req.specifier}")
    lines = []
    for name in names:
        key = name.lower().replace("_", "-")
        if key not in ranges:
            raise OperationFailed(f"{name} is not among {DISTRIBUTION}'s requirements; cannot pin it in a Space")
        lines.append(ranges[key])
    return "\n".join(lines) + "\n"


def gradio_version() -> str:
    """The installed gradio's version: the Space card's `sdk_version`, the gradio its app is launched with here."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradio")
    except PackageNotFoundError:
        raise OperationFailed(
            "gradio is not installed: a Space is launched before it is pushed (pip install -e '.[space]')"
        ) from None


def write_space_files(stage: str, app_file: str, needs, card) -> None:
    """app.py, requirements.txt (the ranges of `needs`) and the card (README.md) with the Space metadata the Hub
    reads, into the existing folder `stage`."""
    shutil.copy(app_file, os.path.join(stage, "app.py"))
    with open(os.path.join(stage, "requirements.txt"), "w") as f:
        f.write(space_requirements(needs))
    card.data.sdk = "gradio"
    card.data.sdk_version = gradio_version()
    card.data.app_file = "app.py"
    card.save(os.path.join(stage, "README.md"))
