"""vlm-box and API VLMs: the box parser table on hand-written answers, boxes mapped to the image by hand, prompts
per task form with their hash, a tiny local Qwen2.5-VL end to end, and an OpenAI-compatible endpoint (a fake
server on 127.0.0.1) with its faults, retries, failure accounting, cache and key hygiene."""

import glob
import json
import os
import sys

import numpy as np
import pytest
import tiny_adapters as tiny
from PIL import Image

from pisa_model.adapters import load_adapter
from pisa_model.adapters import prompts as prompt_table
from pisa_model.adapters.api import ApiVLM, parse_api_spec, public_url
from pisa_model.adapters.base import sam_box_masks
from pisa_model.adapters.box_parsing import parse_box, qwen_input_size, to_image_box
from pisa_model.adapters.vlm import VLMAnswer
from pisa_model.adapters.vlm_box import VlmBoxAdapter, split_vlm_and_sam
from pisa_model.evaluate import main as evaluate_main

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

KEY = "sk-test-SECRET"


# --- the parser table, on hand-written answers of each family -------------------------------------------------


@pytest.mark.parametrize(
    "answer, box_format, expected",
    [
        ('```json\n[{"bbox_2d": [10, 20, 110, 220], "label": "handle"}]\n```', "qwen2.5-vl", (10, 20, 110, 220)),
        ('Sure! {"bbox_2d": [110, 220, 10, 20], "label": "lid"} is the lid.', "qwen2.5-vl", (10, 20, 110, 220)),
        ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]', "qwen2.5-vl", (1, 2, 3, 4)),
        ('{"label": "x", "point": [9, 9, 9, 9], "bbox_2d": [1, 2, 3, 4]}', "qwen2.5-vl", (1, 2, 3, 4)),
        ("The handle: [12.5, 30, 40.25, 60]", "qwen2.5-vl", (12.5, 30, 40.25, 60)),
        ('{"bbox_2d": [100, 200, 900, 950], "label": "stem"}', "qwen3-vl", (100, 200, 900, 950)),
        ("<loc0100><loc0200><loc0300><loc0400> handle", "paligemma", (200, 100, 400, 300)),
        ("<loc0300><loc0400><loc0100><loc0200> handle ; <loc0001><loc0002><loc0003><loc0004> lid", "paligemma",
         (200, 100, 400, 300)),
        ("I think the box is [5, 6, 50, 60] because the handle is there. [0, 0, 1, 1]", "json", (5, 6, 50, 60)),
        ("[50, 60, 5, 6]", "json", (5, 6, 50, 60)),
        ("[-20, -10, 700, 800]", "json", (-20, -10, 700, 800)),
    ],
)  # fmt: skip
def test_parse_box_by_family(answer, box_format, expected):
    assert parse_box(answer, box_format) == pytest.approx(expected)


@pytest.mark.parametrize(
    "answer, box_format",
    [
        ("", "json"),
        ("I cannot see a handle.", "qwen2.5-vl"),
        ("[1, 2, 3]", "json"),
        ('{"bbox_2d": [1, 2]}', "qwen3-vl"),
        ("<loc0100><loc0200><loc0300> handle", "paligemma"),
        ("[10, 20, 30, 40]", "paligemma"),  # PaliGemma answers in <loc> tokens only
    ],
)
def test_answers_without_a_box(answer, box_format):
    assert parse_box(answer, box_format) is None


def test_unknown_box_format_is_refused():
    with pytest.raises(ValueError, match="unknown box_format 'yolo'"):
        parse_box("[1, 2, 3, 4]", "yolo")


def test_boxes_map_to_the_image_by_each_frame():
    size = (517, 333)
    # Qwen2.5-VL: pixels of its resized input (here 504 x 336, what smart_resize gives for 517 x 333).
    assert qwen_input_size(size) == (504, 336)
    assert to_image_box((252, 168, 504, 336), "qwen2.5-vl", size, (504, 336)) == pytest.approx((258.5, 166.5, 517, 333))
    # Qwen3-VL: a 0-1000 grid.
    assert to_image_box((100, 200, 500, 1000), "qwen3-vl", size) == pytest.approx((51.7, 66.6, 258.5, 333))
    # PaliGemma: a 1024 grid (y first in the answer; parse_box has put x first).
    assert to_image_box((256, 512, 768, 1024), "paligemma", size) == pytest.approx((129.25, 166.5, 387.75, 333))
    # Plain JSON: pixels of the image shown (an API image sent at 1024 longest side maps back by 517 / 1024).
    assert to_image_box((0, 0, 1024, 660), "json", size, (1024, 660)) == pytest.approx((0, 0, 517, 333))


