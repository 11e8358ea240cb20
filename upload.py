"""Publish the InstructPart dataset, the metric and a PISA model to the Hugging Face Hub.

    python upload.py dataset --data-dir RELEASE --repo-id ORG/instructpart [--dry-run]
    python upload.py metric  --repo-id ORG/instructpart [--dataset-id ORG/instructpart] [--dry-run]
    python upload.py model   --checkpoint DIR --repo-id ORG/pisa-7b [--results results.json] [--compare-published]
                             [--space ORG/pisa-7b-demo] [--dry-run]
    python upload.py leaderboard --repo-id ORG/NAME [RESULTS_OR_CARD ...] [--hub-tag instructpart] [--dry-run]
    common options: --stage DIR  --private  --revision BRANCH

Each repository is built completely in a local staging folder (as open_clip stages before
`upload_folder`), then verified in a fresh Python process that cannot import this project, by
loading it exactly as a user would: `load_dataset(stage, "trps")`, `evaluate.load(stage)`,
`AutoModel.from_pretrained(stage, trust_remote_code=True)` and `pipeline(...)`; a Space's app is
launched on a loopback port and queried through `gradio_client` (gradio must be installed:
`pip install -e ".[space]"`). Only then is anything pushed, with `HfApi.create_repo(exist_ok=True)` and
`upload_folder`, whatever the size (one commit; huggingface_hub 2.x with hf_xet splits very large folders).
`--dry-run` stops after verification and prints the files.
The token comes from `hf auth login` or HF_TOKEN and is never printed. A push never waits forever: each
request gives up after --connect-timeout seconds (default 10) without a connection or --read-timeout seconds
(default 300) without a byte from the Hub. One retry policy, huggingface_hub's own for its commit requests (6
tries on a timeout, a network error or a 408/429/5xx answer, waiting 1, 2, 4, 8, 8 s), also covers creating the
repo and the branch, which huggingface_hub does not retry (--attempts, default 6). Defaults also from
$INSTRUCTPART_HUB_CONNECT_TIMEOUT, $INSTRUCTPART_HUB_READ_TIMEOUT and $INSTRUCTPART_HUB_ATTEMPTS. A line on stderr
names each step and, every 15 s, how long it has waited. A failed push says in one line at which step and why,
what was done and what remains, and leaves the staged folder for a retry.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time

from instructpart_dataset.toolbox.cli_errors import OperationFailed, run_command, writing
from instructpart_dataset.toolbox.fresh_process import IsolatedRunError, run_isolated, serve_isolated

HERE = os.path.dirname(os.path.abspath(__file__))


class UploadError(OperationFailed):
    """A one-line reason the upload stopped after its input was accepted (exit 1: see cli_errors)."""


def verify_isolated(code: str, cwd: str, what: str, **kwargs) -> dict:
    """`fresh_process.run_isolated` with its failure reported as a failed verification."""
    try:
        return run_isolated(code, cwd, what, **kwargs)
    except IsolatedRunError as error:
        raise UploadError(f"verification failed: {error}") from None


# --- dataset ---------------------------------------------------------------------------------------------------


def stage_dataset(data_dir: str, stage: str) -> dict:
    from instructpart_dataset.export import export_release

    return export_release(data_dir, stage, overwrite=True)


def verify_dataset(stage: str, counts: dict) -> None:
    """Load the staged folder by its name, as `load_dataset("ORG/instructpart", config)` would load the repo."""
    found = verify_isolated(
        f"""
        import json, datasets
        counts = {{}}
        for config in ("trps", "orps"):
            dataset = datasets.load_dataset({os.path.basename(stage)!r}, config)
            counts[config] = {{split: len(rows) for split, rows in dataset.items()}}
            first = dataset[next(iter(dataset))].with_format("numpy", columns=["mask"], output_all_columns=True)[0]
            assert first["mask"].dtype == bool and first["mask"].shape == first["image"].size[::-1]
        print(json.dumps(counts))
        """,
        cwd=os.path.dirname(stage),
        what=f"load_dataset({os.path.basename(stage)!r}) in {os.path.dirname(stage)}",
    )
    if found != counts:
        raise UploadError(f"verification failed: {stage} loads as {found}, the export wrote {counts}")
    print(f"verified load_dataset({os.path.basename(stage)!r}) in a fresh process: {found} rows, as exported")


# --- metric ----------------------------------------------------------------------------------------------------


def stage_metric(stage: str, repo_id: str, dataset_id: str | None = None) -> None:
    """The metric Space, staged by its package (`instructpart_metric.space.stage_space`) in a fresh folder."""
    from instructpart_metric.space import stage_space

    _fresh_folder(stage)
    stage_space(stage, repo_id, dataset_id)


def _space_client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="space-outputs-"))


def launch_space(stage: str, query, env: dict | None = None, what: str = "the Space") -> None:
    """Serve the staged app as the Space runs it (`python app.py`, in a fresh process that cannot import this
    project) on a loopback port and call `query(gradio_client.Client)` against it; `query` checks the answer and
    returns what it asked and got, printed with where the app ran."""
    try:
        with serve_isolated(os.path.join(stage, "app.py"), env=env) as app:
            checked = query(_space_client(app.url))
            print(f"verified {what}: launched at {app.url}; {checked}", flush=True)
    except IsolatedRunError as error:
        raise UploadError(f"verification failed: {what}: {error}") from None
    except UploadError:
        raise
    except Exception as error:  # the client reports app errors as its own exception types
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UploadError(f"verification failed: {what}: {type(error).__name__}: {message}") from None


def verify_metric(stage: str) -> None:
    """`evaluate.load(stage)` in a fresh process, and the staged app served and asked to score one mask pair,
    give the numbers of the installed package on the same masks."""
    import numpy as np
    from PIL import Image

    from instructpart_metric import StreamingScorer

    rng = np.random.default_rng(0)
    shapes = [(7, 9), (12, 5), (8, 8), (3, 11)]
    truths = [rng.random(s) < 0.4 for s in shapes]
    predictions = [rng.random(s) < 0.5 for s in shapes]
    scorer = StreamingScorer()
    for prediction, truth in zip(predictions, truths):
        scorer.add(prediction, truth)
    expected = scorer.compute()
    found = verify_isolated(
        f"""
        import json, evaluate, numpy as np
        metric = evaluate.load({stage!r})
        predictions = [np.array(m, dtype=bool) for m in {[p.tolist() for p in predictions]!r}]
        truths = [np.array(m, dtype=bool) for m in {[t.tolist() for t in truths]!r}]
        result = metric.compute(predictions=predictions, references=truths)
        print(json.dumps({{k: result[k] for k in {list(expected)!r}}}))
        """,
        cwd=tempfile.gettempdir(),
        what=f"evaluate.load({stage!r})",
    )
    if any(abs(found[k] - expected[k]) > 1e-12 for k in expected):
        raise UploadError(f"verification failed: the staged metric gives {found}, the package {expected}")
    print(f"verified evaluate.load({stage!r}) in a fresh process: 4 mask pairs give {found}, as the package does")

    workdir = tempfile.mkdtemp(prefix="verify-metric-space-")
    try:
        Image.fromarray(predictions[0]).save(os.path.join(workdir, "prediction.png"))
        Image.fromarray(truths[0]).save(os.path.join(workdir, "truth.png"))
        pair = StreamingScorer()
        pair.add(predictions[0], truths[0])
        expected_pair = {key: round(100 * value, 2) for key, value in pair.compute().items()}

        def query(client):
            from gradio_client import handle_file

            metrics, _ = client.predict(
                handle_file(os.path.join(workdir, "prediction.png")),
                handle_file(os.path.join(workdir, "truth.png")),
                api_name="/score_pair",
            )
            if {key: metrics[key] for key in expected_pair} != expected_pair:
                raise UploadError(f"verification failed: the staged app scores {metrics}, the package {expected_pair}")
            return f"queried /score_pair with one mask pair: {expected_pair}, as the package scores it"

        launch_space(stage, query, what=f"the metric Space {stage}/app.py")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- which checkpoint files may be published: decided by content, never by name ----------------------------------

SENTENCEPIECE_NAMES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
HEAD_BYTES = 1 << 16  # what is read of a file (or a zip member, or a compressed stream) to recognise it
TEXT_LIMIT = 256 << 20  # larger files are never read whole: they publish only as safetensors or a tokenizer model
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")  # after the PROTO opcode, 0x80


def check_publishable_file(path: str) -> str:
    """The kind of a checkpoint file that may be published: "safetensors", "json", "text" (code, templates,
    vocabularies) or "sentencepiece" (a tokenizer model); anything else raises a ValueError naming it
    (bad input: exit 2).

    Decided by the bytes, whatever the file's name: a pickle (it runs code when loaded) is refused as a
    protocol 2+ stream, as protocol 0/1 opcodes that parse to a final STOP (those are ASCII and would pass
    as text), inside a zip (torch.save's format) or under gzip/bz2/xz/zlib compression (joblib)."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    _refuse_archive_or_pickle(path, head)
    if _is_safetensors(path, head):
        return "safetensors"
    name = os.path.basename(path)
    if name.lower().endswith(".safetensors"):
        raise ValueError(f"{path}: not a safetensors file (its header does not parse)")
    if name in SENTENCEPIECE_NAMES and head[:1] == b"\x0a":  # a serialized sentencepiece ModelProto
        return "sentencepiece"
    kind = _text_kind(path, head)
    if kind is None:
        raise ValueError(
            f"{path}: neither safetensors, JSON, UTF-8 text nor a tokenizer model; only those are published"
        )
    return kind


def _refusal_of_pickle(path: str) -> ValueError:
    return ValueError(f"{path}: its bytes are a pickle (which runs code when loaded): publish safetensors only")


def _is_pickle_stream(data: bytes, whole: bool) -> bool:
    """A protocol 2+ pickle by its first bytes; with `whole` (all of the file), also protocol 0/1 opcodes that
    parse to a final STOP."""
    if data[:1] == b"\x80" and data[1:2] in PICKLE_PROTOCOLS:
        return True
    if not whole:
        return False
    import pickletools

    try:
        opcodes = [(opcode.name, position) for opcode, _, position in pickletools.genops(data)]
    except Exception:  # genops raises ValueError, struct.error, UnicodeDecodeError, ... on non-pickles
        return False
    return len(opcodes) >= 2 and opcodes[-1] == ("STOP", len(data.rstrip(b"\r\n")) - 1)


def _decompressor(data: bytes):
    """A decompressor for the gzip/zlib/bz2/xz stream `data` starts, or None."""
    import bz2
    import lzma
    import zlib

    if data.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(31)
    if data[:1] == b"\x78" and len(data) > 1 and (data[0] * 256 + data[1]) % 31 == 0:
        return zlib.decompressobj()
    if data.startswith(b"BZh"):
        return bz2.BZ2Decompressor()
    if data.startswith(b"\xfd7zXZ"):
        return lzma.LZMADecompressor()
    return None


def _decompressed_head(data: bytes) -> bytes:
    """The first bytes of a gzip/zlib/bz2/xz stream's content; empty when `data` is no such stream."""
    stream = _decompressor(data)
    if stream is None:
        return b""
    try:
        return stream.decompress(data[:HEAD_BYTES])[:16]
    except Exception:
        return b""


def _refuse_zip(path: str) -> None:
    """A zip is never published; one holding a pickle (torch.save's format) is refused naming that member."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                with archive.open(member) as stream:
                    inner = stream.read(HEAD_BYTES)
                whole = member.file_size <= len(inner)
                if member.filename.lower().endswith((".pkl", ".pickle")) or _is_pickle_stream(inner, whole):
                    raise ValueError(
                        f"{path}: a zip holding a pickle ({member.filename}; torch.save's format): "
                        "publish safetensors only"
                    )
    except (zipfile.BadZipFile, OSError, RuntimeError):
        pass  # unreadable as a zip: refused below all the same
    raise ValueError(f"{path}: a zip archive; only safetensors, JSON, text and tokenizer files are published")


def _refuse_archive_or_pickle(path: str, head: bytes) -> None:
    """Refuse a zip, and a pickle whether plain or compressed (as far as its first bytes tell)."""
    import zipfile

    if zipfile.is_zipfile(path):
        _refuse_zip(path)
    if _is_pickle_stream(head, whole=False) or _is_pickle_stream(_decompressed_head(head), whole=False):
        raise _refusal_of_pickle(path)


def _is_safetensors(path: str, head: bytes) -> bool:
    """An 8-byte little-endian header length that fits the file, followed by a JSON object."""
    import struct

    if len(head) < 8:
        return False
    (header_size,) = struct.unpack("<Q", head[:8])
    if not (2 <= header_size <= os.path.getsize(path) - 8 and head[8:9] == b"{"):
        return False
    with open(path, "rb") as f:
        f.seek(8)
        header = f.read(header_size)
    try:
        return isinstance(json.loads(header), dict)
    except ValueError:
        return False


def _text_kind(path: str, head: bytes):
    """ "json" or "text" for a UTF-8 file without NUL bytes (a .json one must parse), None for anything else;
    a whole-file pickle (protocol 0/1 is ASCII) is refused."""
    if os.path.getsize(path) > TEXT_LIMIT or b"\x00" in head:
        return None
    with open(path, "rb") as f:
        data = f.read()
    if _is_pickle_stream(data, whole=True):
        raise _refusal_of_pickle(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    if not path.lower().endswith(".json"):
        return "text"
    try:
        json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return "json"


# --- model -----------------------------------------------------------------------------------------------------


def _example_image(stage: str):
    """A generated example photo and its instruction, shown in the card's body."""
    import numpy as np

    from instructpart_dataset.synthetic import CATALOG, instructions_for, render_object

    rng = np.random.default_rng(0)
    image, _ = render_object("kettle", (320, 240), rng)
    image.save(os.path.join(stage, "example.jpg"), quality=92)
    return [("example.jpg", instructions_for("kettle", CATALOG["kettle"][0], rng)[0])]


def stage_model(
    checkpoint: str,
    stage: str,
    repo_id: str,
    results: list,
    space_repo_id=None,
    dataset_id=None,
    base_models=None,
    license=None,
    compare_published=False,
) -> None:
    from pisa_model.model_card import write_model_card

    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise ValueError(f"{checkpoint}: not a checkpoint folder (no config.json)")
    names = sorted(
        n for n in os.listdir(checkpoint) if n != "README.md" and os.path.isfile(os.path.join(checkpoint, n))
    )
    kinds = [check_publishable_file(os.path.join(checkpoint, name)) for name in names]
    if "safetensors" not in kinds:
        raise ValueError(f"{checkpoint}: no .safetensors weights")
    _fresh_folder(stage)
    for name in sorted(os.listdir(checkpoint)):
        source = os.path.join(checkpoint, name)
        if os.path.isfile(source) and name != "README.md":
            shutil.copy(source, os.path.join(stage, name))
    space_url = f"https://huggingface.co/spaces/{space_repo_id}" if space_repo_id else None
    dataset_id = dataset_id or f"{repo_id.split('/')[0]}/instructpart"
    write_model_card(
        stage,
        checkpoint,
        repo_id,
        results_files=results,
        space_url=space_url,
        dataset_id=dataset_id,
        base_models=base_models,
        license=license,
        examples=_example_image(stage),
        compare_published=compare_published,
    )


def stage_model_space(stage: str, model_repo_id: str, license: str | None = None) -> None:
    """The demo Space of `model_repo_id`, staged by its package (`pisa_model.space.stage_space`) in a fresh
    folder."""
    from pisa_model.space import stage_space

    _fresh_folder(stage)
    stage_space(stage, model_repo_id, license=license)


def verify_model_space(space_stage: str, model_stage: str, checkpoint: str) -> None:
    """Serve the staged Space on the staged model (as the Hub would load it) and check that the mask it returns
    for a generated photo is the checkpoint's `predict` mask in this process."""
    import numpy as np
    from PIL import Image

    from pisa_model import PisaForPartSegmentation

    with open(os.path.join(space_stage, "examples", "examples.json"), encoding="utf-8") as f:
        example = json.load(f)[0]
    image_path = os.path.join(space_stage, "examples", example["image"])
    expected = PisaForPartSegmentation.from_pretrained(checkpoint).predict(
        [Image.open(image_path)], [example["instruction"]]
    )[0]

    def query(client):
        from gradio_client import handle_file

        _, mask_path, _ = client.predict(
            handle_file(image_path), example["instruction"], "teacher-forced", api_name="/segment"
        )
        if not np.array_equal(np.asarray(Image.open(mask_path).convert("L")) > 0, expected):
            raise UploadError("verification failed: the staged Space's mask differs from the checkpoint's predict")
        return (
            f"queried /segment with {example['image']} and {example['instruction']!r}: its {expected.shape[1]}x"
            f"{expected.shape[0]} mask ({int(expected.sum())} pixels) equals the checkpoint's predict"
        )

    launch_space(space_stage, query, env={"PISA_MODEL": model_stage}, what=f"the demo Space {space_stage}/app.py")


def verify_model(checkpoint: str, stage: str) -> None:
    """The staged folder, loaded with trust_remote_code in a fresh process, predicts the masks the checkpoint
    predicts in this process (through our package) on generated images."""
    import numpy as np

    from instructpart_dataset.synthetic import CATALOG, instructions_for, render_object
    from pisa_model import PisaForPartSegmentation

    rng = np.random.default_rng(1)
    workdir = tempfile.mkdtemp(prefix="verify-model-")
    try:
        paths, instructions = [], []
        for k, (name, size) in enumerate((("kettle", (97, 61)), ("sofa", (64, 88)))):
            image, _ = render_object(name, size, rng)
            paths.append(os.path.join(workdir, f"{k}.png"))
            image.save(paths[-1])
            instructions.append(instructions_for(name, CATALOG[name][0], rng)[0])
        from PIL import Image

        model = PisaForPartSegmentation.from_pretrained(checkpoint)
        expected = [m.tolist() for m in model.predict([Image.open(p) for p in paths], instructions)]
        found = verify_isolated(
            f"""
            import json, numpy as np
            from PIL import Image
            from transformers import AutoModel, pipeline
            model = AutoModel.from_pretrained({stage!r}, trust_remote_code=True)
            images = [Image.open(p) for p in {paths!r}]
            masks = [m.tolist() for m in model.predict(images, {instructions!r})]
            segmenter = pipeline(model={stage!r}, trust_remote_code=True)
            piped = [(np.asarray(segmenter(im, instruction=text)[0]["mask"]) > 0).tolist()
                     for im, text in zip(images, {instructions!r})]
            print(json.dumps({{"predict": masks, "pipeline": piped}}))
            """,
            cwd=workdir,
            what=f"AutoModel/pipeline from {stage} with trust_remote_code",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for kind in ("predict", "pipeline"):
        if found[kind] != expected:
            raise UploadError(f"verification failed: the staged model's {kind} masks differ from the checkpoint's")
    print(
        f"verified AutoModel/pipeline from {stage} with trust_remote_code in a fresh process: "
        f"{len(expected)} generated photos give the checkpoint's predict masks"
    )


# --- push ------------------------------------------------------------------------------------------------------


def folder_files(stage: str) -> list:
    """(relative path, size in bytes) of every file to upload, sorted."""
    files = []
    for root, _, names in os.walk(stage):
        for name in names:
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, stage), os.path.getsize(path)))
    return sorted(files)


