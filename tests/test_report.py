"""The HTML report: its numbers against a naive loop over the masks, and its page in headless Chromium."""

import json
import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from html import escape, unescape
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from instructpart_dataset import load_instructpart
from instructpart_dataset.schema import CONFIGS, INSTRUCTION_TYPES, LABEL_COLUMNS
from instructpart_metric import StreamingScorer, paper, report
from instructpart_metric.cli import main as metric_main

THRESHOLDS = [Fraction(k, 20) for k in range(10, 20)]  # 0.50, 0.55, ..., 0.95, exactly


def naive_metrics(pairs):
    """gIoU, cIoU, P@50, P@50:95 of a list of (prediction, truth) bool masks, by plain loops."""
    ious, exact, total_i, total_u = [], [], 0, 0
    for prediction, truth in pairs:
        i = int(np.logical_and(prediction, truth).sum())
        u = int(np.logical_or(prediction, truth).sum())
        total_i, total_u = total_i + i, total_u + u
        ious.append(i / u if u else 1.0)
        exact.append(Fraction(i, u) if u else Fraction(1))
    return {
        "gIoU": float(np.mean(ious)),
        "cIoU": total_i / total_u,
        "P@50": sum(e >= THRESHOLDS[0] for e in exact) / len(exact),
        "P@50:95": float(np.mean([sum(e >= t for e in exact) / len(exact) for t in THRESHOLDS])),
    }


def predict(name, row):
    """Two hand-made models: one finds named parts but not tasks, one floods the image."""
    truth = np.asarray(row["mask"], dtype=bool)
    if name == "full":
        return np.ones_like(truth)
    if row["instruction_type"] in CONFIGS["orps"]:
        return truth.copy()
    shifted = np.zeros_like(truth)
    shifted[:, 3:] = truth[:, :-3]  # a near miss on task instructions
    return shifted


MODELS = ("full", "referrer")
PAPER_GROUPS = {
    "orps_object_part": "part_question",
    "orps_object_part_affordance": "part_affordance_question",
    "trps_human": "human",
    "trps_gpt4": "gpt4",
}


@pytest.fixture(scope="module")
def scored(release_dir, tmp_path_factory):
    """Datasets, prediction folders on disk, and the expected numbers from the naive loop."""
    datasets = [load_instructpart(release_dir, config=c, split="test") for c in CONFIGS]
    root = tmp_path_factory.mktemp("predictions")
    pairs = {m: {} for m in MODELS}
    scorers = {m: StreamingScorer() for m in MODELS}
    for dataset in datasets:
        for row in dataset:
            truth = np.asarray(row["mask"], dtype=bool)
            for model in MODELS:
                prediction = predict(model, row)
                folder = root / model / row["instruction_type"]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(prediction.astype(np.uint8) * 255).save(folder / f"{row['id']}.png")
                pairs[model].setdefault(row["instruction_type"], []).append((prediction, truth, row))
                key = f"{row['instruction_type']}/{row['id']}"
                scorers[model].add(prediction, truth, labels={"instruction_type": row["instruction_type"]}, key=key)
    predictions = {m: str(root / m) for m in MODELS}
    return datasets, predictions, pairs, scorers


def expected(pairs, model):
    by_type = {t: naive_metrics([(p, t_) for p, t_, _ in rows]) for t, rows in pairs[model].items()}
    by_config = {
        c: naive_metrics([(p, t_) for t in types for p, t_, _ in pairs[model][t]]) for c, types in CONFIGS.items()
    }
    return by_type, by_config


class CellParser(HTMLParser):
    """Collects `data-value` of every metric cell as {(model, row): {metric: value}}."""

    def __init__(self):
        super().__init__()
        self.cells, self.row, self.images, self.tables = {}, None, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-row" in attrs:
            self.row = (attrs["data-model"], attrs["data-row"])
        elif tag == "td" and self.row and "data-value" in attrs:
            row = self.row + ((attrs["data-config"],) if "data-config" in attrs else ())
            self.cells.setdefault(row, {})[attrs["data-metric"]] = float(attrs["data-value"])
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append(attrs.get("id"))


@pytest.fixture(scope="module")
def written(scored, tmp_path_factory):
    datasets, predictions, _, scorers = scored
    out = tmp_path_factory.mktemp("report")
    path = report.write_report(str(out), scorers, predictions, datasets, title="Test report")
    return path


