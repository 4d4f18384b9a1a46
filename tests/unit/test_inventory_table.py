"""The inventory table (inversion.report.inventory): schema, units, ranges, matching to report
periods, and every kind of bad input (refused with file, line and fix, or warned with the row)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from inversion.report.inventory import compare_periods, match_regions, parse_period, read_inventory
from inversion.report.totals import mole_rate_factor, report_periods
from transport.errors import InputError
from transport.grid import TimeAxis

NAMES = ("Anhui", "Beijing", "United Kingdom")
CODES = ("CN.AH", "CN.BJ", "GB")
HEADER = "region,period,category,value,unit,sd,lower,upper,interval,source\n"


@pytest.fixture
def warnings_log(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("tanhui"), "propagate", True)  # the CLI's setup_logging may have cut it
    with caplog.at_level(logging.WARNING, logger="tanhui"):
        yield caplog


def table(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "inventory.csv"
    path.write_text("# a comment line\n" + header + body)
    return path


def state_periods(start: str, end: str, days: int) -> TimeAxis:
    starts = np.arange(np.datetime64(start, "s"), np.datetime64(end, "s"), np.timedelta64(days, "D"))
    return TimeAxis(start=starts, end=np.minimum(starts + np.timedelta64(days, "D"), np.datetime64(end, "s")))


def test_values_units_and_ranges_are_converted(tmp_path):
    path = table(tmp_path, "CN.AH,2023,net,-120,Mt CO2 yr-1,30,,,,a\n"
                           "beijing,2023,net,-10,Tg C yr-1,,-14,-6,90,b\n"
                           "ALL,2023,net,-200,Mt CO2 yr-1,,,,,c\n")
    inv = read_inventory(path, "co2")
    assert inv.category == "net" and len(inv.rows) == 3
    mt = mole_rate_factor("Mt CO2 yr-1", "co2")
    tgc = mole_rate_factor("Tg C yr-1", "co2")
    a, b, c = inv.rows
    assert (a.line, a.value, a.sd) == (3, pytest.approx(-120 * mt), pytest.approx(30 * mt))
    assert b.value == pytest.approx(-10 * tgc)
    assert b.sd == pytest.approx(8 / (2 * stats.norm.ppf(0.95)) * tgc)  # 5–95 % range → σ
    assert np.isnan(c.sd)  # no uncertainty given: stated, not invented
    assert str(a.start) == "2023-01-01T00:00:00" and str(a.end) == "2024-01-01T00:00:00"
    index = match_regions(inv, NAMES, CODES)
    assert index == {"CN.AH": 0, "beijing": 1, "ALL": 3}


def test_iso_alpha3_matches_an_alpha2_region_code(tmp_path):
    pytest.importorskip("iso3166")
    inv = read_inventory(table(tmp_path, "GBR,2023,net,1,Mt CO2 yr-1,,,,,\n"), "co2")
    assert match_regions(inv, NAMES, CODES) == {"GBR": 2}


def test_periods():
    assert [str(t)[:10] for t in parse_period("2024-07")] == ["2024-07-01", "2024-08-01"]
    assert [str(t)[:10] for t in parse_period("2024-07-01/2024-07-08")] == ["2024-07-01", "2024-07-08"]
    for bad in ("July 2024", "2024-13", "2024-07-08/2024-07-01"):
        with pytest.raises(ValueError):
            parse_period(bad)


def test_matching_report_periods_and_missing_periods_are_warned(tmp_path, warnings_log):
    path = table(tmp_path, "CN.AH,2021,net,1,Mt CO2 yr-1,1,,,,\n"
                           "CN.AH,2023,net,3,Mt CO2 yr-1,1,,,,\n"
                           "CN.BJ,2019,net,3,Mt CO2 yr-1,1,,,,\n")
    inv = read_inventory(path, "co2")
    periods = report_periods(["annual"], state_periods("2021-01-01", "2024-01-01", 73))
    assert list(periods.label) == ["2021", "2022", "2023"]
    cmp = compare_periods(inv, match_regions(inv, NAMES, CODES), 4, periods.nominal_start, periods.nominal_end,
                          periods.kind, periods.label)
    assert cmp.present[0].tolist() == [True, False, True]
    assert cmp.lines[0].tolist() == [3, 0, 4]
    assert not cmp.present[1:].any()
    assert np.isnan(cmp.value[0, 1])
    assert "CN.AH has no annual inventory value for 2022" in warnings_log.text
    assert "1 of 3 rows match no report period" in warnings_log.text and "line 5" in warnings_log.text


def test_sign_contradicting_the_category_is_warned_with_the_row(tmp_path, warnings_log):
    path = table(tmp_path, "CN.AH,2023,LULUCF removals,24,Mt CO2 yr-1,,,,,\n")
    read_inventory(path, "co2")
    assert "line 3 (CN.AH,2023,LULUCF removals,24,Mt CO2 yr-1" in warnings_log.text
    assert "removals are negative" in warnings_log.text
    warnings_log.clear()
    read_inventory(table(tmp_path, "CN.AH,2023,energy emissions,-5,Mt CO2 yr-1,,,,,\n"), "co2")
    assert "is an emission but the value is negative" in warnings_log.text
    warnings_log.clear()
    read_inventory(table(tmp_path, "CN.AH,2023,net emissions,-5,Mt CO2 yr-1,,,,,\n"), "co2")
    assert warnings_log.text == ""  # a net flux may have either sign


def refused(path, *match, species="co2", category=None, names=NAMES, codes=CODES):
    with pytest.raises(InputError) as info:
        inv = read_inventory(path, species, category)
        match_regions(inv, names, codes)
    text = str(info.value)
    assert str(path) in text
    for m in match:
        assert m in text, text
    return text


def test_unknown_region_lists_close_matches(tmp_path):
    refused(table(tmp_path, "CN.AH,2023,net,1,Mt CO2 yr-1,,,,,\nBejing,2023,net,1,Mt CO2 yr-1,,,,,\n"),
            "region (line 4)", "unknown region 'Bejing'", "close matches: Beijing")


def test_unknown_or_wrong_units_are_refused(tmp_path):
    refused(table(tmp_path, "CN.AH,2023,net,1,Mt CO2e yr-1,,,,,\n"), "unit (line 3)", "unknown unit")
    refused(table(tmp_path, "CN.AH,2023,net,1,kg yr-1,,,,,\n"), "unit (line 3)", "of what")
    refused(table(tmp_path, "CN.AH,2023,net,1,Gg CH4 yr-1,,,,,\n"), "mass of CH4", "run's species is CO2")


def test_overlapping_periods_are_refused_naming_both_lines(tmp_path):
    refused(table(tmp_path, "CN.AH,2023,net,1,Mt CO2 yr-1,,,,,\nCN.BJ,2023,net,1,Mt CO2 yr-1,,,,,\n"
                            "CN.AH,2023-07,net,1,Mt CO2 yr-1,,,,,\n"), "lines 3 and 5", "overlap")


def test_bad_tables_are_refused(tmp_path):
    refused(table(tmp_path, "CN.AH,2023,net,1\n", header="region,period,category,value\n"), "unit",
            "required column")
    refused(table(tmp_path, "CN.AH,2023,net,1,Mt CO2 yr-1,2\n", header="region,period,category,value,unit,sigma\n"),
            "sigma", "did you mean 'sd'")
    refused(table(tmp_path, "CN.AH,23,net,1,Mt CO2 yr-1,,,,,\n"), "period (line 3)")
    refused(table(tmp_path, "CN.AH,2023,net,abc,Mt CO2 yr-1,,,,,\n"), "value (line 3)", "not a finite number")
    refused(table(tmp_path, "CN.AH,2023,net,10,Mt CO2 yr-1,,12,20,95,\n"), "does not contain the value")
    refused(table(tmp_path, "CN.AH,2023,net,10,Mt CO2 yr-1,,8,12,,\n"), "needs lower, upper and interval")
    refused(table(tmp_path, "CN.AH,2023,net,1,Mt CO2 yr-1,,,,,\nCN.AH,2023,LULUCF,1,Mt CO2 yr-1,,,,,\n"),
            "several categories", "inventory_category")
    refused(table(tmp_path, "CN.AH,2023,net,1,Mt CO2 yr-1,,,,,\n"), "no row of category 'nett'",
            "did you mean 'net'", category="nett")
    # with the category chosen, the other one is only counted
    inv = read_inventory(table(tmp_path, "CN.AH,2023,net,1,Mt CO2 yr-1,,,,,\nCN.AH,2023,LULUCF,1,Mt CO2 yr-1,,,,,\n"),
                         "co2", "LULUCF")
    assert len(inv.rows) == 1 and inv.other_categories == {"net": 1}


def test_a_table_matching_no_report_period_is_refused(tmp_path):
    inv = read_inventory(table(tmp_path, "CN.AH,2019,net,1,Mt CO2 yr-1,,,,,\n"), "co2")
    periods = report_periods(["annual", "run"], state_periods("2023-01-01", "2023-12-31", 28))
    with pytest.raises(InputError, match="no row matches a report period.*2019.*2023"):
        compare_periods(inv, match_regions(inv, NAMES, CODES), 4, periods.nominal_start, periods.nominal_end,
                        periods.kind, periods.label)
