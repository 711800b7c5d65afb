"""Byte sizes as written in the config: ``500G``, ``20M``, ``1024``. Pure, no I/O.

Accepted forms (case-insensitive, ASCII only):

- a whole number of bytes: ``1024`` (an ``int`` or a string of digits), or
  with the unit ``B``: ``1024B``;
- a number followed by a unit ``K``, ``M``, ``G`` or ``T``, optionally
  followed by ``B`` or ``iB`` (all the same thing): ``500G``, ``500GB``,
  ``500GiB``, ``500 g``. Units are powers of 1024, as in the original node
  (whose config only accepts ``<digits><B|K|M|G|T>``, a subset of this).
- a decimal fraction with a unit K/M/G/T: ``1.5G`` is ``1.5 * 1024**3``
  bytes, rounded down to a whole byte.

``format_size`` writes the shortest exact form the original node also accepts
(``<digits><unit>``), so ``parse_size(format_size(n)) == n`` for every n >= 0.
"""

from __future__ import annotations

import re
from fractions import Fraction

_UNITS = "BKMGT"
_MAX_TEXT = 64

_SIZE = re.compile(
    r"\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?:(?P<unit>[KMGT])(?:I?B)?|(?P<bytes>B))?\s*",
    re.IGNORECASE | re.ASCII,
)


def _not_a_size(value: object) -> ValueError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return ValueError(f"{shown} is not a size like 500G")


def parse_size(value: str | int) -> int:
    """``"500G"`` -> ``536870912000``; ``ValueError`` for anything else."""
    if isinstance(value, bool):
        raise _not_a_size(value)
    if isinstance(value, int):
        if value < 0:
            raise _not_a_size(value)
        return value
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise _not_a_size(value)
    match = _SIZE.fullmatch(value)
    if match is None:
        raise _not_a_size(value)
    number = match.group("number")
    unit = match.group("unit")
    if unit is None:
        if "." in number:
            # A fraction of a byte means nothing: say so rather than round.
            raise _not_a_size(value)
        return int(number)
    factor = 1024 ** _UNITS.index(unit.upper())
    return int(Fraction(number) * factor)


def format_size(n: int) -> str:
    """The largest unit that divides ``n`` exactly: ``1536 -> "1536B"``,
    ``2048 -> "2K"``, ``0 -> "0B"``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{n!r} is not a byte count (an integer >= 0)")
    if n == 0:
        return "0B"
    for exponent in range(len(_UNITS) - 1, -1, -1):
        factor = 1024**exponent
        if n % factor == 0:
            return f"{n // factor}{_UNITS[exponent]}"
    raise AssertionError("unreachable: 1024**0 divides every integer")
