"""[prior] configuration: the general multi-sector form ([prior.sectors.NAME]), the shorthand
(prior.file + optimised/fixed) translated into sector tables, paths and patterns, per-sector σ
and the errors.  Only config.toml is written (load_config opens no input file)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from inversion.config import (
    CONFIG_NAME,
    Config,
    ConfigError,
    CovarianceConfig,
    PriorConfig,
    SectorConfig,
    load_config,
)
from inversion.outputs import resolved_config_text

try:
    from tests.casegen import write_case
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import write_case

SHORTHAND = '''[prior]
file = "data/prior_flux.nc"
optimised = ["bio"]
fixed = ["fossil"]
'''

SECTORS = '''[prior.sectors.bio]
product = "vprm"
file = "inventories/VPRM_*.nc"
variable = "NEE"
sigma = 0.8
time_mapping = "linear"

[prior.sectors.ocean]
product = "carbontracker"
file = "$CT_DIR/CT2022.flux1x1.202407.nc"
variable = "ocn_flux_opt"
time_stamp = "middle"
time_step = "month"
nan = "zero"
sigma = 1.5

[prior.sectors.fossil]
product = "odiac"
file = "/data/odiac2022_1x1d_2024.nc"
variable = ["land", "intl_bunker"]
optimise = false
'''


def case_with_prior(tmp_path: Path, prior: str) -> Path:
    case = write_case(tmp_path / "case")
    path = case / CONFIG_NAME
    text = path.read_text()
    assert text.count(SHORTHAND) == 1
    path.write_text(text.replace(SHORTHAND, prior))
    return path


def test_general_form_with_per_sector_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CT_DIR", str(tmp_path / "ct"))
    config = load_config(case_with_prior(tmp_path, SECTORS))
    prior = config.prior
    assert prior.file is None
    assert prior.optimised == ["bio", "ocean"] and prior.fixed == ["fossil"]
    bio, ocean, fossil = (prior.sectors[n] for n in ("bio", "ocean", "fossil"))
    case = (tmp_path / "case").resolve()
    assert bio.file == case / "inventories" / "VPRM_*.nc" and bio.time_mapping == "linear" and bio.nan == "error"
    assert ocean.file == tmp_path / "ct" / "CT2022.flux1x1.202407.nc" and ocean.nan == "zero"
    assert ocean.time_stamp == "middle" and ocean.time_step == "month"
    assert fossil.variable == ["land", "intl_bunker"] and fossil.file == Path("/data/odiac2022_1x1d_2024.nc")
    assert fossil.regrid and fossil.time_mapping == "step" and fossil.sigma is None
    assert prior.sector_configs == prior.sectors
    cov = config.covariance
    assert prior.sigma_of("bio", cov) == 0.8 and prior.sigma_of("ocean", cov) == 1.5
    assert prior.sigma_of("fossil", cov) == cov.sigma  # no own σ: the global one


def test_covariance_sector_sigma_overrides_the_sectors_sigma():
    prior = PriorConfig(sectors={"bio": SectorConfig(file=Path("a.nc"), sigma=0.8),
                                 "ocean": SectorConfig(file=Path("b.nc"))})
    cov = CovarianceConfig(sigma=0.4, sector_sigma={"bio": 0.3})
    assert prior.sigma_of("bio", cov) == 0.3 and prior.sigma_of("ocean", cov) == 0.4


def test_shorthand_is_a_cf_sector_per_variable_on_the_inversion_grid(tmp_path):
    config = load_config(write_case(tmp_path / "case"))
    sectors = config.prior.sector_configs
    assert list(sectors) == ["bio", "fossil"]
    for name, sector in sectors.items():
        assert sector.product == "cf" and sector.file == config.prior.file and sector.variable == name
        assert sector.regrid is False and sector.time_mapping == "step" and sector.nan == "error"
    assert sectors["bio"].optimise and not sectors["fossil"].optimise
    assert "prior.file" in config.input_paths()


def test_input_paths_list_every_file_of_a_pattern(tmp_path):
    path = case_with_prior(tmp_path, SECTORS.replace("$CT_DIR/", "ct/"))
    case = path.parent
    (case / "inventories").mkdir()
    for month in ("06", "07"):
        (case / "inventories" / f"VPRM_2024{month}.nc").touch()
    paths = load_config(path).input_paths()
    assert paths["prior.sectors.bio.file[0]"] == case.resolve() / "inventories" / "VPRM_202406.nc"
    assert paths["prior.sectors.bio.file[1]"] == case.resolve() / "inventories" / "VPRM_202407.nc"
    assert paths["prior.sectors.ocean.file"] == case.resolve() / "ct" / "CT2022.flux1x1.202407.nc"
    assert "prior.file" not in paths


def test_the_resolved_general_form_validates_to_the_same_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("CT_DIR", "/ct")
    config = load_config(case_with_prior(tmp_path, SECTORS))
    resolved = tomllib.loads(resolved_config_text(config, {}))  # as written to config.resolved.toml
    assert resolved["prior"]["optimised"] == ["bio", "ocean"]
    again = Config.model_validate({k: v for k, v in resolved.items() if k != "provenance"})
    assert again.model_dump() == config.model_copy(update={"source": None}).model_dump()


@pytest.mark.parametrize(("prior", "words"), [
    (SHORTHAND + '\n[prior.sectors.x]\nfile = "x.nc"\n', ("either prior.file", "not both")),
    ('[prior]\nfixed = ["fossil"]\n', ("prior needs [prior.sectors.NAME]",)),
    ('[prior.sectors.fossil]\nfile = "x.nc"\noptimise = false\n', ("at least one", "optimise = true")),
    ('[prior]\noptimised = ["x"]\n[prior.sectors.bio]\nfile = "x.nc"\n', ("prior.optimised is set by each sector",)),
    ('[prior.sectors.bio]\nfile = "x.nc"\nsigm = 0.8\n', ("prior.sectors.bio.sigm", "did you mean 'sigma'",
                                                        "Allowed keys here: file, nan, optimise, product")),
    ('[prior.sectors.bio]\nfile = "x.nc"\nsigma = 0\n', ("prior.sectors.bio.sigma", "> 0")),
    ('[prior.sectors.bio]\nfile = "x.nc"\nproduct = "edgr"\n', ("prior.sectors.bio.product", "'edgar'")),
    ('[prior.sectors.bio]\nfile = "x.nc"\ntime_mapping = "nearest"\n', ("time_mapping", "'step', 'linear'")),
    ('[prior.sectors.bio]\nfile = "x.nc"\nnan = "ignore"\n', ("prior.sectors.bio.nan", "'error'", "'zero'")),
    ('[prior.sectors.bio]\nfile = "x.nc"\ntime_step = "monthly"\n', ("prior.sectors.*.time_step",)),
    ('[prior.sectors.bio]\nfile = "x.nc"\nunits = "gC m-2 dayz-1"\n', ("unknown unit 'gC m-2 dayz-1'",)),
    ('[prior.sectors.bio]\nfile = "x.nc"\nvariable = []\n', ("variable must be a name or a non-empty list",)),
])
def test_bad_prior_configuration_is_refused(tmp_path, prior, words):
    path = case_with_prior(tmp_path, prior)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path.resolve()) in message
    for word in words:
        assert word in message, message


def test_shorthand_without_optimised_names_the_key(tmp_path):
    path = case_with_prior(tmp_path, '[prior]\nfile = "data/prior_flux.nc"\nfixed = ["fossil"]\n')
    with pytest.raises(ConfigError, match="prior.optimised is required"):
        load_config(path)
