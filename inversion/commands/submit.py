"""``tanhui submit``: submit a case to Slurm as a chain of jobs and print their ids.

    [ingest array (one part per task) → merge] → solve (MPI) → report

each job starting only when the previous one succeeded (``--dependency=afterok``; with
``kill_invalid_depend`` a failed job cancels the rest).  The job scripts are the ones in
``slurm/`` (resources, thread limits and one CLI command each); site specifics come from a
TOML profile (``slurm/profile.example.toml``), passed as sbatch options and environment:
``TANHUI_SETUP`` (a file of setup lines the scripts source), ``TANHUI_PYTHON`` and
``TANHUI_SRUN_MPI`` (the srun MPI plugin).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from . import EXIT_FAILED, EXIT_OK

NAME = "submit"
HELP = "submit a case to Slurm: footprint ingestion array → merge → MPI solve → report"

DEFAULTS = {
    "site": {"partition": "", "account": "", "qos": "", "sbatch_options": [], "setup": [], "python": "", "mpi": ""},
    "ingest": {"parts": 4, "time_step": "1h", "args": [], "time": "", "cpus_per_task": 1, "mem": ""},
    "merge": {"time": "", "mem": ""},
    "solve": {"ntasks": 2, "ntasks_per_node": 0, "cpus_per_task": 1, "time": "", "mem": "", "signal_seconds": 600,
              "requeue": True, "args": []},
    "report": {"time": "", "mem": ""},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Submit the Slurm job chain of a case and print the job ids: with --ingest, a job array "
                           "converting the footprint files into the store of transport.footprints (one part per task) "
                           "and a merge; then the MPI solve (`tanhui run`, checkpointed, resumes when resubmitted); "
                           "then `tanhui report` when that command exists. Each job waits for the previous one "
                           "(--dependency=afterok).")
    parser.add_argument("config", help="config TOML file or case directory holding config.toml")
    parser.add_argument("--profile", type=Path, help="site profile (TOML; see slurm/profile.example.toml)")
    parser.add_argument("--ingest", nargs="+", metavar="MANIFEST", help="footprint manifest(s) or globs to ingest first")
    parser.add_argument("--slurm-dir", type=Path, default=Path("slurm"), help="directory of the job scripts (default: slurm)")
    parser.add_argument("--log-dir", type=Path, default=Path("logs"),
                        help="directory of the job logs, created if needed (the scripts write logs/%%x-%%j.out)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch commands instead of submitting")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def load_profile(path: Path | None) -> dict:
    """The profile merged over :data:`DEFAULTS`; unknown sections or keys are an InputError."""
    from transport.errors import InputError

    profile = {section: dict(values) for section, values in DEFAULTS.items()}
    if path is None:
        return profile
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(path, None, f"cannot read the Slurm profile ({exc})",
                         "copy slurm/profile.example.toml and edit it") from exc
    for section, values in raw.items():
        if section not in DEFAULTS or not isinstance(values, dict):
            raise InputError(path, section, "unknown profile section", f"use one of {', '.join(DEFAULTS)}")
        unknown = sorted(set(values) - set(DEFAULTS[section]))
        if unknown:
            raise InputError(path, f"{section}.{unknown[0]}", "unknown profile key",
                             f"[{section}] takes {', '.join(DEFAULTS[section])}")
        profile[section].update(values)
    return profile


def _resources(section: dict) -> list[str]:
    opts = []
    for key, flag in (("time", "--time"), ("mem", "--mem"), ("cpus_per_task", "--cpus-per-task"),
                      ("ntasks", "--ntasks"), ("ntasks_per_node", "--ntasks-per-node")):
        if section.get(key):
            opts.append(f"{flag}={section[key]}")
    return opts


def plan(config_path: str, profile: dict, *, ingest: list[str] | None, slurm_dir: Path,
         report_available: bool) -> list[tuple[str, list[str]]]:
    """(step name, sbatch arguments without the dependency) for every job of the chain, in order."""
    from ..config import load_config

    config = load_config(config_path)
    site = profile["site"]
    common = [f"--{key}={site[key]}" for key in ("partition", "account", "qos") if site[key]]
    common += list(site["sbatch_options"])
    steps: list[tuple[str, list[str]]] = []
    if ingest:
        ing = profile["ingest"]
        store = str(config.transport.footprints)
        steps.append(("ingest", [*common, f"--array=0-{int(ing['parts']) - 1}", *_resources(ing),
                                 str(slurm_dir / "ingest.sbatch"), *ingest, "--out", store, "--grid",
                                 str(config.source), "--time", f"{config.source},{ing['time_step']}",
                                 "--parts", str(ing["parts"]), "--no-merge", *ing["args"]]))
        steps.append(("merge", [*common, *_resources(profile["merge"]), str(slurm_dir / "merge.sbatch"),
                                "--out", store]))
    solve = profile["solve"]
    # The report gets its own (serial) job, so the MPI allocation is released once the outputs are written.
    # --requeue lets `tanhui run` requeue its own job when a signal stops it (inversion.requeue)
    steps.append(("solve", [*common, *_resources(solve), f"--signal=B:USR1@{int(solve['signal_seconds'])}",
                            "--requeue" if solve["requeue"] else "--no-requeue",
                            str(slurm_dir / "solve.sbatch"), str(config.source), *solve["args"],
                            *(["--no-report"] if report_available else [])]))
    if report_available:
        steps.append(("report", [*common, *_resources(profile["report"]), str(slurm_dir / "report.sbatch"),
                                 str(config.source)]))
    return steps


def main(args, comm) -> int:
    from transport.errors import InputError

    from ..progress import log

    profile = load_profile(args.profile)
    for script in ["solve.sbatch", *(["ingest.sbatch", "merge.sbatch"] if args.ingest else [])]:
        if not (args.slurm_dir / script).is_file():
            raise InputError(args.slurm_dir / script, None, "job script not found",
                             "copy slurm/ from the tanhui repository, or pass --slurm-dir")
    report_available = importlib.util.find_spec("inversion.commands.report") is not None
    if not report_available:
        log.info("no `tanhui report` command in this version: the chain ends with the solve")
    steps = plan(args.config, profile, ingest=args.ingest, slurm_dir=args.slurm_dir,
                 report_available=report_available)

    site = profile["site"]
    env = dict(os.environ, TANHUI_PYTHON=site["python"] or sys.executable)
    if site["mpi"]:
        env["TANHUI_SRUN_MPI"] = site["mpi"]
    if not args.dry_run:
        args.log_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not create the log directory
    if site["setup"]:
        setup = args.log_dir / "tanhui-setup.sh"
        env["TANHUI_SETUP"] = str(setup.resolve())
        if not args.dry_run:
            setup.write_text("\n".join(site["setup"]) + "\n", encoding="utf-8")

    previous = None
    for name, sbatch_args in steps:
        dependency = [f"--dependency=afterok:{previous}"] if previous else []
        command = ["sbatch", "--parsable", *dependency, *sbatch_args]
        if args.dry_run:
            print(shlex.join(command))
            previous = f"<{name}>"
            continue
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            log.error("sbatch failed for the %s job (exit %d): %s%s", name, proc.returncode, proc.stderr.strip(),
                      f"; the jobs already submitted end with job {previous}" if previous else "")
            return EXIT_FAILED
        previous = proc.stdout.strip().split(";")[0]
        print(f"{name} {previous}", flush=True)
    return EXIT_OK
