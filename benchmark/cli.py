"""`bench`: list registries, run suites, print tables, open the MLflow UI."""
from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from benchmark.config import ConfigError
from benchmark.registry import UnknownNameError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark harness for semi-supervised medical image segmentation.")
console = Console()
err = Console(stderr=True)


class Listing(str, Enum):
    methods = "methods"
    datasets = "datasets"
    suites = "suites"
    networks = "networks"


class Format(str, Enum):
    markdown = "markdown"
    latex = "latex"
    csv = "csv"
    pdf = "pdf"


PRETRAINED_HELP = ("start of every Swin-UNet (CTCT, AdvMIM): imagenet (needs `bench weights fetch swin-tiny` once), "
                   "none (from scratch) or a weights FILE; overrides the suite and its methods' entries")


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _csv(text: Optional[str], cast=str) -> Optional[list]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [cast(t) for t in items]
    except ValueError:
        _fail(f"could not read {text!r} as a comma-separated list of {cast.__name__}")


@app.command("ls")
def ls(kind: Listing = typer.Argument(..., help="methods, datasets, suites or networks"),
       all_: bool = typer.Option(False, "--all", help="methods: also those of the papers' tables that are "
                                                      "reported only (no implementation)")) -> None:
    """List registered methods, dataset cards, suites or networks with a one-line description."""
    from benchmark import catalog

    try:
        rows = catalog.describe(kind.value, reported=all_)
    except (ConfigError, UnknownNameError) as exc:
        _fail(str(exc))
    table = Table(show_header=True, header_style="bold")
    table.add_column(kind.value[:-1])
    table.add_column("description")
    for name, description in rows:
        table.add_row(name, description)
    console.print(table)


