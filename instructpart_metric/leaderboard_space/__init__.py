"""The leaderboard as a Gradio Space: `app.py` (self-contained: gradio and the standard library) beside the
`leaderboard.json` that `python -m instructpart_metric leaderboard` writes. `write_app` puts both in a folder
(`python FOLDER/app.py` serves it); `stage_space` adds the Space card and requirements for `upload.py leaderboard`."""

import json
import os
import shutil

APP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
DATA_FILE = "leaderboard.json"


def write_app(folder: str, board: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    shutil.copy(APP_FILE, os.path.join(folder, "app.py"))
    with open(os.path.join(folder, DATA_FILE), "w", encoding="utf-8") as f:
        json.dump(board, f, indent=1)


def stage_space(stage: str, board: dict) -> None:
    """A complete Space folder in `stage` (emptied first): app, data, requirements.txt (empty: the app needs only
    gradio, which the card's `sdk_version` pins to the gradio it is launched with here) and the card."""
    from huggingface_hub import SpaceCard, SpaceCardData

    from instructpart_dataset.toolbox.space_files import gradio_version

    if os.path.exists(stage):
        shutil.rmtree(stage)
    write_app(stage, board)
    with open(os.path.join(stage, "requirements.txt"), "w", encoding="utf-8") as f:
        f.write("")
    data = SpaceCardData(
        title="InstructPart leaderboard",
        emoji="🏆",
        colorFrom="blue",
        colorTo="gray",
        sdk="gradio",
        sdk_version=gradio_version(),
        app_file="app.py",
        pinned=False,
        tags=["instructpart", "leaderboard", "part-segmentation"],
    )
    yours = sum(row["source"] != "published" for row in board["rows"])
    card = SpaceCard(
        f"---\n{data.to_yaml()}\n---\n\n"
        f"The InstructPart leaderboard: the paper's published rows and {yours} more, in the paper's four column "
        "groups, sortable by any column. Rows not scored on the official test split, and ORPS columns scored with "
        "another ORPS form, are marked and never ranked. Built by `python -m instructpart_metric leaderboard`.\n"
    )
    card.save(os.path.join(stage, "README.md"))