@dataclasses.dataclass(frozen=True)
class HubPolicy:
    """How a push waits on the Hub. Every request gives up after `connect_timeout` seconds without a connection or
    `read_timeout` seconds without a byte (huggingface_hub's shared client has no timeout of its own, so a stalled
    Hub would hang the push forever). A step is tried `attempts` times on a network error, a timeout or a
    408/429/5xx answer, waiting `first_wait` seconds, then twice as long each time up to `max_wait`: the policy
    huggingface_hub applies to its own commit and preupload requests (`http_backoff`: 6 tries, 1 to 8 s), which
    this applies to creating the repo and the branch, which it does not retry. The commit is left to huggingface_hub's
    own retries (wrapping it would multiply them). While a step waits, a line says so every `progress_every` s."""

    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    attempts: int = 6
    first_wait: float = 1.0
    max_wait: float = 8.0
    progress_every: float = 15.0


# The flags' defaults can be set in the environment (a CI job, a slow link).
POLICY_ENVIRONMENT = {
    "connect_timeout": "INSTRUCTPART_HUB_CONNECT_TIMEOUT",
    "read_timeout": "INSTRUCTPART_HUB_READ_TIMEOUT",
    "attempts": "INSTRUCTPART_HUB_ATTEMPTS",
}


@contextlib.contextmanager
def hub_timeouts(policy: HubPolicy):
    """Apply the policy's timeouts to huggingface_hub's shared HTTP client (httpx) for the duration."""
    from huggingface_hub import get_session

    client = get_session()
    before = client.timeout
    client.timeout = type(before)(policy.read_timeout, connect=policy.connect_timeout)
    try:
        yield
    finally:
        client.timeout = before