@app.command()
def run(
    suite: str = typer.Option(..., "--suite", "-s", help="suite name (bench ls suites) or path to a suite YAML"),
    methods: Optional[str] = typer.Option(None, help="comma-separated method names, or 'all' (default: the suite's)"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default: the suite's)"),
    iterations: Optional[int] = typer.Option(None, help="override the suite's training iterations"),
    data_root: Optional[Path] = typer.Option(None, help="folder holding real datasets (default: $BENCH_DATA_ROOT)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"),
    no_track: bool = typer.Option(False, "--no-track", help="do not log to MLflow (finished trials found via run dirs)"),
    executor: Optional[str] = typer.Option(None, help="where trials run: ray (Ray Tune trials; the default when ray "
                                           "is installed) or local (one after another in this process)"),
    cpus_per_trial: float = typer.Option(1.0, help="ray: CPUs reserved per trial (cover the DataLoader workers)"),
    gpus_per_trial: Optional[float] = typer.Option(None, help="ray: GPU share per trial, fractional (default: 0.25 "
                                                   "for 2D cards, 1 for 3D cards, 0 without GPUs)"),
    max_concurrent: Optional[int] = typer.Option(None, help="ray: most trials at once (default: what resources allow)"),
    ray_address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="ray: an existing cluster "
                                              "(default: $RAY_ADDRESS, else a local Ray)"),
    work_dir: Path = typer.Option(Path("bench_runs"), help="checkpoints and per-trial files"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    force: bool = typer.Option(False, "--force", help="retrain trials that already finished"),
    workers: int = typer.Option(0, help="processes scoring test cases in parallel (0: in this process)"),
    test_cases: Optional[int] = typer.Option(None, "--test-cases", help="smoke runs: score only the first N test "
                                             "cases (such runs are tagged and left out of tables)"),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help=PRETRAINED_HELP),
) -> None:
    """Train and test every method x labeled setting x seed of a suite; finished trials are skipped."""
    from benchmark import catalog
    from benchmark.run.local import run_local
    from benchmark.run.ray_executor import RaySettings, ray_available, run_ray
    from benchmark.run.trials import check_data, expand

    executor = executor or ("ray" if ray_available() else "local")
    if executor not in ("local", "ray"):
        _fail(f"unknown executor {executor!r}; valid executors: local, ray")
    if executor == "ray" and not ray_available():
        _fail("--executor ray needs ray: pip install 'ray[tune]' (or use --executor local)")
    if cpus_per_trial <= 0 or (gpus_per_trial is not None and gpus_per_trial < 0) or (max_concurrent or 1) < 1:
        _fail("--cpus-per-trial must be > 0, --gpus-per-trial >= 0 and --max-concurrent >= 1")
    try:
        spec = _with_pretrained(catalog.get_suite(suite), pretrained)
        trials = expand(spec, methods=_csv(methods), seeds=_csv(seeds, int), iterations=iterations,
                        data_root=data_root, test_cases=test_cases)
        _note_unused_pretrained(pretrained, trials)
        with console.status(f"reading the {trials[0].card.name} data (every file is checked before training)"):
            check_data(trials, data_root, keep=executor == "local")   # Ray trials read it in their own processes
        tracker = None
        if not no_track:
            from benchmark.track import Tracker

            tracker = Tracker(spec.name, tracking_uri)
    except (ConfigError, UnknownNameError) as exc:
        _fail(str(exc))
    console.print(f"[bold]{spec.name}[/]: {len(trials)} trial(s) on {trials[0].card.name}"
                  + ("" if tracker is None else f", tracking to {tracker.uri}"))
    start = time.perf_counter()

    def report(o) -> None:
        colour = {"FINISHED": "green", "SKIPPED": "yellow", "FAILED": "red"}[o.status]
        summary = ""
        if o.summary:
            ckpt = o.trial.protocol.checkpoint
            summary = (f" test[{ckpt}] Dice {100 * o.summary[f'test/{ckpt}/dice']:.2f}"
                       f" HD95 {o.summary[f'test/{ckpt}/hd95']:.2f}, {o.summary['steps_per_second']:.2f} steps/s")
        console.print(f"[{colour}]{o.status:8}[/] {o.trial.name} ({o.trial.config_hash}){summary} {o.detail}",
                      highlight=False)

    if executor == "local":
        outcomes = run_local(trials, work_dir.resolve(), tracker, data_root, device, progress=True,
                             force=force, on_outcome=report, eval_workers=workers)
    else:
        settings = RaySettings(cpus_per_trial, gpus_per_trial, max_concurrent, ray_address, live=console.is_terminal)
        try:
            outcomes = run_ray(trials, work_dir, None if tracker is None else tracker.uri, spec.name, data_root,
                               device, force=force, on_outcome=report, eval_workers=workers, settings=settings,
                               console=console)
        except ConfigError as exc:
            _fail(str(exc))
        st = settings.stats
        if "ray_startup_s" in st:
            console.print(f"ray: {st['nodes']} node(s), {st['cpus_per_trial']:g} CPU + {st['gpus_per_trial']:g} GPU"
                          f" per trial, at most {st.get('peak_running', 0)} at once,"
                          f" start-up {st['ray_startup_s']:.1f} s")
    failed = [o for o in outcomes if o.status == "FAILED"]
    console.print(f"done in {time.perf_counter() - start:.1f} s: "
                  + ", ".join(f"{sum(o.status == s for o in outcomes)} {s.lower()}" for s in ("FINISHED", "SKIPPED", "FAILED")))
    if failed:
        for o in failed:
            err.print(f"[red]FAILED[/] {o.trial.name} ({o.trial.config_hash}): {o.detail}", highlight=False)
        raise typer.Exit(1)


def _with_pretrained(spec, pretrained: Optional[str]):
    """The suite with `--pretrained` applied (it wins over the suite's and its methods' own entries)."""
    if pretrained is None:
        return spec
    from benchmark.weights import override_suite

    return override_suite(spec, pretrained)


def _note_unused_pretrained(pretrained: Optional[str], trials) -> None:
    from benchmark.weights import trial_weights

    if pretrained is not None and not any(trial_weights(t.resolved()) is not None for t in trials):
        err.print(f"note: --pretrained {pretrained} applies to no trial here (none trains a Swin-UNet)")


