"""The leaderboard from two results files and one model card: rows, marks for other data and ORPS forms, order and
ranks per column (against values worked out by hand from the published table), a card without model-index
skipped with a warning, escaped names; cards read from the loopback fake Hub by model id and by --hub-tag, an unknown
model and a stalled Hub failing in one line; the Space served and queried through gradio_client; the page sorted by
clicking in headless Chromium, with a screenshot."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from fake_hub import FakeHub

from instructpart_metric import leaderboard
from instructpart_metric.paper import OFFICIAL_TEST_SPLIT, PAPER_COLUMNS, published_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
EVIL = '<script>alert("x")</script> & co'
OFFICIAL = {config: dict(found) for config, found in OFFICIAL_TEST_SPLIT.items()}
TOKEN = "hf_leaderboard_test_token"
PROG = "python -m instructpart_metric leaderboard"


def _results(path, name, value, fingerprints, orps_form="question"):
    """A results file whose 16 paper columns all hold `value` (a fraction)."""
    from instructpart_metric.provenance import provenance

    block = provenance(
        f"python -m pisa_model.evaluate --model {name}",
        orps_form,
        {"source": "/data", "split": "test", "configs": fingerprints},
        model={"spec": name, "name": name, "checkpoints": {}},
        answer_mode="teacher-forced",
    )
    results = {
        "configs": {"trps": {"all": {}}, "orps": {"all": {}}},
        "paper": {"orps_form": orps_form, "columns": dict.fromkeys(PAPER_COLUMNS, value)},
        "provenance": block,
    }
    path.write_text(json.dumps(results))
    return str(path)


def _card(path, name, percent, orps_form, tags=None):
    """A card whose model-index holds the 16 paper columns: `percent`, or `percent[column]` when it is a dict."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from instructpart_metric.paper import COLUMN_GROUPS

    ids = {"gIoU": "giou", "cIoU": "ciou", "P@50:95": "precision@50:95", "P@50": "precision@50"}
    results = [
        EvalResult(
            task_type="image-segmentation",
            dataset_type="org/instructpart",
            dataset_name="InstructPart",
            dataset_config=group.task,
            dataset_split="test",
            metric_type=metric_id,
            metric_name=f"{metric} ({group.title})",
            metric_config=group.key,
            metric_args={"orps_form": orps_form, **OFFICIAL[group.task]},
            metric_value=percent[f"{group.key}_{metric}"] if isinstance(percent, dict) else percent,
        )
        for group in COLUMN_GROUPS
        for metric, metric_id in ids.items()
    ]
    card = ModelCard.from_template(
        ModelCardData(model_name=name, eval_results=results, tags=tags),
        template_str="---\n{{ card_data }}\n---\n\n# card\n",
    )
    card.save(str(path))
    return str(path)


@pytest.fixture
def sources(tmp_path):
    ranked = _results(tmp_path / "a.json", EVIL, 0.5012, OFFICIAL)  # official split: ranked
    # 8 entries: 16 TRPS rows (2 instructions each) and 32 ORPS rows (4 each)
    other = {c: {"rows": n, "fingerprint": "sha256:" + "0" * 64} for c, n in (("trps", 16), ("orps", 32))}
    unranked = _results(tmp_path / "b.json", "tiny-pisa", 0.9, other)  # would be first: other data
    card = _card(tmp_path / "card.md", "org/pisa-name-form", 30.0, "name")  # official data, ORPS by name
    bare = tmp_path / "bare.md"
    bare.write_text("---\nlicense: mit\n---\n\n# no model-index\n")
    return [ranked, unranked, card, str(bare)]


