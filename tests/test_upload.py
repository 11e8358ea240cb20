"""upload.py: staging, verification as a user without this project, and the push at the HfApi boundary."""

import fnmatch
import os
import subprocess
import sys
from unittest.mock import create_autospec

import pytest
from fake_hub import FakeHub

import upload
from instructpart_dataset.toolbox.fresh_process import IsolatedRunError, run_isolated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def staged_dataset(release_dir, tmp_path_factory):
    stage = str(tmp_path_factory.mktemp("stage") / "dataset" / "instructpart")
    counts = upload.stage_dataset(release_dir, stage)
    return stage, counts


@pytest.mark.slow
def test_staged_dataset_verifies_in_a_process_without_the_project(staged_dataset):
    stage, counts = staged_dataset
    upload.verify_dataset(stage, counts)  # raises on any difference
    with pytest.raises(upload.UploadError, match="loads as"):
        upload.verify_dataset(stage, {**counts, "trps": {"test": 1}})


def test_isolation_really_blocks_the_project(tmp_path):
    with pytest.raises(IsolatedRunError, match="instructpart_dataset is not importable here"):
        run_isolated("import instructpart_dataset\nprint('{}')", str(tmp_path), "import check")
    assert run_isolated("import sys, json\nprint(json.dumps(sys.argv[1:]))", str(tmp_path), "args", args=[1, "b"]) == [
        "1",
        "b",
    ]


@pytest.mark.slow
def test_a_broken_stage_fails_verification(staged_dataset, tmp_path):
    import shutil

    stage, counts = staged_dataset
    broken = tmp_path / "instructpart"
    shutil.copytree(stage, broken)
    shard = next((broken / "orps").iterdir())
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(upload.UploadError, match="verification failed: load_dataset"):
        upload.verify_dataset(str(broken), counts)


TOKEN = "hf_fakeTokenForTheLoopbackHub0123"


def _staged_bytes(stage):
    found = {}
    for root, _, names in os.walk(stage):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, stage).replace(os.sep, "/")] = f.read()
    return found


@pytest.fixture
def hub_client_online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1; these tests reach only the loopback fake Hub."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_push_creates_the_repo_and_branch_and_commits_every_staged_byte(staged_dataset, hub_client_online):
    from huggingface_hub import HfApi

    stage, _ = staged_dataset
    with FakeHub(TOKEN) as hub:
        api = HfApi(endpoint=hub.url, token=TOKEN)
        url = upload.push(
            stage, "org/instructpart", "dataset", private=True, revision="v1", commit_message="Upload it", api=api
        )
        assert url == f"{hub.url}/datasets/org/instructpart"
        repo = hub.repos[("dataset", "org/instructpart")]
        assert repo["private"] and set(repo["branches"]) == {"main", "v1"}
        assert hub.files("dataset", "org/instructpart", "v1") == _staged_bytes(stage)
        assert hub.files("dataset", "org/instructpart", "main") == {}
        assert repo["commits"] == [("v1", "Upload it", sorted(_staged_bytes(stage)))]
        # A second push to an existing repo and branch (exist_ok) commits again.
        upload.push(stage, "org/instructpart", "dataset", private=True, revision="v1", commit_message="Again", api=api)
        assert [c[1] for c in repo["commits"]] == ["Upload it", "Again"]
        assert [path for method, path in hub.requests if path == "/api/repos/create"] == ["/api/repos/create"] * 2


def test_push_to_the_fake_hub_fails_like_the_real_one_without_a_token(staged_dataset, hub_client_online):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    stage, _ = staged_dataset
    with FakeHub(TOKEN) as hub:
        with pytest.raises(HfHubHTTPError, match="401"):
            upload.push(
                stage, "org/x", "dataset", private=False, revision=None, commit_message="m", api=HfApi(hub.url, "hf_no")
            )
        assert hub.repos == {}


def test_the_fake_hub_refuses_bad_card_metadata_as_the_hub_does(tmp_path, hub_client_online):
    from huggingface_hub import HfApi

    stage = str(tmp_path / "space")
    upload.stage_model_space(stage, "org/pisa-tiny")
    readme = os.path.join(stage, "README.md")
    with open(readme) as f:
        text = f.read()
    with open(readme, "w") as f:
        f.write(text.replace("colorFrom: red", "colorFrom: orange"))
    with FakeHub(TOKEN) as hub:
        with pytest.raises(ValueError, match="Invalid metadata in README.md"):
            upload.push(
                stage,
                "org/demo",
                "space",
                private=False,
                revision=None,
                commit_message="m",
                api=HfApi(hub.url, token=TOKEN),
                space_sdk="gradio",
            )
        assert hub.repos[("space", "org/demo")]["commits"] == []


