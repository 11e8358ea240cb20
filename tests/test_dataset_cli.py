"""`python -m instructpart_dataset` run as a user runs it: real processes, real signals, checked another way.

Errors are one line `python -m instructpart_dataset <command>: error: <path>: <what>`, exit 2 for bad input
and 1 for a failed operation; concurrent and interrupted exports never lose or half-replace an output.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from instructpart_dataset.__main__ import main
from instructpart_dataset.synthetic import make_release

# Runs the CLI in a process that stops at a chosen point of an export: `hold` waits there until a gate
# file exists (the export holds its output meanwhile); `SIGKILL`/`SIGTERM` signal the process itself there.
STOPPING_CLI = """
import os, shutil, signal, sys, time
import instructpart_dataset.export as export
from instructpart_dataset.__main__ import main

point, action, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
output = os.path.abspath(argv[argv.index("--output") + 1])
name = os.path.basename(output)

def stop():
    if action == "hold":
        open(os.environ["GATE"] + ".reached", "w").close()
        while not os.path.exists(os.environ["GATE"]):
            time.sleep(0.02)
    elif action == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    else:  # the handler runs in the main thread; this (worker) thread just carries on
        os.kill(os.getpid(), getattr(signal, action))

if point == "writing":  # while the second entry is decoded, shards are half written
    read, seen = export.read_sample_files, []
    def reading(sample):
        seen.append(sample)
        if len(seen) == 2:
            stop()
        return read(sample)
    export.read_sample_files = reading
elif point == "between-renames":  # the old output moved aside, the new one not yet in its place
    rename = os.rename
    def renaming(src, dst):
        if os.path.basename(src).startswith("." + name + ".partial-") and not os.path.lexists(dst):
            stop()
        return rename(src, dst)
    os.rename = renaming
elif point == "before-cleanup":  # the new output in place, the old one not yet deleted
    rmtree = shutil.rmtree
    def removing(path, *args, **kwargs):
        if os.path.basename(path) == "." + name + ".replaced":
            stop()
        return rmtree(path, *args, **kwargs)
    shutil.rmtree = removing
sys.exit(main(argv))
"""


def cli(capsys, *args):
    """The CLI in this process (its `main`, as `python -m` calls it): a CompletedProcess-like result."""
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "instructpart_dataset", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def stopping_cli(point, action, *args, gate=None):
    env = dict(os.environ, GATE=str(gate or ""))
    command = [sys.executable, "-c", STOPPING_CLI, point, action, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def assert_one_line_error(result, status, command, *fragments):
    """Exit `status`, stderr exactly one line `<prog> <command>: error: ...` holding `fragments`, no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"python -m instructpart_dataset {command}: error: "), lines[0]
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    return lines[0]


def release_test_ids(release):
    """The test split's ids, from the mask file names (not from the json the code reads)."""
    return {name[: -len(".png")] for name in os.listdir(os.path.join(release, "test", "masks"))}


def exported_ids(folder, config="trps", split="test"):
    """Ids of an exported folder, from its Parquet files read by pyarrow (not by datasets or our loader)."""
    files = [os.path.join(folder, config, f) for f in os.listdir(os.path.join(folder, config)) if f.startswith(split)]
    return set(pq.read_table(files, columns=["id"]).column("id").to_pylist())


