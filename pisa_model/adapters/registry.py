"""Adapter specs: the one list of the built-in adapters, and `load_adapter`, which builds one from its spec.

A spec is `NAME`, `NAME:ARGUMENT` or a PISA checkpoint folder; CKPT is a local folder or a Hub repo id.
An adapter's module is imported the first time its name is asked for, so the adapter modules import
only `base.py` and loading one adapter never imports the others. Adapter options (`threshold`, ...) are
keyword arguments of `load_adapter`, or `--adapter-arg NAME=VALUE` on the command line.
"""

import importlib
import inspect
import os
from collections.abc import Callable
from typing import NamedTuple

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
        "reason-then-ground:VLM_CKPT,SEGMENTER_SPEC",
        'a VLM names "<part> of the <object>", a segmenter (any spec above) grounds it',
        "reason_then_ground",
        "_reason_then_ground",
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


def load_adapter(spec, *, device=None, dtype=None, **options) -> Adapter:
    """Build the adapter named by `spec` (see `ADAPTER_SPECS`); an `Adapter` is returned as is.

    Args:
        spec (`str` or `Adapter`): `NAME`, `NAME:ARGUMENT`, or a PISA checkpoint folder.
        device (`str` or `torch.device`, *optional*): where the model runs (default: CPU).
        dtype (`torch.dtype`, *optional*): the model's floating dtype (default: the checkpoint's float32).
        **options: the adapter's own options (`threshold=0.4`, `relative_area=0.1`, ...).
    """
    if isinstance(spec, Adapter):
        if options:
            raise ValueError(f"options {sorted(options)} given with an already built adapter {spec.name!r}")
        return spec
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
        raise ValueError(
            f"unknown model {spec!r}: expected a PISA checkpoint folder or one of "
            f"{', '.join(adapter_names())} (NAME or NAME:CHECKPOINT)"
        )
    factory = _factory(name)
    _check_options(name, factory, options)
    return factory(argument, device=device, dtype=dtype, **options)


def _check_options(name: str, factory: Callable, options: dict) -> None:
    accepted = [
        parameter.name
        for parameter in inspect.signature(factory).parameters.values()
        if parameter.kind == parameter.KEYWORD_ONLY and parameter.name not in ("device", "dtype")
    ]
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
