"""The built-in demo end to end, at a smaller setting: files, the tiny PISA against the floors, and the
report's numbers against the scoring CLI's on the same predictions."""

import json
import os
from html.parser import HTMLParser

import pytest

from instructpart_dataset.schema import CONFIGS, INSTRUCTION_TYPES, TRAIN_SUBSETS
from instructpart_metric.cli import main as score_main
from pisa_model import demo

SMALL = demo.DemoSettings(seed=0, num_train=48, num_test=8, max_steps=250, batch_size=8, lr=3e-3, warmup_steps=60)
MODELS = ("full-image", "centre-ellipse", demo.TINY_PISA)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return demo.run_demo(str(out), settings=SMALL)


@pytest.mark.slow
def test_every_file_is_written(built):
    out = built.out
    assert os.path.isfile(os.path.join(out, "release", "test", "data_test.json"))
    for n in TRAIN_SUBSETS:
        assert os.path.isfile(os.path.join(out, "release", "train", f"train{n}", f"data_train{n}.json"))
    with open(os.path.join(out, "release", "test", "data_test.json")) as f:
        entries = [part for entry in json.load(f) for part in entry["part_list"]]
    assert len(entries) == SMALL.num_test
    assert all(len(part["instruction"]) == len(INSTRUCTION_TYPES) for part in entries)
    assert os.path.isfile(os.path.join(out, "hub", "README.md"))
    for config in CONFIGS:
        assert any(name.startswith("test-") for name in os.listdir(os.path.join(out, "hub", config)))
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(out, "model", name)), name

    ids = sorted(os.path.splitext(name)[0] for name in os.listdir(os.path.join(out, "release", "test", "masks")))
    assert len(ids) == SMALL.num_test
    assert set(built.models) == set(MODELS)
    for model, folder in built.models.items():
        for kind in INSTRUCTION_TYPES:
            names = os.listdir(os.path.join(folder, kind))
            written = sorted(os.path.splitext(n)[0] for n in names if n.endswith(".png"))
            assert written == ids, (model, kind)
        assert os.path.isfile(os.path.join(out, "results", f"{demo.slug(model)}.json"))
    assert built.report == os.path.join(out, "report", "report.html")
    assert os.path.isfile(os.path.join(out, "report", "report.json"))
    leftovers = [n for _, _, names in os.walk(out) for n in names if n.startswith(".tmp-") or n.endswith(".partial")]
    assert not leftovers


@pytest.mark.slow
def test_tiny_pisa_beats_both_baselines_on_giou(built):
    for config in CONFIGS:
        pisa = built.summaries[demo.TINY_PISA]["by_config"][config]["gIoU"]
        for baseline in demo.BASELINES:
            floor = built.summaries[baseline]["by_config"][config]["gIoU"]
            assert pisa > floor, (config, baseline, pisa, floor)


class MetricCells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.row = {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-row" in attrs:
            self.row = (attrs["data-model"], attrs["data-row"])
        elif tag == "td" and self.row and "data-value" in attrs:
            self.cells.setdefault(self.row, {})[attrs["data-metric"]] = float(attrs["data-value"])


@pytest.mark.slow
def test_report_numbers_equal_the_scoring_cli(built, tmp_path, capsys):
    parser = MetricCells()
    with open(built.report, encoding="utf-8") as f:
        parser.feed(f.read())
    hub = os.path.join(built.out, "hub")
    for model, folder in built.models.items():
        for config in CONFIGS:
            path = tmp_path / f"{demo.slug(model)}-{config}.json"
            argv = ["score", "--predictions", folder, "--data-dir", hub, "--config", config, "--json", str(path)]
            assert score_main(argv + ["--num-workers", "1"]) == 0
            with open(path) as f:
                cli = json.load(f)
            for kind, metrics in cli["configs"][config]["by"]["instruction_type"].items():
                for key in ("gIoU", "cIoU", "P@50:95", "P@50"):
                    assert parser.cells[(model, kind)][key] == pytest.approx(metrics[key], abs=1e-12), (model, kind)
            for key in ("gIoU", "cIoU", "P@50:95", "P@50"):
                assert parser.cells[(model, config)][key] == pytest.approx(
                    cli["configs"][config]["all"][key], abs=1e-12
                )
    capsys.readouterr()


@pytest.mark.slow
def test_data_dir_mode_skips_generation_and_training(built, tmp_path, capsys):
    out = tmp_path / "real"
    checkpoint, hub = os.path.join(built.out, "model"), os.path.join(built.out, "hub")
    assert demo.main(["--out", str(out), "--data-dir", hub, "--model", f"trained={checkpoint}"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "| human" in printed
    assert not any((out / name).exists() for name in ("release", "hub", "model"))
    with open(out / "report" / "report.json") as f:
        summaries = json.load(f)["models"]
    assert set(summaries) == {"full-image", "centre-ellipse", "trained"}
    # Same checkpoint, same rows: the numbers of the built-in run.
    for name, before in (("trained", demo.TINY_PISA),) + tuple((b, b) for b in demo.BASELINES):
        for config in CONFIGS:
            now, then = summaries[name]["by_config"][config], built.summaries[before]["by_config"][config]
            assert now == pytest.approx(then, abs=1e-12), (name, config)


def test_model_names():
    assert demo.model_name_and_spec("ours=/ckpt/run-3") == ("ours", "/ckpt/run-3")
    assert demo.model_name_and_spec("clipseg:CIDAS/clipseg-rd64-refined") == (
        "clipseg-CIDAS-clipseg-rd64-refined",
        "clipseg:CIDAS/clipseg-rd64-refined",
    )


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "nowhere" in error

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert demo.main(["--out", str(foreign), "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "not written by the demo" in error
    assert (foreign / "notes.txt").read_text() == "keep me"