def test_boxes_off_the_image_are_clipped_or_abstain():
    size = (100, 50)
    assert to_image_box((-20, -10, 40, 30), "json", size, size) == (0.0, 0.0, 40.0, 30.0)
    assert to_image_box((90, 40, 300, 300), "json", size, size) == (90.0, 40.0, 100.0, 50.0)
    assert to_image_box((120, 10, 300, 40), "json", size, size) is None  # wholly right of the image
    assert to_image_box((10, -40, 30, -5), "json", size, size) is None  # wholly above it
    assert to_image_box((10, 10, 10, 40), "json", size, size) is None  # no width


# --- prompts: one template per task form, recorded with a hash ------------------------------------------------


def test_prompt_forms_and_hash():
    assert [prompt_table.prompt_form(t) for t in ("human", "gpt4", "part_question", "part_name")] == [
        "trps",
        "trps",
        "orps_question",
        "orps_name",
    ]
    assert prompt_table.prompt_form(None) == "trps"
    table = prompt_table.box_prompt_table("json")
    assert set(table) == set(prompt_table.FORMS)
    text = prompt_table.fill(table["orps_name"], "handle of the {cup}", (640, 480))
    assert text.startswith("Locate the handle of the {cup} in this image.") and "640x480" in text
    record = prompt_table.prompt_record(table)
    changed = prompt_table.prompt_record({**table, "trps": table["trps"] + " "})
    assert record["templates"] == table and len(record["sha256"]) == 64 and record["sha256"] != changed["sha256"]
    assert prompt_table.prompt_record(prompt_table.box_prompt_table("qwen2.5-vl"))["sha256"] != record["sha256"]


def test_spec_parsing():
    assert parse_api_spec("api:gpt-4o@https://api.openai.com/v1/") == ("gpt-4o", "https://api.openai.com/v1")
    assert split_vlm_and_sam("api:m@http://127.0.0.1:9/v1,/sam") == ("api:m@http://127.0.0.1:9/v1", "/sam")
    assert public_url("https://user:pw@host:8000/v1") == "https://host:8000/v1"
    for bad in ("api:gpt-4o", "api:@http://x/v1", "api:m@ftp://x"):
        with pytest.raises(ValueError, match="api:MODEL@BASE_URL"):
            parse_api_spec(bad)
    with pytest.raises(ValueError, match="a VLM and a SAM checkpoint"):
        load_adapter("vlm-box:only-one")


# --- the adapter with a scripted VLM: boxes to SAM, abstentions, failures --------------------------------------


class ScriptedVLM:
    def __init__(self, answers):
        self.answers, self.prompts = list(answers), []

    def shown_size(self, image):
        return image.size

    def ask(self, images, prompts):
        self.prompts += prompts
        return [
            a if isinstance(a, VLMAnswer) else VLMAnswer(a, image.size, None)
            for a, image in zip(self.answers[: len(images)], images)
        ]

    def record(self):
        return {"kind": "scripted"}

    def usage(self):
        return {}


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory):
    return tiny.save_tiny_sam(str(tmp_path_factory.mktemp("sam")))


@pytest.fixture(scope="module")
def sam(sam_folder):
    from transformers import AutoProcessor, SamModel

    return SamModel.from_pretrained(sam_folder).eval(), AutoProcessor.from_pretrained(sam_folder)


