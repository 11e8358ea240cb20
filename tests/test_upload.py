"""upload.py: staging, verification as a user without this project, and the push at the HfApi boundary."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import upload  # noqa: E402


class RecordingApi:
    """Stands in for HfApi at the one boundary upload.py crosses; records what would be sent."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        kwargs["files"] = sorted(path for path, _ in upload.folder_files(kwargs["folder_path"]))
        self.calls.append(("upload_folder", kwargs.pop("repo_id"), kwargs))

    def upload_large_folder(self, **kwargs):
        self.calls.append(("upload_large_folder", kwargs.pop("repo_id"), kwargs))


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
    with pytest.raises(upload.UploadError, match="instructpart_dataset is not importable here"):
        upload.run_isolated("import instructpart_dataset\nprint('{}')", str(tmp_path), "import check")


def test_a_broken_stage_fails_verification(staged_dataset, tmp_path):
    import shutil

    stage, counts = staged_dataset
    broken = tmp_path / "instructpart"
    shutil.copytree(stage, broken)
    shard = next((broken / "orps").iterdir())
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(upload.UploadError, match="verification failed: load_dataset"):
        upload.verify_dataset(str(broken), counts)


def test_push_sends_one_commit_with_every_staged_file(staged_dataset):
    stage, _ = staged_dataset
    api = RecordingApi()
    url = upload.push(
        stage,
        "org/instructpart",
        "dataset",
        private=True,
        revision="v1",
        commit_message="Upload the InstructPart dataset",
        api=api,
    )
    assert url == "https://huggingface.co/org/instructpart"
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0] == (
        "create_repo",
        "org/instructpart",
        {"repo_type": "dataset", "private": True, "exist_ok": True, "space_sdk": None},
    )
    assert api.calls[1] == (
        "create_branch",
        "org/instructpart",
        {"repo_type": "dataset", "branch": "v1", "exist_ok": True},
    )
    name, repo_id, sent = api.calls[2]
    expected_files = sorted(os.path.relpath(os.path.join(r, f), stage) for r, _, fs in os.walk(stage) for f in fs)
    assert repo_id == "org/instructpart" and sent["files"] == expected_files
    assert "README.md" in sent["files"] and any(f.startswith("trps/test-") for f in sent["files"])
    assert (sent["repo_type"], sent["revision"], sent["commit_message"]) == (
        "dataset",
        "v1",
        "Upload the InstructPart dataset",
    )


def test_push_of_a_large_folder_uses_upload_large_folder(staged_dataset, monkeypatch):
    stage, _ = staged_dataset
    monkeypatch.setattr(upload, "LARGE_FOLDER_BYTES", 10)
    api = RecordingApi()
    upload.push(stage, "org/instructpart", "dataset", private=False, revision=None, commit_message="m", api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_large_folder"]
    assert api.calls[1][2]["folder_path"] == stage and api.calls[1][2]["private"] is False


def _run_upload(args, tmp_path, **env):
    full_env = {**os.environ, **env}
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
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "push to org/instructpart failed" in lines[0] and "for a retry" in lines[0]
    assert token not in result.stdout + result.stderr
    assert (tmp_path / "hub-staging" / "dataset" / "instructpart" / "README.md").is_file()


def test_bad_release_stops_before_anything_is_pushed(tmp_path):
    result = _run_upload(
        ["dataset", "--data-dir", str(tmp_path / "nowhere"), "--repo-id", "org/x", "--dry-run"], tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in result.stderr


@pytest.mark.slow
def test_staged_metric_is_the_renamed_module_and_scores_like_the_package(tmp_path):
    stage = str(tmp_path / "metric" / "instructpart")
    upload.stage_metric(stage, "org/instructpart")
    assert sorted(os.listdir(stage)) == ["README.md", "app.py", "core.py", "instructpart.py", "requirements.txt"]
    with open(os.path.join(stage, "README.md")) as f:
        assert f.read().startswith("---\n") and "app_file: app.py" in open(os.path.join(stage, "README.md")).read()
    upload.verify_metric(stage)
    os.remove(os.path.join(stage, "core.py"))
    with pytest.raises(upload.UploadError, match="verification failed: evaluate.load"):
        upload.verify_metric(stage)


def test_a_space_app_with_a_syntax_error_is_refused(tmp_path):
    stage = str(tmp_path / "metric" / "instructpart")
    upload.stage_metric(stage, "org/instructpart")
    with open(os.path.join(stage, "app.py"), "a") as f:
        f.write("\nif True print('x')\n")
    with pytest.raises(upload.UploadError, match="app.py line"):
        upload.verify_metric(stage)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pisa_model.testing import save_tiny_pisa

    folder = str(tmp_path_factory.mktemp("tiny-pisa"))
    save_tiny_pisa(folder)
    return folder


def _results_file(path, config, split, metrics_by_type):
    import json

    overall = {
        k: sum(m[k] for m in metrics_by_type.values()) / len(metrics_by_type)
        for k in ("gIoU", "cIoU", "P@50:95", "P@50")
    }
    with open(path, "w") as f:
        json.dump(
            {
                "overall": {**overall, "num_samples": 10},
                "by": {"instruction_type": metrics_by_type},
                "run": {"config": config, "split": split, "data_dir": "/data/InstructPart"},
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
    assert result["dataset"]["config"] == "trps" and result["dataset"]["split"] == "test"
    assert {m["name"]: m["value"] for m in result["metrics"]} == {
        "gIoU (TRPS)": 31.23,
        "cIoU (TRPS)": 40.0,
        "P@50:95 (TRPS)": 10.5,
        "P@50 (TRPS)": 25.0,
    }
    assert "https://huggingface.co/spaces/org/pisa-demo" in text and "| TRPS | human | 31.23 |" in text

    os.remove(os.path.join(stage, "pipeline_pisa.py"))
    with pytest.raises(upload.UploadError, match="verification failed: AutoModel/pipeline"):
        upload.verify_model(tiny_checkpoint, stage)

    bare = str(tmp_path / "model" / "pisa-bare")
    upload.stage_model(tiny_checkpoint, bare, "org/pisa-bare", [])
    with open(os.path.join(bare, "README.md")) as f:
        bare_meta = yaml.safe_load(f.read().split("---\n")[1])
    assert "model-index" not in bare_meta and "base_model" not in bare_meta


def test_pickled_weights_are_refused(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(upload.UploadError, match="refusing pickled weights 'pytorch_model.bin'"):
        upload.stage_model(str(folder), str(tmp_path / "stage"), "org/x", [])


def test_model_space_stages_an_app_that_compiles(tmp_path):
    stage = str(tmp_path / "space")
    upload.stage_model_space(stage, "org/pisa-tiny")
    upload.check_app_compiles(stage)
    assert "org/pisa-tiny" in open(os.path.join(stage, "app.py")).read()
    assert "sdk: gradio" in open(os.path.join(stage, "README.md")).read()
