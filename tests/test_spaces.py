"""The two Spaces as users meet them: the staged app.py served on a loopback port in a process that cannot import
this project, used through gradio_client (its API) and checked against values computed another way, then used in
headless Chromium (upload, type, click, read the result) with screenshots under the test's tmp dir."""

import contextlib
import io
import json
import os
import shutil
import urllib.request
import zipfile

import numpy as np
import pytest
from PIL import Image

import upload
from instructpart_dataset.toolbox.fresh_process import run_isolated, serve_isolated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The number of images Gradio shows from its file route (uploads, examples and results), loaded and laid out.
FILE_IMAGES = (
    "() => Array.from(document.querySelectorAll('img[src*=\"/gradio_api/file=\"]'))"
    ".filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().height > 0).length"
)
SETTLE_MS = 1500  # Gradio fades results in: let the screenshot show them settled
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def missing_browser():
    """None where headless Chromium is installed, else why the browser checks cannot run. Under CI (`CI=true`) a
    missing Chromium fails the test instead: .ci/run installs it, so there the checks must run."""
    if CHROMIUM is not None:
        return None
    reason = "headless Chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI installs it (.ci/run), so the browser checks must run there")
    return reason


def skip_if_unchecked(reason) -> None:
    """Report a test whose other checks passed as skipped when its browser checks could not run."""
    if reason is not None:
        pytest.skip(f"the browser checks did not run: {reason} (every other check of this test passed)")


def client_for(url, tmp_path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(tmp_path / "downloads"))