def test_vlm_box_masks_the_parsed_box_with_sam_and_abstains_without_one(sam):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(517, 333), (131, 97)] * 2]
    answers = [
        "The handle is at [400, 300, 100, 50].",  # reversed corners
        "[600, 400, 700, 500]",  # wholly off the 131 x 97 image: abstains
        "[500, 300, 900, 900]",  # partly off the 517 x 333 image: clipped
        VLMAnswer("", (131, 97), None, error="HTTP 500 (after 2 retries)"),
    ]
    vlm = ScriptedVLM(answers)
    adapter = VlmBoxAdapter(vlm, *sam, box_format_name="json")
    masks, extras = adapter.predict_with_extras(
        images, ["a", "b", "c", "handle of the cup"], ["human", "gpt4", "part_question", "part_name"]
    )
    assert [e["status"] for e in extras] == ["box", "abstained", "box", "failed"]
    assert extras[0]["parsed_box"] == [100, 50, 400, 300] and extras[0]["box"] == [100, 50, 400, 300]
    assert extras[1]["parsed_box"] == [600, 400, 700, 500] and extras[1]["box"] is None
    assert extras[2]["box"] == [500, 300, 517, 333]
    expected, scores = sam_box_masks(*sam, [images[0]], [(100, 50, 400, 300)])
    assert np.array_equal(masks[0], expected[0]) and extras[0]["sam_score"] == pytest.approx(scores[0], abs=1e-4)
    assert not masks[1].any() and not masks[3].any() and extras[3]["failed"].startswith("HTTP 500")
    assert [m.shape for m in masks] == [(333, 517), (97, 131), (333, 517), (97, 131)]
    assert vlm.prompts[3].startswith("Locate the handle of the cup in this image.")  # the ORPS name form
    summary = adapter.summarize_extras([{**e, "instruction_type": "human"} for e in extras])["boxes"]["all"]
    assert summary == {"rows": 4, "boxed": 2, "abstained": 1, "failed": 1}


# --- the API VLM against a fake OpenAI-compatible server: the fault table -------------------------------------


class _RecordedSleep:
    """Stands in for the api module's `time`: records each wait instead of sleeping."""

    def __init__(self):
        import time

        self.waits, self.time = [], time.time

    def sleep(self, seconds):
        self.waits.append(seconds)


FAULT_TABLE = [
    # (faults of the row, requests it takes, retries, failed with)
    ([], 1, 0, None),
    (["429"], 2, 1, None),
    (["500", "503"], 3, 2, None),
    (["500", "500", "500"], 3, 2, "HTTP 500 (after 2 retries)"),
    (["slow"], 2, 1, None),
    (["malformed"], 1, 0, "the response is not JSON"),
    (["no-choices"], 1, 0, "the response holds no choice"),
    (["401"], 1, 0, "HTTP 401"),
]


def test_api_fault_table(tmp_path, monkeypatch):
    from pisa_model.adapters import api

    sleeper = _RecordedSleep()
    monkeypatch.setattr(api, "time", sleeper)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    faults = {f"row-{index}:": kinds for index, (kinds, *_) in enumerate(FAULT_TABLE)}
    image = Image.new("RGB", (300, 200), (10, 20, 30))
    with FakeOpenAIServer(faults=faults, slow_seconds=1.5) as server:
        vlm = ApiVLM(
            "fake", server.base_url, max_retries=2, backoff=0.25, timeout=0.5, cache_dir=str(tmp_path), concurrency=4
        )
        prompts = [f"row-{index}: give the bounding box" for index in range(len(FAULT_TABLE))]
        answers = vlm.ask([image] * len(prompts), prompts)
        vlm.close()
        requests = {
            index: sum(p.startswith(f"row-{index}:") for p, _ in server.requests) for index in range(len(prompts))
        }
    for index, (kinds, expected_requests, _, failure) in enumerate(FAULT_TABLE):
        assert requests[index] == expected_requests, (kinds, requests[index])
        if failure is None:
            assert answers[index].error is None and answers[index].text == "The part is here: [75, 50, 225, 150]"
        else:
            assert answers[index].error.startswith(failure) and answers[index].text == "", (kinds, answers[index])
    usage = vlm.usage()
    assert usage["requests"] == sum(row[1] for row in FAULT_TABLE)
    assert usage["retries"] == sum(row[2] for row in FAULT_TABLE)
    assert usage["failed_rows"] == 4 and usage["cache_misses"] == 8 and usage["cache_hits"] == 0
    # Backoff 0.25 * 2**attempt, except after a 429, whose Retry-After (0) is honoured.
    assert sorted(sleeper.waits) == sorted([0.0, 0.25, 0.5, 0.25, 0.5, 0.25])
    # Only answered rows are cached; the key is in no cache file.
    cached = glob.glob(str(tmp_path / "*" / "*.json"))
    assert len(cached) == 4 and not any(KEY in open(path).read() for path in cached)


