"""`python -m instructpart_metric lmms-eval-tasks`: where lmms-eval finds the InstructPart tasks.

    lmms-eval --include_path "$(python -m instructpart_metric lmms-eval-tasks)" --tasks instructpart ...
    python -m instructpart_metric lmms-eval-tasks --data-dir EXPORT --output DIR   # tasks on a local export

Without options it prints the packaged task folder (`instructpart_metric/lmms_eval_plugin/tasks`, also found by
`LMMS_EVAL_PLUGINS=instructpart_metric.lmms_eval_plugin`), whose tasks read the Hub dataset. With `--data-dir` it
writes DIR/instructpart_{trps,orps}.yaml and DIR/instructpart.yaml, the same tasks (each includes the packaged
YAML) reading the test split of an exported folder through lmms-eval's local Parquet loading (`dataset_path:
parquet`, the files in `dataset_kwargs.data_files`), and prints DIR. Pass DIR as `--include_path`; lmms-eval
searches it before a plugin's folder, so DIR's tasks are the ones run.
"""

import os

from instructpart_dataset.schema import CONFIGS

from .lmms_eval_plugin import TASKS_DIR

GROUP = "instructpart"
SPLIT = "test"


def task_name(config: str) -> str:
    return f"{GROUP}_{config}"


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escaping is valid YAML)."""
    import json

    return json.dumps(text)


def local_task_yaml(config: str, files: list) -> str:
    lines = [
        f"# Written by python -m instructpart_metric lmms-eval-tasks: {task_name(config)} on a local export.",
        f"task: {task_name(config)}",
        f"include: {_quoted(os.path.join(TASKS_DIR, task_name(config) + '.yaml'))}",
        "dataset_path: parquet",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    {SPLIT}:",
        *(f"      - {_quoted(file)}" for file in files),
        "",
    ]
    return "\n".join(lines)


def write_local_tasks(data_dir: str, output: str) -> str:
    """The task folder for an exported dataset (see the module docstring); returns `output`."""
    from instructpart_dataset.load import check_parquet_files, data_files, is_hub_export
    from instructpart_dataset.toolbox.files import write_text_atomic

    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: no such folder")
    if not is_hub_export(data_dir):
        raise ValueError(
            f"{data_dir}: not an exported dataset (README.md with configs); export a release first: "
            "python -m instructpart_dataset export --data-dir RELEASE --output EXPORT"
        )
    data_dir = os.path.abspath(data_dir)
    documents = {}
    for config in CONFIGS:
        check_parquet_files(data_dir, config, SPLIT)
        files = [os.path.abspath(str(file)) for file in data_files(data_dir, config)[SPLIT]]
        documents[f"{task_name(config)}.yaml"] = local_task_yaml(config, files)
    with open(os.path.join(TASKS_DIR, f"{GROUP}.yaml"), encoding="utf-8") as f:
        documents[f"{GROUP}.yaml"] = f.read()
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(f"{output}: exists and is not a folder")
    os.makedirs(output, exist_ok=True)
    for name, text in documents.items():
        write_text_atomic(os.path.join(output, name), text)
    return output


def run(args) -> int:
    if args.output and not args.data_dir:
        raise ValueError("--output needs --data-dir (the exported dataset its tasks read)")
    if args.data_dir:
        if not args.output:
            raise ValueError("--data-dir needs --output (the folder the task YAML is written to)")
        print(os.path.abspath(write_local_tasks(args.data_dir, args.output)))
    else:
        print(TASKS_DIR)
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--data-dir", metavar="EXPORT", help="an exported dataset folder: write tasks that read it")
    parser.add_argument("--output", metavar="DIR", help="where the tasks on --data-dir are written")


__all__ = ["TASKS_DIR", "task_name", "write_local_tasks"]
