"""Every model the evaluate command scores, behind one protocol: `predict(images, instructions) -> bool masks`.

    from pisa_model.adapters import load_adapter
    adapter = load_adapter("clipseg:CIDAS/clipseg-rd64-refined", device="cuda")
    masks = adapter.predict(images, instructions)   # bool (H, W) per image, at the image's own size

The protocol: `base.py`. Names and spec syntax, listed once: `registry.ADAPTER_SPECS`. Each adapter's prompt,
threshold and resolution handling: its module's docstring.
"""

from .base import Adapter
from .registry import ADAPTER_SPECS, AdapterSpec, adapter_names, load_adapter, parse_option, register_adapter

__all__ = [
    "ADAPTER_SPECS",
    "Adapter",
    "AdapterSpec",
    "adapter_names",
    "load_adapter",
    "parse_option",
    "register_adapter",
]
