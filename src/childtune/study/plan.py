"""A study's plan: the runs one multirun of a study launches, and where their records live.

    python -m childtune.plan experiment=main protocol=cpu     # one study: planned, done, missing
    python -m childtune.plan protocol=cpu                     # every study of a protocol
                                                              # (in protocol.study_order if set)
    python -m childtune.plan protocol=cpu save=true           # ... and save their plans
    python -m childtune.plan protocol=cpu launch=true         # ... save, run what is missing
    python -m childtune.plan experiment=main protocol=cpu missing=true  # ... list missing runs

A plan composes the experiment and protocol configs with Hydra's compose API, expands the sweeper
params the way Hydra's basic sweeper does (a command-line sweep such as `seed=1,2` replaces the
configs' own), adds the protocol's extra sweeps of the study (`extra_sweeps`: a grid extended on
one task, launched as multiruns of their own), and names each planned run's record path
(records.identity / record_path).

Plans are saved as manifests, `<results_dir>/plans/<study>-<protocol>-<digest>.json`: every
multirun writes its own (`ManifestCallback`, configured in src/childtune/conf/config.yaml); this command
saves the default one of each study with save=true or launch=true. The tables read manifests to know which records make up a
cell and how many are missing. Composing is slow, so a plan made from
the same configs (`conf_sha`) is reused, from a manifest or the plan cache
(.cache/childtune/plans), instead of composed again.

Composing and resolving jobs lives in jobs.py (the run side uses it too), what is done and how
long the rest takes in progress.py. This module never imports torch or the training code."""
from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import cli, progress
from .progress import status
from .. import records
from ..errors import UnsetValue, UserError, resolving
from ..jobs import (CONF_DIR, compose, encoder_path, expand, keyed, parse, resolved_all,
                   source_job)

PLANS = "plans"
PLAN_CACHE = ".cache/childtune/plans"  # composed plans by overrides and conf_sha
# Override keys that never change which runs a launch plans (where they go, how they run).
_NOT_PLAN_KEYS = ("results_dir", "runtime", "force", "logger", "hydra")
# Keys a study's table lays out as columns; every other swept key is a row or panel key.
TASK_KEYS = ("task", "transfer.source_task")


