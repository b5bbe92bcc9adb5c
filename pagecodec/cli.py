"""``pagecodec …``: the command line (click).

Exit status: 0 ok, 1 a check failed (verify mismatch), 2 bad input or usage. Errors print one line on
stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click

from . import __version__
from .errors import PageCodecError, one_line

CORPUS_ENV = "PAGECODEC_CORPORA"


class Ctx:
    def __init__(self, plugin_modules: Sequence[str], debug: bool, progress: bool, qemu_version: str | None = None) -> None:
        self.plugin_modules = tuple(plugin_modules)
        self.debug = debug
        self.progress = progress
        self.qemu_version = qemu_version
        self._pm = None

    @property
    def pm(self):  # type: ignore[no-untyped-def]
        if self._pm is None:
            from .plugins import PluginManager

            self._pm = PluginManager(self.plugin_modules)
            for b in self._pm.broken.values():  # the run goes on; what needs the plugin fails naming it
                click.echo(f"pagecodec: warning: {b}; its codecs and presets are not available", err=True)
            from .plugins import LOAD_ENV

            for name in self._pm.not_installed:
                click.echo(f"pagecodec: warning: {LOAD_ENV} names {name!r}, which no installed package provides "
                           f"as a pagecodec plugin", err=True)
        return self._pm

    def spec(self, spec: str) -> str:
        """The SPEC with ``--qemu-version`` applied (a config key, so results record it)."""
        if not self.qemu_version:
            return spec
        return f"{spec},qemu-version={self.qemu_version}" if spec.strip() else f"qemu-version={self.qemu_version}"

    def config(self, spec: str):  # type: ignore[no-untyped-def]
        from .chain.config import parse_spec

        return parse_spec(self.spec(spec), self.pm.presets)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pagecodec")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Load a plugin module (repeatable).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--qemu-version", type=click.Choice(["7.2", "4.1", "10.2"]), default=None,
              help="Follow this QEMU's rules and counters (default 7.2; same as the config key qemu-version).")
@click.pass_context
def cli(ctx: click.Context, plugins: tuple[str, ...], debug: bool, progress: bool | None, qemu_version: str | None) -> None:
    """Replay QEMU's live-migration page encoders offline: real wire bytes, verified, benchmarked."""
    ctx.obj = Ctx(plugins, debug, sys.stderr.isatty() if progress is None else progress, qemu_version)


