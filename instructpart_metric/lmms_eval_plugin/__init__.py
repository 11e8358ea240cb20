"""InstructPart as an lmms-eval plugin package: `LMMS_EVAL_PLUGINS=instructpart_metric.lmms_eval_plugin`.

lmms-eval 0.7.3 reads two submodules of every package named in `LMMS_EVAL_PLUGINS`: `<plugin>.tasks`, a folder
of task YAML added to its task search path (the same folder `--include_path "$(python -m instructpart_metric
lmms-eval-tasks)"` names), and `<plugin>.models`, whose `AVAILABLE_MODELS` it registers. The `instructpart`
model (`pisa_model.lmms_model`) is registered through the `lmms_eval.models` entry point instead, which
lmms-eval loads for every installed package, so `models.AVAILABLE_MODELS` is empty.
"""

import os

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
