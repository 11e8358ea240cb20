"""`python -m instructpart_metric leaderboard RESULTS_OR_CARD... --output DIR`: one table of the paper's published
rows, results files and Hub model cards, in the paper's four column groups.

    python -m instructpart_metric leaderboard out/evaluate/pisa/results.json org/pisa-7b README.md --output board
    python -m instructpart_metric leaderboard --hub-tag instructpart --output board     # every tagged model's card

Each argument is a results.json (`pisa_model.evaluate`, `score --json`), a model card file (a `.md`), or a Hub
model id whose card is read with `huggingface_hub.ModelCard.load`; `--hub-tag` adds the models
`HfApi.list_models(filter=TAG)` lists. A card counts when its model-index names InstructPart and holds the
paper's columns (`pisa_model.model_card` writes them); another card is skipped with a warning. The Hub (`HF_ENDPOINT`,
default huggingface.co) is given `--hub-timeout` seconds (default 60) for the list and for each card; past that the
command stops with one line naming what it waited for (exit 1), as it does on a network error. An unknown model id,
or a model without a README.md card, is bad input (exit 2).

Rows are ranked together only when they are comparable: the published rows were measured on the official test
split, so a row whose data fingerprint is not that split's (`paper.why_not_ranked`) is marked and never ranked,
and the ORPS columns of a row scored with another ORPS form than the board's (`--orps-form`) are marked and not
ranked. DIR gets `leaderboard.html` (sortable by any column, marks and provenance shown), `leaderboard.json` and
`space/` (a Gradio Space app showing the same table: `python DIR/space/app.py`).
"""

import html
import os
import sys
import threading

from instructpart_dataset.toolbox.cli_errors import OperationFailed

from .core import METRIC_KEYS
from .paper import COLUMN_GROUPS, DEFAULT_ORPS_FORM, PAPER_COLUMNS, check_orps_form, published_results, why_not_ranked

BENCHMARK = "InstructPart"
PUBLISHED_SOURCE = "published"
NAME_COLUMN = "method"
DEFAULT_HUB_TIMEOUT = 60.0
ORPS_COLUMNS = tuple(f"{g.key}_{m}" for g in COLUMN_GROUPS if g.task == "orps" for m in METRIC_KEYS)


def _row(name, source, values, *, family="", orps_form=None, not_ranked=None, provenance=None) -> dict:
    return {
        "name": str(name),
        "source": source,
        "family": family,
        "values": {column: values.get(column) for column in PAPER_COLUMNS},  # percentages as printed, or None
        "orps_form": orps_form,
        "not_ranked": not_ranked,
        "provenance": provenance or {},
    }


def _configs_with_values(values: dict) -> tuple:
    return tuple(sorted({g.task for g in COLUMN_GROUPS for m in METRIC_KEYS if values.get(f"{g.key}_{m}") is not None}))


def published_rows() -> list:
    return [
        _row(row["method"], PUBLISHED_SOURCE, {c: row[c] for c in PAPER_COLUMNS}, family=row["family"])
        for row in published_results(include_average=False)
    ]


def results_row(path: str) -> dict:
    """The row of a results file: its paper columns, ORPS form and provenance."""
    from .results import load_results

    results = load_results(path)
    paper = results["paper"]
    values = {c: None if v is None else round(100 * v, 2) for c, v in (paper.get("columns") or {}).items()}
    block = results.get("provenance") or {}
    model = block.get("model") or {}
    name = model.get("name") or model.get("spec") or os.path.basename(os.path.dirname(os.path.abspath(path)))
    data = block.get("dataset") or {}
    configs = _configs_with_values(values)
    provenance = {
        "file": path,
        "package_version": (block.get("package") or {}).get("version"),
        "data_fingerprints": {c: f.get("fingerprint") for c, f in (data.get("configs") or {}).items()},
        "answer_mode": block.get("answer_mode"),
        "command": block.get("command"),
    }
    return _row(
        name,
        "results",
        values,
        orps_form=paper.get("orps_form"),
        not_ranked=why_not_ranked(block or None, configs) if configs else "no paper column was scored",
        provenance=provenance,
    )


