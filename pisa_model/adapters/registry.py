"""Adapter specs: the one list of the built-in adapters, and `load_adapter`, which builds one from its spec.

A spec is `NAME`, `NAME:ARGUMENT` or a PISA checkpoint folder; CKPT is a local folder or a Hub repo id.
Your own model is `package.module:factory` (importable) or `path/to/file.py:factory` (a file): `factory` is
called with the adapter options it accepts (and `device`/`dtype` if it takes them) and returns an `Adapter` or
any object with `predict(images, instructions) -> masks`.
An adapter's module is imported the first time its name is asked for, so the adapter modules import
only `base.py` and loading one adapter never imports the others. Adapter options (`threshold`, ...) are
keyword arguments of `load_adapter`, or `--adapter-arg NAME=VALUE` on the command line.
"""

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .base import Adapter


class AdapterSpec(NamedTuple):
    name: str  # the part of a spec before ":"
    syntax: str  # how a spec names it
    summary: str  # what it is
    module: str  # the module under pisa_model.adapters that builds it
    factory: str  # `factory(argument, *, device, dtype, **options) -> Adapter` in that module


# The built-in adapters. The evaluate command's help prints this table; a test checks the README's against it.
ADAPTER_SPECS = (
    AdapterSpec("full-image", "full-image", "every pixel: a floor every model must beat", "baselines", "_full_image"),
    AdapterSpec(
        "centre-ellipse",
        "centre-ellipse",
        "an ellipse at the image centre whose relative area is the mean of the train split's masks",
        "baselines",
        "_centre_ellipse",
    ),
    AdapterSpec("pisa", "PATH | pisa:PATH", "a PISA checkpoint (a folder, or pisa:REPO_ID)", "pisa", "_pisa"),
    AdapterSpec(
        "lisa",
        "lisa:PATH_OR_REPO",
        "LISA as released (xinlai/LISA-7B-v1, ...), converted once; the paper's LISA row",
        "lisa",
        "_lisa",
    ),
    AdapterSpec("clipseg", "clipseg:CKPT", "CLIPSeg with the instruction as its text prompt", "clipseg", "_clipseg"),
    AdapterSpec(
        "grounded-sam",
        "grounded-sam:DINO_CKPT,SAM_CKPT",
        "Grounding DINO's best box, then SAM",
        "grounded_sam",
        "_grounded_sam",
    ),
    AdapterSpec("sam3", "sam3:CKPT", "SAM3 with a text prompt", "sam3", "_sam3"),
    AdapterSpec(
        "reason-then-ground",
        "reason-then-ground:VLM,SEGMENTER_SPEC",
        'a VLM (CKPT or api:MODEL@BASE_URL) names "<part> of the <object>", a segmenter (any spec above) grounds it',
        "reason_then_ground",
        "_reason_then_ground",
    ),
    AdapterSpec(
        "vlm-box",
        "vlm-box:VLM,SAM_CKPT",
        "a VLM (CKPT or api:MODEL@BASE_URL: one request per row, cached) gives the part's box, SAM masks it",
        "vlm_box",
        "_vlm_box",
    ),
)
_BUILTIN = {spec.name: spec for spec in ADAPTER_SPECS}
_REGISTERED: dict = {}  # adapters added with register_adapter (and built-ins once imported)


def register_adapter(name: str) -> Callable:
    """Register your own `factory(argument, *, device, dtype, **options) -> Adapter` under `name`."""

    def decorate(factory):
        _REGISTERED[name] = factory
        return factory

    return decorate


def adapter_names() -> tuple:
    return tuple(sorted(set(_BUILTIN) | set(_REGISTERED)))


def specs_help() -> str:
    """One line per built-in adapter: its syntax and what it is."""
    width = max(len(spec.syntax) for spec in ADAPTER_SPECS)
    return "\n".join(f"{spec.syntax.ljust(width)}  {spec.summary}" for spec in ADAPTER_SPECS)


def _factory(name: str) -> Callable:
    if name not in _REGISTERED:
        spec = _BUILTIN[name]
        module = importlib.import_module(f"{__package__}.{spec.module}")
        _REGISTERED[name] = getattr(module, spec.factory)
    return _REGISTERED[name]


class PredictorAdapter(Adapter):
    """Any object with `predict(images, instructions) -> masks` (bool or 0/1 (H, W) arrays, one per image) as an
    `Adapter`: what `load_adapter` makes of your own model."""

    def __init__(self, predictor, name: str):
        self.predictor = predictor
        self.name = name

    def predict(self, images: list, instructions: list) -> list:
        return [np.asarray(mask).astype(bool, copy=False) for mask in self.predictor.predict(images, instructions)]


_USER_FACTORY = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attribute>[A-Za-z_]\w*)")
_USER_FILE = re.compile(r"(?P<file>.+\.py):(?P<attribute>[A-Za-z_]\w*)")


