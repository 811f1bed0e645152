"""A study's plan: the runs one multirun of a study launches, and where their records live.

    python -m childtune.plan experiment=main protocol=cpu     # one study: planned, done, missing
    python -m childtune.plan protocol=cpu                     # every study of a protocol
                                                              # (in protocol.study_order if set)
    python -m childtune.plan protocol=cpu save=true           # ... and save their plans
    python -m childtune.plan protocol=cpu launch=true         # ... save, run what is missing
    python -m childtune.plan experiment=main protocol=cpu missing=true  # ... list missing runs

A plan composes the experiment and protocol configs with Hydra's compose API, expands the sweeper
params the way Hydra's basic sweeper does (a command-line sweep such as `seed=1,2` replaces the
configs' own), and names each planned run's record path (records.identity / record_path).

Plans are saved as manifests, `<results_dir>/plans/<study>-<protocol>-<digest>.json`: every
multirun writes its own (`ManifestCallback`, configured in src/childtune/conf/config.yaml); this command
saves the default one of each study with save=true or launch=true. The tables read manifests to know which records make up a
cell and how many are missing. Composing is slow (about 0.1 s a config), so a plan made from
the same configs (`conf_sha`) is reused, from a manifest or the plan cache
(.cache/childtune/plans), instead of composed again.

This module never imports torch or the training code."""
from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoints, cli, records
from .errors import UnsetValue, UserError, resolving

CONF_DIR = Path(__file__).resolve().parent / "conf"  # inside the package: works installed
PLANS = "plans"
_SENTINEL_SEED = -7_319_251  # never a real seed: shows whether a config uses the seed elsewhere
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
    def command(self) -> str:
        return "python -m childtune.train -m " + " ".join(shlex.quote(o) for o in self.launch)

    def to_json(self) -> dict:
        return {"schema": 1, "study": self.study, "protocol": self.protocol,
                "launch": self.launch, "command": self.command, "conf_sha": self.conf_sha,
                "runs": self.runs, "sources": self.sources}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(data["study"], data["protocol"], data["launch"], data["runs"],
                   data.get("sources", []), data.get("conf_sha", ""))


# ---------------------------------------------------------------- composing

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


@contextmanager
def _hydra():
    """Hydra's compose API needs an initialized Hydra; inside a Hydra app it already is."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield


def compose(overrides: list[str], hydra_node: bool = False):
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with _hydra():
            return hydra_compose("config", overrides=list(overrides),
                                 return_hydra_config=hydra_node)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"cannot compose {' '.join(overrides)}: "
                        f"{str(exc).splitlines()[0]}") from None


def resolved(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    return resolving(lambda: OmegaConf.to_container(compose(overrides), resolve=True))


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def expand(params: dict[str, str], overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, exactly as Hydra's basic sweeper makes them: the configs' sweeper
    params first, then the command line, whose value for a key replaces the params' value."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    arguments = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    return BasicSweeper.split_arguments(_parse(arguments), None)[0]


def _keyed(job: list[str]) -> dict:
    return {o.get_key_element(): o.value() for o in _parse(job)}


def _plan_key(key: str) -> bool:
    return key.lstrip("+~").split(".")[0].split("/")[0] not in _NOT_PLAN_KEYS


def _estimate(config: dict) -> float | None:
    """Seconds one run takes under the protocol's measured speeds (None: no estimate)."""
    protocol = config.get("protocol") or {}
    task = config["task"]["name"]
    per_1k = (protocol.get("train_seconds") or {}).get(task)
    n_train = config["data"].get("n_train") or (protocol.get("train_sizes") or {}).get(task)
    if per_1k is None or n_train is None:
        return None
    if config["variant"].get("prune") and (config.get("runtime") or {}).get("keep_for_prune"):
        return protocol.get("overhead_seconds", 0)  # evaluates the kept CT_D model (prune.py)
    epoch = per_1k * n_train / 1000 / 3 / _optimizer_speedup(config)
    train = epoch * config["trainer"]["epochs"] * _padding_factor(config)
    if str(config["variant"].get("mask", "")).startswith("fisher"):
        train += epoch      # the Fisher pass: one more epoch (random batches)
    return train + protocol.get("overhead_seconds", 0)


def _padding_factor(config: dict) -> float:
    """Training time with length-grouped batches relative to random ones: the ratio of padded
    tokens per epoch (step time grows about linearly with the padded length here)."""
    padding = (config.get("protocol") or {}).get("padding") or {}
    task = config["task"]["name"]
    if not config["data"].get("group_by_length") or task not in padding.get("grouped", {}):
        return 1.0
    return padding["grouped"][task] / padding["random"][task]


