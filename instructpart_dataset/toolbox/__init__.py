"""What every command of the project shares, on the ground floor so that every package may use it.

The dataset CLI, `python -m instructpart_metric`, `python -m pisa_model.{train,evaluate,demo}` and `upload.py`
all import from here, and this group imports nothing of the project:

    cli_errors      one error convention: `<prog>: error: <path>: <what>` on stderr, exit 2 on bad input and
                    1 on a failed operation (`run_command`, `writing`, `check_writable`, `OperationFailed`);
    files           writing so that no reader sees half a file or folder (`write_atomic`, `write_json_atomic`,
                    `write_text_atomic`, `publish_folder`);
    extras          imports on first use: an optional dependency with the `pip install instructpart[<extra>]`
                    hint (`require`), a package's lazily exported names (`lazy_exports`);
    fresh_process   running code or serving an app as a user of a Hub repo does, where the project cannot be
                    imported (`run_isolated`, `serve_isolated`: upload.py's verification, the tests, the bench);
    space_files     what every Gradio Space gets beside its app: requirements.txt in this distribution's own
                    ranges, the card's Space metadata (`write_space_files`, `space_requirements`).

Import the module you need (`from instructpart_dataset.toolbox.files import write_json_atomic`): this file
imports none of them, so that using one loads no other.
"""