@contextlib.contextmanager
def _waiting(what: str, policy: HubPolicy):
    """Say on stderr that `what` is under way, then every `progress_every` seconds how long it has waited."""
    print(f"upload.py: {what} ...", file=sys.stderr, flush=True)
    done, started = threading.Event(), time.monotonic()

    def report():
        while not done.wait(policy.progress_every):
            print(
                f"upload.py: {what}: waiting for the Hub ({time.monotonic() - started:.0f} s; a request gives up "
                f"after {policy.read_timeout:g} s without an answer)",
                file=sys.stderr,
                flush=True,
            )

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        yield
    finally:
        done.set()
        reporter.join()


def _transient(error: Exception) -> bool:
    """Worth another attempt: a timeout, a network error, or the Hub's 408 / 429 / 5xx; not a refusal."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        return status is None or status in (408, 429) or status >= 500
    return not isinstance(error, (OfflineModeIsEnabled, ValueError))


def _attempt(step, what: str, policy: HubPolicy, progress: dict, retried_by_the_library: bool = False):
    """`step()` under the policy's attempts and waits (one, where huggingface_hub retries the step itself);
    `progress["attempts"]` counts the tries."""
    attempts = 1 if retried_by_the_library else policy.attempts
    for attempt in range(1, attempts + 1):
        progress["attempts"] = attempt
        try:
            with _waiting(what, policy):
                return step()
        except Exception as error:
            if attempt == attempts or not _transient(error):
                raise
            wait = min(policy.first_wait * 2 ** (attempt - 1), policy.max_wait)
            print(
                f"upload.py: {what}: {type(error).__name__}; attempt {attempt + 1} of {attempts} in {wait:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
    return None


def push(
    stage: str,
    repo_id: str,
    repo_type: str,
    *,
    private: bool,
    revision,
    commit_message: str,
    api=None,
    space_sdk=None,
    policy: HubPolicy | None = None,
    progress: dict | None = None,
) -> str:
    """Create the repo if needed (and the branch `revision`) and upload the staged folder in one commit, each step
    under `policy` (see `HubPolicy`); returns the repo URL. `progress` (a dict) is kept up to date with the steps
    `done`, those `remaining` and the `attempts` of the current one, for the message of a failed push."""
    from huggingface_hub import HfApi

    api = api if api is not None else HfApi()
    policy = policy if policy is not None else HubPolicy()
    progress = progress if progress is not None else {}
    files = folder_files(stage)
    steps = [  # (what, call, retried by huggingface_hub itself)
        (
            f"create {repo_type} repo {repo_id}",
            lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk),
            False,
        )
    ]
    if revision:
        steps.append(
            (
                f"create branch {revision}",
                lambda: api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True),
                False,
            )
        )
    # upload_folder exists in every huggingface_hub the ranges allow (upload_large_folder left in 2.x); it sends
    # large files through the Hub's LFS/Xet storage, in one commit (2.x with hf_xet batches huge folders itself).
    steps.append(
        (
            f"commit {len(files)} files ({sum(size for _, size in files) / 1e6:.1f} MB) to {revision or 'main'}",
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=stage,
                repo_type=repo_type,
                revision=revision,
                commit_message=commit_message,
            ),
            True,
        )
    )
    progress.update(done=[], remaining=[what for what, _, _ in steps])
    url = None
    with hub_timeouts(policy):
        for what, step, retried_by_the_library in steps:
            result = _attempt(step, what, policy, progress, retried_by_the_library)
            url = result if url is None else url
            progress["done"].append(progress["remaining"].pop(0))
    return str(url)


def _fresh_folder(path: str) -> None:
    with writing(path):
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(path)


def _print_plan(stage, repo_id, repo_type, private, revision) -> None:
    files = folder_files(stage)
    total = sum(size for _, size in files)
    visibility = "private" if private else "public"
    print(
        f"would create {visibility} {repo_type} repo {repo_id} (exist_ok) and upload {len(files)} files "
        f"({total / 1e6:.1f} MB) in one commit to {revision or 'main'}:"
    )
    for path, size in files:
        print(f"  {size:>12,}  {path}")


def _safe_message(error: Exception) -> str:
    message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    token = os.environ.get("HF_TOKEN")
    return message.replace(token, "***") if token else message


def _publish(args, stage, repo_type, what, space_sdk=None) -> None:
    if args.dry_run:
        _print_plan(stage, args.repo_id, repo_type, args.private, args.revision)
        print(f"staged and verified in {stage}; dry run: nothing pushed")
        return
    progress = {}
    try:
        url = push(
            stage,
            args.repo_id,
            repo_type,
            private=args.private,
            revision=args.revision,
            commit_message=f"Upload {what} with instructpart's upload.py",
            space_sdk=space_sdk,
            policy=HubPolicy(
                connect_timeout=args.connect_timeout, read_timeout=args.read_timeout, attempts=args.attempts
            ),
            progress=progress,
        )
    except Exception as error:
        raise UploadError(_push_failure(args.repo_id, stage, progress, error)) from None
        # (from None: the original may carry the token in its request details)
    print(f"pushed {stage} to {url}")


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"  # argparse names the type in its error
    return parse


def _push_failure(repo_id: str, stage: str, progress: dict, error: Exception) -> str:
    """One line: which step failed and how, what was sent before it, what remains, and where the staged files
    wait for a retry."""
    remaining = progress.get("remaining") or []
    attempts = progress.get("attempts", 1)
    at = f" at {remaining[0]} after {attempts} attempt{'s' * (attempts != 1)}" if remaining else ""
    done = "; ".join(progress.get("done") or []) or "nothing"
    return (
        f"push to {repo_id} failed{at} ({type(error).__name__}: {_safe_message(error)}); done: {done}; remaining: "
        f"{'; '.join(remaining) or 'nothing'}; the staged files stay in {stage} for a retry"
    )


def _stage_dir(args, kind: str, repo_id: str) -> str:
    # The last component is the repo's name: evaluate finds `<name>.py` in `<name>/`, and
    # `load_dataset("<name>")` finds the staged dataset from its parent folder.
    root = args.stage or os.path.join(os.getcwd(), "hub-staging")
    stage = os.path.abspath(os.path.join(root, kind, repo_id.split("/")[-1]))
    with writing(root):
        os.makedirs(os.path.dirname(stage), exist_ok=True)
    return stage


def cmd_dataset(args) -> None:
    stage = _stage_dir(args, "dataset", args.repo_id)
    counts = stage_dataset(args.data_dir, stage)
    verify_dataset(stage, counts)
    _publish(args, stage, "dataset", "the InstructPart dataset")


def cmd_metric(args) -> None:
    stage = _stage_dir(args, "metric", args.repo_id)
    stage_metric(stage, args.repo_id, dataset_id=args.dataset_id)
    verify_metric(stage)
    _publish(args, stage, "space", "the InstructPart metric", space_sdk="gradio")


def cmd_model(args) -> None:
    stage = _stage_dir(args, "model", args.repo_id)
    stage_model(
        args.checkpoint,
        stage,
        args.repo_id,
        args.results,
        space_repo_id=args.space,
        dataset_id=args.dataset_id,
        base_models=args.base_model,
        license=args.license,
        compare_published=args.compare_published,
    )
    verify_model(args.checkpoint, stage)
    if args.space:  # staged and launched before anything is pushed
        space_stage = _stage_dir(args, "model-space", args.space)
        stage_model_space(space_stage, args.repo_id, license=args.license)
        verify_model_space(space_stage, stage, args.checkpoint)
    _publish(args, stage, "model", f"PISA checkpoint {os.path.basename(os.path.abspath(args.checkpoint))}")
    if args.space:
        space_args = argparse.Namespace(**{**vars(args), "repo_id": args.space})
        _publish(space_args, space_stage, "space", "the PISA demo Space", space_sdk="gradio")


# --- leaderboard -----------------------------------------------------------------------------------------------


def verify_leaderboard(stage: str, board: dict) -> None:
    """Serve the staged leaderboard Space and check that its table, sorted by a column, is the package's order."""
    from instructpart_metric.leaderboard import sort_rows

    column = "trps_human_gIoU"
    expected = [row["name"] for row in sort_rows(board["rows"], column)]

    def query(client):
        table = client.predict(column, api_name="/leaderboard")
        found = [row[1] for row in table["data"]]
        if found != expected:
            raise UploadError(
                f"verification failed: the staged leaderboard lists {found[:3]}..., the package {expected[:3]}..."
            )
        return f"queried /leaderboard sorted by {column}: its {len(found)} rows in the package's order"

    launch_space(stage, query, what=f"the leaderboard Space {stage}/app.py")