def _optimizer_speedup(config: dict) -> float:
    """The protocol's speeds were measured with foreach AdamW; a fused AdamW steps faster."""
    fused = config["trainer"].get("optimizer") == "adamw_fused"
    return (config.get("protocol") or {}).get("fused_adamw_speedup", 1.0) if fused else 1.0


def _configs(jobs: list[list[str]]) -> list[dict]:
    """The resolved config of each job. Jobs that differ only in their seed share one
    composition when the seed is used nowhere else in the config (checked with a sentinel)."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        rest = tuple(o for o in job if o.split("=", 1)[0] != "seed")
        groups.setdefault(rest, []).append(i)
    out: list[dict | None] = [None] * len(jobs)
    for rest, members in groups.items():
        seeded = all(len(jobs[i]) > len(rest) for i in members)
        probe = resolved([*rest, f"seed={_SENTINEL_SEED}"]) if seeded else None
        if probe is None or json.dumps(probe).count(str(_SENTINEL_SEED)) != 1:
            for i in members:
                out[i] = resolved(jobs[i])
            continue
        for i in members:
            out[i] = {**probe, "seed": _keyed(jobs[i])["seed"]}
    return out


def source_job(job: list[str], source_task: str) -> list[str]:
    """The overrides of the run a task-transfer run starts from: the same run on the source
    task, without transfer."""
    kept = [o for o in job if o.split("=", 1)[0] not in ("task", "transfer.source_task")]
    return [*kept, f"task={source_task}", "transfer.source_task=null"]


def make_plan(overrides: list[str], identities: bool = True) -> Plan:
    """The plan of a multirun launched with these overrides (experiment=..., protocol=...)."""
    from omegaconf import OmegaConf

    overrides = [o for o in overrides if _plan_key(o.split("=", 1)[0])]
    fixed = [str(o.input_line) for o in _parse(overrides) if not o.is_sweep_override()]
    root = compose(fixed, hydra_node=True)
    params = OmegaConf.select(root, "hydra.sweeper.params")  # None: a sweep of no study
    params = {} if params is None else resolving(
        lambda: OmegaConf.to_container(params, resolve=True))
    protocol = OmegaConf.select(root, "protocol.name", default=None)
    if unset := records.unset_study_keys({"study": root.study, "protocol": OmegaConf.to_container(
            root.protocol, resolve=False) if "protocol" in root else None}):
        raise UnsetValue(unset)
    plan = Plan(root.study, protocol, overrides, [], conf_sha=conf_sha())
    jobs = expand({k: str(v) for k, v in params.items()}, overrides)
    if not identities:
        plan.runs = [{"overrides": _keyed(job), "job": job} for job in jobs]
        return plan
    for job, config in zip(jobs, _configs(jobs)):
        ident = records.identity(config)
        run = {"overrides": {k: v for k, v in _keyed(job).items() if _plan_key(k)},
               "identity": ident, "path": _relative(ident), "seconds": _estimate(config)}
        transfer = {k: v for k, v in (config.get("transfer") or {}).items() if v}
        if transfer:
            run["transfer"] = transfer
        if transfer.get("source_task"):
            run["source_job"] = source_job(job, transfer["source_task"])
        plan.runs.append(run)
    plan.sources = _sources(plan.runs)
    return plan


def _sources(runs: list[dict]) -> list[dict]:
    """The runs task-transfer runs start from (each named once), with their encoder paths."""
    jobs = list({tuple(r["source_job"]): r["source_job"] for r in runs if "source_job" in r}
                .values())
    sources = {}
    for job, config in zip(jobs, _configs(jobs)):
        ident = records.identity(config)
        sources[tuple(job)] = {
            "overrides": {k: v for k, v in _keyed(job).items() if _plan_key(k)},
            "identity": ident, "path": _relative(ident), "seconds": _estimate(config),
            "encoder": str(encoder_path(config["runtime"]["cache_dir"], ident))}
    for run in runs:
        if "source_job" in run:
            run["source"] = sources[tuple(run.pop("source_job"))]["path"]
    return list(sources.values())


def _relative(ident: dict) -> str:
    return str(records.record_path("", ident))


def encoder_path(cache_dir, ident: dict) -> Path:
    """Where a run kept for task transfer leaves its trained encoder (transfer.py)."""
    if not cache_dir:
        raise UserError("task transfer keeps encoders under runtime.cache_dir; set it")
    return checkpoints.path(cache_dir, "encoders", ident)


def records_plans(recs: list[dict]) -> list[Plan]:
    """Plans rebuilt from records that no saved plan names (a sweep of no study, single runs):
    one per study, protocol and set of command-line keys, each run's overrides read back from
    its record's command, so the table lays out what the sweep varied. Such a plan names only
    the runs that left a record: nothing is counted as missing."""
    groups: dict[tuple, dict[str, dict]] = {}
    for rec in recs:
        tokens = shlex.split(rec.get("command") or "")[3:]  # python -m childtune.train ...
        job = [t for t in tokens if "=" in t and _plan_key(t.split("=", 1)[0])]
        ident = rec["identity"]
        key = (ident.get("study") or "adhoc", (rec["config"].get("protocol") or {}).get("name"),
               tuple(sorted(t.split("=", 1)[0] for t in job)))
        groups.setdefault(key, {})[_relative(ident)] = {
            "overrides": _keyed(job), "identity": ident, "path": _relative(ident),
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


class ManifestCallback(Callback):
    """Saves each multirun's plan next to its records, before the first job starts."""

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            plan = make_plan(list(config.hydra.overrides.task))
            path = write_manifest(config.results_dir, plan)
            done = sum(_done(Path(config.results_dir) / run["path"]) for run in plan.runs)
        except (UserError, OSError) as exc:  # the jobs report their own config errors
            print(f"plan: not saved ({exc})")
            return
        print(f"plan: {len(plan.runs)} runs ({done} done) -> {path}")


