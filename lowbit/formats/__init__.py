"""The on-disk truth and the reference math. numpy only: never imports cupy.

`scheme_module(name)` gives the module of one scheme; each has the same functions:
tensor_layout(n, k, **opts), unsupported_reason(n, k, **opts), quantize(w, **opts),
dequantize(tensors), config_fragment(ignore, **opts).
"""

from __future__ import annotations

from types import ModuleType

from lowbit.formats.schemes import SCHEMES, SchemeSpec, get_spec


def scheme_module(name: str) -> ModuleType:
    get_spec(name)  # raises SchemeError naming the choices
    from lowbit.formats import fp8_block, int4, nvfp4

    return {"fp8-block": fp8_block, "nvfp4": nvfp4, "int4": int4}[name]


__all__ = ["SCHEMES", "SchemeSpec", "get_spec", "scheme_module"]