def test_push_calls_only_methods_and_arguments_hfapi_has(staged_dataset):
    from huggingface_hub import HfApi

    stage, _ = staged_dataset
    api = create_autospec(HfApi, instance=True)
    api.create_repo.return_value = "https://huggingface.co/spaces/org/demo"
    upload.push(
        stage, "org/demo", "space", private=False, revision="dev", commit_message="m", api=api, space_sdk="gradio"
    )
    api.create_repo.assert_called_once_with(
        "org/demo", repo_type="space", private=False, exist_ok=True, space_sdk="gradio"
    )
    api.create_branch.assert_called_once_with("org/demo", repo_type="space", branch="dev", exist_ok=True)
    api.upload_folder.assert_called_once_with(
        repo_id="org/demo", folder_path=stage, repo_type="space", revision="dev", commit_message="m"
    )


def _run_upload(args, tmp_path, drop=(), **env):
    full_env = {**{k: v for k, v in os.environ.items() if k not in drop}, **env}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "upload.py"), *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_pushes_nothing(release_dir, tmp_path):
    result = _run_upload(
        ["dataset", "--data-dir", release_dir, "--repo-id", "org/instructpart", "--dry-run", "--private"],
        tmp_path,
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "would create private dataset repo org/instructpart" in result.stdout
    assert "trps/test-00000-of-00001.parquet" in result.stdout and "nothing pushed" in result.stdout
    assert "verified load_dataset('instructpart') in a fresh process: {'trps': {" in result.stdout
    assert (tmp_path / "hub-staging" / "dataset" / "instructpart" / "README.md").is_file()


@pytest.mark.slow
def test_offline_push_fails_in_one_line_keeps_the_stage_and_hides_the_token(release_dir, tmp_path):
    token = "hf_secretTokenThatMustNotLeak123"
    result = _run_upload(
        ["dataset", "--data-dir", release_dir, "--repo-id", "org/instructpart"],
        tmp_path,
        HF_HUB_OFFLINE="1",
        HF_TOKEN=token,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("upload.py: error:")]
    assert len(lines) == 1 and "push to org/instructpart failed" in lines[0] and "for a retry" in lines[0]
    assert token not in result.stdout + result.stderr
    assert (tmp_path / "hub-staging" / "dataset" / "instructpart" / "README.md").is_file()


def test_bad_release_stops_before_anything_is_pushed(tmp_path):
    result = _run_upload(
        ["dataset", "--data-dir", str(tmp_path / "nowhere"), "--repo-id", "org/x", "--dry-run"], tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("upload.py: error: ") and "nowhere" in result.stderr


@pytest.mark.slow
def test_staged_metric_space_is_launched_and_must_score_like_the_package(tmp_path, capsys):
    stage = str(tmp_path / "metric" / "instructpart")
    upload.stage_metric(stage, "org/instructpart")
    assert sorted(os.listdir(stage)) == ["README.md", "app.py", "core.py", "instructpart.py", "requirements.txt"]
    upload.verify_metric(stage)  # evaluate.load and the served app agree with StreamingScorer
    printed = capsys.readouterr().out  # what was launched and queried, and the checked answer
    assert f"verified evaluate.load({stage!r}) in a fresh process: 4 mask pairs give {{'gIoU': " in printed
    assert f"verified the metric Space {stage}/app.py: launched at http://127.0.0.1:" in printed
    assert "queried /score_pair with one mask pair: {'gIoU': " in printed and "as the package scores it" in printed

    app = os.path.join(stage, "app.py")
    with open(app) as f:
        source = f.read()
    with open(app, "w") as f:  # an app that scores the inverted prediction serves fine but gives other numbers
        f.write(
            source.replace(
                "predicted = read_upload(prediction, shape=true.shape) != 0",
                "predicted = read_upload(prediction, shape=true.shape) == 0",
            )
        )
    with pytest.raises(upload.UploadError, match="verification failed: the staged app scores"):
        upload.verify_metric(stage)
    with open(app, "w") as f:
        f.write(source + "\nif True print('x')\n")
    with pytest.raises(
        upload.UploadError, match=r"verification failed: the metric Space .*exited with code 1: SyntaxError"
    ):
        upload.verify_metric(stage)
    with open(app, "w") as f:
        f.write(source)
    os.remove(os.path.join(stage, "core.py"))
    with pytest.raises(upload.UploadError, match="verification failed: evaluate.load"):
        upload.verify_metric(stage)


def test_space_requirements_are_the_packages_own_ranges(tmp_path):
    import configparser

    # The ranges as written in setup.cfg, read another way: install_requires, then the extras.
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    written = config["options"]["install_requires"].split("\n") + config["options.extras_require"]["space"].split("\n")
    written = {line.split(">")[0].split("=")[0].split("<")[0].strip(): line.strip() for line in written if line.strip()}
    from instructpart_dataset.toolbox.cli_errors import OperationFailed
    from instructpart_dataset.toolbox.space_files import space_requirements

    text = space_requirements(["evaluate", "pillow", "huggingface_hub"])
    assert len(text.splitlines()) == 3
    for name, line in zip(["evaluate", "pillow", "huggingface_hub"], text.splitlines()):
        # the same specifiers (packaging may order them differently)
        assert set(line[len(name) :].split(",")) == set(written[name][len(name) :].replace(" ", "").split(","))
    with pytest.raises(OperationFailed, match="scipy is not among instructpart's requirements"):
        space_requirements(["scipy"])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pisa_model.tiny import save_tiny_pisa

    folder = str(tmp_path_factory.mktemp("tiny-pisa"))
    save_tiny_pisa(folder)
    return folder


def _results_file(path, config, split, metrics_by_type, rows=10, fingerprint="sha256:" + "ab" * 32):
    import json

    overall = {
        k: sum(m[k] for m in metrics_by_type.values()) / len(metrics_by_type)
        for k in ("gIoU", "cIoU", "P@50:95", "P@50")
    }
    from instructpart_metric.paper import paper_row

    with open(path, "w") as f:
        json.dump(
            {
                "configs": {
                    config: {"all": {**overall, "num_samples": 10}, "by": {"instruction_type": metrics_by_type}}
                },
                "paper": {"orps_form": "question", "columns": paper_row(metrics_by_type)},
                "provenance": {
                    "package": {"name": "instructpart", "version": "0.1.0"},
                    "command": "python -m pisa_model.evaluate --model ckpt --data-dir /data/InstructPart",
                    "orps_form": "question",
                    "dataset": {
                        "source": "/data/InstructPart",
                        "split": split,
                        "configs": {config: {"rows": rows, "fingerprint": fingerprint}},
                    },
                },
            },
            f,
        )
    return str(path)


@pytest.mark.slow
def test_staged_model_loads_with_remote_code_and_its_card_reports_only_given_results(tiny_checkpoint, tmp_path):
    import yaml

    metrics = {"gIoU": 0.31234, "cIoU": 0.4, "P@50:95": 0.105, "P@50": 0.25}
    trps = _results_file(tmp_path / "trps.json", "trps", "test", {"human": metrics, "gpt4": metrics})
    stage = str(tmp_path / "model" / "pisa-tiny")
    upload.stage_model(
        tiny_checkpoint,
        stage,
        "org/pisa-tiny",
        [trps],
        space_repo_id="org/pisa-demo",
        base_models=["llava-hf/llava-1.5-7b-hf"],
    )
    upload.verify_model(tiny_checkpoint, stage)
    assert {"model.safetensors", "config.json", "modeling_pisa.py", "README.md", "example.jpg"} <= set(
        os.listdir(stage)
    )
    with open(os.path.join(stage, "README.md")) as f:
        text = f.read()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert (meta["library_name"], meta["pipeline_tag"]) == ("transformers", "image-segmentation")
    assert meta["base_model"] == ["llava-hf/llava-1.5-7b-hf"] and meta["datasets"] == ["org/instructpart"]
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["config"] == "trps" and result["dataset"]["split"] == "test (5 entries)"  # 10 rows
    # Besides the TRPS numbers, the paper's two TRPS column groups (metric config), for a leaderboard.
    paper_columns = [m for m in result["metrics"] if "config" in m]
    assert [m["config"] for m in paper_columns] == ["trps_human"] * 4 + ["trps_gpt4"] * 4
    assert paper_columns[0]["args"] == {"orps_form": "question", "fingerprint": "sha256:" + "ab" * 32, "rows": 10}
    assert {m["name"]: m["value"] for m in result["metrics"] if "config" not in m} == {
        "gIoU (TRPS)": 31.23,
        "cIoU (TRPS)": 40.0,
        "P@50:95 (TRPS)": 10.5,
        "P@50 (TRPS)": 25.0,
    }
    assert "https://huggingface.co/spaces/org/pisa-demo" in text and "| TRPS | human | 31.23 |" in text
    assert "| TRPS | TRPS (all) | 31.23 |" in text and "sha256:" + "ab" * 32 in text  # provenance printed
    assert "| pisa-tiny |  | — |" in text and "ORPS form: question" in text  # the paper layout

    os.remove(os.path.join(stage, "pipeline_pisa.py"))
    with pytest.raises(upload.UploadError, match="verification failed: AutoModel/pipeline"):
        upload.verify_model(tiny_checkpoint, stage)

    bare = str(tmp_path / "model" / "pisa-bare")
    upload.stage_model(tiny_checkpoint, bare, "org/pisa-bare", [])
    with open(os.path.join(bare, "README.md")) as f:
        bare_meta = yaml.safe_load(f.read().split("---\n")[1])
    assert "model-index" not in bare_meta and "base_model" not in bare_meta


def test_the_card_can_place_the_results_among_the_published_methods(tiny_checkpoint, tmp_path):
    from instructpart_metric import paper
    from pisa_model.model_card import render_model_card

    metrics = {"gIoU": 0.31234, "cIoU": 0.4, "P@50:95": 0.105, "P@50": 0.25}
    official = paper.OFFICIAL_TEST_SPLIT["trps"]
    trps = _results_file(tmp_path / "trps.json", "trps", "test", {"human": metrics, "gpt4": metrics}, **official)
    text = str(render_model_card(tiny_checkpoint, "org/pisa-tiny", results_files=[trps], compare_published=True))
    assert "| LISA | RS | 34.46 | 39.44 |" in text and "| Average (as printed) |" in text
    # TRPS human gIoU 31.23: only LISA's 32.11 is higher; cIoU 40.00 beats every published 30.25 or less
    assert "gIoU TRPS-human: 2nd of 11" in text and "cIoU TRPS-human: 1st of 11" in text
    assert "| **pisa-tiny** | yours |" in text
    plain = str(render_model_card(tiny_checkpoint, "org/pisa-tiny", results_files=[trps]))
    assert "| LISA |" not in plain and "| pisa-tiny |" in plain
    with pytest.raises(ValueError, match="TRPS results again"):
        render_model_card(tiny_checkpoint, "org/pisa-tiny", results_files=[trps, trps])
    # 60 entries are 120 TRPS rows: the published rows are shown, without ranks, and the card says why
    sample = _results_file(tmp_path / "sample.json", "trps", "test", {"human": metrics, "gpt4": metrics}, rows=120)
    text = str(render_model_card(tiny_checkpoint, "org/pisa-tiny", results_files=[sample], compare_published=True))
    assert "| LISA | RS | 34.46 | 39.44 |" in text and " of 11" not in text
    assert "No ranks against the published rows: not the official test split: 60 of 600 entries" in text


def test_model_space_stages_the_package_app_examples_and_a_card_that_names_the_model(tmp_path):
    import json

    import gradio
    from huggingface_hub import SpaceCard

    from pisa_model.space import APP_FILE

    stage = str(tmp_path / "space")
    upload.stage_model_space(stage, "org/pisa-tiny")
    with open(APP_FILE, "rb") as f, open(os.path.join(stage, "app.py"), "rb") as g:
        assert f.read() == g.read()
    card = SpaceCard.load(os.path.join(stage, "README.md"))
    assert (card.data.sdk, card.data.sdk_version, card.data.app_file) == ("gradio", gradio.__version__, "app.py")
    assert card.data.models == ["org/pisa-tiny"]
    with open(os.path.join(stage, "examples", "examples.json")) as f:
        examples = json.load(f)
    assert len(examples) == 6 and all(os.path.isfile(os.path.join(stage, "examples", e["image"])) for e in examples)
    assert {
        line.split("<")[0].split(">")[0].split("=")[0] for line in open(os.path.join(stage, "requirements.txt"))
    } == {
        "transformers",
        "torch",
        "safetensors",
        "huggingface_hub",
        "numpy",
        "pillow",
    }


@pytest.fixture(scope="module")
def pushed(release_dir, tiny_checkpoint, tmp_path_factory):
    """`upload.py dataset`, `metric` and `model --space` run as commands against the loopback Hub."""
    work = tmp_path_factory.mktemp("pushed")
    trps = _results_file(
        work / "trps.json", "trps", "test", {"human": {"gIoU": 0.5, "cIoU": 0.25, "P@50:95": 0.1, "P@50": 0.5}}
    )
    commands = {
        "dataset": ["dataset", "--data-dir", release_dir, "--repo-id", "org/instructpart", "--private"],
        "metric": ["metric", "--repo-id", "org/instructpart"],
        "model": [
            "model",
            "--checkpoint",
            tiny_checkpoint,
            "--repo-id",
            "org/pisa-tiny",
            "--space",
            "org/pisa-tiny-demo",
            "--results",
            trps,
            "--base-model",
            "llava-hf/llava-1.5-7b-hf",
            "--base-model",
            "facebook/dinov2-large",
        ],
    }
    with FakeHub(TOKEN) as hub:
        runs = {
            name: _run_upload(
                args, work, drop=("HF_HUB_OFFLINE",), HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HOME=str(work / "hf-home")
            )
            for name, args in commands.items()
        }
    return hub, runs, work / "hub-staging"


@pytest.mark.slow
def test_commands_push_exactly_the_staged_folders(pushed):
    hub, runs, staging = pushed
    for name, run in runs.items():
        assert run.returncode == 0, f"{name}: {run.stderr[-3000:]}"
        assert TOKEN not in run.stdout + run.stderr
    assert set(hub.repos) == {
        ("dataset", "org/instructpart"),
        ("space", "org/instructpart"),
        ("model", "org/pisa-tiny"),
        ("space", "org/pisa-tiny-demo"),
    }
    for (repo_type, repo_id), folder in {
        ("dataset", "org/instructpart"): staging / "dataset" / "instructpart",
        ("space", "org/instructpart"): staging / "metric" / "instructpart",
        ("model", "org/pisa-tiny"): staging / "model" / "pisa-tiny",
        ("space", "org/pisa-tiny-demo"): staging / "model-space" / "pisa-tiny-demo",
    }.items():
        assert hub.files(repo_type, repo_id) == _staged_bytes(str(folder)), repo_id
        assert len(hub.repos[(repo_type, repo_id)]["commits"]) == 1
    assert hub.repos[("dataset", "org/instructpart")]["private"]
    assert (
        hub.repos[("space", "org/instructpart")]["sdk"] == hub.repos[("space", "org/pisa-tiny-demo")]["sdk"] == "gradio"
    )
    assert (
        f"pushed {staging / 'model-space' / 'pisa-tiny-demo'} to {hub.url}/spaces/org/pisa-tiny-demo"
        in runs["model"].stdout
    )
    # What the pushes asked of the Hub: repo creation, README validation, preupload and one commit per repo
    # huggingface_hub's own housekeeping reads (its agent-harness registry for the user agent, its telemetry ping,
    # sent from a background thread when telemetry is on) come and go with its releases: they write nothing.
    posts = [path for method, path in hub.requests if method == "POST"]
    housekeeping = ("/api/agent-harnesses", "/api/telemetry/")
    assert not [(m, p) for m, p in hub.requests if m != "POST" and not p.startswith(housekeeping)]
    assert posts.count("/api/repos/create") == posts.count("/api/validate-yaml") == 4
    assert (
        sorted(p.split("/")[-2] for p in posts if p.startswith(("/api/models/", "/api/datasets/", "/api/spaces/")))
        == ["commit"] * 4 + ["preupload"] * 4
    )
    assert sorted(repo_type for repo_type, _ in hub.validated) == ["dataset", "model", "space", "space"]


def _card(hub, repo_type, repo_id, card_class):
    """The pushed README.md as the Hub's card class parses it."""
    return card_class(hub.files(repo_type, repo_id)["README.md"].decode("utf-8"))


@pytest.mark.slow
def test_pushed_cards_parse_with_the_hub_card_classes_and_carry_the_listing_fields(pushed):
    import gradio
    from huggingface_hub import DatasetCard, ModelCard, SpaceCard
    from huggingface_hub.repocard_data import DatasetCardData, ModelCardData, SpaceCardData
    from transformers.pipelines import PIPELINE_REGISTRY

    hub, _, _ = pushed
    model = _card(hub, "model", "org/pisa-tiny", ModelCard)
    assert isinstance(model.data, ModelCardData)
    assert (
        model.data.pipeline_tag == "image-segmentation"
        and "image-segmentation" in PIPELINE_REGISTRY.get_supported_tasks()
    )
    assert model.data.library_name == "transformers" and model.data.license == "unknown"  # no --license given
    assert "Not stated: no licence was chosen" in model.text
    assert model.data.base_model == ["llava-hf/llava-1.5-7b-hf", "facebook/dinov2-large"]
    assert model.data.datasets == ["org/instructpart"] and "custom_code" in model.data.tags
    # The model-index is parsed back into EvalResults by the card class (malformed entries raise here).
    results = {(r.dataset_config, r.metric_name): r.metric_value for r in model.data.eval_results}
    assert results[("trps", "gIoU (TRPS)")] == 50.0 and results[("trps", "cIoU (TRPS)")] == 25.0
    assert "https://huggingface.co/spaces/org/pisa-tiny-demo" in model.text
    # no widget block (the Hub runs none for custom code); the example photo is pushed and shown in the body
    assert "widget" not in model.data.to_dict()  # the front matter; the body says why there is none
    assert "example.jpg" in hub.files("model", "org/pisa-tiny")
    assert "https://huggingface.co/org/pisa-tiny/resolve/main/example.jpg" in model.text

    dataset = _card(hub, "dataset", "org/instructpart", DatasetCard)
    assert isinstance(dataset.data, DatasetCardData)
    files = hub.files("dataset", "org/instructpart")
    declared = {c["config_name"]: c["data_files"] for c in dataset.data.configs}
    assert set(declared) == {"trps", "orps"}
    for config, splits in declared.items():
        for entry in splits:  # every declared data file pattern matches pushed Parquet files
            assert fnmatch.filter(files, entry["path"]), (config, entry)
    assert {info["config_name"] for info in dataset.data.dataset_info} == {"trps", "orps"}

    for repo_id, app_needs in (("org/instructpart", "evaluate"), ("org/pisa-tiny-demo", "transformers")):
        space = _card(hub, "space", repo_id, SpaceCard)
        assert isinstance(space.data, SpaceCardData)
        assert (space.data.sdk, space.data.sdk_version, space.data.app_file) == ("gradio", gradio.__version__, "app.py")
        space_files = hub.files("space", repo_id)
        assert "app.py" in space_files and app_needs in space_files["requirements.txt"].decode()
    assert SpaceCard(hub.files("space", "org/pisa-tiny-demo")["README.md"].decode()).data.models == ["org/pisa-tiny"]
    assert SpaceCard(hub.files("space", "org/instructpart")["README.md"].decode()).data.datasets == ["org/instructpart"]


def test_the_card_takes_training_data_and_licence_from_the_run_and_the_user(tiny_checkpoint, tmp_path):
    import json
    import shutil

    import yaml

    from pisa_model.model_card import render_model_card
    from pisa_model.train import write_training_data

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    unrecorded = str(render_model_card(str(checkpoint), "org/pisa-tiny"))
    assert "The training data was not recorded" in unrecorded and "pisa_model.train` on InstructPart" not in unrecorded
    assert yaml.safe_load(unrecorded.split("---\n")[1])["license"] == "unknown"
    assert "no licence was chosen" in unrecorded and "apache" not in unrecorded

    write_training_data(str(checkpoint), str(tmp_path / "my-release"), "train", ("trps", "orps"), 720)
    record = json.loads((checkpoint / "training_data.json").read_text())
    assert record["data"] == "my-release" and str(tmp_path) not in json.dumps(record)  # no local path travels
    real = str(render_model_card(str(checkpoint), "org/pisa-tiny", license="mit"))
    assert "on the `train` split of `my-release`: 720 TRPS and ORPS rows" in real
    assert yaml.safe_load(real.split("---\n")[1])["license"] == "mit" and "`mit`, as chosen by the uploader" in real

    record["synthetic"] = "generated by instructpart_dataset.synthetic (seed 0)"
    (checkpoint / "training_data.json").write_text(json.dumps(record))
    synthetic = str(render_model_card(str(checkpoint), "org/pisa-tiny"))
    assert "on synthetic data, not InstructPart (generated by instructpart_dataset.synthetic (seed 0))" in synthetic


def test_the_model_index_names_the_revision_and_entries_and_calls_only_the_official_split_test(
    tiny_checkpoint, tmp_path
):
    import yaml

    from instructpart_metric import paper
    from pisa_model.model_card import render_model_card

    metrics = {"gIoU": 0.5, "cIoU": 0.25, "P@50:95": 0.1, "P@50": 0.5}
    sample = _results_file(tmp_path / "sample.json", "trps", "test", {"human": metrics, "gpt4": metrics}, rows=120)
    meta = yaml.safe_load(str(render_model_card(tiny_checkpoint, "org/p", results_files=[sample])).split("---\n")[1])
    dataset = meta["model-index"][0]["results"][0]["dataset"]
    assert dataset["split"] == "test (60 entries)" and dataset["revision"] == "sha256:" + "ab" * 32
    assert dataset["name"] == "InstructPart (not the official test split: 60 of 600 entries)"
    assert dataset["args"] == {"entries": 60, "rows": 120}
    official = paper.OFFICIAL_TEST_SPLIT["trps"]
    full = _results_file(tmp_path / "full.json", "trps", "test", {"human": metrics, "gpt4": metrics}, **official)
    meta = yaml.safe_load(str(render_model_card(tiny_checkpoint, "org/p", results_files=[full])).split("---\n")[1])
    dataset = meta["model-index"][0]["results"][0]["dataset"]
    assert dataset["split"] == "test" and dataset["name"] == "InstructPart"
    assert dataset["revision"] == official["fingerprint"] and dataset["args"] == {"entries": 600, "rows": 1200}


def _stalled_push(stage, hub_url, stall_on, tmp_path, *extra):
    """`upload.py`'s push of `stage` (as `_publish` does it) against a Hub that never answers `stall_on`, in a
    subprocess that the test would kill if the push hung."""
    code = (
        "import argparse, sys; sys.path.insert(0, sys.argv[1]); import upload; "
        "from instructpart_dataset.toolbox.cli_errors import run_command; "
        "parser = argparse.ArgumentParser(); upload_args = sys.argv[3:]; "
        "args = argparse.Namespace(repo_id='org/stalled', dry_run=False, private=False, revision='v1', "
        "connect_timeout=1.0, read_timeout=1.0, attempts=2, **dict(a.split('=') for a in upload_args)); "
        "sys.exit(run_command('upload.py', upload._publish, args, sys.argv[2], 'dataset', 'a test'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub_url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"))
    return subprocess.run(
        [sys.executable, "-c", code, ROOT, stage, *extra], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "stall_on, done, remaining",
    [
        ("/api/repos/create", "nothing", "create dataset repo org/stalled; create branch v1; commit 2 files"),
        # huggingface_hub retries a commit itself (six tries, 23 s of waits): slow.
        pytest.param(
            "/commit/",
            "create dataset repo org/stalled; create branch v1",
            "commit 2 files",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_stalled_hub_fails_the_push_in_one_line_naming_what_was_sent_and_keeps_the_stage(
    tmp_path, stall_on, done, remaining
):
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    (stage / "data.json").write_text("{}")
    with FakeHub(TOKEN, stall_on=stall_on) as hub:
        run = _stalled_push(str(stage), hub.url, stall_on, tmp_path)
        never_answered = [path for method, path in hub.requests if method == "POST (never answered)"]
    assert run.returncode == 1, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("upload.py: error:")]
    assert len(errors) == 1, run.stderr
    assert f"push to org/stalled failed at {remaining.split(';')[0]}" in errors[0]
    assert f"done: {done}; remaining: {remaining}" in errors[0] and f"stay in {stage} for a retry" in errors[0]
    assert TOKEN not in run.stdout + run.stderr
    if stall_on == "/api/repos/create":  # --attempts 2 (default: the library's 6 tries, as for a commit)
        assert len(never_answered) == 2 and "after 2 attempts" in errors[0]
        assert "attempt 2 of 2" in run.stderr  # said while it waits
    assert never_answered and all(stall_on in path for path in never_answered)
    assert sorted(os.listdir(stage)) == ["README.md", "data.json"]