# ---------------------------------------------------------------- status and launching

def _done(path: Path) -> bool:
    """A run is done when its success record is there and readable (a file cut short is a
    UserError naming it, as in train)."""
    return path.is_file() and records.read_record(path)["status"] == "success"


def _missing(results_dir, runs: list[dict], sources: list[dict]) -> tuple[list, list]:
    root = Path(results_dir)
    return ([r for r in runs if not _done(root / r["path"])],
            [s for s in sources if not Path(s["encoder"]).exists()])


def status(results_dir, plan: Plan) -> dict:
    missing, missing_sources = _missing(results_dir, plan.runs, plan.sources)
    return {"planned": len(plan.runs), "done": len(plan.runs) - len(missing),
            "missing": len(missing), "sources_missing": len(missing_sources),
            "cpu_hours": _hours(missing + missing_sources)}


def _hours(runs: list[dict]) -> float | None:
    if any(r.get("seconds") is None for r in runs):
        return None
    return sum(r["seconds"] for r in runs) / 3600


def _time(hours: float | None, jobs: int) -> str:
    return ("time unknown" if hours is None else
            f"{hours:.1f} CPU-hours, ~{hours / jobs:.1f} h wall with {jobs} jobs")


def _describe(results_dir, plan: Plan, jobs: int) -> str:
    s = status(results_dir, plan)
    extra = f" + {s['sources_missing']} source runs" if plan.sources else ""
    return (f"{plan.study:16s} {plan.protocol or '-':6s} planned {s['planned']:4d}  "
            f"done {s['done']:4d}  missing {s['missing']:4d}{extra}  "
            f"({_time(s['cpu_hours'], jobs)})")


def _total(results_dir, plans: list[Plan], jobs: int) -> str:
    """Studies share runs (a run is trained once): the distinct runs of all of them."""
    runs = list({r["path"]: r for p in plans for r in p.runs}.values())
    sources = list({s["path"]: s for p in plans for s in p.sources}.values())
    missing, missing_sources = _missing(results_dir, runs, sources)
    return (f"{'all':23s} distinct {len(runs):4d}  done {len(runs) - len(missing):4d}  "
            f"missing {len(missing):4d} + {len(missing_sources)} source runs  "
            f"({_time(_hours(missing + missing_sources), jobs)})")


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


def _missing_lines(results_dir, plan: Plan) -> list[str]:
    missing, sources = _missing(results_dir, plan.runs, plan.sources)
    return [f"  missing {r['path']}: python -m childtune.train " +
            " ".join(shlex.quote(f"{k}={v}") for k, v in r["overrides"].items())
            for r in missing] + [f"  missing source encoder {s['encoder']} ({s['path']})"
                                 for s in sources]


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
    done = []
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
            print(_describe(results_dir, plan, jobs), flush=True)
            if listing:
                print("\n".join(_missing_lines(results_dir, plan)), flush=True)
            if launching and status(results_dir, plan)["missing"]:
                command = [sys.executable, "-m", "childtune.train", "-m", *launch,
                           f"results_dir={results_dir}", *shlex.split(options["launcher"])]
                print("+ " + " ".join(shlex.quote(c) for c in command[1:]), flush=True)
                if subprocess.run(command).returncode != 0:
                    print(f"error: the {study} multirun failed", file=sys.stderr)
                    return 1
        if len(done) > 1:
            print(_total(results_dir, done, jobs))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
