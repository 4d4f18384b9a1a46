import math
import subprocess
import sys
from pathlib import Path

import pytest

from transport.errors import InputError
from transport.units import (
    FLUX_UNITS,
    FOOTPRINT_UNITS,
    MOLAR_MASS_KG_PER_MOL,
    MOLE_FRACTION_UNITS,
    SECONDS_PER_YEAR,
    conversion_factor,
    parse_quantity,
    parse_units,
)


@pytest.mark.parametrize(
    ("source", "target", "factor"),
    [
        ("ppm", MOLE_FRACTION_UNITS, 1e-6),
        ("ppb", MOLE_FRACTION_UNITS, 1e-9),
        ("ppt", MOLE_FRACTION_UNITS, 1e-12),  # pint alone reads "ppt" as pico-pint
        ("1e-9", MOLE_FRACTION_UNITS, 1e-9),
        ("1e-6", "ppm", 1.0),
        ("1", MOLE_FRACTION_UNITS, 1.0),
        ("mol/mol", "ppb", 1e9),
        ("(mol/mol)/(mol/m2/s)", FOOTPRINT_UNITS, 1.0),
        ("umol m-2 s-1", FLUX_UNITS, 1e-6),
        ("µmol m-2 s-1", FLUX_UNITS, 1e-6),
        ("\u03bcmol m-2 s-1", FLUX_UNITS, 1e-6),
        ("mol m^-2 s**-1", FLUX_UNITS, 1.0),
        ("kg m-2 s-1", "g m-2 s-1", 1e3),
        ("s m3 kg-1", "s m3 g-1", 1e-3),
        ("kg a-1", "kg s-1", 1 / SECONDS_PER_YEAR),  # PARIS files: "a" is the Julian year
        ("10^-9 mol m-2 s-1", FLUX_UNITS, 1e-9),
    ],
)
def test_conversion_table(source, target, factor):
    assert conversion_factor(source, target) == pytest.approx(factor, rel=1e-12)


def test_stilt_footprint_units_are_exactly_the_canonical_units():
    assert conversion_factor("ppm (umol-1 m2 s)", FOOTPRINT_UNITS) == 1.0


def test_parse_units_keeps_a_pure_scale_factor_as_the_magnitude():
    quantity = parse_units("1e-9")
    assert quantity.magnitude == 1e-9
    assert quantity.dimensionless
    assert parse_units("mol m-2 s-1").magnitude == 1


def test_incompatible_dimensions_say_expected_and_found():
    with pytest.raises(InputError) as info:
        conversion_factor("kg m-2 s-1", FLUX_UNITS, path="prior.nc", variable="flux")
    message = str(info.value)
    assert "prior.nc" in message and "flux" in message
    assert "expected units compatible with 'mol m-2 s-1'" in message and "found 'kg m-2 s-1'" in message


@pytest.mark.parametrize("text", ["bananas", "gCm-2 d-1", "m.s-1", "(mol m-2", "mol)", "", "   ", "^2", "m2 $"])
def test_unknown_units_name_file_variable_and_examples(text):
    with pytest.raises(InputError) as info:
        parse_units(text, path="/data/foot.nc", variable="foot")
    error = info.value
    assert error.path == "/data/foot.nc" and error.variable == "foot"
    assert f"unknown unit {text!r}" in str(error)
    assert "mol m-2 s-1" in error.hint


def test_offset_units_have_no_factor():
    with pytest.raises(InputError, match="by a factor"):
        conversion_factor("degC", "K")


def test_parse_quantity_returns_the_magnitude_in_the_expected_units():
    assert parse_quantity("1.5 ppm", MOLE_FRACTION_UNITS) == pytest.approx(1.5e-6, rel=1e-12)
    assert parse_quantity("300 km", "m") == pytest.approx(3e5, rel=1e-12)
    assert parse_quantity("-2.5e3 umol m-2 s-1", FLUX_UNITS) == pytest.approx(-2.5e-3, rel=1e-12)


@pytest.mark.parametrize("text", ["1.5", "ppm", "", "1.5 bananas"])
def test_parse_quantity_refuses_values_without_known_units(text):
    with pytest.raises(InputError) as info:
        parse_quantity(text, "ppm", path="case.toml", variable="observations.sigma")
    assert "case.toml" in str(info.value) and "observations.sigma" in str(info.value)


def test_parse_quantity_refuses_incompatible_units():
    with pytest.raises(InputError, match="expected units compatible with 'm'"):
        parse_quantity("3 s", "m")


def test_unit_facts_from_the_format_notes():
    # 1 µmol CO2 m-2 s-1 over 1 km² for one Julian year is 1388.8 t CO2
    tonnes = 1e-6 * 1e6 * SECONDS_PER_YEAR * MOLAR_MASS_KG_PER_MOL["co2"] / 1000.0
    assert tonnes == pytest.approx(1388.8, abs=0.05)
    # Tg C = Tg CO2 × 12.011 / 44.0095
    assert MOLAR_MASS_KG_PER_MOL["c"] / MOLAR_MASS_KG_PER_MOL["co2"] == pytest.approx(12.011 / 44.0095)
    assert math.isclose(conversion_factor("a", "s"), SECONDS_PER_YEAR)


def test_importing_units_does_not_import_pint():
    code = "import sys, transport.units; assert 'pint' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
