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
    url = upload.push(stage, "org/instructpart", "dataset", private=True, revision="v1",
                      commit_message="Upload the InstructPart dataset", api=api)
    assert url == "https://huggingface.co/org/instructpart"
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0] == ("create_repo", "org/instructpart",
                            {"repo_type": "dataset", "private": True, "exist_ok": True, "space_sdk": None})
    assert api.calls[1] == ("create_branch", "org/instructpart",
                            {"repo_type": "dataset", "branch": "v1", "exist_ok": True})
    name, repo_id, sent = api.calls[2]
    expected_files = sorted(os.path.relpath(os.path.join(r, f), stage) for r, _, fs in os.walk(stage) for f in fs)
    assert repo_id == "org/instructpart" and sent["files"] == expected_files
    assert "README.md" in sent["files"] and any(f.startswith("trps/test-") for f in sent["files"])
    assert (sent["repo_type"], sent["revision"], sent["commit_message"]) == (
        "dataset", "v1", "Upload the InstructPart dataset")


def test_push_of_a_large_folder_uses_upload_large_folder(staged_dataset, monkeypatch):
    stage, _ = staged_dataset
    monkeypatch.setattr(upload, "LARGE_FOLDER_BYTES", 10)
    api = RecordingApi()
    upload.push(stage, "org/instructpart", "dataset", private=False, revision=None, commit_message="m", api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_large_folder"]
    assert api.calls[1][2]["folder_path"] == stage and api.calls[1][2]["private"] is False


def _run_upload(args, tmp_path, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, os.path.join(ROOT, "upload.py"), *args], cwd=tmp_path,
                          env=full_env, capture_output=True, text=True)


def test_dry_run_prints_the_plan_and_pushes_nothing(release_dir, tmp_path):
    result = _run_upload(["dataset", "--data-dir", release_dir, "--repo-id", "org/instructpart", "--dry-run",
                          "--private"], tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "would create private dataset repo org/instructpart" in result.stdout
    assert "trps/test-00000-of-00001.parquet" in result.stdout and "nothing pushed" in result.stdout
    assert (tmp_path / "hub-staging" / "dataset" / "instructpart" / "README.md").is_file()


def test_offline_push_fails_in_one_line_keeps_the_stage_and_hides_the_token(release_dir, tmp_path):
    token = "hf_secretTokenThatMustNotLeak123"
    result = _run_upload(["dataset", "--data-dir", release_dir, "--repo-id", "org/instructpart"], tmp_path,
                         HF_HUB_OFFLINE="1", HF_TOKEN=token)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "push to org/instructpart failed" in lines[0] and "for a retry" in lines[0]
    assert token not in result.stdout + result.stderr
    assert (tmp_path / "hub-staging" / "dataset" / "instructpart" / "README.md").is_file()


def test_bad_release_stops_before_anything_is_pushed(tmp_path):
    result = _run_upload(["dataset", "--data-dir", str(tmp_path / "nowhere"), "--repo-id", "org/x", "--dry-run"],
                         tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in result.stderr
