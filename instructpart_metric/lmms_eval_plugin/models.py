"""Read by lmms-eval for a package named in `LMMS_EVAL_PLUGINS`. Empty on purpose: the `instructpart` model is
registered through the `lmms_eval.models` entry point (setup.cfg), so installing the package is enough."""

AVAILABLE_MODELS: dict = {}
