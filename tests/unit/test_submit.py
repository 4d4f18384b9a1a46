"""``tanhui submit --dry-run``: the sbatch chain built from the profile, and profile errors."""

from __future__ import annotations

import shlex
from pathlib import Path

from inversion.cli import main as cli_main
from inversion.commands import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_prints_the_dependent_chain_from_the_profile(tmp_path, capsys):
    case = tmp_path / "case"
    case.mkdir()
    (case / "config.toml").write_text('[run]\nname = "x"\nstart = 2024-07-01T00:00:00Z\nend = 2024-07-02T00:00:00Z\n'
                                      '[transport]\nfootprints = "fp.h5"\n[observations]\nfile = "obs.nc"\n'
                                      '[prior]\nfile = "prior.nc"\noptimised = ["bio"]\n[state]\nregions = "r.nc"\n')
    profile = tmp_path / "profile.toml"
    profile.write_text('[site]\npartition = "compute"\naccount = "proj123"\nmpi = "pmi2"\n'
                       '[ingest]\nparts = 3\ntime_step = "3h"\nargs = ["--truncate"]\n[solve]\nntasks = 8\n'
                       'signal_seconds = 300\ntime = "02:00:00"\n')
    assert cli_main(["submit", str(case), "--profile", str(profile), "--ingest", "manifest.txt",
                     "--slurm-dir", str(REPO / "slurm"), "--dry-run"]) == 0
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(next(a for a in line if a.endswith(".sbatch"))).name for line in lines] == \
        ["ingest.sbatch", "merge.sbatch", "solve.sbatch", "report.sbatch"]
    ingest, merge, solve, report = lines
    assert "--dependency" not in " ".join(ingest)
    for line, previous in ((merge, "ingest"), (solve, "merge"), (report, "solve")):
        assert f"--dependency=afterok:<{previous}>" in line
    for line in lines:
        assert "--partition=compute" in line and "--account=proj123" in line
    store = str(case / "fp.h5")
    assert ingest[-11:] == ["manifest.txt", "--out", store, "--grid", str(case / "config.toml"),
                            "--time", f"{case / 'config.toml'},3h", "--parts", "3", "--no-merge", "--truncate"]
    assert "--array=0-2" in ingest and merge[-2:] == ["--out", store]
    assert {"--ntasks=8", "--time=02:00:00", "--signal=B:USR1@300", "--requeue"} <= set(solve)
    assert solve[-2:] == [str(case / "config.toml"), "--no-report"]


def test_an_unknown_profile_key_is_refused_by_name(tmp_path, capsys):
    profile = tmp_path / "profile.toml"
    profile.write_text('[solve]\nntask = 8\n')
    assert cli_main(["submit", str(tmp_path), "--profile", str(profile), "--dry-run"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "solve.ntask" in err and "unknown profile key" in err and "ntasks" in err


def test_requeue_false_submits_the_solve_with_no_requeue(tmp_path):
    from inversion.commands.submit import load_profile, plan

    profile = tmp_path / "profile.toml"
    profile.write_text("[solve]\nrequeue = false\n")
    (tmp_path / "config.toml").write_text('[run]\nname = "x"\nstart = 2024-07-01T00:00:00Z\nend = 2024-07-02T00:00:00Z\n'
                                          '[transport]\nfootprints = "fp.h5"\n[observations]\nfile = "obs.nc"\n'
                                          '[prior]\nfile = "prior.nc"\noptimised = ["bio"]\n[state]\nregions = "r.nc"\n')
    steps = dict(plan(str(tmp_path), load_profile(profile), ingest=None, slurm_dir=REPO / "slurm",
                      report_available=True))
    assert "--no-requeue" in steps["solve"] and "--requeue" not in steps["solve"]
    default = dict(plan(str(tmp_path), load_profile(None), ingest=None, slurm_dir=REPO / "slurm",
                        report_available=True))
    assert "--requeue" in default["solve"]