def test_retry_after_is_honoured_and_capped(tmp_path, monkeypatch):
    from pisa_model.adapters import api

    sleeper = _RecordedSleep()
    monkeypatch.setattr(api, "time", sleeper)
    image = Image.new("RGB", (40, 30))
    with FakeOpenAIServer(faults={"a:": ["429:7", "429:600"]}) as server:
        vlm = ApiVLM("fake", server.base_url, backoff=100.0, max_backoff=30.0, cache_dir=str(tmp_path))
        assert vlm.ask([image], ["a: box"])[0].error is None
    assert sleeper.waits == [7.0, 30.0]
    assert api._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and api._retry_after("soon") is None


def test_a_named_key_variable_must_be_set(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR is not set"):
        ApiVLM("m", "http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ValueError, match="concurrency must be"):
        ApiVLM("m", "http://127.0.0.1:9/v1", concurrency=0)


# --- the evaluate command with an API VLM: failures, allow_failures, the cache, the key -----------------------


def _files_holding(root, text: str) -> list:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                if text.encode() in f.read():
                    found.append(path)
    return found


def _evaluate(capsys, spec, data_dir, out, *extra, limit=("--limit", "3")):
    argv = ["--model", spec, "--data-dir", data_dir, "--output-dir", str(out), "--no-progress", "--save-predictions"]
    status = evaluate_main([*argv, "--config", "trps,orps", *limit, "--batch-size", "4", *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture()
def api_env(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return ["--adapter-arg", f"cache_dir={tmp_path / 'cache'}", "--adapter-arg", "concurrency=2"]


def _first_instruction(release_dir):
    from instructpart_dataset import load_instructpart

    rows = load_instructpart(release_dir, "trps", split="test").select(range(3))
    instruction = rows[0]["instruction"]
    assert sum(r["instruction"] == instruction for r in rows) == 1
    return " ".join(instruction.split())


def test_failed_rows_stop_the_run_unless_allowed(release_dir, sam_folder, tmp_path, capsys, api_env):
    faults = {_first_instruction(release_dir): ["500"] * 10}
    options = [*api_env, "--adapter-arg", "max_retries=1", "--adapter-arg", "backoff=0.01"]
    with FakeOpenAIServer(faults=faults) as server:
        spec = f"vlm-box:api:fake@{server.base_url},{sam_folder}"
        status, out, err = _evaluate(capsys, spec, release_dir, tmp_path / "stopped", *options)
        assert status == 1
        last = err.strip().splitlines()[-1]  # the lines before it are datasets' progress, in-process
        assert last.startswith("python -m pisa_model.evaluate: error: vlm-box:api:fake@")
        assert "1 of 6 rows failed (human/" in last and "HTTP 500 (after 1 retries)" in last
        assert not os.path.exists(tmp_path / "stopped" / "results.json")
        assert not os.path.exists(tmp_path / "stopped" / "predictions")
        assert len(server.requests) == 5 + 2  # five rows once, the failing one twice
        status, out2, err2 = _evaluate(
            capsys, spec, release_dir, tmp_path / "allowed", *options, "--adapter-arg", "allow_failures=true"
        )
        assert status == 0, err2
        # The five answered rows came from the cache; the failed one was asked again (twice) and failed again.
        assert len(server.requests) == 7 + 2
    with open(tmp_path / "allowed" / "results.json") as f:
        results = json.load(f)
    assert results["provenance"]["failures"]["rows"] == 1 and results["boxes"]["all"]["failed"] == 1
    assert results["provenance"]["adapter"]["usage"]["cache_hits"] == 5
    assert "1 rows failed and are scored as empty masks (allow_failures=true)" in out2
    from instructpart_metric.provenance import format_provenance  # the report's footer and the console

    lines = format_provenance(results["provenance"])
    assert "failures: 1 rows failed and are scored as empty masks (allow_failures=true)" in lines
    assert any(line.startswith("prompts: sha256 ") and "box format json; VLM fake at" in line for line in lines)
    assert any(line.startswith("api: 2 requests (1 retries), cache 5 hits / 1 misses") for line in lines), lines
    with open(tmp_path / "allowed" / "predictions" / "answers.jsonl") as f:
        records = [json.loads(line) for line in f]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["answer"] == ""
    assert not np.asarray(
        Image.open(glob.glob(str(tmp_path / "allowed" / "predictions" / "human" / f"{failed[0]['id']}.png"))[0])
    ).any()
    for text in (out, err, out2, err2):
        assert KEY not in text
    assert _files_holding(tmp_path, KEY) == []


def test_a_rerun_is_free_and_identical(release_dir, sam_folder, tmp_path, capsys, api_env):
    with FakeOpenAIServer() as server:
        spec = f"vlm-box:api:fake@{server.base_url},{sam_folder}"
        first = _evaluate(capsys, spec, release_dir, tmp_path / "first", *api_env)
        asked = len(server.requests)
        second = _evaluate(capsys, spec, release_dir, tmp_path / "second", *api_env)
        assert first[0] == second[0] == 0 and asked == 6 and len(server.requests) == asked  # zero new requests
        assert server.authorizations == {f"Bearer {KEY}"}  # the key was sent, and only as the header
    results = []
    for run in ("first", "second"):
        with open(tmp_path / run / "results.json") as f:
            results.append(json.load(f))
    usage = [r["provenance"]["adapter"]["usage"] for r in results]
    assert (usage[0]["cache_misses"], usage[0]["cache_hits"], usage[0]["requests"]) == (6, 0, 6)
    assert (usage[1]["cache_misses"], usage[1]["cache_hits"], usage[1]["requests"]) == (0, 6, 0)
    assert usage[0]["prompt_tokens"] == usage[1]["prompt_tokens"] > 0
    for key in ("configs", "paper", "boxes"):
        assert results[0][key] == results[1][key]
    prompts = [r["provenance"]["adapter"]["prompts"] for r in results]
    assert (
        prompts[0] == prompts[1]
        and prompts[0]["sha256"] == prompt_table.prompt_record(prompts[0]["templates"])["sha256"]
    )
    first_files = sorted(
        os.path.relpath(p, tmp_path / "first")
        for p in glob.glob(str(tmp_path / "first" / "predictions" / "**" / "*.*"), recursive=True)
    )
    assert "predictions/answers.jsonl" in first_files and len(first_files) == 7
    for name in first_files:
        with open(tmp_path / "first" / name, "rb") as a, open(tmp_path / "second" / name, "rb") as b:
            assert a.read() == b.read(), name
    for text in (*first[1:], *second[1:]):
        assert KEY not in text
    assert _files_holding(tmp_path, KEY) == []


def test_reason_then_ground_through_the_api_and_score_agree(release_dir, tmp_path, capsys, api_env):
    from instructpart_metric.cli import main as score_main

    with FakeOpenAIServer() as server:
        spec = f"reason-then-ground:api:fake@{server.base_url},full-image"
        status, out, err = _evaluate(
            capsys, spec, release_dir, tmp_path / "rtg", *api_env, "--compare-published", limit=()
        )
        assert status == 0, err
    with open(tmp_path / "rtg" / "results.json") as f:
        results = json.load(f)
    with open(tmp_path / "rtg" / "predictions" / "phrases.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 48 and {r["answer"] for r in records} == {"the handle of the object"}
    assert results["provenance"]["adapter"]["prompts"]["templates"] == prompt_table.PHRASE_PROMPTS
    assert results["provenance"]["adapter"]["vlm"]["base_url"] == server.base_url
    score_json = tmp_path / "score.json"
    argv = ["score", "--predictions", str(tmp_path / "rtg" / "predictions"), "--data-dir", release_dir]
    assert score_main([*argv, "--config", "trps,orps", "--json", str(score_json), "--compare-published"]) == 0
    with open(score_json) as f:
        scored = json.load(f)
    for key in ("configs", "paper", "published_ranks"):
        assert scored.get(key) == results.get(key), key  # ranks only on the official split: absent in both here


# --- a local VLM: a tiny random Qwen2.5-VL end to end ---------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    return tiny.save_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("qwen2_5_vl")))


def test_local_qwen_reports_its_smart_resized_input(qwen_folder):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from pisa_model.adapters.vlm import load_vlm

    vlm = load_vlm(qwen_folder)
    images = [Image.new("RGB", size, (90, 40, 10)) for size in [(517, 333), (131, 97), (40, 300)]]
    answers = vlm.ask(images, ["find the handle"] * 3)
    for image, answer in zip(images, answers):
        height, width = smart_resize(image.height, image.width, factor=28, **tiny.QWEN_PIXELS)
        assert answer.model_input_size == (width, height) and answer.shown_size == image.size
        assert isinstance(answer.text, str) and answer.error is None


def _local_run(capsys, spec, data_dir, out, *extra):
    status, stdout, err = _evaluate(
        capsys, spec, data_dir, out, "--adapter-arg", "max_new_tokens=8", *extra, limit=("--limit", "2")
    )
    assert status == 0, err
    with open(out / "results.json") as f:
        results = json.load(f)
    with open(out / "predictions" / "answers.jsonl") as f:
        records = [json.loads(line) for line in f]
    return results, records


@pytest.mark.slow
@pytest.mark.parametrize("data", ["synthetic", "sample"])
def test_local_qwen_vlm_box_end_to_end(data, request, release_dir, qwen_folder, sam_folder, tmp_path, capsys):
    data_dir = release_dir if data == "synthetic" else request.getfixturevalue("sample_dir")  # skips without it
    results, records = _local_run(capsys, f"vlm-box:{qwen_folder},{sam_folder}", data_dir, tmp_path)
    assert len(records) == 4 and results["configs"]["orps"]["all"]["num_samples"] == 2
    boxes = results["boxes"]["all"]
    assert boxes["rows"] == 4 and boxes["boxed"] + boxes["abstained"] == 4 and boxes["failed"] == 0
    for record in records:  # a random model's answer: whatever it says, the row is boxed or abstains
        assert record["status"] == ("box" if record["box"] else "abstained") and isinstance(record["answer"], str)
        if record["status"] == "abstained":
            png = tmp_path / "predictions" / record["instruction_type"] / f"{record['id']}.png"
            assert not np.asarray(Image.open(png)).any()
    adapter = results["provenance"]["adapter"]
    assert adapter["box_format"] == "qwen2.5-vl" and adapter["vlm"] == {
        "kind": "local",
        "decoding": "greedy",
        "max_new_tokens": 8,
    }
    assert adapter["prompts"]["templates"] == prompt_table.box_prompt_table("qwen2.5-vl")


def test_local_vlm_box_with_json_answers(release_dir, sam_folder, tmp_path, capsys, monkeypatch):
    """A LLaVA whose answers are replaced by boxes in its shown image's pixels: the masks are SAM's of those boxes."""
    from pisa_model.adapters import vlm as vlm_module

    folder = tiny.save_tiny_vlm(str(tmp_path / "llava"))
    real_ask = vlm_module.LocalVLM.ask

    def ask(self, images, prompts):
        answers = real_ask(self, images, prompts)  # the real generate call runs; its random text is replaced
        return [a._replace(text=f"[{a.shown_size[0] // 4}, {a.shown_size[1] // 4}, 1e9, 1e9]") for a in answers]

    monkeypatch.setattr(vlm_module.LocalVLM, "ask", ask)
    results, records = _local_run(capsys, f"vlm-box:{folder},{sam_folder}", release_dir, tmp_path / "out")
    assert results["provenance"]["adapter"]["box_format"] == "json"
    from transformers import AutoProcessor, SamModel

    from instructpart_dataset import load_instructpart

    sam = SamModel.from_pretrained(sam_folder).eval(), AutoProcessor.from_pretrained(sam_folder)
    rows = {
        (r["instruction_type"], r["id"]): r
        for c in ("trps", "orps")
        for r in load_instructpart(release_dir, c).select(range(2))
    }
    for record in records:
        image = rows[(record["instruction_type"], record["id"])]["image"].convert("RGB")
        box = (image.width // 4, image.height // 4, image.width, image.height)  # clipped at the image's edge
        assert record["box"] == pytest.approx(box, abs=0.01) and record["status"] == "box"
        expected = sam_box_masks(*sam, [image], [box])[0][0]
        png = tmp_path / "out" / "predictions" / record["instruction_type"] / f"{record['id']}.png"
        assert np.array_equal(np.asarray(Image.open(png)) > 0, expected)