def test_tables_and_gap_equal_a_naive_loop(scored, written):
    _, _, pairs, _ = scored
    parser = CellParser()
    with open(written, encoding="utf-8") as f:
        parser.feed(f.read())
    for model in MODELS:
        by_type, by_config = expected(pairs, model)
        for kind in INSTRUCTION_TYPES:
            for key, value in by_type[kind].items():
                assert parser.cells[(model, kind)][key] == pytest.approx(value, abs=1e-12), (model, kind, key)
        for config in CONFIGS:
            for key, value in by_config[config].items():
                assert parser.cells[(model, config)][key] == pytest.approx(value, abs=1e-12), (model, config, key)
        # The paper's four column groups read human, gpt4 and the question-form ORPS variants (2, 3).
        for group, kind in PAPER_GROUPS.items():
            for key, value in by_type[kind].items():
                assert parser.cells[(model, "paper", group)][key] == pytest.approx(value, abs=1e-12), (model, group)
        for key in by_config["trps"]:
            gap = by_config["orps"][key] - by_config["trps"][key]
            assert parser.cells[(model, "gap")][key] == pytest.approx(gap, abs=1e-12), (model, key)
    # The hand-made referrer is perfect on named parts: its gap must be large and positive.
    assert parser.cells[("referrer", "orps")]["gIoU"] == 1.0
    assert parser.cells[("referrer", "gap")]["gIoU"] > 0.1
    assert parser.cells[("full", "gap")]["gIoU"] == pytest.approx(0.0, abs=1e-12)


def test_printed_percentages_round_the_exact_values(written):
    with open(written, encoding="utf-8") as f:
        text = f.read()

    class Pairs(HTMLParser):
        found, current = [], None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.current = float(attrs["data-value"]) if tag == "td" and "data-value" in attrs else None

        def handle_data(self, data):
            if self.current is not None and data.strip():
                self.found.append((self.current, data.strip()))
                self.current = None

    parser = Pairs()
    parser.feed(text)
    assert len(parser.found) >= len(MODELS) * (len(INSTRUCTION_TYPES) + 3) * 4
    for value, shown in parser.found:
        assert float(shown) == pytest.approx(100 * value, abs=0.005 + 1e-9)
        assert len(shown.split(".")[1]) == 2


