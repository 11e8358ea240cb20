"""Where a results file's numbers came from: the package version, the command, the ORPS form, the data and
the model, recorded in every `results.json` (key `provenance`) and printed under every table.

The dataset's fingerprint is a sha256 over the rows that were scored, in data order: each row's id,
labels, instruction and the stored bytes of its image and mask (the PNG/JPEG bytes the dataset holds).
It is the same for a release folder, its exported Hub folder or the Hub repo (they hold the same bytes),
and it changes when any image, mask, instruction or label changes. A checkpoint folder is identified by the
sha256 of its `config.json` and of its weight files, and by the Hub revision when it is a Hub snapshot.
"""

import hashlib
import json
import os
import re
import shlex
import sys

FINGERPRINT_COLUMNS = ("id", "instruction_type", "instruction", "object", "part", "affordance", "action")
_CHUNK = 1 << 20


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("instructpart")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown (not installed)"


def command_line(program: str, argv: list | None = None) -> str:
    """`program` and its arguments as a shell would take them back (`python -m pisa_model.evaluate ...`).

    `argv` defaults to this process's arguments, which `accelerate launch` passes on unchanged, so a
    command run on 1 or on N processes records the same line."""
    return shlex.join([*shlex.split(program), *(sys.argv[1:] if argv is None else argv)])


def _update_bytes(digest, value) -> None:
    """Length-prefixed, so that ("ab", "c") and ("a", "bc") hash differently; None differs from b""."""
    if value is None:
        digest.update(b"\xff" * 8)
        return
    digest.update(len(value).to_bytes(8, "little"))
    digest.update(value)


def _file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def dataset_fingerprint(dataset, batch_size: int = 256) -> str:
    """`"sha256:<hex>"` over the scored rows of a `load_instructpart` dataset (see the module docstring)."""
    digest = hashlib.sha256()
    table_view = dataset.with_format("arrow")
    for start in range(0, len(dataset), batch_size):
        table = table_view[start : start + batch_size]
        columns = {name: table.column(name).to_pylist() for name in FINGERPRINT_COLUMNS}
        media = {}
        for name in ("image", "mask"):
            media[name] = table.column(name).to_pylist()
        for index in range(table.num_rows):
            for name in FINGERPRINT_COLUMNS:
                value = columns[name][index]
                _update_bytes(digest, None if value is None else str(value).encode("utf-8"))
            for name in ("image", "mask"):
                stored = media[name][index] or {}
                data = stored.get("bytes")
                if data is None and stored.get("path"):
                    data = _file_bytes(stored["path"])
                _update_bytes(digest, data)
    return "sha256:" + digest.hexdigest()


def dataset_identity(source: str, split: str, datasets_by_config: dict) -> dict:
    """`{"source", "split", "configs": {config: {"rows", "fingerprint"}}}` of the scored datasets."""
    return {
        "source": source,
        "split": split,
        "configs": {
            config: {"rows": len(dataset), "fingerprint": dataset_fingerprint(dataset)}
            for config, dataset in datasets_by_config.items()
        },
    }


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_identity(folder: str) -> dict | None:
    """`{"config_sha256", "weights_sha256", "revision"}` of a checkpoint folder with a config.json; else None.

    `weights_sha256` covers every `*.safetensors` file (name and bytes, sorted by name); `revision` is the
    Hub commit when the folder is a Hub cache snapshot (`.../snapshots/<commit>/`), else None."""
    folder = os.path.expanduser(folder)
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return None
    weights = hashlib.sha256()
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".safetensors")):
        weights.update(name.encode("utf-8") + b"\0" + bytes.fromhex(_sha256_file(os.path.join(folder, name))))
    snapshot = re.search(r"/snapshots/([0-9a-f]{40})/?$", os.path.abspath(folder).replace(os.sep, "/"))
    return {
        "config_sha256": _sha256_file(config),
        "weights_sha256": weights.hexdigest(),
        "revision": snapshot.group(1) if snapshot else None,
    }


