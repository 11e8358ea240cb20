"""The files that travel with checkpoints (configuration, modeling, processing, pipeline) import from
transformers' top level, except through the module paths listed here, each with its reason. On the newest
transformers CI installs, a moved path fails here, naming it, before a published checkpoint breaks."""

import ast
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAVELLING = ("configuration_pisa.py", "modeling_pisa.py", "processing_pisa.py", "pipeline_pisa.py")

# (module, name) -> why the module path is used.
MODULE_PATHS = {
    ("transformers.configuration_utils", "SubConfigSpec"): "not exported at the top level (its API as of 5.21)",
    ("transformers.models.sam.modeling_sam", "SamMaskDecoder"): "SAM's parts are not exported at the top level",
    ("transformers.models.sam.modeling_sam", "SamPromptEncoder"): "SAM's parts are not exported at the top level",
    ("transformers.models.sam.modeling_sam", "SamPositionalEmbedding"): "SAM's parts are not exported at the top level",
    ("transformers.models.sam.modeling_sam", "SamVisionEncoder"): "SAM's parts are not exported at the top level "
    "(SamVisionModel wraps it in a PreTrainedModel, adding a level to every weight name)",
    ("transformers.utils", "ModelOutput"): "the documented path of ModelOutput",
    ("transformers.image_utils", "load_image"): "the documented path of load_image",
    ("transformers.dynamic_module_utils", "custom_object_save"): "what save_pretrained runs for remote code",
    ("huggingface_hub.dataclasses", "strict"): "the documented path of strict config dataclasses",
    ("huggingface_hub.errors", "EntryNotFoundError"): "the documented path of the Hub's errors",
}


def imported_names() -> dict:
    """{(module, name): [files]} of every `from <package>.<module> import <name>` in the travelling files."""
    found = {}
    for filename in TRAVELLING:
        with open(os.path.join(ROOT, "pisa_model", filename), encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("transformers."), f"{filename}: import {alias.name}"
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] in ("transformers", "huggingface_hub") and "." in node.module:
                    for alias in node.names:
                        found.setdefault((node.module, alias.name), []).append(filename)
    return found


def test_every_module_path_import_is_listed_with_its_reason():
    found = imported_names()
    unlisted = sorted(set(found) - set(MODULE_PATHS))
    assert not unlisted, f"module-path imports not in MODULE_PATHS: {unlisted}; import from the top level instead"
    unused = sorted(set(MODULE_PATHS) - set(found))
    assert not unused, f"MODULE_PATHS lists imports no travelling file makes: {unused}"


@pytest.mark.parametrize("module,name", sorted(MODULE_PATHS))
def test_listed_module_paths_exist_in_the_installed_versions(module, name):
    import transformers

    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise AssertionError(
            f"{module}.{name} moved in transformers {transformers.__version__} ({error}): published PISA "
            "checkpoints import it; update the travelling files and the setup.cfg range"
        ) from None
    assert callable(value)


def test_top_level_imports_are_public():
    import transformers

    for filename in TRAVELLING:
        with open(os.path.join(ROOT, "pisa_model", filename), encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "transformers":
                for alias in node.names:
                    assert alias.name in transformers.__all__ or hasattr(transformers, alias.name), (
                        filename,
                        alias.name,
                    )
