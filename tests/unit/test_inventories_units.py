"""Carbon-mass units and the conversion of inventory fluxes to mol m-2 s-1 of the species
(transport.units.mole_flux_factor), against hand-computed factors."""

from __future__ import annotations

import numpy as np
import pytest

from transport.errors import InputError
from transport.units import conversion_factor, mole_flux_factor, parse_units

M_C = 12.011  # g mol-1
M_CO2 = 44.0095
M_CH4 = 16.0425


@pytest.mark.parametrize("text", ["gC m-2 d-1", "g C m-2 d-1", "g(C) m-2 day-1", "gC/m2/d", "g C / m^2 / day"])
def test_inventory_spellings_of_grams_of_carbon_per_day(text):
    assert mole_flux_factor(text, "co2") == pytest.approx(1 / (M_C * 86400), rel=1e-12)


@pytest.mark.parametrize(("text", "grams"), [("kgC m-2 s-1", 1e3), ("TgC m-2 s-1", 1e12), ("tC m-2 s-1", 1e6),
                                             ("MtC m-2 s-1", 1e12), ("mgC m-2 s-1", 1e-3)])
def test_prefixed_carbon_masses(text, grams):
    assert mole_flux_factor(text, "ch4") == pytest.approx(grams / M_C, rel=1e-12)


def test_carbon_masses_convert_among_themselves_but_not_into_plain_grams():
    assert conversion_factor("TgC", "gC") == pytest.approx(1e12, rel=1e-12)
    assert conversion_factor("MtCO2", "kgCO2") == pytest.approx(1e9, rel=1e-12)
    with pytest.raises(InputError, match="expected units compatible"):
        conversion_factor("gC", "g")
    with pytest.raises(InputError, match="expected units compatible"):
        conversion_factor("kgCO2", "kgCH4")


@pytest.mark.parametrize(("text", "species", "factor"), [
    ("kg CO2 m-2 s-1", "co2", 1e3 / M_CO2),
    ("kgCO2/m2/s", "co2", 1e3 / M_CO2),
    ("kg CH4 m-2 s-1", "ch4", 1e3 / M_CH4),
    ("mol m-2 s-1", "co2", 1.0),
    ("mol/m2/s", "ch4", 1.0),
    ("\u00b5mol m-2 s-1", "co2", 1e-6),
    ("umol m-2 s-1", "co2", 1e-6),
])
def test_species_masses_and_amounts(text, species, factor):
    assert mole_flux_factor(text, species) == pytest.approx(factor, rel=1e-12)


def test_a_plain_mass_needs_the_product_to_say_what_it_is_a_mass_of():
    assert mole_flux_factor("kg m-2 s-1", "co2", mass_of="co2") == pytest.approx(1e3 / M_CO2, rel=1e-12)
    assert mole_flux_factor("g m-2 d-1", "co2", mass_of="c") == pytest.approx(1 / (M_C * 86400), rel=1e-12)
    with pytest.raises(InputError) as info:
        mole_flux_factor("kg m-2 s-1", "co2", path="flux.nc", variable="flux")
    assert "flux.nc" in str(info.value) and "does not say a mass of what" in str(info.value)
    assert "kg CO2 m-2 s-1" in info.value.hint


def test_the_mass_of_the_other_species_is_refused():
    with pytest.raises(InputError, match="mass of CH4, but the run's species is CO2"):
        mole_flux_factor("kg CH4 m-2 s-1", "co2", path="f.nc", variable="v")
    with pytest.raises(InputError, match="mass of CO2, but the run's species is CH4"):
        mole_flux_factor("kg m-2 s-1", "ch4", mass_of="co2")


def test_per_month_units_use_the_calendar_length_of_each_month():
    days = np.array([31, 28, 29, 30])
    factor = mole_flux_factor("g C m-2 month-1", "co2", month_seconds=days * 86400.0)
    np.testing.assert_allclose(factor, 1 / (M_C * days * 86400.0), rtol=1e-12)
    with pytest.raises(InputError, match="per month, and months differ in length"):
        mole_flux_factor("gC m-2 month-1", "co2", path="gfed.hdf5", variable="C")


@pytest.mark.parametrize("text", ["kg m-2", "mol s-1", "m s-1", "gC m-2"])
def test_non_fluxes_are_refused(text):
    with pytest.raises(InputError, match="not a flux per area and time"):
        mole_flux_factor(text, "co2", mass_of="co2")


@pytest.mark.parametrize("text", ["gCm-2 d-1", "kg COO m-2 s-1", "bananas", ""])
def test_unparseable_inventory_units_are_unknown(text):
    with pytest.raises(InputError, match="unknown unit"):
        parse_units(text, path="x.nc", variable="v")