def model_identity(spec: str, name: str) -> dict:
    """The evaluated model: its spec as given, the adapter's name, and each local checkpoint folder's identity."""
    identity = {"spec": spec, "name": name, "checkpoints": {}}
    # Adapter specs name checkpoints after a colon, several separated by commas (`grounded-sam:A,B`).
    candidates = [spec, *re.split(r"[,:]", spec.partition(":")[2])] if ":" in spec else [spec]
    for candidate in candidates:
        if candidate and os.path.isdir(os.path.expanduser(candidate)):
            found = checkpoint_identity(candidate)
            if found is not None:
                identity["checkpoints"][candidate] = found
    return identity


def provenance(command: str, orps_form: str, dataset: dict, **more) -> dict:
    """The `provenance` block of a results file; `more` adds e.g. `model` or `predictions`."""
    return {
        "package": {"name": "instructpart", "version": package_version()},
        "command": command,
        "orps_form": orps_form,
        "dataset": dataset,
        **more,
    }


def format_provenance(block: dict) -> list:
    """Plain-text lines of a provenance block (report footer, model card, console)."""
    if not block:
        return []
    lines = [f"instructpart {block.get('package', {}).get('version')}; command: {block.get('command')}"]
    data = block.get("dataset") or {}
    for config, found in (data.get("configs") or {}).items():
        lines.append(
            f"data: {data.get('source')} {config} {data.get('split')}, {found['rows']} rows, {found['fingerprint']}"
        )
    lines.append(f"ORPS form: {block.get('orps_form')}")
    model = block.get("model")
    if model:
        text = f"model: {model['name']} ({model['spec']})"
        for folder, found in model.get("checkpoints", {}).items():
            revision = f", revision {found['revision']}" if found.get("revision") else ""
            text += f"; {folder}: config sha256 {found['config_sha256'][:16]}…, weights {found['weights_sha256'][:16]}…"
            text += revision
        lines.append(text)
    if block.get("dtype"):
        lines.append(f"model dtype: {block['dtype']}")
    if block.get("answer_mode"):
        lines.append(f"answer: {block['answer_mode']}")
    adapter = block.get("adapter") or {}
    if adapter.get("prompts"):
        vlm = adapter.get("vlm") or {}
        where = f"; VLM {vlm['model']} at {vlm['base_url']}" if vlm.get("kind") == "api" else ""
        box = f"; box format {adapter['box_format']}" if adapter.get("box_format") else ""
        lines.append(f"prompts: sha256 {adapter['prompts']['sha256'][:16]}…{box}{where}")
    usage = adapter.get("usage")
    if usage:
        lines.append(
            f"api: {usage.get('requests', 0)} requests ({usage.get('retries', 0)} retries), cache "
            f"{usage.get('cache_hits', 0)} hits / {usage.get('cache_misses', 0)} misses, tokens "
            f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion"
        )
    failures = block.get("failures")
    if failures:
        lines.append(f"failures: {failures['rows']} rows failed and are scored as {failures['scored_as']}")
    predictions = block.get("predictions")
    if isinstance(predictions, dict):
        predictions = ", ".join(f"{name}={folder}" for name, folder in predictions.items())
    if predictions:
        lines.append(f"predictions: {predictions}")
    for name, source in (block.get("evaluated") or {}).items():
        lines.append(f"{name} predicted by: {source['command']}")
        lines += [
            f"  {line}"
            for line in format_provenance({**source, "command": None})[1:]
            if line.startswith(("model", "prompts", "api", "failures"))
        ]
    return lines


def evaluated_by(predictions_folder: str) -> dict | None:
    """The provenance of the evaluate run that wrote `predictions_folder` (its sibling results.json), if any."""
    path = os.path.join(os.path.dirname(os.path.normpath(predictions_folder)), "results.json")
    try:
        with open(path, encoding="utf-8") as f:
            block = json.load(f).get("provenance")
    except (OSError, ValueError, AttributeError):
        return None
    return block if isinstance(block, dict) and "command" in block else None