def test_rows_marks_order_and_ranks(sources):
    warnings = []
    board = leaderboard.build_leaderboard(sources, "question", warn=warnings.append)
    assert warnings == [f"{sources[3]}: the model card's model-index names no InstructPart paper columns; skipped"]
    published = published_results(include_average=False)
    rows = board["rows"]
    assert [r["name"] for r in rows] == [p["method"] for p in published] + [EVIL, "tiny-pisa", "org/pisa-name-form"]
    ours, other, card = rows[-3:]
    assert ours["not_ranked"] is None and not ours["orps_mismatch"]
    assert other["not_ranked"] == "not the official test split: 8 of 600 entries"
    assert card["not_ranked"] is None and card["orps_mismatch"] and card["values"]["trps_human_gIoU"] == 30.0
    assert ours["provenance"]["command"] == f"python -m pisa_model.evaluate --model {EVIL}"
    assert ours["provenance"]["answer_mode"] == "teacher-forced" and ours["provenance"]["package_version"]
    assert ours["provenance"]["data_fingerprints"]["trps"] == OFFICIAL["trps"]["fingerprint"]

    for column in ("trps_human_gIoU", "orps_object_part_cIoU", "trps_gpt4_P@50"):
        by_hand = sorted(
            [(p[column], p["method"]) for p in published]
            + [(50.12, EVIL), (90.0, "tiny-pisa"), (30.0, "org/pisa-name-form")],
            key=lambda pair: -pair[0],
        )
        assert [r["name"] for r in leaderboard.sort_rows(rows, column)] == [name for _, name in by_hand]
        found = leaderboard.ranks(rows, column, "question")
        rank_of = {rows[k]["name"]: rank for k, rank in found.items()}
        assert "tiny-pisa" not in rank_of  # other data: shown, never ranked
        assert rank_of[EVIL] == 1 + sum(p[column] > 50.12 for p in published) + (
            30.0 > 50.12 and not column.startswith("orps")
        )
        if column.startswith("orps"):
            assert "org/pisa-name-form" not in rank_of  # another ORPS form: not ranked in ORPS columns
        else:
            assert rank_of["org/pisa-name-form"] == 1 + sum(p[column] > 30.0 for p in published) + 1
    names = [r["name"] for r in rows]
    assert [r["name"] for r in leaderboard.sort_rows(rows, "method")] == sorted(names, key=str.lower)


def test_the_page_escapes_names_and_marks_rows(sources, tmp_path):
    board = leaderboard.build_leaderboard(sources, "question", warn=lambda message: None)
    page = leaderboard.render_html(board)
    assert EVIL not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert "not ranked: not the official test split: 8 of 600 entries" in page
    assert "ORPS columns not ranked: scored with the name form" in page
    assert page.count("<script>") == 1  # only the page's own sorting script