def tree(folder):
    """{relative path: bytes} of every file under `folder`."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return found


@pytest.fixture
def releases(tmp_path):
    """Two small releases with different test ids (seeds 1 and 2) in tmp_path/a and tmp_path/b."""
    a = make_release(str(tmp_path / "a"), seed=1, num_train=2, num_test=3, with_all=False)
    b = make_release(str(tmp_path / "b"), seed=2, num_train=2, num_test=4, with_all=False)
    assert release_test_ids(a) != release_test_ids(b)
    return a, b


def wait_for(path, process, seconds=120):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# --- concurrency -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_concurrent_exports_one_wins_the_other_fails_and_leaves_it_intact(releases, tmp_path, capsys):
    a, b = releases
    output, gate = tmp_path / "out", tmp_path / "gate"
    first = stopping_cli("writing", "hold", "export", "--data-dir", a, "--output", str(output), gate=gate)
    try:
        wait_for(str(gate) + ".reached", first)  # the first export is mid-way, holding its output
        second = run_cli("export", "--data-dir", b, "--output", str(output))  # a second real process
        assert_one_line_error(second, 1, "export", output, "another run is writing it")
        third = cli(capsys, "export", "--data-dir", b, "--output", str(output), "--overwrite")
        assert_one_line_error(third, 1, "export", output, "another run is writing it")
        gate.touch()
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert exported_ids(output) == release_test_ids(a)  # the winner's rows, whole
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "gate", "gate.reached", "out"]


def test_an_export_after_a_finished_one_fails_without_overwrite(releases, tmp_path, capsys):
    a, b = releases
    output = tmp_path / "out"
    assert cli(capsys, "export", "--data-dir", a, "--output", str(output)).returncode == 0
    before = tree(output)
    assert_one_line_error(
        cli(capsys, "export", "--data-dir", b, "--output", str(output)), 2, "export", output, "exists"
    )
    assert tree(output) == before


# --- interruptions -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("point", ["writing", "between-renames", "before-cleanup"])
def test_killed_export_litter_is_cleaned_by_the_next_run(releases, tmp_path, capsys, point):
    a, b = releases
    output = tmp_path / "out"
    assert cli(capsys, "export", "--data-dir", a, "--output", str(output)).returncode == 0
    killed = stopping_cli(point, "SIGKILL", "export", "--data-dir", b, "--output", str(output), "--overwrite")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert len(os.listdir(tmp_path)) > 3, "the kill must leave something behind for this test to mean anything"
    result = cli(capsys, "export", "--data-dir", b, "--output", str(output), "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert exported_ids(output) == release_test_ids(b)
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "out"]


@pytest.mark.slow
def test_overwrite_killed_between_its_renames_is_restored_by_the_next_run(releases, tmp_path, capsys, caplog):
    a, b = releases
    output = tmp_path / "out"
    assert cli(capsys, "export", "--data-dir", a, "--output", str(output)).returncode == 0
    before = tree(output)
    killed = stopping_cli(
        "between-renames", "SIGKILL", "export", "--data-dir", b, "--output", str(output), "--overwrite"
    )
    killed.communicate(timeout=300)
    assert not output.exists()  # the window the next run must repair
    result = cli(capsys, "export", "--data-dir", b, "--output", str(output))  # no --overwrite: the old one returns
    assert_one_line_error(result, 2, "export", output, "already exists")
    assert f"{output}: restored the previous output (an overwrite of it was interrupted)" in caplog.messages
    assert tree(output) == before
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "out"]


@pytest.mark.slow
def test_sigterm_during_export_removes_its_partial_output(releases, tmp_path):
    a, _ = releases
    output = tmp_path / "out"
    stopped = stopping_cli("writing", "SIGTERM", "export", "--data-dir", a, "--output", str(output))
    stopped.communicate(timeout=300)
    assert stopped.returncode == 128 + signal.SIGTERM
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


@pytest.mark.slow
def test_a_live_export_is_not_cleaned_by_another(releases, tmp_path, capsys):
    """The cleanup touches only what dead runs left: another live run's staging folder survives it."""
    a, b = releases
    output, gate = tmp_path / "out", tmp_path / "gate"
    first = stopping_cli("writing", "hold", "export", "--data-dir", a, "--output", str(output), gate=gate)
    try:
        wait_for(str(gate) + ".reached", first)
        staging = [name for name in os.listdir(tmp_path) if name.startswith(".out.partial-")]
        assert len(staging) == 1
        assert cli(capsys, "export", "--data-dir", b, "--output", str(output), "--overwrite").returncode == 1
        assert os.path.isdir(tmp_path / staging[0])
        gate.touch()
        first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0 and exported_ids(output) == release_test_ids(a)


# --- one-line errors ---------------------------------------------------------------------------------------


def test_output_errors_are_one_line_naming_the_path(releases, tmp_path, capsys):
    a, _ = releases
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [
        (a_file / "out", 1, "a-file", "a file stands where the output's folder should be"),
        (a_file / "x" / "out", 1, a_file / "x" / "out", "Not a directory"),
        ("/proc/instructpart-out", 1, "/proc/instructpart-out", "cannot write there"),
        (a_file, 2, a_file, "already exists"),
        (a, 2, a, "the output is the release folder itself"),
        (os.path.join(a, "test", "exported"), 2, "lies inside the release folder", a),
        (tmp_path, 2, "holds the release folder", a),
    ]
    for output, status, *fragments in cases:
        result = cli(capsys, "export", "--data-dir", a, "--output", str(output))
        assert_one_line_error(result, status, "export", *fragments)
    # --overwrite replaces an earlier export only, never a file or a folder it did not write
    assert_one_line_error(
        cli(capsys, "export", "--data-dir", a, "--output", str(a_file), "--overwrite"), 2, "export", a_file, "refusing"
    )
    assert a_file.read_text() == "not a folder"
    assert sorted(os.listdir(tmp_path)) == ["a", "a-file", "b"]


@pytest.mark.slow
def test_unwritable_output_is_one_line_from_a_real_process(releases, tmp_path):
    a, _ = releases
    result = run_cli("export", "--data-dir", a, "--output", "/proc/instructpart-out")
    assert_one_line_error(result, 1, "export", "/proc/instructpart-out", "cannot write there")