def _import_file(path: str):
    """The module of a `.py` file, imported under a name of its own (its folder need not be a package)."""
    expanded = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(expanded):
        raise FileNotFoundError(f"model file {path!r}: no such file")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(expanded))[0])
    name = f"_instructpart_model_{stem}_{hashlib.sha256(expanded.encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, expanded)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _user_factory(spec: str) -> Callable | None:
    """The factory a `file.py:factory` or `package.module:factory` spec names; None for other specs."""
    found = _USER_FILE.fullmatch(spec)
    if found:
        module, where = _import_file(found["file"]), found["file"]
    else:
        found = _USER_FACTORY.fullmatch(spec)
        if not found:
            return None
        where = found["module"]
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as error:
            if error.name is None or not where.startswith(error.name):
                raise  # the module was found; something it imports is missing
            raise ValueError(
                f"unknown model {spec!r}: no adapter named {where.partition('.')[0]!r} ({', '.join(adapter_names())}) "
                f"and no importable module {where!r}"
            ) from None
    factory = getattr(module, found["attribute"], None)
    if not callable(factory):
        raise ValueError(f"model {spec!r}: {where} has no callable {found['attribute']!r}")
    return factory


def _build_user_model(spec: str, factory: Callable, device, dtype, options: dict) -> Adapter:
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    accepted = [
        p.name for p in parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    ]
    unknown = sorted(set(options) - set(accepted)) if not takes_any else []
    if unknown:
        takes = ", ".join(n for n in accepted if n not in ("device", "dtype")) or "none"
        raise ValueError(f"{spec} has no option {', '.join(map(repr, unknown))} (its options: {takes})")
    extra = {key: value for key, value in (("device", device), ("dtype", dtype)) if takes_any or key in accepted}
    needed = [
        p.name
        for p in parameters.values()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in {**options, **extra}
    ]
    if needed:
        raise ValueError(
            f"model {spec!r} needs {', '.join(map(repr, needed))}: give it with --adapter-arg NAME=VALUE "
            "(load_adapter keyword arguments)"
        )
    model = factory(**options, **extra)
    if isinstance(model, Adapter):
        if model.name == Adapter.name:
            model.name = spec
        return model
    if not callable(getattr(model, "predict", None)):
        raise ValueError(
            f"model {spec!r} gave a {type(model).__name__}, which has no predict(images, instructions) -> masks"
        )
    return PredictorAdapter(model, spec)


def load_adapter(spec, *, device=None, dtype=None, **options) -> Adapter:
    """Build the adapter named by `spec` (see `ADAPTER_SPECS`); an `Adapter` is returned as is, any other object
    with `predict(images, instructions) -> masks` is wrapped as one (`PredictorAdapter`).

    Args:
        spec (`str` or `Adapter`): `NAME`, `NAME:ARGUMENT`, a PISA checkpoint folder, or your own model:
            `package.module:factory` or `path/to/file.py:factory` (see the module docstring).
        device (`str` or `torch.device`, *optional*): where the model runs (default: CPU).
        dtype (`torch.dtype`, *optional*): the model's floating dtype (default: the checkpoint's float32).
        **options: the adapter's own options (`threshold=0.4`, `relative_area=0.1`, ...).
    """
    if isinstance(spec, Adapter) or (not isinstance(spec, str) and callable(getattr(spec, "predict", None))):
        if options:
            raise ValueError(f"options {sorted(options)} given with an already built model {spec!r}")
        return spec if isinstance(spec, Adapter) else PredictorAdapter(spec, getattr(spec, "name", type(spec).__name__))
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    name, has_argument, argument = spec.partition(":")
    if name in _BUILTIN or name in _REGISTERED:
        argument = argument.strip() if has_argument else None
    elif os.path.isdir(os.path.expanduser(spec)):
        name, argument = "pisa", spec
    elif not has_argument and (os.sep in spec or spec.startswith((".", "~"))):
        raise FileNotFoundError(f"PISA checkpoint {spec!r}: no such folder (a Hub checkpoint is pisa:REPO_ID)")
    else:
        factory = _user_factory(spec)
        if factory is None:
            raise ValueError(
                f"unknown model {spec!r}: expected a PISA checkpoint folder, one of {', '.join(adapter_names())} "
                "(NAME or NAME:CHECKPOINT), package.module:factory or path/to/file.py:factory"
            )
        return _build_user_model(spec, factory, device, dtype, options)
    factory = _factory(name)
    _check_options(name, factory, options)
    return factory(argument, device=device, dtype=dtype, **options)


def _check_options(name: str, factory: Callable, options: dict) -> None:
    accepted = [
        parameter.name
        for parameter in inspect.signature(factory).parameters.values()
        if parameter.kind == parameter.KEYWORD_ONLY and parameter.name not in ("device", "dtype")
    ]
    accepted += list(getattr(factory, "accepted_options", ()))  # options a factory passes on through **kwargs
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "none"
        raise ValueError(f"{name} has no option {', '.join(map(repr, unknown))} (its options: {takes})")


def parse_option(text: str) -> tuple:
    """`"threshold=0.4"` -> `("threshold", 0.4)`: ints, floats, true/false/none are converted, the rest stays text."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise ValueError(f"adapter option {text!r} is not NAME=VALUE")
    value = value.strip()
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered == "none":
        return key, None
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, value
