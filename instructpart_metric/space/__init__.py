"""The metric Space: `app.py`, staged by `stage_space` beside the renamed module script, the modules it imports
and its card; upload.py launches the stage and pushes it.

Try it locally (it scores with this package's module script and shows its card):

    python -m instructpart_metric.space [--dataset ORG/instructpart] [--port 7860]
    python -m instructpart_metric.space --dataset path/to/hub-export --allow-local-datasets
"""

import os
import shutil

APP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
PACKAGE = os.path.dirname(os.path.dirname(APP_FILE))
MODULE_SCRIPT = os.path.join(PACKAGE, "instructpart_metric.py")
# What the app imports besides gradio (which comes with the card's `sdk_version`).
SPACE_NEEDS = ("evaluate", "datasets", "huggingface_hub", "numpy", "pillow")


def default_dataset_id(repo_id: str) -> str:
    return f"{repo_id.split('/')[0]}/instructpart"


def relative_imports(script: str) -> list:
    """Sibling modules a script imports as `from .name import x` (evaluate copies them beside it)."""
    modules = []
    with open(script) as f:
        for line in f:
            if line.startswith("from .") and " import " in line:
                modules.append(line[len("from .") :].split(" import ")[0].strip())
    return sorted(set(modules))


def stage_space(stage: str, repo_id: str, dataset_id: str | None = None) -> None:
    """The evaluate module as a Space, in the empty folder `stage`: `<repo name>.py` (so `evaluate.load(repo_id)`
    finds it), the modules it imports (core.py, whose mask reader the app uses too), its card (listing the
    dataset whose zips the app scores), the app and requirements."""
    from huggingface_hub import RepoCard

    from instructpart_dataset.toolbox.space_files import write_space_files

    shutil.copy(MODULE_SCRIPT, os.path.join(stage, f"{repo_id.split('/')[-1]}.py"))
    for module in relative_imports(MODULE_SCRIPT):
        shutil.copy(os.path.join(PACKAGE, f"{module}.py"), os.path.join(stage, f"{module}.py"))
    card = RepoCard.load(os.path.join(PACKAGE, "README.md"))
    card.data.datasets = [dataset_id or default_dataset_id(repo_id)]
    write_space_files(stage, APP_FILE, SPACE_NEEDS, card)