def test_empty_split_fails_at_every_cli_naming_the_annotation_file(releases, tmp_path, capsys):
    from instructpart_metric.cli import main as score_main

    a, _ = releases
    json_path = os.path.join(a, "test", "data_test.json")
    with open(json_path, "w") as f:
        json.dump([], f)
    for command in (["summary", "--data-dir", a], ["export", "--data-dir", a, "--output", str(tmp_path / "o")]):
        assert_one_line_error(cli(capsys, *command), 2, command[0], json_path, "no entries")
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    assert score_main(["score", "--predictions", str(predictions), "--data-dir", a]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and json_path in lines[0] and "no entries" in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "predictions"]


@pytest.mark.slow
def test_empty_split_fails_in_pisa_model_evaluate_naming_the_annotation_file(releases, tmp_path):
    a, _ = releases
    json_path = os.path.join(a, "test", "data_test.json")
    with open(json_path, "w") as f:
        json.dump([], f)
    command = ["pisa_model.evaluate", "--model", "full-image", "--data-dir", a, "--output-dir", str(tmp_path / "e")]
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and json_path in lines[0] and "no entries" in lines[0], result.stderr[-3000:]
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_non_utf8_annotation_file_is_one_line(releases):
    a, _ = releases
    json_path = os.path.join(a, "test", "data_test.json")
    with open(json_path, "rb") as f:
        data = f.read()
    with open(json_path, "wb") as f:
        f.write(data.replace(b'"image_path": "', b'"image_path": "caf\xe9', 1))
    assert_one_line_error(run_cli("summary", "--data-dir", a), 2, "summary", json_path, "not UTF-8", "0xe9")


# --- what the README documents -----------------------------------------------------------------------------


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_export(releases, tmp_path, capsys):
    a, b = releases
    output = tmp_path / "out"
    assert cli(capsys, "export", "--data-dir", a, "--output", str(output)).returncode == 0
    assert exported_ids(output) == release_test_ids(a)
    result = run_cli("export", "--data-dir", b, "--output", str(output), "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"wrote {output}"
    assert exported_ids(output) == release_test_ids(b)
    assert exported_ids(output, "orps") == release_test_ids(b)
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "out"]


@pytest.mark.slow
def test_synthetic_writes_a_release_and_summary_reports_it_and_its_export(tmp_path, capsys):
    release, exported = tmp_path / "generated", tmp_path / "exported"
    result = run_cli("synthetic", "--output", str(release), "--seed", "3", "--num-train", "5", "--num-test", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"wrote a generated release to {release}"
    # The layout, counted from the files themselves.
    expected = {}
    for split, json_path, folder in [
        ("test", release / "test" / "data_test.json", release / "test"),
        ("train", release / "train" / "train1800" / "data_train1800.json", release / "train" / "train1800"),
    ]:
        with open(json_path) as f:
            parts = [part for entry in json.load(f) for part in entry["part_list"]]
        masks = sorted(os.listdir(folder / "masks"))
        assert len(parts) == len(masks) == len(os.listdir(folder / "images"))
        objects, names = {p["object"] for p in parts}, {p["part"] for p in parts}
        expected[split] = (
            f"{split}: {len(parts)} entries (trps {2 * len(parts)} rows, orps {4 * len(parts)} rows); "
            f"{len(objects)} objects, {len(names)} parts"
        )
    assert len(expected) == 2 and expected["test"].startswith("test: 4 entries")
    assert expected["train"].startswith("train: 5 entries")
    nested, previous = [], 0
    for n in (200, 600, 1200, 1800):
        with open(release / "train" / f"train{n}" / f"data_train{n}.json") as f:
            count = sum(len(entry["part_list"]) for entry in json.load(f))
        if count > previous:  # entries whose smallest subset is train<n> exist: a cumulative line
            nested.append(f"  train{n}: {count} entries")
        previous = count
    summary = run_cli("summary", "--data-dir", str(release))
    assert summary.returncode == 0, summary.stderr[-3000:]
    lines = summary.stdout.strip().splitlines()
    assert lines[0] == expected["test"] and lines[1] == expected["train"]
    assert lines[2:] == nested
    # The same release as an exported Hub folder reads the same.
    assert cli(capsys, "export", "--data-dir", str(release), "--output", str(exported)).returncode == 0
    from_export = cli(capsys, "summary", "--data-dir", str(exported))
    assert from_export.returncode == 0, from_export.stderr[-3000:]
    assert from_export.stdout == summary.stdout
    # A second synthetic run into the same folder refuses rather than mixing two releases.
    assert_one_line_error(cli(capsys, "synthetic", "--output", str(release)), 2, "synthetic", release, "exists")
    assert sorted(os.listdir(tmp_path)) == ["exported", "generated"]