def cmd_leaderboard(args) -> None:
    from instructpart_metric.leaderboard import build_leaderboard, hub_model_ids
    from instructpart_metric.leaderboard_space import stage_space

    sources = list(args.sources) + (hub_model_ids(args.hub_tag, timeout=args.hub_timeout) if args.hub_tag else [])
    board = build_leaderboard(sources, args.orps_form, hub_timeout=args.hub_timeout)
    stage = _stage_dir(args, "leaderboard", args.repo_id)
    with writing(stage):
        stage_space(stage, board)
    verify_leaderboard(stage, board)
    _publish(args, stage, "space", "the InstructPart leaderboard", space_sdk="gradio")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="upload.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
        sub.add_argument("--stage", help="staging root (default ./hub-staging)")
        sub.add_argument("--dry-run", action="store_true", help="stage and verify, print the files, push nothing")
        sub.add_argument("--private", action="store_true")
        sub.add_argument("--revision", help="branch to push to (created if missing)")
        for name, kind, what in (
            ("connect_timeout", float, "seconds a request waits for a connection to the Hub"),
            ("read_timeout", float, "seconds a request waits for the Hub's next byte"),
            ("attempts", int, "tries of creating the repo and the branch (huggingface_hub's own for the commit: 6)"),
        ):
            environment, default = POLICY_ENVIRONMENT[name], getattr(HubPolicy, name)
            sub.add_argument(
                "--" + name.replace("_", "-"),
                type=_positive(kind),
                default=os.environ.get(environment, default),  # argparse checks a string default with `type`
                help=f"{what} (default {default:g}, or ${environment})",
            )

    dataset = commands.add_parser("dataset", help="the benchmark as a script-free dataset repo")
    dataset.add_argument("--data-dir", required=True, help="local copy of the official release")
    common(dataset)
    dataset.set_defaults(run=cmd_dataset)
    metric = commands.add_parser("metric", help="the evaluate module as a Space")
    metric.add_argument(
        "--dataset-id", help="the dataset whose zips of predictions the Space scores (default ORG/instructpart)"
    )
    common(metric)
    metric.set_defaults(run=cmd_metric)
    model = commands.add_parser("model", help="a PISA checkpoint with its card")
    model.add_argument("--checkpoint", required=True)
    model.add_argument(
        "--results",
        action="append",
        default=[],
        help="results.json of `pisa_model.evaluate` (TRPS and/or ORPS) for the card's model-index",
    )
    model.add_argument(
        "--compare-published",
        action="store_true",
        help="the card's evaluation section shows the paper's published methods beside the results, ranked",
    )
    model.add_argument("--space", metavar="ORG/NAME", help="also stage and push a Gradio demo Space")
    model.add_argument("--dataset-id", help="the dataset repo the results refer to (default ORG/instructpart)")
    model.add_argument(
        "--base-model",
        action="append",
        default=[],
        help="a pretrained part the checkpoint was built from (Hub id), for the card's base_model",
    )
    model.add_argument(
        "--license",
        help="the checkpoint's licence (a Hub licence id); default: none chosen, the card says `unknown`. "
        "Respect the licences of the parts it was built from",
    )
    common(model)
    model.set_defaults(run=cmd_model)
    board = commands.add_parser("leaderboard", help="the leaderboard (published rows, results, model cards) as a Space")
    from instructpart_metric.leaderboard import add_source_arguments

    add_source_arguments(board)
    common(board)
    board.set_defaults(run=cmd_leaderboard)
    args = parser.parse_args(argv)
    return run_command(parser.prog, args.run, args)


if __name__ == "__main__":
    sys.exit(main())