# --- progress ------------------------------------------------------------------------------------
@contextmanager
def progress_bar(enabled: bool, total: int, label: str, unit: str = "pages") -> Iterator[Callable[..., None] | None]:
    """A rich progress bar counting ``unit`` (pages, runs; ``bytes`` shows sizes), or None when
    disabled. It yields ``tick(n, total=None)``: advance by ``n``; ``total`` replaces the total when
    it becomes known (a merged multifd stream's size)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    count = (DownloadColumn(),) if unit == "bytes" else (MofNCompleteColumn(), TextColumn(unit))
    with Progress(TextColumn("{task.description}"), BarColumn(), *count, TimeRemainingColumn(), transient=True) as prog:
        task = prog.add_task(label, total=total)

        def tick(n: int, total: int | None = None) -> None:
            if total is not None:
                prog.update(task, total=total)
            prog.advance(task, n)

        yield tick


# --- corpus --------------------------------------------------------------------------------------
def corpus_dir() -> Path:
    """$PAGECODEC_CORPORA, else ./corpora, else the corpora/ beside the package (a source checkout)."""
    env = os.environ.get(CORPUS_ENV)
    if env:
        return Path(env)
    here = Path("corpora")
    if (here / "MANIFEST.json").exists():
        return here
    return Path(__file__).resolve().parents[1] / "corpora"


def default_traces() -> list[str]:
    d = corpus_dir()
    manifest = d / "MANIFEST.json"
    if not manifest.exists():
        raise PageCodecError(f"no trace given and no corpus manifest at {manifest} (set {CORPUS_ENV})")
    from .limits import load_json

    try:
        entries = load_json(manifest.read_bytes())
    except (OSError, ValueError) as e:
        raise PageCodecError(f"{manifest}: cannot read the corpus manifest: {e}") from None
    entries = entries.get("traces", entries) if isinstance(entries, dict) else entries
    return [str(d / e["file"]) for e in entries]


# --- commands ------------------------------------------------------------------------------------
@cli.command()
@click.argument("traces", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--config", "configs", multiple=True, metavar="SPEC", help="Preset and/or key=value list (repeatable).")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2",
              help="Multiply configs by parameter values (only the configs that read KEY).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Runs per trace × config; min and median CPU and wall are reported, wire bytes checked equal.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write results JSON (atomically, after every run).")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write every column as CSV.")
@click.option("--plots", type=click.Path(file_okay=False), help="Write plots (PNG + SVG) into this directory.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Parallel runs (local processes; with --dask local its workers, default 2).")
@click.option("--dask", type=click.Choice(["local"]), default=None,
              help="Run the tasks on a Dask LocalCluster of --jobs worker processes started for the sweep.")
@click.option("--scheduler", metavar="tcp://HOST:PORT", default=None,
              help="Run the tasks on an existing Dask cluster (every worker needs pagecodec, the plugins and the traces).")
@click.option("--resume", is_flag=True, help="Keep the runs already in --json FILE and do only the rest.")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="Pin each local worker (and its threads) to one CPU, for repeatable CPU figures.")
@click.option("--min-sample-time", default=0.5, show_default=True, type=click.FloatRange(0, 60), metavar="SECONDS",
              help="A timing repeat shorter than this is the fastest of back-to-back replays filling it.")
@click.option("--format", "fmt", default="github", show_default=True, help="Table format (tabulate).")
@click.option("--wide", is_flag=True, help="Every column (page counts, cache misses, wall times, …).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare the decoded pages with the trace (the first repeat of every run).")
@click.option("--decode/--no-decode", default=True, show_default=True,
              help="Decode every stream on the destination and measure its CPU (--no-decode implies --no-verify).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Add the memcpy and none rows every other row is read against.")
@pass_ctx
def bench(c: Ctx, traces: tuple[str, ...], configs: tuple[str, ...], sweeps: tuple[str, ...], repeat: int,
          json_out: str | None, csv_out: str | None, plots: str | None, jobs: int, dask: str | None,
          scheduler: str | None, resume: bool, pin: bool, min_sample_time: float, fmt: str, wide: bool, verify: bool,
          decode: bool, baselines: bool) -> None:
    """Replay traces × configurations and compare wire size and CPU, the sender's and the destination's.

    With no TRACE, the shipped corpus (corpora/MANIFEST.json); with no --config, every preset that
    `pagecodec plugins` says can run now (the others are named on stderr). Every run is repeated (--repeat) with the repeats interleaved; the first
    repeat decodes the stream and compares every page with the trace. A run that fails (a decode
    error, a page that differs, a plugin that raises, bytes that change between repeats) keeps its
    row, marked FAILED, the others go on, and the exit status is 1. Each row is also read against
    the trace's `none` run (bytes saved, CPU ×) and the memcpy floor; Pareto-optimal configs (wire
    bytes vs sender CPU) are starred. Local runs are pinned to one CPU each (--pin): CPU figures are
    a single core's work and repeatable; wall times of multi-threaded configs are then serial.
    """
    from .harness.matrix import MEMCPY, expand_sweeps, plan_runs, run_matrix

    trace_list = list(traces) or default_traces()
    specs = list(configs) or runnable_presets(c)
    if baselines:
        specs = [MEMCPY, "none", *[s for s in specs if s.strip() not in ("none", MEMCPY)]]
    specs = expand_sweeps(specs, sweeps, lambda s: c.config(s).keys_read(c.pm.codecs))
    specs = [s if s == MEMCPY else c.spec(s) for s in specs]
    for s in specs:
        if s != MEMCPY:
            c.config(s)  # refuse bad specs before any run
    _check_outputs(json_out, csv_out)  # and outputs that cannot be written
    if not decode:
        verify = False
        click.echo("bench: --no-decode: streams are not decoded; no decode CPU and no check of the pages", err=True)
    elif not verify:
        click.echo("bench: --no-verify: streams are decoded, but pages are not compared with the trace", err=True)
    sidecar = f"{json_out}.partial" if json_out else None
    done: list[dict[str, Any]] = []
    samples_done: list[dict[str, Any]] = []
    if resume:
        if not json_out:
            raise click.UsageError("--resume needs --json FILE")
        if Path(json_out).exists():
            done = _load_results(json_out)
        if sidecar and Path(sidecar).exists():
            samples_done = _load_journal(sidecar)
    runs = plan_runs(trace_list, specs)
    collected = list(done)
    journal = open(sidecar, "a", encoding="utf-8") if sidecar else None  # noqa: SIM115 — closed below
    executor = _executor(jobs, dask, scheduler, pin)
    with progress_bar(c.progress, len(runs) * repeat, "bench", unit="runs") as tick:

        def on_result(res: dict[str, Any]) -> None:
            collected.append(res)
            if json_out:  # after every run, so an interrupted sweep can --resume
                _write_json(json_out, collected)
            if tick:
                tick(1)

        def on_sample(sample: dict[str, Any]) -> None:
            if journal is not None:  # one line per finished repeat, appended: O(1) per sample
                journal.write(json.dumps(sample) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
            if tick:
                tick(1)

        try:
            run_matrix(runs, repeat=repeat, check=verify, decode=decode, executor=executor,
                       plugin_modules=c.plugin_modules, done=done, samples_done=samples_done,
                       on_result=on_result, on_sample=on_sample, min_sample_s=min_sample_time)
        finally:
            if journal is not None:
                journal.close()
    _publish(collected, fmt, wide, json_out, csv_out, plots)
    if sidecar:
        Path(sidecar).unlink(missing_ok=True)
    _exit_for(collected)


def _executor(jobs: int, dask: str | None, scheduler: str | None, pin: bool = True) -> Any:
    """bench's executor: the local process pool (each worker pinned to a CPU unless ``pin`` is off),
    a Dask LocalCluster (``--dask local``, ``--jobs`` workers, 2 unless given) or an existing Dask
    cluster (``--scheduler``, whose workers are its own; Dask workers are never pinned)."""
    from .harness.matrix import LocalPool

    jobs_given = click.get_current_context().get_parameter_source("jobs") is not click.core.ParameterSource.DEFAULT
    if dask and scheduler:
        raise click.UsageError("give --scheduler ADDRESS (an existing cluster) or --dask local, not both")
    if not dask and not scheduler:
        return LocalPool(jobs, pin=pin)
    from .harness.dask_pool import LOCAL, DaskPool

    if scheduler:
        if jobs_given:
            raise click.UsageError("--jobs does not apply to --scheduler: the cluster's workers run the tasks")
        return DaskPool(scheduler)
    return DaskPool(LOCAL, jobs if jobs_given else 2)


def _check_outputs(*paths: str | None) -> None:
    """Refuse, before a long run, output files that could not be written at its end (a missing
    directory, a directory in the way): OutputError naming the path."""
    from .atomic import check_output

    for p in paths:
        if p:
            check_output(p)


def _write_json(path: str, obj: Any) -> None:
    from .atomic import atomic_write_json

    atomic_write_json(path, obj)


def _publish(results: list[dict[str, Any]], fmt: str, wide: bool, json_out: str | None, csv_out: str | None,
             plots: str | None) -> None:
    """The table on stdout, the files asked for (each written atomically)."""
    from .atomic import atomic_write_bytes
    from .report.table import csv_rows, format_table

    click.echo(format_table(results, fmt, wide=wide))
    if json_out:
        _write_json(json_out, results)
    if csv_out:
        headers, rows = csv_rows(results)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(headers)
        w.writerows(rows)
        atomic_write_bytes(csv_out, buf.getvalue().encode())
    if plots:
        from .report.plots import write_plots

        for p in write_plots(results, plots):
            click.echo(f"wrote {p}", err=True)


def _exit_for(results: list[dict[str, Any]]) -> None:
    """Exit 1 when a run failed a check or raised, 2 when every failure was bad input (a trace or
    config that could not be read)."""
    failed = [r for r in results if r.get("status", "ok") != "ok"]
    if not failed:
        return
    bad_input = all(r.get("error", {}).get("type") in ("TraceError", "ConfigError") for r in failed)
    click.echo(f"bench: {len(failed)} of {len(results)} runs failed", err=True)
    sys.exit(2 if bad_input else 1)


def runnable_presets(c: Ctx) -> list[str]:
    """The presets that can run now (bench's default): what ``pagecodec plugins`` says can run; the
    others are named on stderr with the reason."""
    from .listing import preset_status

    out = []
    for name in c.pm.presets:
        st = preset_status(c.pm, name, c.spec)
        if st["runnable"]:
            out.append(name)
        else:
            click.echo(f"bench: preset {name!r} left out: {st['why_not']}", err=True)
    return out


def _select(results: list[dict[str, Any]], traces: Sequence[str], configs: Sequence[str], path: str) -> list[dict[str, Any]]:
    """The runs of the given trace file names and config labels (all when none are given). A trace's
    memcpy and none rows stay with it: the others are read against them."""
    out = [r for r in results
           if (not traces or Path(r.get("trace", {}).get("path", "")).name in traces)
           and (not configs or r.get("config", {}).get("label") in (*configs, "none", "memcpy"))]
    if not out:
        raise PageCodecError(f"{path}: no run matches --trace {' '.join(traces) or '*'} --config {' '.join(configs) or '*'}")
    return out


def _load_journal(path: str) -> list[dict[str, Any]]:
    """The finished repeats of unfinished runs (``--json F`` keeps them in ``F.partial``, one JSON
    object per line). A line cut short by an interruption is skipped: that repeat runs again."""
    from .limits import load_json

    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:
        raise PageCodecError(f"{path}: cannot read the unfinished runs' repeats: {e}") from e
    for line in lines:
        try:
            obj = load_json(line)  # bounded depth: a damaged line is skipped, not a RecursionError
        except ValueError:
            continue
        if isinstance(obj, dict) and "trace" in obj and "config" in obj:
            out.append(obj)
    return out


def _load_results(path: str) -> list[dict[str, Any]]:
    """A results file: bench's list of runs, or the one run ``replay --json`` / ``verify --json``
    writes."""
    from .limits import load_json

    try:
        data = load_json(Path(path).read_bytes())  # bounded depth (a results file is input too)
    except (OSError, ValueError) as e:
        raise PageCodecError(f"{path}: cannot read results: {e}") from e
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) and "trace" in r and "config" in r for r in data):
        raise PageCodecError(f"{path}: not a pagecodec results file (expected a run or a list of runs)")
    return data


@cli.command()
@click.argument("traces", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--config", "specs", multiple=True, metavar="SPEC", help="Config to check (repeatable; default none).")
@click.option("--machine", default="pc-i440fx-7.2", show_default=True, help="Machine type in the stream's configuration.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write the results JSON (one run: an object; several: a list), with the destination's CPU per stage.")
@pass_ctx
def verify(c: Ctx, traces: tuple[str, ...], specs: tuple[str, ...], machine: str, json_out: str | None) -> None:
    """Replay each TRACE with each config, decode the stream, and compare every page of every round
    with the trace. Every pair is checked (a failure does not stop the others); exit 1 if any failed."""
    from .atomic import atomic_write_json, check_output
    from .harness.replay import verify as do_verify
    from .trace.format import TraceReader

    cfgs = [c.config(s) for s in (specs or ("none",))]  # refuse bad specs before any run
    if json_out:
        check_output(json_out)  # and an output that cannot be written
    out: list[dict[str, Any]] = []
    failed = 0
    for trace in traces:
        for cfg in cfgs:
            try:
                reader = TraceReader(trace)
                with progress_bar(c.progress, reader.num_pages, "verify", unit="pages") as tick:
                    res = do_verify(reader, cfg, c.pm, machine=machine, progress=tick)
            except PageCodecError as e:
                if len(traces) * len(cfgs) == 1:
                    raise
                failed += 1
                click.echo(f"verify: FAILED: {trace} with config {cfg.label!r}: {e}", err=True)
                out.append({"trace": {"path": trace}, "config": cfg.to_json(), "status": "failed",
                            "error": {"type": type(e).__name__, "message": str(e)}})
                continue
            out.append({**res.metrics, "status": "ok" if res.ok else "failed",
                        "verify": {"checked": True, "ok": res.ok, "mismatch": str(res.mismatch) if res.mismatch else None}})
            if res.mismatch is not None:
                failed += 1
                click.echo(f"verify: FAILED: {trace} with config {cfg.label!r}: {res.mismatch}", err=True)
                continue
            click.echo(
                f"verify: OK: {trace} with config {cfg.label!r}: {res.rounds} rounds, {res.pages} pages, "
                f"{res.stream_bytes} stream bytes"
                + (f" + {res.channel_bytes} bytes on {cfg.param('multifd-channels')} multifd channels" if res.channel_bytes else "")
                + "; every page of every round arrived intact"
            )
    if json_out:
        atomic_write_json(json_out, out[0] if len(out) == 1 else out)
    if failed:
        if len(out) > 1:
            click.echo(f"verify: {failed} of {len(out)} checks failed", err=True)
        sys.exit(1)


@cli.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--config", "spec", required=True, metavar="SPEC")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the run's results JSON.")
@click.option("--qemu-stream", type=click.Path(), metavar="PATH",
              help="Write the stream: a QEVM file; with multifd a new directory holding main.mig and "
                   "channel-<k>.bin (what 'trace import-qemu main.mig --channel …' reads).")
@click.option("--machine", default="pc-i440fx-7.2", show_default=True)
@click.option("--format", "fmt", default="github", show_default=True)
@pass_ctx
def replay(c: Ctx, trace: str, spec: str, json_out: str | None, qemu_stream: str | None, machine: str, fmt: str) -> None:
    """Replay TRACE with one configuration."""
    from .atomic import atomic_write_json, check_output
    from .harness.replay import replay as do_replay
    from .report.table import format_table
    from .trace.format import TraceReader

    reader = TraceReader(trace)
    cfg = c.config(spec)
    if json_out:
        check_output(json_out)  # refused now, not after the run
    with progress_bar(c.progress, reader.num_pages, "replay") as tick:
        res = do_replay(reader, cfg, c.pm, qemu_stream=qemu_stream, machine=machine, progress=tick)
    click.echo(format_table([res], fmt))
    if json_out:
        atomic_write_json(json_out, res)


@cli.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--config", "configs", multiple=True, metavar="SPEC", help="Preset and/or key=value list (repeatable; default none).")
@click.option("--link", "links", required=True, metavar="SPEED[,SPEED…]",
              help="Link speed in bits/s, decimal (10G = 10 Gbit/s); a list makes a transfer sheet.")
@click.option("--downtime-limit", default="300ms", show_default=True, metavar="TIME",
              help="QEMU's downtime-limit (300ms, 0.3s; a bare number is ms).")
@click.option("--max-bandwidth", default=None, metavar="BYTES",
              help="QEMU's max-bandwidth in bytes/s (128M = 128 MiB/s) while iterating; default: no limit but the "
                   "link (QEMU 7.2's own default is 128M).")
@click.option("--cpus", default=None, type=click.IntRange(1, 4096),
              help="CPUs for the encoder's worker threads (compress threads, multifd channels); default: one each.")
@click.option("--cpu-time/--no-cpu-time", default=True, show_default=True,
              help="Charge the encoder's measured CPU time (this machine's) to each pass; off: the link decides.")
@click.option("--max-passes", default=50, show_default=True, type=click.IntRange(1, 100000),
              help="Passes before a migration that has not converged is reported as not converging.")
@click.option("--log-end", default="repeat", show_default=True, type=click.Choice(["repeat", "stop"]),
              help="When the migration outlasts the log: replay its slices again, or stop (reported).")
@click.option("--postcopy-after", default=None, type=click.IntRange(0, 100000), metavar="N",
              help="migrate-start-postcopy once N passes are over (needs postcopy-ram in the config).")
@click.option("--rtt", default="0.1ms", show_default=True, metavar="TIME",
              help="Round trip of a postcopy page request (a bare number is ms).")
@click.option("--device-state", default="0", show_default=True, metavar="BYTES",
              help="Non-RAM device state sent in the downtime (K/M suffixes).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write every run's results JSON.")
@click.option("--plots", type=click.Path(file_okay=False), help="Write the transfer-sheet plot (PNG + SVG) here.")
@click.option("--format", "fmt", default="github", show_default=True, help="Table format (tabulate).")
@pass_ctx
def simulate(c: Ctx, trace: str, configs: tuple[str, ...], links: str, downtime_limit: str, max_bandwidth: str | None,
             cpus: int | None, cpu_time: bool, max_passes: int, log_end: str, postcopy_after: int | None, rtt: str,
             device_state: str, json_out: str | None, plots: str | None, fmt: str) -> None:
    """Migrate a timed dirty log (trace v2) at a link speed as QEMU 7.2's migration thread does (100 ms
    windows, the rate limit, syncs mid-pass, auto-converge, postcopy), through the real chain: passes,
    dirty-sync-count, total time, downtime, bytes, converged or not."""
    from .atomic import atomic_write_json, check_output
    from .harness.precopy import Link
    from .harness.simulate import parse_bandwidth, parse_duration, parse_links, simulate as do_simulate
    from .report.simulation import format_sheet, format_simulation, transfer_sheet
    from .trace.format import TraceReader

    from .chain.config import parse_size
    from .errors import ConfigError

    speeds = parse_links(links)
    limit = parse_duration(downtime_limit)
    rtt_s = parse_duration(rtt)
    state = parse_size(device_state)
    bw = parse_bandwidth(max_bandwidth) if max_bandwidth is not None else None
    cfgs = [c.config(s) for s in (configs or ("none",))]
    if postcopy_after is not None and not any(cfg.cap("postcopy-ram") for cfg in cfgs):
        raise ConfigError("--postcopy-after needs a config with the postcopy-ram capability (QEMU refuses "
                          "migrate-start-postcopy without it)")
    if json_out:
        check_output(json_out)
    if plots:
        check_output(plots, directory=True)
    results = []
    reader = TraceReader(trace)
    for label, rate in speeds:
        link = Link(rate, downtime_limit_s=limit, max_bandwidth=bw, cpus=cpus, cpu_time=cpu_time,
                    device_state_bytes=state, rtt_s=rtt_s)
        for cfg in cfgs:
            with progress_bar(c.progress, 0, f"{label} {cfg.label}") as tick:
                results.append(do_simulate(reader, cfg, c.pm, link, max_passes=max_passes, repeat=log_end == "repeat",
                                           link_label=label, progress=tick,
                                           postcopy_after=postcopy_after if cfg.cap("postcopy-ram") else None))
    click.echo(format_simulation(results, fmt))
    if len(speeds) > 1:
        click.echo()
        click.echo(format_sheet(transfer_sheet(results), fmt))
    if plots:
        Path(plots).mkdir(parents=True, exist_ok=True)
        from .report.simulation_plot import write_transfer_plot  # matplotlib only when asked for

        write_transfer_plot(results, plots)
    if json_out:
        atomic_write_json(json_out, {"runs": results, "transfer-sheet": transfer_sheet(results)})


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Everything as one JSON object (plugins, codecs, presets, environment).")
@pass_ctx
def plugins(c: Ctx, as_json: bool) -> None:
    """List plugins (version, source, what they provide, or why they failed to load), every codec once
    (slot, QEMU's wire format or a pagecodec extension, plugin) and the presets: whether each can run
    now, and why not. Exit 2 when a plugin failed to load."""
    from .listing import listing, render, terminal_width

    data = listing(c.pm, c.spec)
    click.echo(json.dumps(data, indent=1) if as_json else render(data, terminal_width()))
    if c.pm.broken:
        sys.exit(2)


@cli.command()
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.argument("baseline", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", default="github", show_default=True,
              type=click.Choice(["github", "pipe", "rst", "latex", "html", "plain", "simple"]))
@click.option("--wide", is_flag=True, help="Every column.")
@click.option("--trace", "only_traces", multiple=True, metavar="NAME", help="Only runs of this trace (file name; repeatable).")
@click.option("--config", "only_configs", multiple=True, metavar="LABEL", help="Only runs of this config label (repeatable).")
@click.option("--plots", type=click.Path(file_okay=False), help="Write plots (PNG + SVG) into this directory.")
@click.option("--fail-cpu", "fail_cpu", default=10.0, show_default=True, type=click.FloatRange(0),
              help="With BASELINE: a min CPU (sender or decode) this many percent above the baseline's is a regression.")
@click.option("--fail-wire", "fail_wire", default=0.1, show_default=True, type=click.FloatRange(0),
              help="With BASELINE: wire bytes this many percent above the baseline's are a regression.")
def report(results: str, baseline: str | None, fmt: str, wide: bool, only_traces: tuple[str, ...],
           only_configs: tuple[str, ...], plots: str | None, fail_cpu: float, fail_wire: float) -> None:
    """Tables (and plots) from a results JSON written by bench, replay or verify; with BASELINE, how
    RESULTS compare with it (exit 1 on a regression beyond the thresholds)."""
    from .report.table import format_table

    data = _select(_load_results(results), only_traces, only_configs, results)
    if baseline is None:
        click.echo(format_table(data, fmt, wide=wide))
    else:
        from .report.compare import compare, format_comparison

        base = _select(_load_results(baseline), only_traces, only_configs, baseline)
        cmp = compare(data, base, cpu_pct=fail_cpu, wire_pct=fail_wire)
        click.echo(f"{results} against the baseline {baseline}:")
        click.echo(format_comparison(cmp, fmt))
    if plots:
        from .report.plots import write_plots

        for p in write_plots(data, plots):
            click.echo(f"wrote {p}", err=True)
    if baseline is not None and cmp.failed:
        sys.exit(1)


# --- trace ---------------------------------------------------------------------------------------
@cli.group()
def trace() -> None:
    """Inspect and make traces."""


@trace.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def trace_info(path: str, as_json: bool) -> None:
    """Blocks, rounds, pages per round, zero fraction, bytes."""
    from .trace.format import TraceReader
    from .trace.info import format_info, trace_info as info

    d = info(TraceReader(path))
    click.echo(json.dumps(d, indent=1, default=str) if as_json else format_info(d))


def _queued_twice(mrep: Any) -> str:
    """The import report's duplicate pages (7.2's requeue race, see pagecodec.sources.qemu_stream.multifd)."""
    n = mrep.duplicate_pages
    if not n:
        return "no page queued twice"
    return (f"{n} pages queued twice (later packet's copy kept; {mrep.duplicate_pages_differing} with differing "
            f"copies, {mrep.duplicate_pages_not_resent} of them not sent again)")


@trace.command("import-qemu")
@click.argument("stream", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Trace file to write.")
@click.option("--no-vmdesc", is_flag=True, help="Accept a stream without the VMDESCRIPTION trailer (suppress-vmdesc).")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
@click.option("--channel", "channels", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="A multifd channel file (repeat for each); STREAM is then the capture's main stream.")
@click.option("--max-ram", default=None, callback=lambda ctx, param, v: _size(ctx, param, v), metavar="SIZE",
              help="Refuse a stream whose MEM_SIZE list claims more RAM than this (K/M/G/T) [default: what the "
                   "machine, or ulimit -v, holds].")
@pass_ctx
def trace_import_qemu(c: Ctx, stream: str, output: str, no_vmdesc: bool, as_json: bool, channels: tuple[str, ...],
                      max_ram: int | None) -> None:
    """Import a QEMU migration stream (migrate "exec:cat > FILE") as a trace: one round per pass."""
    import shlex

    from .sources.qemu_stream import import_qemu_stream

    if channels:  # a multifd capture: main stream + channel files (pagecodec.sources.qemu_stream.multifd)
        from .sources.qemu_stream import import_multifd

        size = sum(os.path.getsize(p) for p in (stream, *channels) if os.path.isfile(p))
        with progress_bar(c.progress, size, "import", unit="bytes") as tick:
            mrep = import_multifd(stream, channels, output, require_vmdesc=not no_vmdesc, progress=tick, max_ram=max_ram)
        if as_json:
            click.echo(json.dumps(mrep.to_json(), indent=1))
            return
        click.echo(
            f"imported {stream} + {len(channels)} multifd channels ({mrep.compression}; {mrep.sections} RAM sections, "
            f"{mrep.packets} packets; zero {mrep.zero_pages}, normal {mrep.channel_pages}; {_queued_twice(mrep)}) "
            f"-> {output}: {mrep.rounds} rounds, pages per round {mrep.pages_per_round}"
        )
        return

    command = f"pagecodec trace import-qemu {shlex.quote(stream)} -o {shlex.quote(output)}"
    command += " --no-vmdesc" if no_vmdesc else ""
    total = os.path.getsize(stream) if os.path.isfile(stream) else 0
    with progress_bar(c.progress, total, "import", unit="bytes") as tick:
        rep = import_qemu_stream(stream, output, progress=tick, command=command, require_vmdesc=not no_vmdesc,
                                 max_ram=max_ram)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=1))
        return
    recs = ", ".join(f"{k} {v}" for k, v in rep.records.items() if v)
    click.echo(
        f"imported {stream} (machine {rep.machine or '?'}, {rep.ram_sections} RAM sections; {recs}) -> {output}: "
        f"{len(rep.blocks)} blocks, {rep.rounds} rounds, pages per round {rep.pages_per_round}"
        + (f"; ignored shared blocks: {', '.join(rep.ignored_blocks)}" if rep.ignored_blocks else "")
    )


@trace.command("image")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--block", "block_name", required=True, metavar="NAME", help="RAM block (idstr) to extract.")
@click.option("--round", "round_no", type=click.IntRange(0), default=None, help="Content as of this round (default: last).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="File to write the block to.")
def trace_image(path: str, block_name: str, round_no: int | None, output: str) -> None:
    """Write a RAM block's content as of a round (like analyze-migration's -x)."""
    from .trace.format import TraceReader
    from .trace.image import write_block_image

    with TraceReader(path) as reader:
        n, digest = write_block_image(reader, block_name, output, round_no)
        last = reader.num_rounds - 1
    click.echo(f"wrote {output}: block {block_name!r} as of round {last if round_no is None else round_no}, "
               f"{n} bytes, sha256 {digest}")


def _size(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from .chain.config import parse_size
    from .errors import ConfigError

    if value is None:
        return None
    try:
        return parse_size(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


def _blocks(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[tuple[str, int]] | None:
    out = []
    for v in value:
        name, eq, size = v.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{v!r}: expected NAME=SIZE")
        out.append((name, _size(ctx, param, size)))
    return out or None


@trace.command("synth")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--ram-size", default="64M", show_default=True, callback=_size, help="Size of block pc.ram.")
@click.option("--block", "blocks", multiple=True, callback=_blocks, metavar="NAME=SIZE",
              help="RAM blocks instead of a single pc.ram (repeatable).")
@click.option("--rounds", default=8, show_default=True, type=click.IntRange(1, 100000))
@click.option("--dirty-fraction", default="0.05", show_default=True,
              help="Fraction of pages dirtied per round (one value, or one per round, comma-separated).")
@click.option("--pattern", "patterns", default="sparse=4,rewrite=1,toggle=1,text=2,random=1", show_default=True,
              help="Write patterns with weights: sparse, rewrite, toggle, text, random.")
@click.option("--zero-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--unchanged-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="Dirty pages whose content stays the same.")
@click.option("--page-size", default=4096, show_default=True, type=int)
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Make a timed dirty log (trace v2): round k is the slice of pages written in the k-th interval.")
@click.option("--dirty-rate", default=None, callback=_size, metavar="BYTES",
              help="With --interval: bytes dirtied per second (K/M/G), instead of --dirty-fraction.")
@click.option("--working-set", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of the pages (from the first) that rounds after round 0 write.")
@click.option("--dirty-order", default="runs", show_default=True, type=click.Choice(["runs", "sweep"]),
              help="runs: clustered random runs; sweep: the next pages of the working set in order, wrapping.")
@pass_ctx
def trace_synth(c: Ctx, output: str, ram_size: int, blocks: list[tuple[str, int]] | None, rounds: int, dirty_fraction: str,
                patterns: str, zero_fraction: float, unchanged_fraction: float, page_size: int, seed: int,
                interval: float | None, dirty_rate: int | None, working_set: float, dirty_order: str) -> None:
    """Generate a synthetic trace (deterministic for a seed); with --interval, a timed dirty log."""
    from .sources.synth import parse_patterns, synth_pages, synthesize

    if dirty_rate is not None:
        if interval is None:
            raise click.BadParameter("needs --interval (a rate is per second of a timed log)", param_hint="--dirty-rate")
        ram = sum(size for _, size in blocks) if blocks else ram_size
        if not ram or not page_size:
            raise click.BadParameter("no RAM to dirty", param_hint="--dirty-rate")
        # whole pages per slice, as a fraction of the pages (synthesize rounds it back to the same count)
        dirty_fraction = repr(round(dirty_rate * interval / page_size) / (ram // page_size))
    try:
        fr = [float(x) for x in dirty_fraction.split(",")]
    except ValueError:
        raise click.BadParameter(f"{dirty_fraction!r}: expected numbers", param_hint="--dirty-fraction") from None
    try:
        pats = parse_patterns(patterns)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--pattern") from None
    dirty = fr if len(fr) > 1 else fr[0]
    try:
        total = synth_pages(ram_size, rounds, dirty, page_size, blocks)
    except (ValueError, ArithmeticError):  # (an infinite fraction overflows int(): OverflowError)
        total = 0  # synthesize names what is wrong with the arguments
    with progress_bar(c.progress, total, "synth", unit="pages") as tick:
        synthesize(
            output, ram_size=ram_size, rounds=rounds, dirty_fraction=dirty, patterns=pats,
            zero_fraction=zero_fraction, seed=seed, page_size=page_size, blocks=blocks,
            unchanged_fraction=unchanged_fraction,  # provenance: the canonical command, so bytes reproduce
            progress=tick, interval=interval, working_set=working_set, dirty_order=dirty_order,
        )
    click.echo(f"wrote {output}")


# --- capture -------------------------------------------------------------------------------------
@cli.group()
def capture() -> None:
    """Record traces from live sources."""


@capture.command("qemu")
@click.option("--qmp", "qmp_socket", required=True, type=click.Path(), metavar="SOCKET",
              help="QMP UNIX socket of the running QEMU (-qmp unix:SOCKET,server=on,wait=off).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Trace file to write.")
@click.option("--max-bandwidth", default="1M", show_default=True, callback=_size,
              help="max-bandwidth while iterating (bytes/s; K/M/G).")
@click.option("--downtime-limit", default=1, show_default=True, type=click.IntRange(1, 2_000_000),
              help="downtime-limit (ms) while iterating.")
@click.option("--passes", default=5, show_default=True, type=click.IntRange(0, 100000),
              help="Raise the limits after this many dirty syncs so the migration completes (0: never).")
@click.option("--capability", "capabilities", multiple=True, type=click.Choice(["xbzrle", "compress"]),
              help="Page capability to switch on (default: all off).")
@click.option("--xbzrle-cache-size", default=None, callback=_size, help="xbzrle-cache-size (with --capability xbzrle).")
@click.option("--parameter", "parameters", multiple=True, metavar="KEY=VALUE",
              help="Another migrate-set-parameters value by QMP name, e.g. compress-threads=2 (repeatable).")
@click.option("--cont", is_flag=True, help="Resume the guest afterwards (it is left paused otherwise).")
@click.option("--stream", "keep_stream", type=click.Path(), help="Also keep the raw migration stream "
              "(with --multifd: a directory for main.mig and channel-<k>.bin).")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(1), help="Seconds before giving up.")
@click.option("--multifd", type=click.IntRange(1, 255), default=None, metavar="N",
              help="Migrate with N multifd channels over loopback TCP to pagecodec's recorder.")
@click.option("--multifd-compression", default="none", show_default=True, type=click.Choice(["none", "zlib", "zstd"]),
              help="multifd-compression (with --multifd).")
@click.option("--interval", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Record a timed dirty log instead of migrating: the pages the guest changed in each interval "
                   "of its running time (the VM is paused to read them).")
@click.option("--slices", type=click.IntRange(1), default=None, help="With --interval: how many intervals.")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="With --interval: guest running time to cover (instead of --slices).")
@click.option("--method", default="auto", show_default=True, type=click.Choice(["auto", "ram-file", "snapshot"]),
              help="With --interval: read RAM from its shared backing file, or by a snapshot migration per slice.")
@pass_ctx
def capture_qemu(c: Ctx, qmp_socket: str, output: str, max_bandwidth: int, downtime_limit: int, passes: int,
                 capabilities: tuple[str, ...], xbzrle_cache_size: int | None, cont: bool, keep_stream: str | None,
                 timeout: float, multifd: int | None, multifd_compression: str, parameters: tuple[str, ...],
                 interval: float | None, slices: int | None, duration: float | None, method: str) -> None:
    """Migrate a running QEMU guest to a stream over QMP and import it as a trace; with --interval, record
    a timed dirty log of it instead (trace v2, for `pagecodec simulate`)."""
    from .trace.format import TraceReader
    from .sources.qemu_live import capture_qemu as do_capture

    if interval is not None:
        _capture_dirty_log(c, qmp_socket, output, interval, slices, duration, method, timeout)
        return
    if slices is not None or duration is not None:
        raise click.UsageError("--slices and --duration go with --interval")

    params: dict[str, Any] = {}
    for item in parameters:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--parameter")
        params[key] = int(value) if value.isdigit() else {"on": True, "off": False}.get(value, value)
    if keep_stream and not multifd and os.path.isdir(keep_stream):
        raise click.BadParameter(f"{keep_stream!r} is a directory (only --multifd keeps a directory)", param_hint="--stream")

    def run(progress: Callable[[Any], None] | None) -> Any:
        return do_capture(qmp_socket, output, max_bandwidth=max_bandwidth, downtime_limit=downtime_limit,
                          passes=passes or None, capabilities=capabilities, xbzrle_cache_size=xbzrle_cache_size,
                          cont=cont, keep_stream=keep_stream, timeout=timeout, progress=progress,
                          parameters=params,
                          **({"multifd": multifd, "multifd_compression": multifd_compression} if multifd else {}))

    if c.progress:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as prog:
            task = prog.add_task("migrating")
            res = run(lambda p: prog.update(task, description=f"{p.status}: pass {p.passes}, {p.mb:.1f} MB sent"))
    else:
        res = run(None)
    m = res.migration
    with TraceReader(output) as r:
        rounds, pages = r.num_rounds, r.num_pages
    click.echo(f"captured: {m.passes} passes, {m.transferred / 1e6:.1f} MB sent in {m.elapsed:.1f} s "
               f"({'multifd ' + str(multifd) + ' channels, ' if multifd else ''}stream {m.size} bytes) -> {output}: "
               f"{rounds} rounds, {pages} pages"
               + ("; guest resumed" if res.resumed else "; guest left paused"))


def _capture_dirty_log(c: Ctx, qmp_socket: str, output: str, interval: float, slices: int | None,
                       duration: float | None, method: str, timeout: float) -> None:
    """``capture qemu --interval``: the timed dirty log (the guest keeps running afterwards)."""
    from .sources.qemu_live import capture_dirty_log

    if (slices is None) == (duration is None):
        raise click.UsageError("--interval needs either --slices or --duration")

    def run(progress: Callable[[Any], None] | None) -> Any:
        return capture_dirty_log(qmp_socket, output, interval=interval, slices=slices, duration=duration,
                                 method=method, timeout=timeout, progress=progress)

    if c.progress:
        from rich.progress import Progress

        with Progress(transient=True) as prog:
            task = prog.add_task("slices", total=None)
            res = run(lambda p: prog.update(task, total=p.slices, completed=p.slice,
                                            description=f"slice {p.slice}: {p.time_s:.2f} s, {p.pages} pages"))
    else:
        res = run(None)
    rate = res.slice_pages / res.duration_s if res.duration_s > 0 else 0.0
    click.echo(f"captured: {res.slices} slices over {res.duration_s:.2f} s of guest time, {res.slice_pages} changed "
               f"pages ({rate:,.0f} pages/s), read by {res.method}"
               + (" (checked against a final snapshot)" if res.checked else "") + f" -> {output}")


@capture.command("process", context_settings={"allow_interspersed_args": False})
@click.option("--pid", type=click.IntRange(1), default=None, help="Attach to this running process (needs ptrace access).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Trace file to write.")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds between slices of the timed dirty log (trace v2), on the process's running time "
                   "(time held stopped while reading is excluded).")
@click.option("--rounds", type=click.IntRange(1, 100000), default=None, help="Rounds to record [default: 8].")
@click.option("--duration", type=click.FloatRange(0), default=None,
              help="Record this many seconds of the process's running time instead (the log's duration).")
@click.option("--max-mib", default=64.0, show_default=True, type=click.FloatRange(0),
              help="Cap on the bytes recorded (largest mappings trimmed first; 0: no cap).")
@click.option("--include", "include", multiple=True, metavar="GLOB|0xADDR",
              help="Only mappings whose block name or path match, or holding this address (repeatable).")
@click.option("--freeze/--no-freeze", default=True, show_default=True,
              help="SIGSTOP the process while a round is read (consistent snapshots).")
@click.option("--method", default="auto", show_default=True, type=click.Choice(["auto", "soft-dirty", "diff"]),
              help="Dirty detection: kernel soft-dirty bits, or diffing successive reads.")
@click.option("--warmup", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to let a launched command run before round 0.")
@click.option("--unreadable", default="zero", show_default=True, type=click.Choice(["zero", "error"]),
              help="Pages the kernel refuses to read at round 0: zero-fill with a note, or fail.")
@click.option("--json", "as_json", is_flag=True, help="Print the capture report as JSON.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def capture_process(c: Ctx, pid: int | None, output: str, interval: float, rounds: int | None, duration: float | None,
                    max_mib: float, include: tuple[str, ...], freeze: bool, method: str, warmup: float,
                    unreadable: str, as_json: bool, command: tuple[str, ...]) -> None:
    """Record a live process's writable memory as a timed dirty log (trace v2: round 0 the image, then a
    slice of the pages written every --interval seconds): --pid PID, or -- CMD … (launched, recorded after
    --warmup, then terminated). `pagecodec simulate` replays it."""
    from .sources.process import capture_process as do_capture

    if (pid is None) == (not command):
        raise click.UsageError("give either --pid PID or -- CMD … (the command to launch)")
    if rounds is not None and duration is not None:
        raise click.UsageError("give --rounds or --duration, not both")
    max_bytes = int(max_mib * (1 << 20)) if max_mib else None
    target: Any = pid if pid is not None else list(command)
    total = rounds if rounds is not None else (int(duration / interval + 1e-9) + 1 if duration is not None else 8)

    with progress_bar(c.progress, total, "rounds") as tick:
        rep = do_capture(target, output, interval=interval, rounds=rounds, duration=duration, include=include,
                         max_bytes=max_bytes, freeze=freeze, method=method, warmup=warmup, unreadable=unreadable,
                         progress=(lambda r, n, p: tick(1)) if tick else None)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=1))
        return
    for w in rep.warnings + rep.notes:
        click.echo(f"pagecodec: warning: {w}", err=True)
    import shlex

    shown = shlex.join(rep.target).replace("\n", " ") or "?"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    click.echo(
        f"captured process {rep.pid} ({shown}) -> {output}: {len(rep.blocks)} blocks, "
        f"{rep.ram_bytes / (1 << 20):.1f} MiB, {rep.rounds} rounds, pages per round {rep.pages_per_round}; "
        f"timed dirty log over {rep.duration_s:.3f} s of the process's running time"
        f"{f' ({rep.frozen_s:.3f} s held stopped, excluded)' if rep.frozen else ''}; "
        f"dirty detection: {rep.method} ({rep.method_reason}); "
        f"{'frozen (SIGSTOP) while reading' if rep.frozen else 'not frozen'}; kernel {rep.kernel}"
    )


# --- entry point ---------------------------------------------------------------------------------
def _usage_line(e: click.ClickException) -> str:
    """A click usage error as one line naming the command and where to read its usage."""
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        return f"{ctx.command_path}: error: {one_line(e.format_message())} (see '{ctx.command_path} --help')"
    return f"pagecodec: error: {one_line(e.format_message())}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI. Every error is one line on stderr (``--debug``: the traceback) and exit status 2:
    bad input (PageCodecError), bad usage (click), and what the environment refuses — a file that
    cannot be read or written (OSError), memory the machine does not have (MemoryError)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="pagecodec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("pagecodec: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(_usage_line(e), err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except PageCodecError as e:
        if debug:
            raise
        click.echo(f"pagecodec: error: {one_line(str(e))}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # the environment: what the command's own checks did not name already
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"pagecodec: error: {where}{one_line(e.strerror or str(e))}", err=True)
        sys.exit(2)
    except MemoryError as e:
        if debug:
            raise
        click.echo(f"pagecodec: error: out of memory{': ' + one_line(str(e)) if str(e) else ''} (the machine, or "
                   f"ulimit -v, holds {_machine_memory()})", err=True)
        sys.exit(2)


def _machine_memory() -> str:
    from .limits import format_bytes, machine_memory

    return format_bytes(machine_memory())


if __name__ == "__main__":  # pragma: no cover
    main()