def card_row(card, where: str) -> dict | None:
    """The row of a model card (`huggingface_hub.ModelCard`), or None when its model-index does not name
    InstructPart with the paper's columns."""
    results = [r for r in (card.data.eval_results or []) if str(r.dataset_name or "").startswith(BENCHMARK)]
    columns = [r for r in results if r.metric_config in {g.key for g in COLUMN_GROUPS}]
    if not columns:
        return None
    metric_of = {"giou": "gIoU", "ciou": "cIoU", "precision@50:95": "P@50:95", "precision@50": "P@50"}
    values, fingerprints, forms = {}, {}, set()
    for result in columns:
        metric = metric_of.get(result.metric_type)
        if metric is None:
            continue
        values[f"{result.metric_config}_{metric}"] = float(result.metric_value)
        arguments = result.metric_args or {}
        config = next(g.task for g in COLUMN_GROUPS if g.key == result.metric_config)
        if arguments.get("fingerprint"):
            fingerprints[config] = {"fingerprint": arguments["fingerprint"], "rows": arguments.get("rows")}
        if config == "orps" and arguments.get("orps_form"):
            forms.add(arguments["orps_form"])
    configs = _configs_with_values(values)
    reason = why_not_ranked(fingerprints or None, configs) if configs else "no paper column was scored"
    name = card.data.model_name or where
    provenance = {"card": where, "data_fingerprints": {c: f["fingerprint"] for c, f in fingerprints.items()}}
    orps_form = forms.pop() if len(forms) == 1 else ("mixed" if forms else None)
    return _row(name, "card", values, orps_form=orps_form, not_ranked=reason, provenance=provenance)


class HubUnavailable(OperationFailed):
    """The Hub did not answer in time, or the network failed: the operation failed, not the input (exit 1)."""