def test_command_writes_page_json_and_space(sources, tmp_path):
    out = tmp_path / "board"
    completed = subprocess.run(
        [sys.executable, "-m", "instructpart_metric", "leaderboard", *sources, "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "warning:" in completed.stderr and "skipped" in completed.stderr
    assert "10 published rows and 3 of yours" in completed.stdout
    assert {"leaderboard.html", "leaderboard.json", "space"} <= set(os.listdir(out))
    assert set(os.listdir(out / "space")) == {"app.py", "leaderboard.json"}
    missing = subprocess.run(
        [sys.executable, "-m", "instructpart_metric", "leaderboard", str(tmp_path / "nope.json"), "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"python -m instructpart_metric leaderboard: error: {tmp_path / 'nope.json'}: results file not found"
    )


@pytest.mark.slow
def test_the_space_serves_the_table_through_gradio_client(sources, tmp_path):
    pytest.importorskip("gradio")
    from gradio_client import Client

    from instructpart_dataset.toolbox.fresh_process import serve_isolated
    from instructpart_metric.leaderboard_space import write_app

    board = leaderboard.build_leaderboard(sources, "question", warn=lambda message: None)
    write_app(str(tmp_path / "space"), board)
    with serve_isolated(str(tmp_path / "space" / "app.py")) as app:
        client = Client(app.url, verbose=False, download_files=str(tmp_path / "downloads"))
        table = client.predict("trps_human_gIoU", api_name="/leaderboard")
    names = [row[1] for row in table["data"]]
    expected = leaderboard.sort_rows(board["rows"], "trps_human_gIoU")
    assert names == [row["name"] for row in expected]
    found = dict(zip(names, (row[0] for row in table["data"])))
    rows = board["rows"]
    ranks = {rows[k]["name"]: str(rank) for k, rank in leaderboard.ranks(rows, "trps_human_gIoU", "question").items()}
    assert {name: rank for name, rank in found.items() if rank} == ranks and found["tiny-pisa"] == ""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no system chromium")
def test_the_page_sorts_in_chromium(sources, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    board = leaderboard.build_leaderboard(sources, "question", warn=lambda message: None)
    page_path = leaderboard.write_leaderboard(board, str(tmp_path / "board"))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1900, "height": 900})
            page.goto(f"file://{page_path}")
            for column in ("orps_object_part_cIoU", "trps_human_gIoU"):
                page.click(f'th[data-column="{column}"]')
                shown = page.eval_on_selector_all("#board tbody tr", "rows => rows.map(r => r.dataset.name)")
                assert shown == [r["name"] for r in leaderboard.sort_rows(board["rows"], column)]
                ranks = page.eval_on_selector_all("#board tbody tr td.rank", "cells => cells.map(c => c.textContent)")
                expected = leaderboard.ranks(leaderboard.sort_rows(board["rows"], column), column, "question")
                assert ranks == [str(expected[k]) if k in expected else "—" for k in range(len(shown))]
            assert page.inner_text("#board tbody tr:first-child td.name") == "tiny-pisa"  # shown first, unranked
            page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
        finally:
            browser.close()
    assert os.path.getsize(tmp_path / "leaderboard.png") > 10_000


@pytest.mark.slow
def test_upload_stages_launches_and_queries_the_leaderboard_space(sources, tmp_path, capsys):
    pytest.importorskip("gradio")
    sys.path.insert(0, ROOT)
    import upload

    stage_root = tmp_path / "staging"
    code = upload.main(["leaderboard", "--repo-id", "org/board", *sources[:3], "--stage", str(stage_root), "--dry-run"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "would create public space repo org/board" in printed and "dry run: nothing pushed" in printed
    assert "queried /leaderboard sorted by trps_human_gIoU: its " in printed and "; None" not in printed
    stage = stage_root / "leaderboard" / "board"
    assert set(os.listdir(stage)) == {"README.md", "app.py", "leaderboard.json", "requirements.txt"}
    assert "sdk: gradio" in (stage / "README.md").read_text()


# Cards on the loopback fake Hub, read by the command in a subprocess pointed at it with HF_ENDPOINT.

HUB_CARD_VALUES = {column: round(20.0 + 1.25 * k, 2) for k, column in enumerate(PAPER_COLUMNS)}


def _columns_read_by_hand(readme: str) -> dict:
    """The paper columns of a card's model-index, read from its YAML without huggingface_hub: metric `config` is the
    column group, metric `type` the metric."""
    names = {"giou": "gIoU", "ciou": "cIoU", "precision@50:95": "P@50:95", "precision@50": "P@50"}
    meta = yaml.safe_load(readme.split("---\n")[1])
    return {
        f"{metric['config']}_{names[metric['type']]}": metric["value"]
        for result in meta["model-index"][0]["results"]
        if result["dataset"]["name"] == "InstructPart"
        for metric in result["metrics"]
    }


@pytest.fixture
def hub_client_online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1; these tests reach only the loopback fake Hub."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def fake_hub(tmp_path, hub_client_online):
    """The fake Hub (one model per page of the model list, so the client follows the Link header) holding
    org/pisa-hub (an InstructPart model-index, tagged instructpart), org/untagged (the same card, no tag) and
    org/no-index (tagged, no model-index), all pushed through HfApi."""
    from huggingface_hub import HfApi

    cards = {
        "org/pisa-hub": _card(tmp_path / "hub.md", "PISA from the Hub", HUB_CARD_VALUES, "question", ["instructpart"]),
        "org/untagged": _card(tmp_path / "untagged.md", "untagged", HUB_CARD_VALUES, "question"),
    }
    (tmp_path / "no-index.md").write_text("---\nlicense: mit\ntags:\n- instructpart\n---\n\n# no model-index\n")
    cards["org/no-index"] = str(tmp_path / "no-index.md")
    with FakeHub(TOKEN, page_size=1) as hub:
        api = HfApi(endpoint=hub.url, token=TOKEN)
        for repo_id, path in cards.items():
            api.create_repo(repo_id)
            api.upload_file(path_or_fileobj=path, path_in_repo="README.md", repo_id=repo_id)
        yield hub


def _leaderboard(hub_url, tmp_path, *arguments):
    """The command in a subprocess that reads the Hub at `hub_url` (nothing cached, no token)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(tmp_path / "hf-home"))
    return subprocess.run(
        [sys.executable, "-m", "instructpart_metric", "leaderboard", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # the test fails rather than hangs if the command did
    )


def _board_rows(out):
    with open(out / "leaderboard.json") as f:
        return [row for row in json.load(f)["rows"] if row["source"] != "published"]


def test_a_hub_card_is_read_by_model_id(fake_hub, tmp_path):
    readme = fake_hub.files("model", "org/pisa-hub")["README.md"].decode()
    expected = _columns_read_by_hand(readme)
    assert expected == HUB_CARD_VALUES  # what was pushed is what the Hub holds
    run = _leaderboard(fake_hub.url, tmp_path, "org/pisa-hub", "--output", str(tmp_path / "board"))
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = _board_rows(tmp_path / "board")
    assert row["name"] == "PISA from the Hub" and row["source"] == "card"
    assert row["values"] == expected
    assert row["provenance"]["card"] == "org/pisa-hub" and row["not_ranked"] is None and row["orps_form"] == "question"
    assert ("GET", "/org/pisa-hub/resolve/main/README.md") in fake_hub.requests
    assert "10 published rows and 1 of yours" in run.stdout


def test_hub_tag_reads_every_tagged_card_and_skips_one_without_model_index(fake_hub, tmp_path):
    run = _leaderboard(fake_hub.url, tmp_path, "--hub-tag", "instructpart", "--output", str(tmp_path / "board"))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = _board_rows(tmp_path / "board")
    assert [(row["name"], row["provenance"]["card"]) for row in rows] == [("PISA from the Hub", "org/pisa-hub")]
    assert rows[0]["values"] == _columns_read_by_hand(fake_hub.files("model", "org/pisa-hub")["README.md"].decode())
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: org/no-index: the model card's model-index names no InstructPart paper columns; skipped"
    ]
    listing = [path for method, path in fake_hub.requests if method == "GET" and path == "/api/models"]
    assert len(listing) == 2  # two tagged models, one per page: the Link header was followed
    reads = [path for method, path in fake_hub.requests if method in ("GET", "HEAD")]
    assert not any("org/untagged" in path for path in reads)  # listed under no tag asked for: never read


def test_an_unknown_hub_model_is_one_line_naming_it(fake_hub, tmp_path):
    out = tmp_path / "board"
    run = _leaderboard(fake_hub.url, tmp_path, "org/pisa-hub", "org/missing", "--output", str(out))
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines() == [
        f"{PROG}: error: org/missing: no such model on the Hub (or it is private or gated)"
    ]
    assert not out.exists()  # nothing written


@pytest.mark.parametrize(
    "stall_on, arguments, waited_for",
    [
        ("/resolve/", ["org/pisa-hub"], "org/pisa-hub"),
        ("/api/models", ["--hub-tag", "instructpart"], "--hub-tag instructpart"),
    ],
)
def test_a_stalled_hub_stops_the_command_after_its_timeout_in_one_line(
    tmp_path, hub_client_online, stall_on, arguments, waited_for
):
    out = tmp_path / "board"
    with FakeHub(TOKEN, stall_on=stall_on) as hub:
        run = _leaderboard(hub.url, tmp_path, *arguments, "--hub-timeout", "1.5", "--output", str(out))
        never_answered = [path for method, path in hub.requests if method.endswith("(never answered)")]
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.stderr.strip().splitlines() == [
        f"{PROG}: error: {waited_for}: the Hub did not answer within 1.5 s (--hub-timeout)"
    ]
    assert never_answered and all(stall_on in path for path in never_answered)
    assert not out.exists()


def test_hub_timeout_must_be_positive(capsys):
    from instructpart_metric.cli import build_parser

    for bad in ("0", "-1", "inf", "soon"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["leaderboard", "org/x", "--hub-timeout", bad, "--output", "o"])
        assert exit_info.value.code == 2
        assert f"argument --hub-timeout: {bad!r} is not a positive number of seconds" in capsys.readouterr().err
    assert build_parser().parse_args(["leaderboard", "org/x", "--output", "o"]).hub_timeout == 60.0
