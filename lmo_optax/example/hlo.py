"""What a compiled XLA program exchanges between devices, read off its HLO text."""

from __future__ import annotations

import collections
import math
import re

COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")
_ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "s32": 4, "u32": 4, "pred": 1, "s8": 1}


def collective_stats(hlo: str) -> dict[str, dict[str, int]]:
    """Count and result bytes of each kind of collective in a compiled HLO module's text.

    The bytes are those of each collective's result shapes (what a device ends up holding from
    it): a proxy for the bytes it moves. Asynchronous pairs count once, at their ``-start``.
    """
    stats: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for line in hlo.splitlines():
        for op in COLLECTIVES:
            if f" {op}(" not in line and f" {op}-start(" not in line:
                continue  # most lines: no regular expression search
            match = re.search(rf"=\s*(.*?)\s{op}(-start)?\(", line)
            if match:
                shapes = re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", match.group(1))
                stats[op]["count"] += 1
                stats[op]["bytes"] += sum(
                    _ITEMSIZE.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
                    for dtype, dims in shapes
                )
    return dict(stats)