def within_hub_timeout(what: str, seconds: float, request):
    """`request()`'s value, or `HubUnavailable` naming `what` when the Hub has not answered within `seconds`.

    huggingface_hub bounds its own requests too loosely for a command line (a card's download retries a stalled
    request six times with 60 s timeouts; a model listing has none), so the whole call gets one deadline. The call
    runs in a daemon thread: one left waiting on a stalled Hub ends with the library's own timeouts or the process."""
    found = {}

    def call():
        try:
            found["value"] = request()
        except BaseException as error:  # handed to the caller's thread
            found["error"] = error

    worker = threading.Thread(target=call, name=f"hub: {what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise HubUnavailable(f"{what}: the Hub did not answer within {seconds:g} s (--hub-timeout)")
    if "error" in found:
        raise found["error"]
    return found["value"]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _load_card(source: str, timeout: float = DEFAULT_HUB_TIMEOUT):
    """The card of a `.md` file, or of a Hub model's README.md."""
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        if os.path.isfile(source):
            return ModelCard.load(source)
        return within_hub_timeout(source, timeout, lambda: ModelCard.load(source))
    except RepositoryNotFoundError:
        raise ValueError(f"{source}: no such model on the Hub (or it is private or gated)") from None
    except (RemoteEntryNotFoundError, RevisionNotFoundError):
        raise ValueError(f"{source}: the model has no README.md model card on the Hub") from None
    except HubUnavailable:
        raise
    except (LocalEntryNotFoundError, HfHubHTTPError, ConnectionError) as error:  # no network, the Hub's 5xx
        raise HubUnavailable(f"{source}: cannot reach the Hub ({_first_line(error)})") from None
    except Exception as error:
        if _is_network_error(error):
            raise HubUnavailable(f"{source}: cannot reach the Hub ({_first_line(error)})") from None
        raise ValueError(f"{source}: cannot read the model card ({_first_line(error)})") from None  # bad YAML


def _is_network_error(error: BaseException) -> bool:
    """A transport failure of huggingface_hub's HTTP client (named as in its httpx exception tree)."""
    return any(cls.__name__ in ("TransportError", "TimeoutException") for cls in type(error).__mro__)


def hub_model_ids(tag: str, api=None, limit: int = 500, timeout: float = DEFAULT_HUB_TIMEOUT) -> list:
    """The ids of the Hub models tagged `tag` (`HfApi.list_models(filter=tag)`, every page)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = api if api is not None else HfApi()
    what = f"--hub-tag {tag}"
    try:
        return within_hub_timeout(what, timeout, lambda: [m.id for m in api.list_models(filter=tag, limit=limit)])
    except HubUnavailable:
        raise
    except Exception as error:
        if isinstance(error, (HfHubHTTPError, ConnectionError)) or _is_network_error(error):
            raise HubUnavailable(f"{what}: cannot list the Hub's models ({_first_line(error)})") from None
        raise


def build_rows(sources: list, *, warn=None, hub_timeout: float = DEFAULT_HUB_TIMEOUT) -> list:
    """Published rows, then one row per results file or card in `sources` (cards without InstructPart columns
    are skipped with a warning through `warn`; a Hub card is waited for at most `hub_timeout` seconds)."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    rows = published_rows()
    for source in sources:
        if source.endswith(".json"):
            rows.append(results_row(source))
            continue
        if not os.path.exists(source) and (source.endswith(".md") or source.count("/") != 1):
            raise FileNotFoundError(f"{source}: no such results file or model card")
        row = card_row(_load_card(source, hub_timeout), source)
        if row is None:
            warn(f"{source}: the model card's model-index names no {BENCHMARK} paper columns; skipped")
            continue
        rows.append(row)
    return rows


def orps_mismatch(row: dict, orps_form: str) -> bool:
    """Whether the row's ORPS columns were scored with another form than the board's (published rows: the paper
    does not say, so they are the reference)."""
    return (
        row["source"] != PUBLISHED_SOURCE
        and any(row["values"][c] is not None for c in ORPS_COLUMNS)
        and (row["orps_form"] != orps_form)
    )


def rankable(row: dict, column: str, orps_form: str) -> bool:
    if row["values"].get(column) is None or row["not_ranked"]:
        return False
    return not (column in ORPS_COLUMNS and orps_mismatch(row, orps_form))


def sort_rows(rows: list, column: str) -> list:
    """Rows by `column`: the name A-Z, a metric highest first; rows without the value last; ties keep their order."""
    if column == NAME_COLUMN:
        return sorted(rows, key=lambda row: row["name"].casefold())
    if column not in PAPER_COLUMNS:
        raise ValueError(f"unknown column {column!r}: expected {NAME_COLUMN} or one of {', '.join(PAPER_COLUMNS)}")
    return sorted(rows, key=lambda row: (row["values"][column] is None, -(row["values"][column] or 0.0)))


def ranks(rows: list, column: str, orps_form: str) -> dict:
    """`{row index: competition rank}` in `column` among the rankable rows (marked rows get none)."""
    eligible = [(k, row["values"][column]) for k, row in enumerate(rows) if rankable(row, column, orps_form)]
    return {k: 1 + sum(other > value for _, other in eligible) for k, value in eligible}


def build_leaderboard(
    sources: list, orps_form: str = DEFAULT_ORPS_FORM, *, warn=None, hub_timeout: float = DEFAULT_HUB_TIMEOUT
) -> dict:
    check_orps_form(orps_form)
    rows = build_rows(sources, warn=warn, hub_timeout=hub_timeout)
    for row in rows:
        row["orps_mismatch"] = orps_mismatch(row, orps_form)
    return {
        "benchmark": BENCHMARK,
        "orps_form": orps_form,
        "groups": [{"key": g.key, "title": g.title, "task": g.task} for g in COLUMN_GROUPS],
        "metrics": list(METRIC_KEYS),
        "columns": list(PAPER_COLUMNS),
        "rows": rows,
    }


def row_marks(row: dict) -> list:
    marks = []
    if row["not_ranked"]:
        marks.append(f"not ranked: {row['not_ranked']}")
    if row.get("orps_mismatch"):
        marks.append(f"ORPS columns not ranked: scored with the {row['orps_form'] or 'unknown'} form")
    return marks


def _provenance_text(row: dict) -> str:
    found = row["provenance"]
    parts = []
    for key in ("file", "card", "package_version", "answer_mode", "command"):
        if found.get(key):
            parts.append(f"{key.replace('_', ' ')}: {found[key]}")
    for config, fingerprint in (found.get("data_fingerprints") or {}).items():
        if fingerprint:
            parts.append(f"{config.upper()} data: {fingerprint[:19]}…")
    if row["orps_form"]:
        parts.append(f"ORPS form: {row['orps_form']}")
    return "; ".join(parts) or "as published in the paper (official test split; ORPS form not stated)"


SCRIPT = r"""
(function () {
  const table = document.getElementById("board");
  const body = table.tBodies[0];
  let current = null, descending = true;
  function value(row, column) {
    if (column === "method") return row.dataset.name.toLowerCase();
    const cell = row.querySelector('td[data-column="' + column + '"]');
    return cell.dataset.value === "" ? null : parseFloat(cell.dataset.value);
  }
  function sortBy(column) {
    descending = column === current ? !descending : column !== "method";
    current = column;
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = value(a, column), y = value(b, column);
      if (x === null || y === null) return (x === null) - (y === null);
      if (x === y) return 0;
      return (x < y ? -1 : 1) * (descending ? -1 : 1);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    const eligible = rows.filter(function (row) {
      const cell = row.querySelector('td[data-column="' + column + '"]');
      return cell && cell.dataset.rankable === "1";
    });
    rows.forEach(function (row) {
      const rank = row.querySelector("td.rank");
      const cell = row.querySelector('td[data-column="' + column + '"]');
      if (column === "method" || !cell || cell.dataset.rankable !== "1") { rank.textContent = "—"; return; }
      const mine = value(row, column);
      rank.textContent = 1 + eligible.filter(function (r) { return value(r, column) > mine; }).length;
    });
    table.querySelectorAll("th[data-column]").forEach(function (th) {
      th.classList.toggle("sorted", th.dataset.column === column);
    });
    document.getElementById("sorted-by").textContent = column;
  }
  table.querySelectorAll("th[data-column]").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th.dataset.column); });
  });
  sortBy("trps_human_gIoU");
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th[data-column] { cursor: pointer; background: #f3f3f3; }
th.sorted { background: #cde; }
tr.published td { background: #fafafa; }
tr.marked td.name::after { content: " †"; color: #b00; }
td.marked { color: #888; text-decoration: underline dotted #b00; }
.note { color: #555; font-size: 12px; }
"""


def render_html(board: dict) -> str:
    e = html.escape
    groups = board["groups"]
    head1 = ['<th rowspan="2">rank</th>', f'<th rowspan="2" data-column="{NAME_COLUMN}">method</th>']
    head1 += ['<th rowspan="2">source</th>']
    head1 += [f'<th colspan="{len(board["metrics"])}">{e(g["title"])}</th>' for g in groups]
    head1 += ['<th rowspan="2">marks and provenance</th>']
    head2 = [
        f'<th data-column="{e(g["key"])}_{e(m)}" title="{e(g["title"])} {e(m)}">{e(m)}</th>'
        for g in groups
        for m in board["metrics"]
    ]
    body = []
    for row in board["rows"]:
        marks = row_marks(row)
        classes = [row["source"]] + (["marked"] if marks else [])
        cells = [
            '<td class="rank">—</td>',
            f'<td class="name">{e(row["name"])}</td>',
            f"<td>{e(row['source'] if row['source'] != PUBLISHED_SOURCE else 'published (' + (row['family'] or '—') + ')')}</td>",
        ]
        for column in board["columns"]:
            value = row["values"][column]
            ok = rankable(row, column, board["orps_form"])
            mark = value is not None and not ok
            cells.append(
                f'<td class="num{" marked" if mark else ""}" data-column="{column}" '
                f'data-value="{"" if value is None else f"{value:.2f}"}" data-rankable="{1 if ok else 0}">'
                f"{'—' if value is None else f'{value:.2f}'}</td>"
            )
        note = "<br>".join(e(m) for m in marks)
        provenance = e(_provenance_text(row))
        cells.append(f'<td class="note">{note}{"<br>" if note else ""}{provenance}</td>')
        body.append(f'<tr class="{" ".join(classes)}" data-name="{e(row["name"])}">{"".join(cells)}</tr>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>InstructPart leaderboard</title><style>{STYLE}</style></head>
<body>
<h1>InstructPart leaderboard</h1>
<p class="note">Percentages. Columns as in the paper (ORPS object-part and object-part-affordance read in the
<b>{e(board["orps_form"])}</b> form; the paper does not say which form its methods received). Click a column to sort
(sorted by <span id="sorted-by"></span>); ranks count only comparable rows: a row marked † was not scored on the
official test split, and dotted cells were scored with another ORPS form; they are shown, never ranked.</p>
<table id="board"><thead><tr>{"".join(head1)}</tr><tr>{"".join(head2)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""


def write_leaderboard(board: dict, output: str) -> str:
    """DIR/leaderboard.html, DIR/leaderboard.json and the Space app in DIR/space; returns the HTML's path."""
    from instructpart_dataset.toolbox.files import write_json_atomic, write_text_atomic

    from .leaderboard_space import write_app

    os.makedirs(output, exist_ok=True)
    page = os.path.join(output, "leaderboard.html")
    write_text_atomic(page, render_html(board))
    write_json_atomic(os.path.join(output, "leaderboard.json"), board)
    write_app(os.path.join(output, "space"), board)
    return page


def run(args) -> int:
    if not args.sources and not args.hub_tag:
        raise ValueError("give results files, model cards or --hub-tag TAG")
    sources = list(args.sources)
    if args.hub_tag:
        sources += hub_model_ids(args.hub_tag, timeout=args.hub_timeout)
    board = build_leaderboard(sources, args.orps_form, hub_timeout=args.hub_timeout)
    page = write_leaderboard(board, args.output)
    yours = [row for row in board["rows"] if row["source"] != PUBLISHED_SOURCE]
    print(f"{len(board['rows']) - len(yours)} published rows and {len(yours)} of yours:")
    for row in yours:
        marks = row_marks(row)
        print(f"  {row['name']} ({row['source']}){': ' + '; '.join(marks) if marks else ''}")
    print(f"wrote {page}, {os.path.join(args.output, 'leaderboard.json')} and {os.path.join(args.output, 'space')}")
    return 0


def positive_seconds(text: str) -> float:
    import argparse

    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def add_source_arguments(parser) -> None:
    """What a leaderboard is built from, shared by this command and `upload.py leaderboard`: the sources, the Hub
    tag, the Hub timeout and the ORPS form."""
    from .paper import add_orps_form_argument

    parser.add_argument("sources", nargs="*", metavar="RESULTS_OR_CARD", help="results.json, card .md or Hub model id")
    parser.add_argument("--hub-tag", metavar="TAG", help="also every Hub model with this tag (HfApi.list_models)")
    parser.add_argument(
        "--hub-timeout",
        type=positive_seconds,
        default=DEFAULT_HUB_TIMEOUT,
        metavar="SECONDS",
        help=f"longest wait for the Hub's model list and for each card (default {DEFAULT_HUB_TIMEOUT:g})",
    )
    add_orps_form_argument(parser)


def add_arguments(parser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="where the page, JSON and Space app go")


__all__ = ["build_leaderboard", "render_html", "sort_rows", "ranks", "write_leaderboard"]