@contextlib.contextmanager
def browser_page(url: str):
    """A page of the system's headless Chromium (driven by Playwright) opened at `url` once Gradio has rendered it.
    Every host but 127.0.0.1 is unresolvable: the page must need nothing else."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(90_000)
            page.goto(url)
            page.locator("gradio-app .gradio-container").wait_for()
            yield page
        finally:
            browser.close()


def shown_images(page) -> list:
    """The images Gradio shows as results (served from its file route), fetched as the browser got them."""
    sources = page.eval_on_selector_all("img", "images => images.map(i => i.src)")
    images = []
    for source in sources:
        if "/gradio_api/file=" in source:
            with urllib.request.urlopen(source, timeout=30) as response:
                images.append(Image.open(io.BytesIO(response.read())))
    return images


# --- the PISA demo Space ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pisa_space(tmp_path_factory):
    from pisa_model.tiny import save_tiny_pisa

    root = tmp_path_factory.mktemp("pisa-space")
    checkpoint = save_tiny_pisa(str(root / "checkpoint"))
    stage = str(root / "space")
    upload.stage_model_space(stage, "org/pisa-tiny")
    return checkpoint, stage


@pytest.mark.slow
def test_pisa_space_segments_an_upload_like_model_predict(pisa_space, tmp_path):
    from gradio_client import handle_file

    from pisa_model import PisaForPartSegmentation

    no_browser = missing_browser()
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
        # This package's pipeline takes `generate`: the generated answer's mask is `predict(generate=True)`'s.
        image_path, instruction = requests[1]
        _, mask_path, summary = client.predict(handle_file(image_path), instruction, "generated", api_name="/segment")
        expected = model.predict([Image.open(image_path).convert("RGB")], [instruction], generate=True)[0]
        assert np.array_equal(np.asarray(Image.open(mask_path).convert("L")) > 0, expected)
        assert "generated" in summary
        with pytest.raises(Exception, match="Type an instruction"):
            client.predict(handle_file(requests[1][0]), "  ", "teacher-forced", api_name="/segment")
        # The processor's own refusals arrive as their one-line reason, not as gradio's generic "error".
        with pytest.raises(Exception, match="instruction 0 contains a reserved token \\(&lt;image&gt; or \\[SEG\\]\\)"):
            client.predict(handle_file(image_path), "where is the [SEG] handle", "teacher-forced", api_name="/segment")
        Image.new("RGB", (990, 30)).save(tmp_path / "strip.png")
        with pytest.raises(Exception, match="image 0 is 990x30 pixels: PISA takes aspect ratios up to 32:1"):
            client.predict(handle_file(str(tmp_path / "strip.png")), "lid", "teacher-forced", api_name="/segment")
        if no_browser is None:
            image_path, instruction = requests[0]
            with browser_page(app.url) as page:
                page.screenshot(path=str(tmp_path / "pisa-space-opened.png"))
                examples = page.evaluate(FILE_IMAGES)
                page.locator("input[type=file]").first.set_input_files(image_path)
                page.get_by_label("instruction").fill(instruction)
                page.wait_for_function(f"n => ({FILE_IMAGES})() >= n", arg=examples + 1)  # the photo's preview
                shown_before = page.evaluate(FILE_IMAGES)
                page.get_by_role("button", name="Segment").click()
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('textarea')).some(t => t.value.includes('pixels'))"
                )
                page.wait_for_function(f"n => ({FILE_IMAGES})() >= n", arg=shown_before + 2)  # overlay and mask
                page.wait_for_timeout(SETTLE_MS)
                page.screenshot(path=str(tmp_path / "pisa-space-used.png"))
                (mask_image,) = [im for im in shown_images(page) if im.mode == "L"]
            expected = model.predict([Image.open(image_path).convert("RGB")], [instruction])[0]
            assert np.array_equal(np.asarray(mask_image) > 0, expected)  # the mask the user downloads
    assert app.output().count(f"loaded {checkpoint} in") == 1  # the model was loaded once, at startup
    skip_if_unchecked(no_browser)


def test_pisa_space_refuses_in_one_line_and_checks_a_photo_before_decoding_it(tmp_path):
    import struct
    import zlib

    from pisa_model.space import app

    class Refusing:
        def _sanitize_parameters(self, instruction=None):
            return {}, {}, {}

        def __call__(self, image, **kwargs):
            raise ValueError("instruction 0 contains a reserved token (<image> or [SEG])\nmore detail")

    Image.new("RGB", (4, 3)).save(tmp_path / "photo.png")
    with pytest.raises(app.Refused) as refused:
        app.segment(Refusing(), str(tmp_path / "photo.png"), "lid [SEG]")
    assert refused.value.message == "instruction 0 contains a reserved token (&lt;image&gt; or [SEG])"

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # An 8000x6000 RGB PNG header (48 million pixels) over a few bytes: refused from its header.
    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 6000, 8, 2, 0, 0, 0))
    (tmp_path / "huge.png").write_bytes(header + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    with pytest.raises(
        app.Refused, match=f"huge.png: 8000x6000 pixels; this Space takes photos of up to {app.MAX_PHOTO_PIXELS:,}"
    ):
        app.segment(Refusing(), str(tmp_path / "huge.png"), "lid")
    (tmp_path / "notes.png").write_text("not a photo")
    with pytest.raises(app.Refused, match="notes.png: not a readable image"):
        app.segment(Refusing(), str(tmp_path / "notes.png"), "lid")


def test_pisa_space_card_states_the_bounds_the_app_enforces(tmp_path):
    from pisa_model.space import app

    stage = str(tmp_path / "space")
    upload.stage_model_space(stage, "org/pisa-tiny")
    with open(os.path.join(stage, "README.md"), encoding="utf-8") as f:
        card = " ".join(f.read().split())
    assert f"an upload of at most {app.MAX_UPLOAD}, a photo of at most {app.MAX_PHOTO_PIXELS:,} pixels" in card
    assert f"at most {app.MAX_NEW_TOKENS} new tokens" in card and f"at most {app.QUEUE_SIZE} wait" in card


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

    no_browser = missing_browser()
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:120, 0:200]  # a disc and a shifted, noisy disc: a picture a user would recognise
    truth = (yy - 60) ** 2 + (xx - 90) ** 2 < 45**2
    prediction = ((yy - 55) ** 2 + (xx - 110) ** 2 < 42**2) ^ (rng.random((120, 200)) < 0.03)
    Image.fromarray(truth).save(tmp_path / "truth.png")  # mode 1
    Image.fromarray(prediction.astype(np.uint8)).save(tmp_path / "prediction.png")  # mode L, values 0 and 1

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

    # The Space as launched on your own machine, offering a local export besides the card's dataset.
    launcher = os.path.join(metric_space, "launch_local.py")
    with open(launcher, "w") as f:
        f.write(
            "import runpy, sys\n"
            f"sys.argv = ['app.py', '--dataset', {hub_folder!r}, '--allow-local-datasets']\n"
            "runpy.run_path('app.py', run_name='__main__')\n"
        )
    with serve_isolated(launcher) as app:
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
        # The card's dataset is offered, but the Hub is unreachable here (as in any offline run): one clear
        # message naming it. A dataset the Space was not launched with is never loaded.
        with pytest.raises(Exception, match="Cannot load 'org/instructpart' \\(trps/test\\)"):
            client.predict(
                handle_file(str(tmp_path / "predictions.zip")),
                "org/instructpart",
                "trps",
                "test",
                False,
                api_name="/score_zip",
            )
        with pytest.raises(Exception) as refused:
            client.predict(
                handle_file(str(tmp_path / "predictions.zip")), "/root", "trps", "test", False, api_name="/score_zip"
            )
        assert "Cannot load" not in str(refused.value) and "/root" in str(refused.value)
        # The 3 MB zip of three 1 GiB entries, named like rows: refused from their declared sizes.
        from zip_bombs import write_zip_bomb

        write_zip_bomb(
            str(tmp_path / "bomb.zip"),
            [(f"p/{row['instruction_type']}/{row['id']}.png", 1024) for row in rows.select(range(3))],
        )
        with pytest.raises(Exception, match="1,073,741,824 bytes uncompressed, more than a PNG mask"):
            client.predict(
                handle_file(str(tmp_path / "bomb.zip")), hub_folder, "trps", "test", False, api_name="/score_zip"
            )
        # Expected refusals arrive as their one-line reason, escaped for gradio's HTML rendering.
        (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
        with pytest.raises(Exception, match="broken.zip: not a zip archive"):
            client.predict(
                handle_file(str(tmp_path / "broken.zip")), hub_folder, "trps", "test", False, api_name="/score_zip"
            )
        if no_browser is None:
            with browser_page(app.url) as page:
                page.screenshot(path=str(tmp_path / "metric-space-opened.png"))
                uploads = page.locator("input[type=file]")
                # The truth first: a file box drops its input once it holds a file, which renumbers those after it.
                uploads.nth(1).set_input_files(str(tmp_path / "truth.png"))
                uploads.nth(0).set_input_files(str(tmp_path / "prediction.png"))
                page.wait_for_function(f"() => ({FILE_IMAGES})() >= 2")  # both previews
                previews = shown_images(page)
                page.get_by_role("button", name="Score the pair").click()
                page.get_by_text("intersection").wait_for()
                page.wait_for_function(f"() => ({FILE_IMAGES})() >= 3")  # the agreement picture
                page.wait_for_timeout(SETTLE_MS)
                page.screenshot(path=str(tmp_path / "metric-space-used.png"))
                shown = page.locator("body").inner_text()
                # A zip refusal whose text holds <instruction_type>/<id>.png reads in full, not as HTML.
                page.get_by_role("tab", name="A model's predictions").click()
                page.get_by_role("button", name="Score the predictions").click()
                page.get_by_text("Upload a zip of <instruction_type>/<id>.png prediction masks.").wait_for()
                page.screenshot(path=str(tmp_path / "metric-space-refusal.png"))
            expected = _naive_scores([(prediction, truth)])
            assert f"{expected['gIoU']}" in shown and f"{int((prediction | truth).sum())}" in shown
            # The 0/1 prediction previews visibly: its part white, the rest black.
            visible = [np.asarray(im.convert("L")) for im in previews]
            assert any(np.array_equal(im, np.where(prediction, 255, 0)) for im in visible)
    skip_if_unchecked(no_browser)


@pytest.mark.slow
def test_metric_app_finds_the_module_script_and_card_in_the_package_and_in_a_stage(metric_space):
    from instructpart_metric.space import app

    package = os.path.join(ROOT, "instructpart_metric")
    assert app.find_metric_script() == os.path.join(package, "instructpart_metric.py")
    assert app.find_card() == os.path.join(package, "README.md")
    # In the stage the script is renamed after the repo and sits beside app.py with core.py (no Metric there).
    found = run_isolated(
        "import json, runpy\n"
        "app = runpy.run_path('app.py')\n"
        "print(json.dumps([app['find_metric_script'](), app['find_card']()]))",
        metric_space,
        "metric app discovery",
    )
    assert found == [os.path.join(metric_space, "instructpart.py"), os.path.join(metric_space, "README.md")]