def test_breakdowns_and_examples_equal_a_naive_loop(scored, written):
    _, _, pairs, _ = scored
    with open(os.path.join(os.path.dirname(written), "report.json")) as f:
        numbers = json.load(f)["models"]
    for model in MODELS:
        for config, types in CONFIGS.items():
            rows = [(p, t, row) for kind in types for p, t, row in pairs[model][kind]]
            for name in LABEL_COLUMNS:
                values = {row[name] for _, _, row in rows}
                for value in values:
                    chosen = [(p, t) for p, t, row in rows if row[name] == value]
                    assert numbers[model]["breakdown"][config][name][value] == pytest.approx(
                        naive_metrics(chosen)["gIoU"], abs=1e-12
                    )
            # best / median / worst by IoU, ties broken by instruction type then id
            ranked = sorted(
                (
                    (naive_metrics([(p, t)])["gIoU"], INSTRUCTION_TYPES.index(row["instruction_type"]), row["id"])
                    for p, t, row in rows
                )
            )
            examples = numbers[model]["examples"][config]
            for rank, item in (("worst", ranked[0]), ("median", ranked[len(ranked) // 2]), ("best", ranked[-1])):
                assert (examples[rank]["iou"], examples[rank]["instruction_type"], examples[rank]["id"]) == (
                    pytest.approx(item[0], abs=1e-12),
                    INSTRUCTION_TYPES[item[1]],
                    item[2],
                )


def test_example_cards_quote_their_instruction(scored, written):
    datasets, _, _, _ = scored
    with open(written, encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(os.path.dirname(written), "report.json")) as f:
        numbers = json.load(f)["models"]
    instructions = {(r["instruction_type"], r["id"]): r["instruction"] for d in datasets for r in d.to_list()}
    for model in MODELS:
        for config in CONFIGS:
            for pick in numbers[model]["examples"][config].values():
                quoted = instructions[(pick["instruction_type"], pick["id"])]
                assert f"“{escape(quoted)}”" in text


def test_published_rows_stand_apart_from_yours_with_ranks_on_the_official_split(scored, tmp_path):
    datasets, predictions, _, scorers = scored
    # The scored data recorded as the official test split: ranks are given (paper.why_not_ranked).
    official = {
        "command": "test",
        "orps_form": "question",
        "dataset": {"split": "test", "configs": paper.OFFICIAL_TEST_SPLIT},
    }
    written = report.write_report(str(tmp_path), scorers, predictions, datasets, provenance=official)
    with open(written, encoding="utf-8") as f:
        text = f.read()

    class Rows(HTMLParser):
        rows, current = [], None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "tr" and attrs.get("data-row", "").startswith(("published", "paper")):
                self.current = {"class": attrs.get("class"), "model": attrs["data-model"], "published": []}
                self.rows.append(self.current)
            elif tag == "td" and self.current is not None and "data-published" in attrs:
                self.current["published"].append(float(attrs["data-published"]))
            elif tag == "span" and self.current is not None and attrs.get("class") == "rank":
                self.current.setdefault("ranks", []).append(attrs["title"])

        def handle_endtag(self, tag):
            if tag == "tr":
                self.current = None

    parser = Rows()
    parser.feed(text)
    published = [r for r in parser.rows if r["class"] == "published"]
    ours = [r for r in parser.rows if r["class"] == "yours"]
    assert [r["model"] for r in published] == [r["method"] for r in paper.published_results(include_average=False)]
    for row, truth in zip(published, paper.published_results(include_average=False)):
        assert row["published"] == [truth[c] for c in paper.PAPER_COLUMNS]
    assert [r["model"] for r in ours] == list(MODELS)
    # 12 ranked entries per column (10 published + 2 models); the referrer is perfect on named parts.
    ranks = dict(zip(paper.PAPER_COLUMNS, ours[1]["ranks"]))
    assert ranks["orps_object_part_gIoU"] == "rank 1st of 12"
    assert parser.rows[-1]["model"] == "Average" and "average" in parser.rows[-1]["class"]
    assert "ORPS form: question" in text and 'id="not-ranked"' not in text


def test_a_report_on_other_data_shows_the_published_rows_without_ranks_and_says_why(scored, written):
    datasets, _, _, _ = scored
    with open(written, encoding="utf-8") as f:
        text = f.read()
    assert 'class="rank"' not in text and 'data-row="published"' in text  # no provenance: nothing to rank on
    assert "No ranks against the published rows: no dataset fingerprint recorded" in unescape(text)
    with open(os.path.join(os.path.dirname(written), "report.json")) as f:
        assert json.load(f)["not_ranked"] == "no dataset fingerprint recorded"


def test_cli_scores_folders_like_the_scorer(scored, release_dir, tmp_path):
    _, predictions, pairs, _ = scored
    out = tmp_path / "cli"
    argv = ["--data-dir", release_dir, "--out", str(out)] + [f"--predictions={m}={p}" for m, p in predictions.items()]
    assert metric_main(["report", *argv, "--orps-form", "name"]) == 0
    with open(out / "report.json") as f:
        saved = json.load(f)
    numbers = saved["models"]
    assert saved["orps_form"] == "name" and saved["provenance"]["orps_form"] == "name"
    assert (
        saved["provenance"]["command"] == "python -m instructpart_metric report " + " ".join(argv) + " --orps-form name"
    )
    with open(out / "report.html", encoding="utf-8") as f:
        page = f.read()
    for config in CONFIGS:
        fingerprint = saved["provenance"]["dataset"]["configs"][config]["fingerprint"]
        assert f"{config} test" in page and fingerprint in page  # the footer says where the numbers came from
    for model in MODELS:
        by_type, _ = expected(pairs, model)
        assert numbers[model]["paper"]["orps_object_part_gIoU"] == pytest.approx(
            by_type["part_name"]["gIoU"], abs=1e-12
        )
    for model in MODELS:
        by_type, by_config = expected(pairs, model)
        for key, value in by_config["trps"].items():
            assert numbers[model]["by_config"]["trps"][key] == pytest.approx(value, abs=1e-12)
        for key, value in by_type["part_name"].items():
            assert numbers[model]["by_instruction_type"]["part_name"][key] == pytest.approx(value, abs=1e-12)


def test_cli_missing_prediction_is_a_one_line_error(scored, release_dir, tmp_path, capsys):
    _, predictions, _, _ = scored
    broken = tmp_path / "broken"
    shutil.copytree(predictions["full"], broken)
    victim = sorted((broken / "gpt4").iterdir())[0]
    victim.unlink()
    out = tmp_path / "out"
    assert metric_main(["report", "--data-dir", release_dir, "--out", str(out), "--predictions", f"m={broken}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(victim) in error and "missing" in error
    assert not (out / "report.html").exists()


def test_wrong_size_prediction_names_the_file(scored, release_dir, tmp_path, capsys):
    _, predictions, _, _ = scored
    broken = tmp_path / "broken"
    shutil.copytree(predictions["full"], broken)
    victim = sorted((broken / "human").iterdir())[0]
    Image.new("L", (5, 7), 255).save(victim)
    argv = ["report", "--data-dir", release_dir, "--out", str(tmp_path / "o"), "--predictions", f"m={broken}"]
    assert metric_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(victim) in error and "5x7" in error


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

# Runs after every image has loaded (the load event waits for them) and writes what the browser
# saw into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "probe";
  const table = document.getElementById("results-table");
  probe.textContent = JSON.stringify({
    images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]),
    tableHeight: table ? table.getBoundingClientRect().height : 0,
    tableRows: table ? table.rows.length : 0,
    tableText: table ? table.innerText : "",
  });
  document.body.appendChild(probe);
});
</script>"""


def render_probe(html_path: str) -> dict:
    probed = html_path.replace(".html", ".probe.html")
    with open(html_path, encoding="utf-8") as f:
        text = f.read()
    with open(probed, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", PROBE + "</body>"))
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1300,2000",
            "--virtual-time-budget=5000",
        ]
        result = subprocess.run(
            [CHROMIUM, *flags, "--dump-dom", "file://" + probed], capture_output=True, text=True, timeout=120
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        os.remove(probed)
    start = result.stdout.find('<pre id="probe">')
    assert start >= 0, f"the page did not finish loading in Chromium: {result.stderr[-500:]}"
    end = result.stdout.find("</pre>", start)
    return json.loads(unescape(result.stdout[start + len('<pre id="probe">') : end]))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium)")
def test_page_renders_every_image_and_the_table_in_chromium(written):
    seen = render_probe(written)
    # the chart against the published methods, 4 bar charts + per model and config: best, median, worst x
    # (image, truth, prediction)
    assert len(seen["images"]) == 1 + len(LABEL_COLUMNS) + len(MODELS) * len(CONFIGS) * 3 * 3
    broken = [alt for complete, width, height, alt in seen["images"] if not (complete and width > 0 and height > 0)]
    assert not broken, f"broken images: {broken}"
    assert seen["tableHeight"] > 100
    assert seen["tableRows"] == 1 + len(MODELS) * (1 + len(INSTRUCTION_TYPES) + len(CONFIGS))
    assert "part_affordance_question" in seen["tableText"] and "TRPS (all)" in seen["tableText"]


def test_a_trps_only_folder_reports_with_config_trps_and_says_so_without_it(scored, release_dir, tmp_path, capsys):
    _, predictions, pairs, _ = scored
    trps_only = tmp_path / "trps-only"
    for kind in CONFIGS["trps"]:
        shutil.copytree(os.path.join(predictions["referrer"], kind), trps_only / kind)
    argv = ["report", "--data-dir", release_dir, "--predictions", f"m={trps_only}"]
    assert metric_main([*argv, "--out", str(tmp_path / "both")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "part_question" in error and "pass --config" in error
    assert metric_main([*argv, "--out", str(tmp_path / "trps"), "--config", "trps"]) == 0
    with open(tmp_path / "trps" / "report.json") as f:
        numbers = json.load(f)["models"]["m"]
    assert list(numbers["by_config"]) == ["trps"]
    _, by_config = expected(pairs, "referrer")
    assert numbers["by_config"]["trps"]["gIoU"] == pytest.approx(by_config["trps"]["gIoU"], abs=1e-12)
    assert numbers["paper"]["orps_object_part_gIoU"] is None


def test_the_report_command_prints_the_paper_table_without_ranks_on_a_generated_release(
    scored, release_dir, tmp_path, capsys
):
    _, predictions, pairs, _ = scored
    out = tmp_path / "printed"
    argv = ["report", "--data-dir", release_dir, "--out", str(out)]
    assert metric_main([*argv, *(f"--predictions={m}={p}" for m, p in predictions.items())]) == 0
    printed = capsys.readouterr().out
    assert "| method" in printed and "| LISA" in printed and "Average (as printed)" in printed
    for model in MODELS:
        row = next(line for line in printed.splitlines() if line.startswith(f"| * {model} "))
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        by_type, _ = expected(pairs, model)
        columns = [by_type[PAPER_GROUPS[c.rsplit("_", 1)[0]]][c.rsplit("_", 1)[1]] for c in paper.PAPER_COLUMNS]
        assert cells == [f"{100 * value:.2f}" for value in columns]
    entries = len(load_instructpart(release_dir, "trps", "test")) // 2
    assert f"No ranks against the published rows: not the official test split: {entries} of 600 entries" in printed
    assert " of 12" not in printed and " of 11" not in printed