@dataclass
class Plan:
    study: str
    protocol: str | None
    launch: list[str]                 # the overrides the plan was made from
    runs: list[dict]                  # {"overrides", "identity", "path", "transfer", "seconds"}
    sources: list[dict] = field(default_factory=list)  # task transfer: runs the targets start from
    conf_sha: str = ""
    extra: list[list[str]] = field(default_factory=list)  # extra sweeps, each launched on its own

    @property
    def swept(self) -> list[str]:
        """Override keys whose value differs between planned runs, in sweep order."""
        keys: dict[str, set] = {}
        for run in self.runs:
            for key, value in run["overrides"].items():
                keys.setdefault(key, set()).add(json.dumps(value))
        return [k for k, values in keys.items() if len(values) > 1]

    @property
    def digest(self) -> str:
        paths = "\n".join(sorted(run["path"] for run in self.runs))
        return hashlib.sha256(paths.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        return f"{self.study}-{self.protocol or 'none'}-{self.digest}"

    @property
    def launches(self) -> list[list[str]]:
        """The multiruns that run this plan: the study's sweep, then each extra sweep (the
        study's overrides, those of the keys it sets replaced by its own)."""
        out = [self.launch]
        for extra in self.extra:
            keys = {_key(o) for o in extra}
            out.append([*(o for o in self.launch if _key(o) not in keys), *extra])
        return out

    @property
    def command(self) -> str:
        return " && ".join("python -m childtune.train -m " + " ".join(map(shlex.quote, launch))
                           for launch in self.launches)

    def to_json(self) -> dict:
        return {"schema": 1, "study": self.study, "protocol": self.protocol,
                "launch": self.launch, "command": self.command, "conf_sha": self.conf_sha,
                "runs": self.runs, "sources": self.sources,
                **({"extra_sweeps": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(data["study"], data["protocol"], data["launch"], data["runs"],
                   data.get("sources", []), data.get("conf_sha", ""),
                   data.get("extra_sweeps", []))


# ---------------------------------------------------------------- studies and plans

# The order `make reproduce` runs the studies in; other studies follow.
ORDER = ("lr_grid", "main", "lr_grid_variants", "main_tuned_lr", "ablation", "low_resource",
         "p_sweep", "domain_transfer", "task_transfer")


def studies() -> list[str]:
    names = [p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def protocol_studies(overrides: list[str]) -> list[str]:
    """The studies of the protocol these overrides name, in the protocol's order
    (`protocol.study_order`, e.g. cpu_full's lr grid, main, ablation, ..., low-resource); every
    study in ORDER's order when the protocol has no such list."""
    from omegaconf import OmegaConf

    chosen = [o for o in overrides if o.split("=", 1)[0].lstrip("+") == "protocol"]
    order = (OmegaConf.select(compose(chosen), "protocol.study_order", default=None)
             if chosen else None)
    return list(order) if order else studies()


def conf_sha() -> str:
    """A digest of every config file: plans made from the same configs are the same."""
    digest = hashlib.sha256()
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        digest.update(str(path.relative_to(CONF_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _plan_key(key: str) -> bool:
    return key.lstrip("+~").split(".")[0].split("/")[0] not in _NOT_PLAN_KEYS


def make_plan(overrides: list[str], identities: bool = True) -> Plan:
    """The plan of a multirun launched with these overrides (experiment=..., protocol=...)."""
    from omegaconf import OmegaConf

    overrides = [o for o in overrides if _plan_key(o.split("=", 1)[0])]
    fixed = [str(o.input_line) for o in parse(overrides) if not o.is_sweep_override()]
    root = compose(fixed, hydra_node=True)
    params = OmegaConf.select(root, "hydra.sweeper.params")  # None: a sweep of no study
    params = {} if params is None else resolving(
        lambda: OmegaConf.to_container(params, resolve=True))
    protocol = OmegaConf.select(root, "protocol.name", default=None)
    if unset := records.unset_study_keys({"study": root.study, "protocol": OmegaConf.to_container(
            root.protocol, resolve=False) if "protocol" in root else None}):
        raise UnsetValue(unset)
    extra = extra_sweeps(root, params, overrides)
    plan = Plan(root.study, protocol, overrides, [], conf_sha=conf_sha(), extra=extra)
    params = {k: str(v) for k, v in params.items()}
    jobs = [job for launch in plan.launches for job in expand(params, launch)]
    jobs = list({json.dumps(keyed(job), sort_keys=True): job for job in jobs}.values())
    if plan.extra:
        jobs = _in_sweep_order(jobs)
    if not identities:
        plan.runs = [{"overrides": keyed(job), "job": job} for job in jobs]
        return plan
    seen: set[str] = set()
    for job, config in zip(jobs, resolved_all(jobs)):
        ident = records.identity(config)
        if _relative(ident) in seen:  # an extra sweep that names a run the study has
            continue
        seen.add(_relative(ident))
        run = {"overrides": {k: v for k, v in keyed(job).items() if _plan_key(k)},
               "identity": ident, "path": _relative(ident), "seconds": progress.estimate(config)}
        transfer = {k: v for k, v in (config.get("transfer") or {}).items() if v}
        if transfer:
            run["transfer"] = transfer
        if transfer.get("source_task"):
            run["source_job"] = source_job(job, transfer["source_task"])
        plan.runs.append(run)
    plan.sources = _sources(plan.runs)
    return plan


def extra_sweeps(root, params: dict, overrides: list[str]) -> list[list[str]]:
    """`protocol.studies.<study>.extra_sweeps`: sweeps the study's plan adds to its own, each a
    string of overrides of keys the study sweeps, e.g. "task=rte trainer.lr=5.0e-4" (an lr grid
    extended on one task: the grid's best rate there was its largest). A command line that
    narrows a key the extra sweep sets (task=cola) leaves it out unless it allows the extra
    sweep's values (task=cola,rte keeps it), and one that sets all its keys has its runs."""
    from omegaconf import OmegaConf

    lines = OmegaConf.select(root, f"protocol.studies.{root.study}.extra_sweeps", default=None)
    given = {_key(o) for o in overrides}
    kept = []
    for line in lines or []:
        where = f"protocol.studies.{root.study}.extra_sweeps entry {line!r}"
        try:
            extra = shlex.split(str(line))
            keys = [o.get_key_element() for o in parse(extra)]
        except Exception as exc:  # shlex's ValueError, Hydra's override parse errors
            raise UserError(f"{where} is not a list of overrides "
                            f"({str(exc).splitlines()[0]})") from None
        unswept = [k for k in keys if k not in params]
        if not keys or unswept:
            raise UserError(f"{where} must set keys the study sweeps "
                            f"({', '.join(params) or 'none'}); it sets "
                            f"{', '.join(unswept) or 'nothing'}")
        narrowed = [k for k in keys if k in given]
        if len(narrowed) < len(keys) and all(_values(extra, k) <= _values(overrides, k)
                                             for k in narrowed):
            kept.append(extra)
    return kept


def _in_sweep_order(jobs: list[list[str]]) -> list[list[str]]:
    """Jobs in the order one sweep over the union of their values runs them (the first job's
    keys outermost first, the table's column keys innermost; numbers by value, other values as
    they first appear): an extra sweep's runs among the study's, so that in the table (rows in
    the order they first appear) its 5e-4 row follows the 2e-4 row."""
    parsed = [keyed(job) for job in jobs]
    firsts: dict[str, dict[str, int]] = {}
    for over in parsed:
        for key, value in over.items():
            seen = firsts.setdefault(key, {})
            seen.setdefault(json.dumps(value, sort_keys=True), len(seen))

    keys = sorted(parsed[0], key=lambda k: k in TASK_KEYS)

    def rank(over: dict) -> tuple:
        return tuple((0, over[k], 0) if isinstance(over.get(k), (int, float)) else
                     (1, 0, firsts[k].get(json.dumps(over.get(k), sort_keys=True), -1))
                     for k in keys)

    return [job for _, job in sorted(zip(map(rank, parsed), jobs), key=lambda pair: pair[0])]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _values(overrides: list[str], key: str) -> set[str]:
    """The values these overrides give `key`, a sweep expanded (5e-4 and 5.0e-4 are one)."""
    return {json.dumps(keyed(job)[key], sort_keys=True)
            for job in expand({}, [o for o in overrides if _key(o) == key])}


def _sources(runs: list[dict]) -> list[dict]:
    """The runs task-transfer runs start from (each named once), with their encoder paths."""
    jobs = list({tuple(r["source_job"]): r["source_job"] for r in runs if "source_job" in r}
                .values())
    sources = {}
    for job, config in zip(jobs, resolved_all(jobs)):
        ident = records.identity(config)
        sources[tuple(job)] = {
            "overrides": {k: v for k, v in keyed(job).items() if _plan_key(k)},
            "identity": ident, "path": _relative(ident), "seconds": progress.estimate(config),
            "encoder": str(encoder_path(config["runtime"]["cache_dir"], ident))}
    for run in runs:
        if "source_job" in run:
            run["source"] = sources[tuple(run.pop("source_job"))]["path"]
    return list(sources.values())


def _relative(ident: dict) -> str:
    return str(records.record_path("", ident))


def records_plans(recs: list[records.RunRecord]) -> list[Plan]:
    """Plans rebuilt from records that no saved plan names (a sweep of no study, single runs):
    one per study, protocol and set of command-line keys, each run's overrides read back from
    its record's command, so the table lays out what the sweep varied. Such a plan names only
    the runs that left a record: nothing is counted as missing."""
    groups: dict[tuple, dict[str, dict]] = {}
    for rec in recs:
        tokens = shlex.split(rec.command or "")[3:]  # python -m childtune.train ...
        job = [t for t in tokens if "=" in t and _plan_key(t.split("=", 1)[0])]
        ident = rec.identity
        key = (ident.get("study") or "adhoc", rec.setting("protocol.name"),
               tuple(sorted(t.split("=", 1)[0] for t in job)))
        groups.setdefault(key, {})[_relative(ident)] = {
            "overrides": keyed(job), "identity": ident, "path": _relative(ident),
            "seconds": None, "line": job}
    plans = []
    for (study, protocol, _), runs in sorted(groups.items(), key=str):
        values: dict[str, dict] = {}
        for run in runs.values():
            for token in run.pop("line"):
                key, _, value = token.partition("=")
                values.setdefault(key, {})[value] = None
        launch = [f"{k}={','.join(v)}" for k, v in values.items()]
        plans.append(Plan(study, protocol, launch, sorted(runs.values(), key=lambda r: r["path"])))
    return plans


# ---------------------------------------------------------------- manifests

def manifest_path(results_dir, plan: Plan) -> Path:
    return Path(results_dir) / PLANS / f"{plan.name}.json"


def write_manifest(results_dir, plan: Plan) -> Path:
    path = manifest_path(results_dir, plan)
    records.write_json_atomic(path, plan.to_json())
    return path


def read_manifests(results_dir) -> list[Plan]:
    root = Path(results_dir) / PLANS
    plans = []
    for path in sorted(root.glob("*.json")):
        try:
            plans.append(Plan.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a readable plan ({type(exc).__name__}: "
                            f"{str(exc)[:80]}); delete it: plans are rebuilt from the "
                            f"configs") from None
    return plans


def _cache_file(overrides: list[str], sha: str) -> Path:
    key = hashlib.sha256(json.dumps([overrides, sha]).encode()).hexdigest()[:16]
    return Path(PLAN_CACHE) / f"{key}.json"


def cached_plan(results_dir, overrides: list[str], save: bool = True) -> Plan:
    """The saved plan of these overrides if the configs have not changed since (a manifest
    under <results_dir>/plans, or the plan cache); else composed, cached, and saved as a
    manifest if `save`."""
    wanted = [o for o in overrides if _plan_key(o.split("=", 1)[0])]
    sha = conf_sha()
    for plan in read_manifests(results_dir):
        if plan.launch == wanted and plan.conf_sha == sha:
            return plan
    cache = _cache_file(wanted, sha)
    try:
        plan = Plan.from_json(json.loads(cache.read_text()))
    except (OSError, ValueError, KeyError):
        plan = make_plan(wanted)
        try:
            records.write_json_atomic(cache, plan.to_json())
        except OSError:
            pass  # a cache only: the plan is composed again next time
    if save:
        write_manifest(results_dir, plan)
    return plan


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


def containing_plan(results_dir, plan: Plan) -> Plan | None:
    """A saved plan of the same study that names every run of this one (and more)."""
    paths = {run["path"] for run in plan.runs}
    return next((saved for saved in read_manifests(results_dir)
                 if saved.study == plan.study and saved.digest != plan.digest
                 and paths < {run["path"] for run in saved.runs}), None)


class ManifestCallback(Callback):
    """Saves each multirun's plan next to its records, before the first job starts; a
    multirun that runs part of a saved plan (one task of it, or its extra sweep) saves none:
    the tables take the larger plan."""

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            plan = make_plan(list(config.hydra.overrides.task))
            done = sum(progress.done(Path(config.results_dir) / run["path"]) for run in plan.runs)
            if larger := containing_plan(config.results_dir, plan):
                print(f"plan: {len(plan.runs)} runs ({done} done), part of the saved plan "
                      f"{larger.name}")
                return
            path = write_manifest(config.results_dir, plan)
        except (UserError, OSError) as exc:  # the jobs report their own config errors
            print(f"plan: not saved ({exc})")
            return
        print(f"plan: {len(plan.runs)} runs ({done} done) -> {path}")


OPTIONS = {
    "results_dir": ("results", "where the records are"),
    "save": ("false", "true: save each study's plan under <results_dir>/plans"),
    "launch": ("false", "true: save, then run each study's missing runs (a multirun)"),
    "launcher": ("hydra/launcher=parallel", "Hydra overrides the multiruns launch with"),
    "jobs": ("2", "jobs side by side, for the wall-time estimate"),
    "missing": ("false", "true: list each missing run (record path and command)"),
}
REST = ("experiment=<study> (default: every study), protocol=<name> and any other override "
        "of the study's configs (as for python -m childtune.train -m)")


def _positive(value: str, key: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{key} must be a positive integer, got {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    try:
        options, overrides = cli.parse(sys.argv[1:] if argv is None else argv, __doc__,
                                       OPTIONS, REST)
        launching, listing = cli.flag(options, "launch"), cli.flag(options, "missing")
        save = launching or cli.flag(options, "save")
        jobs = _positive(options["jobs"], "jobs")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    rest = [o for o in overrides if not o.startswith("experiment=")]
    results_dir = options["results_dir"]
    done, speeds = [], {}   # speeds: each protocol's speed_ratio, read once
    try:
        for study in chosen or protocol_studies(rest):
            launch = [f"experiment={study}", *rest]
            try:
                plan = cached_plan(results_dir, launch, save=save)
            except UnsetValue as exc:  # a value still `???`: the study waits
                print(f"{study:16s} {exc}", flush=True)
                if launching:  # the studies after it need what it waits for
                    print(f"error: stopped before {study}: it {exc}", file=sys.stderr)
                    return 1
                continue
            done.append(plan)
            print(progress.describe(results_dir, plan, jobs, speeds), flush=True)
            if listing:
                print("\n".join(progress.missing_lines(results_dir, plan)), flush=True)
            if launching and status(results_dir, plan)["missing"]:
                for sweep in plan.launches:  # finished runs are skipped
                    command = [sys.executable, "-m", "childtune.train", "-m", *sweep,
                               f"results_dir={results_dir}", *shlex.split(options["launcher"])]
                    print("+ " + " ".join(shlex.quote(c) for c in command[1:]), flush=True)
                    if subprocess.run(command).returncode != 0:
                        print(f"error: the {study} multirun failed", file=sys.stderr)
                        return 1
                speeds.clear()   # new records: each protocol's speed is read again
        if len(done) > 1:
            print(progress.total(results_dir, done, jobs, speeds))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
