"""The converter: architecture rules, the plan, the streaming executor, hub resolution.

`from lowbit.quantize import convert` (lazy, so `lowbit.quantize.archs` imports stay light).
"""

from __future__ import annotations


def convert(*args, **kwargs):
    from lowbit.quantize.convert import convert as _convert

    return _convert(*args, **kwargs)
