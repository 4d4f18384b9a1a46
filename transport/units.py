"""Units: the one place where unit strings are parsed and converted.

Files label their units in UDUNITS/CF style ("mol m-2 s-1", "s m3 kg-1"), in slash style
("(mol/mol)/(mol/m2/s)"), as pure scale factors ("1e-9") or in tool-specific spellings
(STILT's "ppm (umol-1 m2 s)").  :func:`parse_units` rewrites such a string into pint syntax
and lets pint evaluate it; nothing is guessed, so a string pint cannot read is an
:class:`~transport.errors.InputError`.

Conventions (the canonical units of the project):

* footprint   ``FOOTPRINT_UNITS``     = m² s mol⁻¹ = (mol mol⁻¹) per (mol m⁻² s⁻¹)
* flux        ``FLUX_UNITS``          = mol m⁻² s⁻¹ (positive upward)
* mole frac.  ``MOLE_FRACTION_UNITS`` = mol mol⁻¹ (ppm = 1e-6, ppb = 1e-9, ppt = 1e-12)

``conversion_factor(a, b)`` is the number f with value[b] = f · value[a]; only multiplicative
units are supported (no temperature offsets).

pint is imported, and its registry built, on first use only (together about 0.3 s), so
importing :mod:`transport` stays cheap.
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import TYPE_CHECKING

from transport.errors import InputError

if TYPE_CHECKING:
    import pint

FOOTPRINT_UNITS = "m2 s mol-1"
FLUX_UNITS = "mol m-2 s-1"
MOLE_FRACTION_UNITS = "mol mol-1"

MOLAR_MASS_KG_PER_MOL = {"co2": 44.0095e-3, "ch4": 16.0425e-3, "c": 12.011e-3}
SECONDS_PER_YEAR = 365.25 * 86400  # Julian year, s

_ACCEPTED_EXAMPLES = (
    'accepted examples: "mol m-2 s-1", "umol m-2 s-1", "kg m-2 s-1", "m2 s mol-1", '
    '"s m3 kg-1", "(mol/mol)/(mol/m2/s)", "ppm (umol-1 m2 s)", "ppm", "ppb", "mol mol-1", '
    '"1e-9", "1"'
)

# One token per match, tried left to right.  A name glued to a signed integer is a
# UDUNITS power ("m-2"); a number is never read as a name, so "1e-9" stays a number.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<power>(?:\*\*|\^)\s*[-+]?\d+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<name>[A-Za-z_]+)(?P<exponent>[-+]?\d+)?
  | (?P<op>[*/()])
    """,
    re.VERBOSE,
)


@functools.lru_cache(maxsize=None)
def unit_registry() -> pint.UnitRegistry:
    """The project's pint registry (built once, on first call)."""
    import pint

    # pint already knows ppm, but reads "ppt" as pico-pint and lacks ppb, so all three
    # mole-fraction words are (re)defined here; redefinition is intended, hence no warning.
    ureg = pint.UnitRegistry(on_redefinition="ignore")
    ureg.define("ppm = 1e-6")
    ureg.define("ppb = 1e-9")
    ureg.define("ppt = 1e-12")
    return ureg


def _unknown(text: str, path, variable) -> InputError:
    return InputError(path, variable, f"unknown unit {text!r}", f"Write the units in UDUNITS/CF style; {_ACCEPTED_EXAMPLES}")


