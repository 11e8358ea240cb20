"""The two Spaces as users meet them: the staged app.py served on a loopback port in a process that cannot import
this project, used through gradio_client (its API) and checked against values computed another way, then the page
rendered in headless Chromium and screenshotted under the test's tmp dir."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import upload  # noqa: E402
from fresh_process import serve_isolated  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def client_for(url, tmp_path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(tmp_path / "downloads"))


def render_in_chromium(url: str, screenshot: str) -> str:
    """The DOM headless Chromium built for `url` once its scripts ran (Gradio renders the page client-side), and a
    screenshot of the same page. Every host but 127.0.0.1 is unresolvable: the page must need nothing else."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1300",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--virtual-time-budget=20000",
    ]
    try:
        dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        subprocess.run([CHROMIUM, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return dom.stdout


def check_page(url, tmp_path, name, texts):
    if CHROMIUM is None:
        return  # the API checks above still ran; only the browser part needs Chromium
    screenshot = str(tmp_path / f"{name}.png")
    dom = render_in_chromium(url, screenshot)
    missing = [text for text in texts if text not in dom]
    assert not missing, f"{name}: the rendered page lacks {missing}"
    with Image.open(screenshot) as shot:
        assert shot.size == (1280, 1300)
        # A rendered page, not a blank one: many distinct colours (text, buttons, upload areas).
        assert len(shot.convert("RGB").getcolors(1 << 20) or []) > 50


# --- the PISA demo Space ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pisa_space(tmp_path_factory):
    from pisa_model.testing import save_tiny_pisa

    root = tmp_path_factory.mktemp("pisa-space")
    checkpoint = save_tiny_pisa(str(root / "checkpoint"))
    stage = str(root / "space")
    upload.stage_model_space(stage, "org/pisa-tiny")
    return checkpoint, stage


@pytest.mark.slow
def test_pisa_space_segments_an_upload_like_model_predict(pisa_space, tmp_path):
    from gradio_client import handle_file

    from pisa_model import PisaForPartSegmentation

    checkpoint, stage = pisa_space
    with open(os.path.join(stage, "examples", "examples.json")) as f:
        example = json.load(f)[0]
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 255, (77, 131, 3), dtype=np.uint8))
    photo.save(tmp_path / "upload.png")
    requests = [
        (os.path.join(stage, "examples", example["image"]), example["instruction"]),
        (str(tmp_path / "upload.png"), "handle of the kettle"),
    ]
    model = PisaForPartSegmentation.from_pretrained(checkpoint)
    with serve_isolated(os.path.join(stage, "app.py"), env={"PISA_MODEL": checkpoint}) as app:
        client = client_for(app.url, tmp_path)
        for image_path, instruction in requests:
            shown_path, mask_path, summary = client.predict(
                handle_file(image_path), instruction, "teacher-forced", api_name="/segment"
            )
            image = Image.open(image_path).convert("RGB")
            expected = model.predict([image], [instruction])[0]
            mask = np.asarray(Image.open(mask_path).convert("L")) > 0
            assert np.array_equal(mask, expected), instruction
            shown = np.asarray(Image.open(shown_path).convert("RGB")).astype(int)
            pixels = np.asarray(image).astype(int)
            assert np.array_equal(shown[~expected], pixels[~expected])  # untouched outside the part
            tinted = (0.45 * pixels[expected] + 0.55 * np.array([255, 40, 40])).astype(int)
            assert np.abs(shown[expected] - tinted).max() <= 1
            assert summary.startswith(f"{int(expected.sum())} pixels") and "teacher-forced" in summary
        # This checkpoint's pipeline has no `generate`: the control offers teacher forcing only.
        with pytest.raises(Exception, match="not in the list of choices"):
            client.predict(handle_file(requests[1][0]), "lid", "generated", api_name="/segment")
        with pytest.raises(Exception, match="Type an instruction"):
            client.predict(handle_file(requests[1][0]), "  ", "teacher-forced", api_name="/segment")
        check_page(app.url, tmp_path, "pisa-space", ["PISA: task-oriented part segmentation", "instruction", "Segment"])
    assert app.output().count(f"loaded {checkpoint} in") == 1  # the model was loaded once, at startup


def test_pisa_space_passes_generate_only_to_pipelines_that_take_it():
    from pisa_model.space import app

    class Segmenter:
        """Records the keywords of each call, answers an empty 3x2 mask."""

        def __init__(self):
            self.calls = []

        def _sanitize_parameters(self, instruction=None, threshold=None, generate=None):
            return {}, {}, {}

        def __call__(self, image, **kwargs):
            self.calls.append(kwargs)
            return [{"label": kwargs["instruction"], "score": 0.0, "mask": Image.new("L", image.size)}]

    class OldSegmenter(Segmenter):
        def _sanitize_parameters(self, instruction=None, threshold=None):
            return {}, {}, {}

    image = Image.new("RGB", (3, 2))
    new, old = Segmenter(), OldSegmenter()
    assert app.supports_generation(new) and not app.supports_generation(old)
    app.segment(new, image, "lid", app.GENERATED)
    app.segment(new, image, "lid", app.TEACHER_FORCED)
    assert new.calls == [{"instruction": "lid", "generate": True}, {"instruction": "lid"}]
    demo = app.build_demo(old, "org/m", [])
    (radio,) = [block for block in demo.blocks.values() if type(block).__name__ == "Radio"]
    assert [choice[0] for choice in radio.choices] == [app.TEACHER_FORCED]
    demo = app.build_demo(new, "org/m", [])
    (radio,) = [block for block in demo.blocks.values() if type(block).__name__ == "Radio"]
    assert [choice[0] for choice in radio.choices] == [app.TEACHER_FORCED, app.GENERATED]


