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

Masses of a named substance are units of their own dimension, so that they never convert
silently into one another: ``gC`` (grams of carbon; also ``kgC``, ``TgC``, ``tC``, ``MtC`` …),
``gCO2`` and ``gCH4`` (grams of CO₂ / CH₄; also ``kgCO2``, ``tCO2`` …).  Inventory spellings
such as "kg CO2 m-2 s-1", "g C m-2 month-1" and "g(C) m-2 d-1" are read as these units.
:func:`mole_flux_factor` turns any mass or amount flux into mol m⁻² s⁻¹ of the species.

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
MOLAR_MASS_DRY_AIR_KG_PER_MOL = 28.9647e-3  # converts FLEXPART's s m3 kg-1 footprints
SECONDS_PER_YEAR = 365.25 * 86400  # Julian year, s

_ACCEPTED_EXAMPLES = (
    'accepted examples: "mol m-2 s-1", "umol m-2 s-1", "kg m-2 s-1", "m2 s mol-1", '
    '"s m3 kg-1", "(mol/mol)/(mol/m2/s)", "ppm (umol-1 m2 s)", "ppm", "ppb", "mol mol-1", '
    '"1e-9", "1"'
)

# A mass unit followed by the substance it is a mass of: "kg CO2", "g C", "g(C)", "kgCO2".
_MASS_SYMBOL = r"(?:[kMGTPmu]?g|[kMG]?t)"
_SUBSTANCE_MASS = re.compile(
    rf"(?<![A-Za-z_])({_MASS_SYMBOL})\s*(?:\(\s*(CO2|CH4|C)\s*\)|(CO2|CH4|C))(?![A-Za-z0-9_])"
)

# One token per match, tried left to right.  A name glued to a signed integer is a
# UDUNITS power ("m-2"); a number is never read as a name, so "1e-9" stays a number.  A
# substance mass ("kgCO2") is one name although it ends in a digit.
_TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<power>(?:\*\*|\^)\s*[-+]?\d+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<mass>{_MASS_SYMBOL}(?:CO2|CH4|C))(?![A-Za-z0-9_])
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
    # Masses of carbon, CO2 and CH4 (pint prefixes apply: kgC, TgC, MtCO2, ...).
    for name, symbol in (("carbon", "C"), ("CO2", "CO2"), ("CH4", "CH4")):
        ureg.define(f"gram_{name} = [{name.lower()}_mass] = g{symbol}")
        ureg.define(f"tonne_{name} = 1e6 * gram_{name} = t{symbol}")
    return ureg


def _unknown(text: str, path, variable) -> InputError:
    return InputError(path, variable, f"unknown unit {text!r}", f"Write the units in UDUNITS/CF style; {_ACCEPTED_EXAMPLES}")


def _to_pint_syntax(text: str, path, variable) -> str:
    """Rewrite UDUNITS/CF spellings into a pint expression ("m2 s mol-1" -> "m**2*s*mol**-1")."""
    spelled = text.replace("\u00b5", "u").replace("\u03bc", "u")  # micro sign, Greek mu
    spelled = _SUBSTANCE_MASS.sub(lambda m: m.group(1) + (m.group(2) or m.group(3)), spelled)
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
        if match.group("name") == "per" and not match.group("exponent"):
            op = "/"  # UDUNITS spells division "per" (ICOS STILT: "ppm per (micromol m-2 s-1)")
        starts_operand = op is None or op == "("
        # UDUNITS writes products as juxtaposition ("kg m-2"): make the product explicit.
        if previous_is_operand and starts_operand:
            out.append("*")
        if match.group("mass"):
            out.append(match.group("mass"))
        elif match.group("name") and op is None:
            exponent = match.group("exponent")
            out.append(match.group("name") + (f"**{exponent}" if exponent else ""))
        else:
            out.append(op or match.group())
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


# Dimension of the mass in a flux unit → (what the mass is of, None if the unit does not say;
# the gram of that dimension).
_MASS_KINDS = {"[carbon_mass]": ("c", "gC"), "[co2_mass]": ("co2", "gCO2"), "[ch4_mass]": ("ch4", "gCH4"),
               "[mass]": (None, "g")}


def mole_flux_factor(
    units: str,
    species: str,
    *,
    mass_of: str | None = None,
    month_seconds=None,
    path: str | os.PathLike | None = None,
    variable: str | None = None,
):
    """Factor f with flux [mol m⁻² s⁻¹ of ``species``] = f · value[``units``].

    ``species`` is "co2" or "ch4".  ``units`` may be

    * an amount flux ("mol m-2 s-1", "umol m-2 s-1"): f is the plain conversion factor;
    * a carbon-mass flux ("gC m-2 d-1", "kgC m-2 s-1"): f = c / M_C, c the factor to
      g C m⁻² s⁻¹ and M_C = 12.011 g mol⁻¹ — a mole of carbon is a mole of the species, as
      CO₂ and CH₄ each hold one carbon atom;
    * a species-mass flux ("kg CO2 m-2 s-1"): f = c / M_species; the other species' mass is
      refused;
    * a plain mass flux ("kg m-2 s-1"): only with ``mass_of`` ("co2", "ch4" or "c"), given
      by a reader whose product defines what the mass is of; without it the unit does not
      say, and the flux is refused.

    A per-month unit ("g C m-2 month-1") needs ``month_seconds``, the calendar length (s) of
    the month of each value (scalar or array; the result then has its shape): pint's month
    is the mean month (1/12 Julian year), and using it would be a guess.
    Raises :class:`InputError` naming the file and variable for anything else.
    """
    import numpy as np

    if species not in ("co2", "ch4"):
        raise ValueError(f"species must be 'co2' or 'ch4', got {species!r}")
    quantity = parse_units(units, path=path, variable=variable)
    dims = dict(quantity.dimensionality)
    per_area_time = {"[length]": -2, "[time]": -1}
    ureg = unit_registry()
    if dims == {"[substance]": 1, **per_area_time}:
        factor = float((quantity / ureg.parse_expression("mol/m**2/s")).m_as("dimensionless"))
    else:
        kinds = [k for k in _MASS_KINDS if dims == {k: 1, **per_area_time}]
        if not kinds:
            raise InputError(path, variable, f"{units!r} is not a flux per area and time",
                             'Use e.g. "mol m-2 s-1", "umol m-2 s-1", "gC m-2 d-1" or "kg CO2 m-2 s-1"')
        substance, gram = _MASS_KINDS[kinds[0]]
        if substance is None:
            if mass_of is None:
                raise InputError(path, variable, f"{units!r} is a mass flux but does not say a mass of what",
                                 f'Write the substance in the units, e.g. "kg CO2 m-2 s-1" or "kgC m-2 s-1" '
                                 f"(for {species.upper()})")
            substance = mass_of
        if substance not in ("c", species):
            raise InputError(path, variable, f"{units!r} is a mass of {substance.upper()}, but the run's species is "
                             f"{species.upper()}", "Use an inventory of the run's species (run.species)")
        grams = float((quantity / ureg.parse_expression(f"{gram}/m**2/s")).m_as("dimensionless"))
        factor = grams / (MOLAR_MASS_KG_PER_MOL[substance] * 1e3)
    if any(name == "month" for name, _ in quantity.unit_items()):
        if month_seconds is None:
            raise InputError(path, variable, f"{units!r} is per month, and months differ in length",
                             "The inventory's time steps must be calendar months (each month's length is then "
                             "used)")
        mean_month = float(ureg.parse_expression("month").m_as("s"))
        return factor * mean_month / np.asarray(month_seconds, dtype=np.float64)
    return factor