def _to_pint_syntax(text: str, path, variable) -> str:
    """Rewrite UDUNITS/CF spellings into a pint expression ("m2 s mol-1" -> "m**2*s*mol**-1")."""
    spelled = text.replace("\u00b5", "u").replace("\u03bc", "u")  # micro sign, Greek mu
    out: list[str] = []
    depth = 0
    previous_is_operand = False
    pos = 0
    while pos < len(spelled):
        match = _TOKEN.match(spelled, pos)
        if match is None:
            raise _unknown(text, path, variable)
        pos = match.end()
        if match.group("space"):
            continue
        if match.group("power"):
            if not previous_is_operand:
                raise _unknown(text, path, variable)
            out.append("**" + match.group("power").lstrip("*^ \t"))
            continue
        op = match.group("op")
        starts_operand = op is None or op == "("
        # UDUNITS writes products as juxtaposition ("kg m-2"): make the product explicit.
        if previous_is_operand and starts_operand:
            out.append("*")
        if match.group("name"):
            exponent = match.group("exponent")
            out.append(match.group("name") + (f"**{exponent}" if exponent else ""))
        else:
            out.append(match.group())
        depth += {"(": 1, ")": -1}.get(op, 0)
        if depth < 0:
            raise _unknown(text, path, variable)
        previous_is_operand = op is None or op == ")"
    if depth != 0 or not out:
        raise _unknown(text, path, variable)
    return "".join(out)


def parse_units(text: str, *, path: str | os.PathLike | None = None, variable: str | None = None) -> pint.Quantity:
    """Parse a unit string into a pint Quantity ``factor × unit``.

    The result is a Quantity rather than a bare ``pint.Unit`` because unit strings may carry
    a pure scale factor ("1e-9", "1e-6 mol m-2 s-1"), which a ``pint.Unit`` cannot hold; its
    magnitude is that factor (1 for ordinary strings) and ``.units`` is the unit.
    ``path``/``variable`` only label the error: a string pint cannot read (or an empty one)
    raises :class:`InputError` listing accepted examples.
    """
    import pint

    if not isinstance(text, str) or not text.strip():
        raise _unknown(str(text), path, variable)
    expression = _to_pint_syntax(text, path, variable)
    try:
        return unit_registry().parse_expression(expression)
    except (pint.PintError, AttributeError, SyntaxError, TypeError, ValueError) as exc:
        raise _unknown(text, path, variable) from exc


def conversion_factor(
    from_units: str, to_units: str, *, path: str | os.PathLike | None = None, variable: str | None = None
) -> float:
    """Factor f such that value[to_units] = f · value[from_units].

    Raises :class:`InputError` when either string is unknown or the dimensions differ
    (the message says expected vs found), or when a unit has an offset (degC).
    """
    import pint

    source = parse_units(from_units, path=path, variable=variable)
    target = parse_units(to_units, path=path, variable=variable)
    if source.dimensionality != target.dimensionality:
        raise InputError(
            path,
            variable,
            f"expected units compatible with {to_units!r} ({target.dimensionality}), found {from_units!r} ({source.dimensionality})",
            f"Use units compatible with {to_units!r}",
        )
    try:
        return float((source / target).m_as("dimensionless"))
    except pint.PintError as exc:  # offset units (degC) have no single factor
        raise InputError(
            path, variable, f"cannot convert {from_units!r} to {to_units!r} by a factor", "Use multiplicative units (K, not degC)"
        ) from exc


_LEADING_NUMBER = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$", re.DOTALL)


def parse_quantity(
    text: str, expected_units: str, *, path: str | os.PathLike | None = None, variable: str | None = None
) -> float:
    """Magnitude of a config value such as "1.5 ppm" or "300 km" in ``expected_units``.

    The string must be a number followed by a unit; a bare number is refused because its
    unit would be a guess.  Incompatible units raise :class:`InputError` (expected vs found).
    """
    match = _LEADING_NUMBER.fullmatch(text) if isinstance(text, str) else None
    if match is None or not match.group(2):
        raise InputError(
            path,
            variable,
            f"expected a number followed by units compatible with {expected_units!r}, found {text!r}",
            f'Write e.g. "1.5 {expected_units}"',
        )
    value = float(match.group(1)) * conversion_factor(match.group(2), expected_units, path=path, variable=variable)
    if not math.isfinite(value):
        raise InputError(path, variable, f"value {text!r} is not finite", "Give a finite number")
    return value
