"""One error convention for every command (instructpart_dataset/toolbox/cli_errors.py), run as a user runs them: a
fresh interpreter whose stderr is a pipe. Bad input exits 2, a failed write exits 1, and stderr is exactly
one line `<prog>: error: <path>: <what>`, never a traceback; nothing is left where the output would go."""

import os
import subprocess
import sys

import pytest

from instructpart_dataset.export import export_release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORE = [sys.executable, "-m", "instructpart_metric", "score"]
EVALUATE = [sys.executable, "-m", "pisa_model.evaluate"]


def run(command, cwd):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def one_line(result, status, prog):
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0][len(f"{prog}: error: ") :]


@pytest.fixture(scope="module")
def hub(release_dir, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("hub") / "instructpart")
    export_release(release_dir, folder)
    return folder


@pytest.fixture()
def predictions(tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    return str(folder)


def test_score_json_into_a_folder_fails_before_scoring(hub, predictions, tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    command = [*SCORE, "--predictions", predictions, "--data-dir", hub, "--missing-as-empty", "--json", str(target)]
    result = run(command, tmp_path)
    assert one_line(result, 1, "python -m instructpart_metric score") == f"{target}: cannot write: Is a directory"
    assert "InstructPart trps test" not in result.stdout  # refused before the scoring, not after it
    assert os.listdir(target) == []


def test_score_json_under_a_file_names_both(hub, predictions, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    target = blocker / "results.json"
    command = [*SCORE, "--predictions", predictions, "--data-dir", hub, "--missing-as-empty", "--json", str(target)]
    message = one_line(run(command, tmp_path), 1, "python -m instructpart_metric score")
    assert message == f"{target}: cannot write: {blocker} is a file, not a folder"
    assert blocker.read_text() == "x"


def test_score_json_into_an_unwritable_folder(hub, predictions, tmp_path):
    target = "/sys/instructpart-results.json"  # sysfs refuses new files even to root
    if not os.path.isdir("/sys") or os.path.exists(target):
        pytest.skip("needs Linux's /sys")
    command = [*SCORE, "--predictions", predictions, "--data-dir", hub, "--missing-as-empty", "--json", target]
    message = one_line(run(command, tmp_path), 1, "python -m instructpart_metric score")
    assert message.startswith(f"{target}: cannot write: ")
    assert not os.path.exists(target)


def test_score_on_a_corrupt_parquet_file_names_it(hub, predictions, tmp_path):
    import shutil

    broken = str(tmp_path / "instructpart")
    shutil.copytree(hub, broken)
    shard = os.path.join(broken, "trps", sorted(n for n in os.listdir(os.path.join(broken, "trps")) if "test" in n)[0])
    with open(shard, "rb") as f:
        head = f.read(300)
    with open(shard, "wb") as f:  # a download cut short
        f.write(head)
    command = [*SCORE, "--predictions", predictions, "--data-dir", broken, "--missing-as-empty"]
    message = one_line(run(command, tmp_path), 2, "python -m instructpart_metric score")
    assert message.startswith(f"{shard}: not a readable Parquet file (")


def test_score_bad_input_exits_2(hub, tmp_path):
    missing = tmp_path / "no-predictions"
    message = one_line(
        run([*SCORE, "--predictions", str(missing), "--data-dir", hub], tmp_path),
        2,
        "python -m instructpart_metric score",
    )
    assert message == f"{missing}: no such predictions folder"
    result = run([*SCORE, "--predictions", str(tmp_path), "--data-dir", hub, "--config", "nope"], tmp_path)
    assert result.returncode == 2 and "unknown config 'nope'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # a subprocess of the whole command (over ~4 s here)
def test_evaluate_output_under_a_file_fails_before_predicting(hub, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    out = blocker / "eval"
    command = [*EVALUATE, "--model", "full-image", "--data-dir", hub, "--output-dir", str(out), "--no-progress"]
    message = one_line(run(command, tmp_path), 1, "python -m pisa_model.evaluate")
    assert message == f"{out}: cannot write: {blocker} is a file, not a folder"


@pytest.mark.slow  # a subprocess of the whole command (over ~4 s here)
def test_upload_and_the_evaluate_command_share_the_bad_input_code(tmp_path):
    result = run([*EVALUATE, "--model", "full-image", "--data-dir", str(tmp_path / "nowhere")], tmp_path)
    assert str(tmp_path / "nowhere") in one_line(result, 2, "python -m pisa_model.evaluate")
    result = run(
        [sys.executable, os.path.join(ROOT, "upload.py"), "model", "--checkpoint", str(tmp_path), "--repo-id", "o/x"],
        tmp_path,
    )
    assert one_line(result, 2, "upload.py") == f"{tmp_path}: not a checkpoint folder (no config.json)"