@app.command()
def tune(
    suite: str = typer.Option(..., "--suite", "-s", help="suite name or path (dataset, Trainer settings, method_config)"),
    method: str = typer.Option(..., "--method", "-m", help="the method to tune (method or method:preset)"),
    trials: int = typer.Option(20, help="trials in the study in total (a re-run continues up to this many)"),
    space: Optional[list[str]] = typer.Option(None, "--space", help="NAME=uniform:LOW:HIGH | loguniform:LOW:HIGH | "
                                              "int:LOW:HIGH | "
                                              "choice:v1,v2 (repeatable; default: the method's search_space); with "
                                              "--grid NAME=v1,v2,..."),
    grid: bool = typer.Option(False, "--grid", help="grid search over the method's search_grids (or --space values), "
                              "one field at a time around the defaults"),
    product: bool = typer.Option(False, "--product", help="with --grid: every combination instead of one at a time"),
    pruner: Optional[str] = typer.Option(None, help="asha, median or none (default: asha; none with --grid)"),
    seed: Optional[int] = typer.Option(None, help="training seed of every trial and TPE seed (default: the suite's first)"),
    labeled: Optional[str] = typer.Option(None, help="labeled setting (default: the suite's first)"),
    iterations: Optional[int] = typer.Option(None, help="override the suite's training iterations"),
    metric: str = typer.Option("val/dice", help="the objective, a validation metric (maximised)"),
    grace_period: Optional[int] = typer.Option(None, help="steps before a trial may be pruned (default: iterations/8)"),
    max_concurrent: int = typer.Option(1, help="trials at once"),
    cpus_per_trial: float = typer.Option(1.0, help="Ray CPUs per trial"),
    gpus_per_trial: Optional[float] = typer.Option(None, help="Ray GPUs per trial, fractional "
                                                   "(default: 0.25 with CUDA, else 0)"),
    ray_address: Optional[str] = typer.Option(None, help="an existing Ray cluster (default: $RAY_ADDRESS, else local)"),
    work_dir: Path = typer.Option(Path("bench_runs"), help="checkpoints, per-trial files and the Optuna study"),
    data_root: Optional[Path] = typer.Option(None, help="folder holding real datasets (default: $BENCH_DATA_ROOT)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default as for run)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help=PRETRAINED_HELP),
) -> None:
    """Optuna search (TPE through Ray Tune, pruned by ASHA/median) or a grid over one method's hyper-parameters;
    the objective is the validation Dice; writes best.yaml (a suite method_config fragment)."""
    from benchmark import catalog
    from benchmark.track import default_tracking_uri
    from benchmark.tune import StudyInterrupted, StudySetup, grid_points, parse_grid, parse_space, run_study

    try:
        spec = _with_pretrained(catalog.get_suite(suite), pretrained)
        cls = catalog.method_class(method)
        setup = StudySetup(spec, method, labeled if labeled is not None else spec.labeled[0],
                           seed if seed is not None else spec.seeds[0], iterations,
                           str(data_root) if data_root else None, str(work_dir.resolve()),
                           default_tracking_uri(tracking_uri), metric, device)
        if grid:
            setup.kind = "grid"
            setup.grid = grid_points(parse_grid(space, cls.search_grids), product)
        else:
            setup.space = {n: d.spec for n, d in parse_space(space, cls.search_space).items()}
        if gpus_per_trial is None:
            import torch

            gpus_per_trial = 0.25 if torch.cuda.is_available() else 0.0
        size = f"grid of {len(setup.grid)} point(s)" if grid else f"{trials} trial(s)"
        console.print(f"[bold]{setup.study_name}[/]: {size}, tracking to {setup.tracking_uri} "
                      f"(experiment {setup.experiment})")
        result = run_study(setup, trials, pruner or ("none" if grid else "asha"), max_concurrent, cpus_per_trial,
                           gpus_per_trial, ray_address, grace_period,
                           on_trial=lambda line: console.print(line, highlight=False))
    except (ConfigError, UnknownNameError) as exc:
        _fail(str(exc))
    except StudyInterrupted as exc:
        _fail(str(exc), code=1)
    names = sorted({k for r in result.records for k in r.values})
    table_ = Table(title=f"{result.setup.study_name}: {len(result.records)} trial(s), {result.ran} run now",
                   show_header=True, header_style="bold")
    for col in (*names, f"{metric} (objective)", "test Dice (reported)", "status", "config hash"):
        table_.add_column(col)
    ranked = sorted(result.records, key=lambda r: -(r.objective if r.objective is not None else -1.0))
    for r in ranked:
        status = r.status + (f" @ {r.pruned_at}" if r.pruned_at is not None else "")
        best = " *" if result.best is not None and r.run_id == result.best.run_id else ""
        table_.add_row(*(str(r.values.get(n, "(default)")) for n in names),
                       "-" if r.objective is None else f"{r.objective:.4f}{best}",
                       "-" if r.test_dice is None else f"{r.test_dice:.4f}", status, r.config_hash)
    console.print(table_)
    if result.best is not None:
        console.print(f"best: {result.best.values} {metric} {result.best.objective:.4f} -> {result.best_file}")
    for e in result.errors:
        err.print(f"[red]failed trial:[/] {e}", highlight=False)
    if result.errors or result.best is None:
        raise typer.Exit(1)


class Show(str, Enum):
    reported = "reported"
    delta = "delta"
    both = "both"


class Rules(str, Enum):
    ours = "ours"
    paper = "paper"


def _suite_frame(suite: str, checkpoint: Optional[str], tracking_uri: Optional[str], smoke: bool = False):
    """(spec, card, protocol with the chosen checkpoint, finished-runs frame scored under that protocol). Smoke
    runs (`--test-cases`) are left out, or with `smoke` they are the only runs kept."""
    import dataclasses

    from benchmark import catalog
    import pandas as pd

    from benchmark.config import CHECKPOINT_RULES
    from benchmark.run.trials import suite_protocol
    from benchmark.track import Tracker

    try:
        spec = catalog.get_suite(suite)
        card = catalog.get_card(spec.dataset)
        protocol = suite_protocol(spec, card)
    except (ConfigError, UnknownNameError) as exc:
        _fail(str(exc))
    ckpt = checkpoint or protocol.checkpoint
    if ckpt not in CHECKPOINT_RULES:
        _fail(f"unknown checkpoint {ckpt!r}; valid: {', '.join(CHECKPOINT_RULES)}")
    protocol = dataclasses.replace(protocol, checkpoint=ckpt)
    tracker = Tracker(spec.name, tracking_uri)
    frame = tracker.finished_frame()
    if "tags.scoring_hash" in frame and not frame.empty:
        # each run is scored under its method's protocol (the suite's, or its `method_protocol` entry)
        methods = frame["tags.method"] if "tags.method" in frame else pd.Series("", index=frame.index)
        hashes = {m: suite_protocol(spec, card, m or None).scoring_hash for m in set(methods.fillna(""))}
        expected = methods.fillna("").map(hashes)
        other = frame["tags.scoring_hash"] != expected
        if other.any():
            err.print(f"note: {int(other.sum())} finished run(s) scored under another protocol are left out")
        frame = frame[~other]
    is_smoke = pd.Series(False, index=frame.index)
    if "tags.smoke_test_cases" in frame and not frame.empty:
        is_smoke = frame["tags.smoke_test_cases"].notna() & (frame["tags.smoke_test_cases"] != "")
    if smoke:
        frame = frame[is_smoke]
    else:
        if is_smoke.any():
            err.print(f"note: {int(is_smoke.sum())} smoke run(s) scored on fewer test cases (--test-cases) are left "
                      f"out (--smoke shows them)")
        frame = frame[~is_smoke]
    return spec, card, protocol, frame, tracker


@app.command()
def table(
    suite: Optional[str] = typer.Option(None, "--suite", "-s", help="suite name or path (optional with --layout: "
                                        "without it the layout shows the published values only; with --layout, "
                                        "several comma-separated suites may fill its settings)"),
    format: Format = typer.Option(Format.markdown, "--format", "-f", help="markdown, latex, csv, or pdf (the LaTeX "
                                  "compiled to a standalone PDF with the TeX engine on PATH; needs --out)"),
    out: Optional[Path] = typer.Option(None, help="write to this file instead of stdout"),
    checkpoint: Optional[str] = typer.Option(None, help="best_val, last or best_test (default: the suite's protocol)"),
    per_class: bool = typer.Option(False, "--per-class", help="add per-class columns"),
    layout: Optional[str] = typer.Option(None, help="a published table's layout, e.g. advmim-table2 "
                                         "(ls leaderboards/): our runs beside the paper's numbers"),
    show: Show = typer.Option(Show.both, help="with --layout: the paper's value beside ours (reported), the "
                              "difference ours - paper (delta), or both"),
    stand_in: Optional[str] = typer.Option(None, "--stand-in", help="with --layout: let the suite's runs fill this "
                                           "paper dataset's cells, e.g. acdc for synthetic demos (said in a footnote)"),
    significance: bool = typer.Option(True, "--significance/--no-significance", help="with --layout: Wilcoxon "
                                      "signed-rank per-case test of each cell against the best other row we ran"),
    baseline: Optional[str] = typer.Option(None, help="with --layout: test against this method instead"),
    cost: bool = typer.Option(True, "--cost/--no-cost", help="steps/s, hours and parameters of our runs"),
    smoke: bool = typer.Option(False, "--smoke", help="show the smoke runs (--test-cases) instead, marked as such: "
                               "a check that every method ran, not results"),
    rules: Rules = typer.Option(Rules.ours, help="with --layout: score an empty predicted class by our rule (ours, "
                                "the default) or re-score it under each setting's known paper rule (paper); a "
                                "checkpoint rule the paper used and we did not is flagged either way"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default as for run)"),
) -> None:
    """Print the suite's results table from MLflow (finished runs only), or a paper's table with ours beside it."""
    from benchmark import catalog
    from benchmark.report.tables import TableContext, label_cells, order_rows, render, runs_to_long

    if format is Format.pdf:
        from benchmark.report.markup import tex_engine

        if out is None:
            _fail("--format pdf writes a file: give --out FILE.pdf")
        try:
            tex_engine()
        except ConfigError as exc:
            _fail(str(exc))
    if layout is not None:
        _layout_table(suite, layout, format.value, show.value, out, checkpoint, stand_in, significance, baseline,
                      cost, tracking_uri, smoke, rules.value)
        return
    if rules is Rules.paper:
        _fail("--rules paper needs --layout (the paper's rules are those of a published table)")
    if suite is None:
        _fail("give --suite (or --layout for a published table)")
    spec, card, protocol, frame, _ = _suite_frame(suite, checkpoint, tracking_uri, smoke)
    ckpt = protocol.checkpoint
    if frame.empty:
        _fail(f"no finished runs for suite {spec.name!r} in this tracking store; run `bench run --suite {spec.name}` first", 1)
    order = catalog.expand_method_names(["all"] if spec.methods == "all" else spec.methods)
    long = order_rows(label_cells(runs_to_long(frame, ckpt)), order)
    if long.empty or not any(c in long for c in ("dice",)):
        _fail(f"no run of suite {spec.name!r} has test metrics for checkpoint {ckpt!r}", 1)
    ctx = TableContext(card.name, _protocol_note(spec, protocol, frame if smoke else None), protocol.hd_units, ckpt, card.classes, card.labeled.unit)
    fmt = "latex" if format is Format.pdf else format.value
    _emit(render(long, fmt, ctx, per_class=per_class, cost=cost), out, format.value)


def _protocol_note(spec, protocol, smoke_frame=None) -> str:
    """The suite's protocol, plus the methods a reference tests differently (`method_protocol`); with the frame
    of smoke runs, a warning first."""
    note = protocol.describe()
    if spec.method_protocol:
        own = "; ".join(f"{m}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items())
                        for m, values in spec.method_protocol.items())
        note = f"{note}; per method, as its reference tests: {own}"
    if smoke_frame is not None and not smoke_frame.empty:
        counts = sorted(set(smoke_frame["tags.smoke_test_cases"]), key=int)
        steps = sorted(set(smoke_frame["tags.iterations"]), key=int) if "tags.iterations" in smoke_frame else ["?"]
        note = f"SMOKE RUNS, NOT RESULTS ({'/'.join(steps)} iteration(s), {'/'.join(counts)} test case(s)); {note}"
    return note


def _emit(text: str, out: Optional[Path], fmt: str = "markdown") -> None:
    """Print `text` or write it to `out`; `pdf`: `text` is LaTeX, compiled to the PDF `out`."""
    if fmt == "pdf":
        from benchmark.report.markup import compile_pdf

        try:
            console.print(f"wrote {compile_pdf(text, out)}")
        except ConfigError as exc:
            _fail(str(exc), code=1)
        return
    if out:
        out.write_text(text)
        console.print(f"wrote {out}")
    else:
        print(text)


def _layout_table(suite, layout, fmt, show, out, checkpoint, stand_in, significance, baseline, cost,
                  tracking_uri, smoke: bool = False, rules: str = "ours") -> None:
    import pandas as pd

    from benchmark.report import leaderboard as lbm
    from benchmark.report.stats import case_table, rescore_runs

    try:
        lb = lbm.load(layout)
    except ConfigError as exc:
        _fail(str(exc))
    datasets = sorted({s.dataset for s in lb.settings})
    if stand_in is not None and stand_in not in datasets:
        _fail(f"--stand-in {stand_in!r} is not a dataset of {lb.id}; valid: {', '.join(datasets)}")
    runs, cases, hd_units, note = None, None, "voxel", ""
    if suite is not None:   # one suite, or several (comma-separated) filling different settings of the layout
        parts, notes, units = [], {}, set()
        for name in [n.strip() for n in suite.split(",") if n.strip()]:
            spec, card, protocol, frame, tracker = _suite_frame(name, checkpoint, tracking_uri, smoke)
            if any(r.config for r in lb.rows):   # sweep rows: `bench tune` trials count too (experiment <suite>/tune)
                tuned = tracker.companion_frame("tune")
                if "tags.scoring_hash" in tuned:
                    tuned = tuned[tuned["tags.scoring_hash"] == protocol.scoring_hash]
                if "tags.method" in tuned:
                    frame = pd.concat([frame, tuned[tuned["tags.method"].notna()]], ignore_index=True)
            part = lbm.runs_to_layout_frame(frame, protocol.checkpoint)
            if part.empty:
                err.print(f"note: no finished runs for suite {spec.name!r}: its cells show the published values only")
            parts.append(part)
            units.add(protocol.hd_units)
            notes.setdefault(_protocol_note(spec, protocol, frame if smoke else None), []).append(
                f"{spec.name} on {card.name}")
            if significance and not part.empty:
                cases = pd.concat([cases, case_table(part, protocol.checkpoint)], ignore_index=True)
        if len(units) > 1:
            _fail(f"the suites report HD95/ASD in different units ({', '.join(sorted(units))}); show them one at a time")
        runs, hd_units = pd.concat(parts, ignore_index=True), units.pop()
        note = "; ".join(f"suite {', '.join(names)}, protocol: {text}" for text, names in notes.items())
    grid = lbm.build_grid(lb, runs, hd_units, stand_in=stand_in, cases=cases, baseline=baseline, cost=cost,
                          ours_note=note, rescore=rescore_runs if rules == "paper" else None)
    _emit(lbm.render(grid, "latex" if fmt == "pdf" else fmt, show), out, fmt)


weights_app = typer.Typer(no_args_is_help=True, help="Pretrained weights: list them, fetch them (needs internet).")
app.add_typer(weights_app, name="weights")


@weights_app.command("ls")
def weights_ls() -> None:
    """The weights `bench weights fetch` knows, the `pretrained` value naming each, and whether it is here."""
    from benchmark.weights import KNOWN, WEIGHTS_ENV, weights_dir

    table = Table(show_header=True, header_style="bold",
                  title=f"weights folder: {weights_dir()} (${WEIGHTS_ENV} moves it)")
    for col in ("name", "pretrained", "file", "here", "description"):
        table.add_column(col)
    for spec in KNOWN.values():
        path = weights_dir() / spec.filename
        table.add_row(spec.name, spec.value, str(path), "yes" if path.is_file() else "no", spec.description)
    console.print(table)


@weights_app.command("fetch")
def weights_fetch(name: str = typer.Argument(..., help="swin-tiny (bench weights ls)"),
                  force: bool = typer.Option(False, "--force", help="download again even if the file is there"),
                  directory: Optional[Path] = typer.Option(None, "--dir", help="target folder (default: the weights "
                                                           "folder, $BENCH_WEIGHTS_DIR)")) -> None:
    """Download pretrained weights once (huggingface hub, timm's copy); runs only ever read the local file."""
    from benchmark.weights import FetchError, fetch

    try:
        path, downloaded = fetch(name, directory, force)
    except ConfigError as exc:
        _fail(str(exc))
    except FetchError as exc:
        _fail(str(exc), code=1)
    console.print(f"{'downloaded' if downloaded else 'already there'}: {path}", highlight=False)


data_app = typer.Typer(no_args_is_help=True, help="Real datasets: prepare them from the official downloads, check them.")
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(name: str = typer.Argument(..., help="synapse, isic, promise12 or brats2019"),
                 raw: Path = typer.Option(..., "--from", help="the official download, unpacked (see README: Datasets)"),
                 to: Optional[Path] = typer.Option(None, "--to", help="output folder (default: the card's root under "
                                                   "$BENCH_DATA_ROOT)"),
                 lists: Optional[Path] = typer.Option(None, "--lists", help="a folder of split lists replacing the "
                                                      "pinned ones (a subset of cases)")) -> None:
    """Write the preprocessed layout the seed papers' code trained on, from the official raw files; idempotent."""
    from benchmark.data.prepare import prepare_dataset

    try:
        result = prepare_dataset(name, raw, to, lists=lists)
    except (ConfigError, UnknownNameError) as exc:
        _fail(str(exc))
    console.print(result.summary(), highlight=False)


@data_app.command("check")
def data_check(name: str = typer.Argument(..., help="a dataset card (bench ls datasets)"),
               data_root: Optional[Path] = typer.Option(None, help="folder holding real datasets (default: "
                                                        "$BENCH_DATA_ROOT)")) -> None:
    """What a prepared dataset holds: cases per split, shapes, spacing, label values, labeled counts."""
    from benchmark.data.check import check_dataset

    try:
        report = check_dataset(name, data_root)
    except (ConfigError, UnknownNameError) as exc:
        _fail(str(exc))
    console.print(report, highlight=False)


class PlotKind(str, Enum):
    dice_vs_labeled = "dice-vs-labeled"
    seed_spread = "seed-spread"
    val_curves = "val-curves"
    sensitivity = "sensitivity"


@app.command()
def plot(
    suite: str = typer.Option(..., "--suite", "-s", help="suite name or path"),
    kind: PlotKind = typer.Option(..., "--kind", "-k", help="dice-vs-labeled, seed-spread, val-curves or sensitivity"),
    out_dir: Path = typer.Option(Path("figures"), "--out-dir", help="folder for the figure files"),
    formats: str = typer.Option("png,pdf", help="comma-separated: png, pdf, svg"),
    checkpoint: Optional[str] = typer.Option(None, help="best_val, last or best_test (default: the suite's protocol)"),
    layout: Optional[str] = typer.Option(None, help="overlay this leaderboard's published values (dice-vs-labeled, "
                                         "sensitivity), e.g. semsim-table1 or advmim-table3"),
    param: Optional[str] = typer.Option(None, help="sensitivity: the swept method parameter (default: the layout's)"),
    study: Optional[str] = typer.Option(None, help="sensitivity: a `bench tune` study (experiment <suite>/tune); "
                                        "default: the suite's runs that log --param"),
    stand_in: Optional[str] = typer.Option(None, "--stand-in", help="compare the suite's runs with this paper "
                                           "dataset's published values, e.g. acdc (synthetic demos)"),
    log_mlflow: bool = typer.Option(True, "--log/--no-log", help="also log the files to MLflow ('<suite>/figures')"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default as for run)"),
) -> None:
    """Draw a figure of the suite's runs (seaborn) and save it as PNG/PDF."""
    from benchmark.report import figures
    from benchmark.report import leaderboard as lbm

    spec, card, protocol, frame, tracker = _suite_frame(suite, checkpoint, tracking_uri)
    if frame.empty:
        _fail(f"no finished runs for suite {spec.name!r}; run `bench run --suite {spec.name}` first", 1)
    runs = lbm.runs_to_layout_frame(frame, protocol.checkpoint)
    lb = None
    if layout:
        try:
            lb = lbm.load(layout)
        except ConfigError as exc:
            _fail(str(exc))
    dataset = stand_in or card.name
    try:
        if kind is PlotKind.dice_vs_labeled:
            fig = figures.dice_vs_labeled(runs, None if lb is None else figures.published_curve(lb, dataset),
                                          title=f"{spec.name}: test Dice vs labeled patients")
        elif kind is PlotKind.seed_spread:
            fig = figures.seed_spread(runs)
        elif kind is PlotKind.val_curves:
            hist = tracker.metric_history(list(runs["run_id"]), "val/dice")
            fig = figures.val_curves(hist.merge(runs[["run_id", "method", "seed", "labeled"]], on="run_id"))
        else:
            name = param or (lb.sweep.get("param") if lb is not None else None)
            if not name:
                _fail("sensitivity needs --param NAME or a sweep --layout (advmim-table3, advmim-table4)")
            if study:   # a `bench tune` study: experiment '<suite>/tune', runs tagged tune.study
                trials = figures.study_trials(tracker.companion_frame("tune"), study, name, protocol.checkpoint)
                if trials.empty:
                    _fail(f"no finished trial of study {study!r} in experiment {spec.name}/tune varies {name!r}", 1)
            else:       # runs of the suite that log the parameter (params.method.<name>)
                col = f"cfg.{name}"
                if col not in runs or runs[col].isna().all():
                    _fail(f"no run of suite {spec.name!r} logs the parameter {name!r} (params.method.{name}); "
                          f"give --study NAME for a bench tune study", 1)
                trials = runs.dropna(subset=[col]).rename(columns={col: name})
            pub = figures.published_sweep(lb) if lb is not None and lb.sweep.get("param") == name else None
            fig = figures.sensitivity(trials, name, published=pub, log=bool(lb is not None and lb.sweep.get("log")))
    except ValueError as exc:
        _fail(str(exc), 1)
    paths = figures.save(fig, out_dir, f"{spec.name}-{kind.value}", _csv(formats) or ["png"])
    for path in paths:
        console.print(f"wrote {path}")
    if log_mlflow:
        run_id = tracker.log_figures(paths, kind.value)
        console.print(f"logged to MLflow experiment {spec.name}/figures, run {run_id}")


@app.command("eval")
def eval_(
    run: Optional[str] = typer.Option(None, "--run", help="MLflow run id of a finished trial"),
    checkpoint_file: Optional[Path] = typer.Option(None, "--checkpoint", help="a weights file (best_val.pt, last.pt) "
                                                   "with the config.yaml that bench run writes beside it"),
    suite: Optional[str] = typer.Option(None, "--suite", "-s", help="with --checkpoint: the suite whose dataset "
                                        "scores it (default: the dataset in config.yaml)"),
    weights: str = typer.Option("best_val", help="with --run: best_val, last or best_test"),
    empty_prediction: Optional[str] = typer.Option(None, help="worst, zero_all, dice0_hd0, transunet or error"),
    hd_units: Optional[str] = typer.Option(None, help="voxel or mm"),
    postprocess: Optional[str] = typer.Option(None, help="none or largest_component"),
    resize: Optional[str] = typer.Option(None, help="nearest, bilinear_logits or cubic"),
    workers: int = typer.Option(0, help="processes scoring cases in parallel"),
    data_root: Optional[Path] = typer.Option(None, help="folder holding real datasets (default: $BENCH_DATA_ROOT)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default as for run)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
) -> None:
    """Score a trained model again under another protocol, without retraining (logged to its MLflow run)."""
    from benchmark import catalog
    from benchmark.run.reeval import SavedModel, evaluate_saved, protocol_changes

    overrides = {k: v for k, v in {"empty_prediction": empty_prediction, "hd_units": hd_units,
                                   "postprocess": postprocess, "resize": resize}.items() if v is not None}
    if (run is None) == (checkpoint_file is None):
        _fail("give exactly one of --run RUN_ID or --checkpoint FILE")
    tracked = None
    try:
        if run is not None:
            from benchmark.track import open_existing_run

            tracked, run_dir = open_existing_run(run, tracking_uri)
            saved = SavedModel.from_run_dir(run_dir, weights)
            dataset = None
        else:
            saved = SavedModel.from_file(checkpoint_file)
            dataset = catalog.get_suite(suite).dataset if suite else None
        protocol, summary, csv_path = evaluate_saved(saved, overrides, dataset, data_root, device, workers)
    except (ConfigError, UnknownNameError) as exc:
        _fail(str(exc))
    prefix = f"eval/{protocol.scoring_hash}/{saved.weights.stem}"
    changes = protocol_changes(protocol, saved.config["dataset"]["evaluation"])
    console.print(f"[bold]{saved.weights}[/] under {protocol.describe()}")
    console.print("changed from training: " + (", ".join(f"{k}={v}" for k, v in changes.items()) or "nothing"))
    for key in ("dice", "jaccard", "hd95", "asd"):
        scale = 100 if key in ("dice", "jaccard") else 1
        console.print(f"  {key:8} {summary[key] * scale:.2f}")
    if tracked is not None:
        tracked.log_metrics({f"{prefix}/{k}": v for k, v in summary.items()}, 0)
        tracked.set_tags({f"eval.{protocol.scoring_hash}": protocol.describe()})
        tracked.log_artifact(csv_path)
        console.print(f"logged to run {run} as {prefix}/*")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def perf(ctx: typer.Context, what: str = typer.Argument("metrics", help="metrics: our metrics vs medpy")) -> None:
    """Rerunnable speed benchmarks (needs the dev extra for medpy); extra options go to `python -m benchmark.perf`."""
    from benchmark.perf import main as perf_main

    raise typer.Exit(perf_main([what, *ctx.args]))


@app.command()
def ui(port: int = typer.Option(5000, help="port on 127.0.0.1"),
       tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default as for run)")) -> None:
    """Open the MLflow UI for the tracking store, bound to 127.0.0.1."""
    from benchmark.track import launch_ui

    raise typer.Exit(launch_ui(tracking_uri, port))


@app.command()
def server(
    port: int = typer.Option(5000, help="port on 127.0.0.1"),
    backend_store_uri: Optional[str] = typer.Option(None, help="database for runs (default: sqlite:///mlflow-server.db "
                                                    "in the working directory; postgresql://... for many writers)"),
    artifacts_destination: Path = typer.Option(Path("mlartifacts"), help="where the server stores artifacts"),
    workers: int = typer.Option(2, help="server worker processes"),
) -> None:
    """Start an MLflow tracking server on 127.0.0.1 (DB backend + artifact root); runs log to it with
    `bench run --tracking-uri http://127.0.0.1:PORT`."""
    from benchmark.track import launch_server

    raise typer.Exit(launch_server(port, backend_store_uri, artifacts_destination, workers))


if __name__ == "__main__":
    app()
