"""The InstructPart leaderboard Space: the table in `leaderboard.json` (beside this file), sortable by any column.

    python app.py [--port N]

API: `leaderboard(sort_by)` -> the table (rank, method, source, the 16 paper columns, marks) sorted by `sort_by`
("method" or a paper column such as "trps_human_gIoU"); ranks count only the rows the board marks comparable.
Self-contained (gradio and the standard library) so the Space needs nothing else; every request is a sort of a
table read once at start, so its time and memory are bounded by the table's size.
"""

import argparse
import json
import os

try:
    import gradio as gr
except ImportError as error:
    raise ImportError("the leaderboard Space app needs gradio: pip install instructpart[space]") from error

HERE = os.path.dirname(os.path.abspath(__file__))
BOARD, COLUMNS, ORPS_COLUMNS, HEADERS = {}, [], [], []


def load(path=None):
    """Read the table once, when the app starts (`leaderboard.json` beside this file)."""
    with open(path or os.path.join(HERE, "leaderboard.json"), encoding="utf-8") as f:
        BOARD.update(json.load(f))
    COLUMNS[:] = BOARD["columns"]
    ORPS_COLUMNS[:] = [f"{g['key']}_{m}" for g in BOARD["groups"] if g["task"] == "orps" for m in BOARD["metrics"]]
    HEADERS[:] = ["rank", "method", "source", *COLUMNS, "marks"]


def _rankable(row, column):
    if row["values"].get(column) is None or row["not_ranked"]:
        return False
    return not (column in ORPS_COLUMNS and row.get("orps_mismatch"))


def _marks(row):
    marks = [f"not ranked: {row['not_ranked']}"] if row["not_ranked"] else []
    if row.get("orps_mismatch"):
        marks.append(f"ORPS columns not ranked: {row['orps_form']} form")
    return "; ".join(marks)


def leaderboard(sort_by="trps_human_gIoU"):
    if sort_by != "method" and sort_by not in COLUMNS:
        raise gr.Error(f"unknown column {str(sort_by)[:60]!r}: expected method or one of {', '.join(COLUMNS)}")
    rows = BOARD["rows"]
    if sort_by == "method":
        rows = sorted(rows, key=lambda row: row["name"].casefold())
    else:
        rows = sorted(rows, key=lambda row: (row["values"][sort_by] is None, -(row["values"][sort_by] or 0.0)))
    eligible = [row["values"][sort_by] for row in rows if sort_by != "method" and _rankable(row, sort_by)]
    table = []
    for row in rows:
        rank = ""
        if sort_by != "method" and _rankable(row, sort_by):
            rank = 1 + sum(value > row["values"][sort_by] for value in eligible)
        source = row["source"] if row["source"] != "published" else f"published ({row['family'] or '-'})"
        values = ["" if row["values"][c] is None else f"{row['values'][c]:.2f}" for c in COLUMNS]
        table.append([str(rank), row["name"], source, *values, _marks(row)])
    return {"headers": HEADERS, "data": table}


def build() -> gr.Blocks:
    if not BOARD:
        load()
    with gr.Blocks(title="InstructPart leaderboard") as demo:
        gr.Markdown(
            "# InstructPart leaderboard\nPercentages, the paper's four column groups (ORPS in the "
            f"**{BOARD['orps_form']}** form). Rows marked in *marks* are shown, never ranked."
        )
        sort_by = gr.Dropdown(["method", *COLUMNS], value="trps_human_gIoU", label="sort by")
        table = gr.Dataframe(value=leaderboard()["data"], headers=HEADERS, interactive=False, wrap=True)
        sort_by.change(lambda column: leaderboard(column)["data"], sort_by, table, api_name=False)
        gr.Button("sorted table (API)", visible=False).click(
            leaderboard, sort_by, gr.JSON(visible=False), api_name="leaderboard"
        )
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    build().queue(default_concurrency_limit=4, max_size=32).launch(server_port=args.port)


if __name__ == "__main__":
    main()