# --- the metric Space ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metric_space(tmp_path_factory):
    stage = str(tmp_path_factory.mktemp("metric-space") / "instructpart")
    upload.stage_metric(stage, "org/instructpart")
    return stage


def _naive_scores(pairs):
    """gIoU, cIoU, P@50, P@50:95 in percent by direct counting (floats; compared to two decimals)."""
    ious, inter, union = [], 0, 0
    for prediction, truth in pairs:
        i, u = int((prediction & truth).sum()), int((prediction | truth).sum())
        ious.append(i / u if u else 1.0)
        inter, union = inter + i, union + u
    ious = np.array(ious)
    thresholds = [k / 20 for k in range(10, 20)]
    return {
        "gIoU": round(100 * ious.mean(), 2),
        "cIoU": round(100 * inter / union, 2),
        "P@50:95": round(100 * np.mean([(ious >= t - 1e-12).mean() for t in thresholds]), 2),
        "P@50": round(100 * (ious >= 0.5).mean(), 2),
    }


@pytest.mark.slow
def test_metric_space_scores_pairs_and_zips_like_direct_counting(metric_space, release_dir, tmp_path):
    from gradio_client import handle_file

    from instructpart_dataset import load_instructpart
    from instructpart_dataset.export import export_release

    rng = np.random.default_rng(5)
    truth = rng.random((21, 34)) < 0.4
    prediction = rng.random((21, 34)) < 0.5
    Image.fromarray(truth).save(tmp_path / "truth.png")  # mode 1
    Image.fromarray(prediction.astype(np.uint8) * 255).convert("RGB").save(tmp_path / "prediction.png")  # RGB

    # A model's predictions: each truth with a few pixels flipped, as <instruction_type>/<id>.png in a zip.
    hub_folder = str(tmp_path / "instructpart")
    export_release(release_dir, hub_folder)
    rows = load_instructpart(release_dir, "trps", split="test")
    pairs, archive = [], io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for row in rows:
            noisy = row["mask"] ^ (rng.random(row["mask"].shape) < 0.05)
            pairs.append((noisy, row["mask"]))
            png = io.BytesIO()
            Image.fromarray(noisy).save(png, format="PNG")
            zipped.writestr(f"predictions/{row['instruction_type']}/{row['id']}.png", png.getvalue())
    (tmp_path / "predictions.zip").write_bytes(archive.getvalue())
    short = io.BytesIO()
    with zipfile.ZipFile(archive) as full, zipfile.ZipFile(short, "w") as partial:
        for name in full.namelist()[1:]:
            partial.writestr(name, full.read(name))
    (tmp_path / "partial.zip").write_bytes(short.getvalue())

    with serve_isolated(os.path.join(metric_space, "app.py")) as app:
        client = client_for(app.url, tmp_path)
        metrics, agreement = client.predict(
            handle_file(str(tmp_path / "prediction.png")),
            handle_file(str(tmp_path / "truth.png")),
            api_name="/score_pair",
        )
        assert {k: metrics[k] for k in ("gIoU", "cIoU", "P@50:95", "P@50")} == _naive_scores([(prediction, truth)])
        assert (metrics["intersection"], metrics["union"]) == ((prediction & truth).sum(), (prediction | truth).sum())
        colours = np.asarray(Image.open(agreement).convert("RGB"))
        assert np.array_equal(np.all(colours == (40, 170, 60), axis=-1), prediction & truth)
        assert np.array_equal(np.all(colours == (50, 90, 220), axis=-1), truth & ~prediction)

        overall, table = client.predict(
            handle_file(str(tmp_path / "predictions.zip")), hub_folder, "trps", "test", False, api_name="/score_zip"
        )
        assert {k: overall[k] for k in ("gIoU", "cIoU", "P@50:95", "P@50")} == _naive_scores(pairs)
        assert overall["num_samples"] == len(rows) and overall["missing_as_empty"] == 0
        by_type = {line[0]: line for line in table["data"]}
        for name in ("human", "gpt4"):
            group = [pair for pair, row in zip(pairs, rows) if row["instruction_type"] == name]
            assert by_type[name][1:] == [*_naive_scores(group).values(), len(group)]

        with pytest.raises(Exception, match="missing prediction"):
            client.predict(
                handle_file(str(tmp_path / "partial.zip")), hub_folder, "trps", "test", False, api_name="/score_zip"
            )
        overall, _ = client.predict(
            handle_file(str(tmp_path / "partial.zip")), hub_folder, "trps", "test", True, api_name="/score_zip"
        )
        assert overall["missing_as_empty"] == 1 and overall["num_samples"] == len(rows)
        # The Hub is unreachable here (as in any offline run): one clear message naming the dataset.
        with pytest.raises(Exception, match="Cannot load 'someone/instructpart' \\(trps/test\\)"):
            client.predict(
                handle_file(str(tmp_path / "predictions.zip")),
                "someone/instructpart",
                "trps",
                "test",
                False,
                api_name="/score_zip",
            )
        check_page(app.url, tmp_path, "metric-space", ["InstructPart metric", "predicted mask", "Score the pair"])
