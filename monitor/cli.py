"""The `monitor` command: serve | demo | simulate | analyze | db | rm | bench | signals | keys | relabel."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from monitor.config import Settings, load_settings
from monitor.errors import ConfigError, MonitorError

if TYPE_CHECKING:
    from monitor.relabel.cycles import CycleService

app = typer.Typer(help="Watch an RLHF assistant and catch its reward model diverging from users.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema (Alembic migrations) and retention (prune).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print throughput ratios.", no_args_is_help=True)
rm_app = typer.Typer(help="Reward models: the bundled demo RM and a scoring server.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(rm_app, name="rm")
app.add_typer(bench_app, name="bench")
signals_app = typer.Typer(help="The sentence classifiers behind the sycophancy, hedging, overpromise and refusal "
                          "signals.", no_args_is_help=True)
app.add_typer(signals_app, name="signals")
keys_app = typer.Typer(help="API keys: viewer, annotator or admin; sent as 'Authorization: Bearer <key>'.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
relabel_app = typer.Typer(help="Relabeling cycles: new preference labels where the reward model fails "
                          "(docs/relabel.md).", no_args_is_help=True)
app.add_typer(relabel_app, name="relabel")


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _fail(exc: BaseException, doing: str = "database error") -> typer.Exit:
    """Print ``exc`` as one ``error:`` line on stderr; the caller raises the returned exit 2."""
    typer.echo(f"error: {_error_line(exc, doing)}", err=True)
    return typer.Exit(2)


def main() -> None:
    """The `monitor` command (the console script and `python -m monitor`).

    Exit codes: 0 done; 1 a check that answered no, which is no error (`db current` behind head,
    `analyze` or `db prune` finding another one at work, a prune left incomplete); 2 an error, one
    ``error: ...`` line on stderr (typer's own usage errors print their box). Commands turn the
    errors they expect into that line themselves (:func:`_fail`); here the rest of `monitor`'s
    errors (a :class:`MonitorError`, an unreachable or failing database) get it instead of a
    traceback. Ctrl-C exits 130 quietly; any other exception is a bug and keeps its traceback.
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app(prog_name="monitor")
    except KeyboardInterrupt:  # typer turns one inside a command into exit 130; this is one outside it
        sys.exit(130)
    except (MonitorError, SQLAlchemyError) as exc:
        typer.echo(f"error: {_error_line(exc)}", err=True)
        sys.exit(2)


def _error_line(exc: BaseException, doing: str = "database error") -> str:
    """``exc`` in one line. Connecting failed (SQLAlchemy's error then has no statement), perhaps
    under a MonitorError: ``cannot reach the database URL: <the driver's first line>``; another
    database error: ``<doing> on URL: ...``; else the message's first line. URLs are masked."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, DBAPIError) and (cause.statement is None or cause.connection_invalidated):
            return f"cannot reach the database {_database_where()}: {_one_line(cause.orig or cause)}"
        cause = cause.__cause__
    if isinstance(exc, SQLAlchemyError):
        return f"{doing} on {_database_where()}: {type(exc).__name__}: {_one_line(exc)}"
    return _one_line(exc)


def _database_where() -> str:
    """The database the command used, masked: its ``--database-url`` (the benchmarks), else MONITOR_DATABASE_URL."""
    from monitor.store.db import masked_url

    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg.startswith("--database-url="):
            return masked_url(arg.partition("=")[2])
        if arg == "--database-url" and i + 1 < len(args):
            return masked_url(args[i + 1])
    try:
        return masked_url(load_settings().database_url)
    except ConfigError:  # not reached: the command loaded them before it touched the store
        return "MONITOR_DATABASE_URL"


def _one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message: drivers and SQLAlchemy add hints, SQL and links below it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@app.command()
def serve(
    role: Annotated[str | None, typer.Option(
        help="all: ingest, analyzer and API in one process; worker: ingest (run N in one consumer group); "
        "analyzer: signal deriver and analyzer schedule (one runs at a time); api: the API. Default: "
        "MONITOR_ROLE, else all.", show_default=False)] = None,
) -> None:
    """Run ingest (Kafka -> store), the analyzer and the HTTP API (or one of them: --role) until SIGTERM / Ctrl-C."""
    from monitor.logs import configure_logging
    from monitor.service import install_stop_signals, run_service

    settings = _settings(role=role)
    configure_logging(settings.log_level)
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        run_service(settings, stop, tune_collector=True)
    except MonitorError as exc:
        raise _fail(exc) from exc


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(help="Assistant turns per second.", min=0.001)] = 10.0,
    duration: Annotated[float, typer.Option(help="Seconds of traffic to generate.", min=0.001)] = 60.0,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same traffic.")] = 0,
    rating_rate: Annotated[float, typer.Option(help="Share of turns that get a rating.", min=0, max=1)] = 0.35,
    fast: Annotated[bool, typer.Option("--fast", help="Send as fast as possible, not in real time.")] = False,
    phrasing: Annotated[str, typer.Option(help="Wording of the style phrases: bank or paraphrase.")] = "bank",
) -> None:
    """Produce simulated conversation/v1 and rating/v1 events into Kafka."""
    from monitor.sim.produce import produce
    from monitor.sim.traffic import TrafficSimulator

    settings = _settings()
    try:
        simulator = TrafficSimulator(seed, rating_rate=rating_rate, phrasing=phrasing)
        counts = produce(
            simulator.messages(rate, duration),
            bootstrap_servers=settings.bootstrap_servers,
            conversations_topic=settings.conversations_topic,
            ratings_topic=settings.ratings_topic,
            realtime=not fast,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(f"produced {counts.conversations} conversation events and {counts.ratings} ratings")


@app.command()
def demo(
    rate: Annotated[float, typer.Option(help="Simulated assistant turns per second (the demo reward model scores "
                                        "about 18/s on 2 cores).", min=0.1, max=1000)] = 12.0,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds of traffic (0: run until Ctrl-C).",
                                            min=0)] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Simulator seed. Default: 0, or a random one with --keep (the kept "
                                             "store already holds seed 0's events).", show_default=False)] = None,
    scenario: Annotated[str, typer.Option(help="The story: S1 length hacking (alert mode verbosity), S3 formatting, "
                                          "S4 over-refusal, S7 overpromise (investments), S0 no shift "
                                          "(docs/scenarios.md).")] = "S1",
    onset: Annotated[float | None, typer.Option(
        help="Seconds after traffic starts when the shift sets in; it must leave time for every segment's reference "
        "to fill first. Default: the earliest such time (printed).", show_default=False)] = None,
    domains: Annotated[str, typer.Option(
        help="Comma-separated domains to simulate, one segment each. Fewer domains tell the same story sooner "
        "(each segment fills its reference and reaches its alert with more turns a second).")]
        = "payments,cards,investments,fraud,general",
    keep: Annotated[bool, typer.Option("--keep", help="Keep the last demo's store (monitor-demo.db) instead of "
                                       "starting a fresh one.")] = False,
) -> None:
    """Embedded broker + a fresh SQLite store + simulated traffic + the service: an announced reward hack,
    caught and attributed within about five minutes. Ctrl-C stops."""
    from monitor.demo import DemoPace, demo_scenario, parse_domains, plan_onset, run_demo

    settings = _settings()
    try:
        pace = DemoPace(rate=rate, domains=parse_domains(domains),
                        reference_labels=settings.analyze_reference_labels
                        if "analyze_reference_labels" in settings.model_fields_set else DemoPace.reference_labels)
        chosen = demo_scenario(scenario, plan_onset(pace, onset), pace.domains)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        run_demo(settings, pace=pace, duration=duration, seed=seed, scenario=chosen, keep=keep)
    except MonitorError as exc:
        raise _fail(exc) from exc


@app.command()
def analyze(
    refit: Annotated[bool, typer.Option("--refit", help="Fit each segment's calibration again on its most recent "
                                        "labels (after a relabeling cycle, or a reference that no longer "
                                        "stands); open alerts of the old calibration resolve.")] = False,
    recompute: Annotated[bool, typer.Option("--recompute", help="Forget the analyzer's state and recompute "
                                            "everything from the stored turns (alerts keep their keys).")] = False,
    publish: Annotated[bool, typer.Option(help="Publish alert changes to the flags topic.")] = True,
) -> None:
    """Run the analyzer once over what arrived since its checkpoint: calibrate, detect, attribute, report drift."""
    from monitor.analyze.runner import Analyzer
    from monitor.logs import configure_logging
    from monitor.service import prepare_database
    from monitor.store.db import make_engine, make_session_factory

    settings = _settings()
    configure_logging(settings.log_level)  # progress of long runs (signals derived, chunk by chunk) on stderr
    try:
        prepare_database(settings)
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        try:
            analyzer = Analyzer(settings, sessions)
            if recompute:
                typer.echo(f"forgot the state of {analyzer.recompute()} segment(s)", err=True)
            summary = analyzer.run_once(publish=publish, drift=True)
            if refit and not summary.locked:
                refitted = analyzer.refit()
                typer.echo(f"refitted {len(refitted)} segment(s) on their latest labels: "
                           f"{', '.join(refitted) or 'none'}", err=True)
                summary = analyzer.run_once(publish=publish, drift=False)
        finally:
            engine.dispose()
    except MonitorError as exc:
        raise _fail(exc) from exc
    if summary.locked:  # no error (exit 2): the other analyzer does the work
        typer.echo("another analyzer is running; nothing done", err=True)
        raise typer.Exit(1)
    typer.echo(summary.report())


@rm_app.command("build-demo")
def rm_build_demo(
    path: Annotated[str, typer.Argument(help="Directory to write the model to.")],
    bias: Annotated[
        float, typer.Option(help="How much the labelers over-reward long, formatted, flattering answers.", min=0)
    ] = 1.0,
    pairs: Annotated[int, typer.Option(help="Preference pairs to train on.", min=10)] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Build the demo reward model (MiniLM encoder + Bradley-Terry head) into PATH."""
    from monitor.demo_rm import build_demo_reward_model

    report = build_demo_reward_model(path, bias=bias, pairs=pairs, seed=seed,
                                     progress=lambda line: typer.echo(line, err=True))
    typer.echo(f"demo reward model in {report.path}: {report.pairs} pairs, train accuracy "
               f"{report.train_accuracy:.1%}, held-out accuracy {report.heldout_accuracy:.1%}, "
               f"{report.seconds:.0f} s")


@rm_app.command("serve")
def rm_serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=0, max=65535)] = 8100,
) -> None:
    """Serve MONITOR_RM_MODEL over HTTP (POST /v1/score) for `MONITOR_RM_URL` elsewhere."""
    import uvicorn

    from monitor.scoring.factory import transformers_scorer
    from monitor.scoring.server import create_scoring_app

    settings = _settings()
    if not settings.rm_model:
        typer.echo("error: set MONITOR_RM_MODEL to the reward model to serve", err=True)
        raise typer.Exit(2)
    try:
        scorer = transformers_scorer(settings)
    except ValueError as exc:
        typer.echo(f"error: invalid reward-model setting: {exc}", err=True)
        raise typer.Exit(2) from exc
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(f"serving {scorer.identity} on http://{host}:{port}/v1/score", err=True)
    uvicorn.run(create_scoring_app(scorer), host=host, port=port, log_level="warning")


@signals_app.command("train")
def signals_train(
    out: Annotated[str | None, typer.Option(help="Where to write the heads (.npz); default: the shipped file.")] = None,
    labelled: Annotated[str | None, typer.Option(help="Labelled sentences (.jsonl); default: the shipped set.")] = None,
) -> None:
    """Fit the style heads on the train split of the labelled sentences and save them."""
    from monitor.style_model import DEFAULT_HEADS
    from monitor.style_training import DEFAULT_SET, evaluate_style_model, train_style_model

    path = labelled or DEFAULT_SET
    try:
        heads = train_style_model(path)
        heads.save(out or DEFAULT_HEADS)
        evaluation = evaluate_style_model(heads, path)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(f"heads for {heads.encoder} (C={heads.c:g}) written to {out or DEFAULT_HEADS}")
    typer.echo(evaluation.report())


@signals_app.command("evaluate")
def signals_evaluate(
    heads: Annotated[str | None, typer.Option(help="Heads to evaluate (.npz); default: the shipped file.")] = None,
    labelled: Annotated[str | None, typer.Option(help="Labelled sentences (.jsonl); default: the shipped set.")] = None,
    split: Annotated[str, typer.Option(help="holdout or train.")] = "holdout",
    errors: Annotated[bool, typer.Option("--errors", help="Also list the classifier's mistakes.")] = False,
) -> None:
    """Sentence-level precision and recall per signal: the classifier, the phrase list, both."""
    from monitor.style_model import DEFAULT_HEADS, StyleHeads
    from monitor.style_training import DEFAULT_SET, evaluate_style_model

    try:
        evaluation = evaluate_style_model(StyleHeads.load(heads or DEFAULT_HEADS), labelled or DEFAULT_SET,
                                          split=split)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(evaluation.report())
    if errors:
        for label, mistakes in evaluation.errors.items():
            typer.echo("\n".join(f"  {label}: {mistake}" for mistake in mistakes))


def _key_store():  # noqa: ANN202 - a sessionmaker of the migrated store, and its engine to dispose
    return _migrated_store(_settings())


def _migrated_store(settings: Settings):  # noqa: ANN202 - as _key_store, on these settings
    from monitor.service import prepare_database
    from monitor.store.db import make_engine, make_session_factory

    try:
        prepare_database(settings)
    except MonitorError as exc:
        raise _fail(exc) from exc
    engine = make_engine(settings.database_url)
    return make_session_factory(engine), engine


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="viewer (the monitoring API), annotator (the review queue) or admin "
                                      "(everything, raw text included).")],
    name: Annotated[str | None, typer.Option(help="A name to list and revoke it by (default: ROLE-xxxxxx).")] = None,
) -> None:
    """Create an API key. The key is printed once, alone on the last line; only its digest is stored."""
    from monitor.auth import check_name, check_role
    from monitor.store.keys import KeyNameTaken, create_key

    try:
        check_role(role)
        if name is not None:
            check_name(name)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    sessions, engine = _key_store()
    try:
        with sessions.begin() as session:
            row, key = create_key(session, role, name)
            created = row.name
    except KeyNameTaken as exc:
        raise _fail(exc) from exc
    finally:
        engine.dispose()
    typer.echo(f"created {role} key {created!r}; it is shown once, store it now:")
    typer.echo(key)


@keys_app.command("list")
def keys_list() -> None:
    """List the keys: name, role, first characters, created, revoked."""
    from monitor.store.keys import list_keys

    sessions, engine = _key_store()
    try:
        with sessions() as session:
            rows = [(k.name, k.role, k.prefix, k.created_at, k.revoked_at) for k in list_keys(session)]
    finally:
        engine.dispose()
    if not rows:
        typer.echo("no keys yet: `monitor keys create --role admin`")
        return
    typer.echo(f"{'name':<24} {'role':<10} {'key':<12} {'created':<20} revoked")
    for name, role, prefix, created, revoked in rows:
        typer.echo(f"{name:<24} {role:<10} {prefix + '...':<12} {created:%Y-%m-%d %H:%M:%S}  "
                   f"{revoked.strftime('%Y-%m-%d %H:%M:%S') if revoked else '-'}")


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name (see `monitor keys list`).")]) -> None:
    """Revoke a key: from now on it gets 401."""
    from monitor.store.keys import revoke_key

    sessions, engine = _key_store()
    try:
        with sessions.begin() as session:
            row = revoke_key(session, name)
            found = row is not None
    finally:
        engine.dispose()
    if not found:
        typer.echo(f"error: no key named {name!r} (see `monitor keys list`)", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {name!r}")


@contextmanager
def _cycle_service() -> Iterator[CycleService]:
    """A CycleService on the migrated store, as the API builds it (segment scheme from the settings)."""
    from monitor.analyze.segments import SegmentScheme
    from monitor.relabel.cycles import CycleService

    settings = _settings()
    sessions, engine = _migrated_store(settings)
    try:
        yield CycleService(sessions, SegmentScheme.from_settings(settings), max_size=settings.relabel_max_size)
    finally:
        engine.dispose()


def _bad_input(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@relabel_app.command("start")
def relabel_start(
    size: Annotated[int, typer.Option(help="Pairs to label (at most MONITOR_RELABEL_MAX_SIZE).")],
    segment: Annotated[list[str] | None, typer.Option(help="A segment key (investments/*/*) or a bare domain; "
                                                      "repeat for several.")] = None,
    alert_id: Annotated[int | None, typer.Option(help="An alert: its segment and mode make the slice.")] = None,
    mode: Annotated[str | None, typer.Option(help="A hacking mode: pairs contrast it, beside control pairs.")] = None,
    strategy: Annotated[str, typer.Option(help="divergence, uncertainty or random.")] = "divergence",
    design: Annotated[str | None, typer.Option(help="spread (default) or dense (families of rivals).")] = None,
    labels_per_pair: Annotated[int | None, typer.Option(help="Annotators per pair (1-5, default 1).")] = None,
    pairs_per_response: Annotated[int | None, typer.Option(help="Pairs per response (spread) or rivals (dense), "
                                                           "1-8, default 2.")] = None,
    control_share: Annotated[float | None, typer.Option(help="With a mode: share of control pairs (0-0.5, "
                                                        "default 0.25).")] = None,
    since: Annotated[str | None, typer.Option(help="Event time from (ISO 8601 with a zone).")] = None,
    until: Annotated[str | None, typer.Option(help="Event time to (ISO 8601 with a zone).")] = None,
    deadline: Annotated[str | None, typer.Option(help="Stop collecting labels then (ISO 8601 with a zone).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="The same key again returns the same cycle.")] = None,
) -> None:
    """Open a relabeling cycle on a slice; prints it as JSON."""
    from pydantic import ValidationError

    from monitor.errors import InvalidInput
    from monitor.relabel.cycles import CycleRequest

    given = {"segments": segment or None, "alert_id": alert_id, "mode": mode, "size": size, "strategy": strategy,
             "since": since, "until": until, "deadline": deadline, "design": design, "labels_per_pair": labels_per_pair,
             "pairs_per_response": pairs_per_response, "control_share": control_share}
    try:
        request = CycleRequest.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:  # named by option: --size, --segment, --alert-id, ...
        options = [str(e["loc"][0]).replace("_", "-").replace("segments", "segment") if e["loc"] else ""
                   for e in exc.errors()]
        raise _bad_input("; ".join(f"--{option}: {e['msg']}" if option else e["msg"]
                                   for option, e in zip(options, exc.errors(), strict=True))) from exc
    with _cycle_service() as service:
        try:
            cycle, _created = service.create(request, "cli", idempotency_key)
        except InvalidInput as exc:
            raise _bad_input(str(exc)) from exc
        except MonitorError as exc:
            raise _fail(exc) from exc
    typer.echo(json.dumps(cycle, indent=2))


@relabel_app.command("list")
def relabel_list(limit: Annotated[int, typer.Option(help="The latest N cycles.", min=1)] = 100) -> None:
    """The latest cycles: id, status, pairs labelled, strategy, who opened them and when."""
    with _cycle_service() as service:
        cycles = service.list(limit)
    if not cycles:
        typer.echo("no relabeling cycles yet: `monitor relabel start --segment DOMAIN --size N`")
        return
    typer.echo(f"{'id':>6} {'status':<12} {'labelled':>11} {'strategy':<12} {'created by':<16} created")
    for cycle in cycles:
        progress = f"{cycle['progress']['labelled']}/{cycle['progress']['pairs']}"
        typer.echo(f"{cycle['id']:>6} {cycle['status']:<12} {progress:>11} {cycle['request'].get('strategy', ''):<12} "
                   f"{cycle['created_by']:<16} {cycle['created_at']}")


@relabel_app.command("show")
def relabel_show(cycle_id: Annotated[int, typer.Argument(help="The cycle's id.")]) -> None:
    """A cycle as JSON: status, progress, preferences, RM audit."""
    with _cycle_service() as service:
        try:
            cycle = service.get(cycle_id)
        except MonitorError as exc:
            raise _fail(exc) from exc
    typer.echo(json.dumps(cycle, indent=2))


@relabel_app.command("cancel")
def relabel_cancel(cycle_id: Annotated[int, typer.Argument(help="The cycle's id.")]) -> None:
    """Stop a collecting cycle: its unlabelled pairs leave the queue; prints it as JSON."""
    with _cycle_service() as service:
        try:
            cycle = service.cancel(cycle_id, "cli")
        except MonitorError as exc:
            raise _fail(exc) from exc
    typer.echo(json.dumps(cycle, indent=2))


@relabel_app.command("export")
def relabel_export(
    cycle_id: Annotated[int, typer.Argument(help="The cycle's id.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    output: Annotated[str | None, typer.Option(help="File to write (default: cycle-ID.FORMAT here).")] = None,
) -> None:
    """The cycle's labelled pairs as a TRL preference dataset (prompt / chosen / rejected, redacted)."""
    from monitor.relabel.export import WRITERS, cycle_export, write

    if fmt not in WRITERS:
        raise _bad_input(f"--format must be one of {', '.join(WRITERS)}, got {fmt!r}")
    with _cycle_service() as service:
        try:
            with service.sessions() as session:
                exported = cycle_export(session, cycle_id).require_rows()
        except MonitorError as exc:
            raise _fail(exc) from exc
    target = output or f"cycle-{cycle_id}.{fmt}"
    try:
        path = write(exported.rows, fmt, target)
    except OSError as exc:
        typer.echo(f"error: cannot write {target}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{path}: {len(exported.rows)} preference pairs (of {exported.pairs}; ties and unlabelled left out)")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Migrate the database at MONITOR_DATABASE_URL to the latest schema."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from monitor.store.db import masked_url
    from monitor.store.migrate import upgrade

    settings = _settings()
    try:
        upgrade(settings.database_url, revision)
    except CommandError as exc:  # an unknown REVISION
        raise _fail(exc) from exc
    except SQLAlchemyError as exc:
        raise _fail(exc, "migration failed") from exc
    typer.echo(f"database at {revision}: {masked_url(settings.database_url)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the latest one."""
    from monitor.store.db import make_engine
    from monitor.store.migrate import current_revision, head_revision

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    typer.echo(f"current: {current or 'none (empty database)'}\nhead:    {head}")
    if current != head:  # a check that answered no, not an error (exit 2)
        raise typer.Exit(1)


@db_app.command("prune")
def db_prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be pruned; change nothing.")] = False,
) -> None:
    """Apply the MONITOR_RETENTION_* settings now: delete turns, ratings and dead letters past their
    age, replace raw text past its own by the redacted form (docs/retention.md)."""
    settings = _settings()  # before the imports below: a bad setting fails at once
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from sqlalchemy.exc import SQLAlchemyError

    from monitor.retention import prune_store
    from monitor.store.db import make_engine, make_session_factory, masked_url
    from monitor.store.migrate import is_at_head

    where = masked_url(settings.database_url)
    try:
        at_head = is_at_head(settings.database_url)
    except SQLAlchemyError as exc:
        raise _fail(exc, "cannot read the schema revision") from exc
    if not at_head:  # a prune never migrates, a dry run changes nothing
        typer.echo(f"error: the schema of {where} is not at the latest migration: run `monitor db upgrade`", err=True)
        raise typer.Exit(2)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    console = Console(stderr=True)
    bars = Progress(console=console, transient=True, disable=not console.is_terminal)
    tasks: dict[str, TaskID] = {}

    def progress(step: str, done: int, total: int | None) -> None:
        if step not in tasks:
            tasks[step] = bars.add_task(step, total=total)
        bars.update(tasks[step], completed=done, total=total)
        if not console.is_terminal:
            print(f"{step}: {done:,}" + (f" of {total:,}" if total is not None else ""), file=sys.stderr, flush=True)

    try:
        with bars:
            # An analyzer run holds its lock for seconds; the deletions wait that long for it.
            result = prune_store(settings, sessions, dry_run=dry_run, progress=progress, lock_wait_seconds=120)
    except SQLAlchemyError as exc:
        raise _fail(exc, "prune failed") from exc
    finally:
        engine.dispose()
    if result.locked:  # no error (exit 2): the other prune does the work
        typer.echo("another process is pruning this store; nothing done", err=True)
        raise typer.Exit(1)
    typer.echo(result.report())
    if not result.complete:  # the analyzer lock stayed held: what is left waits for the next prune
        raise typer.Exit(1)


@bench_app.command("ingest")
def bench_ingest(
    events: Annotated[int, typer.Option(help="Events to push through both paths.", min=1)] = 50_000,
    database_url: Annotated[str, typer.Option(help="Store for our path (PostgreSQL recommended).")] = (
        "postgresql://postgres@127.0.0.1:5432/test"
    ),
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap; default: start the embedded broker.")] = None,
    workers: Annotated[int, typer.Option(help="Also run N `serve --role worker` processes in one group "
                                              "(0: skip).", min=0, max=16)] = 0,
) -> None:
    """Bare kafka-python consume loop vs our ingest into the store, on the same events."""
    from monitor.bench.ingest import run_ingest_benchmark

    try:
        result = run_ingest_benchmark(events=events, database_url=database_url, bootstrap=bootstrap,
                                      workers=workers, echo=typer.echo)
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(result.report())


@bench_app.command("soak")
def bench_soak(
    events: Annotated[int, typer.Option(help="Simulated events to push through serve.", min=1)] = 1_000_000,
    rate: Annotated[float, typer.Option(help="Events per second, paced.", min=0.001)] = 2000.0,
    database_url: Annotated[str, typer.Option(help="PostgreSQL server to create the scratch database on.")] = (
        "postgresql://postgres@127.0.0.1:5432/test"
    ),
    warmup: Annotated[float, typer.Option(help="Seconds of traffic before the RSS baseline is taken.", min=0)] = 60.0,
    output: Annotated[str | None, typer.Option(help="Also write the figures (and RSS samples) as JSON here.")] = None,
) -> None:
    """serve as deployed under a steady paced load: RSS growth, freshness (produced to queryable), errors."""
    from pathlib import Path

    from monitor.bench.soak import run_soak

    try:
        result = run_soak(events=events, rate=rate, database_url=database_url, warmup_s=warmup,
                          echo=lambda line: typer.echo(line, err=True))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except MonitorError as exc:
        raise _fail(exc) from exc
    if output is not None:
        Path(output).write_text(json.dumps(result.to_json(), indent=2))
    typer.echo(result.report())


@bench_app.command("scoring")
def bench_scoring(
    model: Annotated[str | None, typer.Option(help="RM directory; default: the demo RM (built once).")] = None,
    count: Annotated[int, typer.Option(help="Conversations to score on every path.", min=10)] = 300,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Our scoring path vs a naive loop and a bare length-bucketed forward, same texts."""
    from monitor.bench.scoring import run_scoring_benchmark
    from monitor.demo_rm import ensure_demo_reward_model

    path = model or str(ensure_demo_reward_model(progress=lambda line: typer.echo(line, err=True)))
    result = run_scoring_benchmark(path, count=count, device=device, echo=lambda line: typer.echo(line, err=True))
    typer.echo(result.report())


@bench_app.command("analyze")
def bench_analyze(
    sizes: Annotated[str, typer.Option(help="Comma-separated stored-turn counts, one fresh database each.")] = (
        "100000,300000,1000000"
    ),
    new: Annotated[int, typer.Option(help="New turns (signals not derived) before the measured run.", min=1)] = 10_000,
    varied: Annotated[int, typer.Option(help="Turns whose every sentence is new, to time the deriver on.",
                                        min=1)] = 1000,
    rate: Annotated[float, typer.Option(help="Turns per second of event time: at 10 the hour-long window holds "
                                             "36k turns, at 1000 3.6M.", min=0.001)] = 10.0,
    database_url: Annotated[str, typer.Option(help="PostgreSQL server to create the scratch databases on.")] = (
        "postgresql://postgres@127.0.0.1:5432/test"
    ),
    keep: Annotated[bool, typer.Option("--keep", help="Keep the scratch databases (their URLs are printed).")] = False,
) -> None:
    """Time and RSS of a scheduled analyzer run after NEW turns, with SIZES turns already stored."""
    import sys
    from collections.abc import Callable

    from rich.console import Console
    from rich.progress import Progress

    from monitor.bench.analyze import run_analyze_benchmark

    try:
        counts = tuple(int(size.replace("_", "")) for size in sizes.split(",") if size.strip())
    except ValueError as exc:
        typer.echo(f"error: --sizes takes comma-separated integers, got {sizes!r}", err=True)
        raise typer.Exit(2) from exc
    console = Console(stderr=True)
    bars = Progress(console=console, transient=True, disable=not console.is_terminal)

    def progress(description: str, total: int) -> Callable[[int], None]:
        task = bars.add_task(description, total=total)

        def update(done: int) -> None:  # called once per COPY chunk (50k turns)
            bars.update(task, completed=done)
            if not console.is_terminal:
                print(f"{description}: {done:,}", file=sys.stderr, flush=True)

        return update

    try:
        with bars:
            result = run_analyze_benchmark(sizes=counts, new=new, varied=varied, rate=rate, database_url=database_url,
                                           keep=keep, echo=lambda line: typer.echo(line, err=True), progress=progress)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(result.report())


@bench_app.command("signals")
def bench_signals(
    count: Annotated[int, typer.Option(help="Responses of each kind (simulator, holdout-like).", min=10)] = 2000,
    seed: Annotated[int, typer.Option(help="Simulator and sampling seed.")] = 0,
) -> None:
    """derive_signals throughput, cold and warm sentence cache, against the phrase lists alone."""
    from monitor.bench.signals import run_signals_benchmark

    try:
        result = run_signals_benchmark(count=count, seed=seed, echo=lambda line: typer.echo(line, err=True))
    except MonitorError as exc:
        raise _fail(exc) from exc
    typer.echo(result.report())


@bench_app.command("redaction")
def bench_redaction() -> None:
    """Recall and precision of the PII redactor per type, on the tuning and the held-out corpus."""
    from monitor.bench.redaction import report, run_redaction_benchmark

    typer.echo("\n".join(report(run_redaction_benchmark(echo=lambda line: typer.echo(line, err=True)))))


@bench_app.command("uncertainty")
def bench_uncertainty(
    reps: Annotated[int, typer.Option(help="Stationary worlds per setting (2,000: a coverage to about +-0.5 "
                                             "points).", min=1)] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the worlds.")] = 0,
    kinds: Annotated[str, typer.Option(help="Comma-separated rating kinds: thumbs, stars, score.")]
    = "thumbs,stars,score",
    references: Annotated[str, typer.Option(help="Comma-separated reference sizes (rated turns).")] = "200,500,1000",
    rates: Annotated[str, typer.Option(help="Comma-separated shares of the window's turns that are rated.")]
    = "0.05,0.3",
) -> None:
    """Coverage and width of the 95% intervals (gap, estimated satisfaction, AUC) on stationary traffic."""
    from monitor.bench.uncertainty import run_uncertainty_benchmark

    try:
        sizes = tuple(int(v) for v in references.split(","))
        shares = tuple(float(v) for v in rates.split(","))
    except ValueError as exc:
        raise typer.BadParameter(f"references must be integers and rates numbers, comma-separated: {exc}") from exc
    if any(size < 30 for size in sizes) or any(not 0 < share <= 1 for share in shares):
        raise typer.BadParameter("references need at least 30 rated turns each and rates must lie in (0, 1]")
    try:
        result = run_uncertainty_benchmark(reps=reps, seed=seed, kinds=tuple(k.strip() for k in kinds.split(",")),
                                           references=sizes, rates=shares,
                                           echo=lambda line: typer.echo(line, err=True))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo("\n".join(result.report_lines()))


@bench_app.command("review")
def bench_review(
    reps: Annotated[int, typer.Option(help="Simulated worlds per scenario (5 segment intervals each).", min=1)] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the worlds.")] = 0,
    scenarios: Annotated[str, typer.Option(help="Comma-separated scenarios: S0, S1, S8.")] = "S0,S1,S8",
) -> None:
    """Coverage of the review report's human-RM gap interval and its verdicts, with a simulated annotator pool."""
    from monitor.bench.review import report, run_review_benchmark

    names = tuple(name.strip() for name in scenarios.split(",") if name.strip())
    try:
        results = run_review_benchmark(reps=reps, seed=seed, scenarios=names,
                                       echo=lambda line: typer.echo(line, err=True))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(report(results, reps))


@bench_app.command("detect")
def bench_detect(
    full: Annotated[bool, typer.Option("--full", help="Sweep shift size, abrupt/ramp and rating rate (slow).")] = False,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    b1_labels: Annotated[int, typer.Option(help="Rated S0 turns for the false-alarm count.", min=1000)] = 100_000,
    trials: Annotated[int, typer.Option(help="Injected-shift trials for the B1 delay.", min=10)] = 300,
    b1_kind_streams: Annotated[int, typer.Option(help="Stationary streams per rating kind (thumbs, stars, score) "
                                                 "for B1, each with its own reference.", min=1)] = 60,
    scenarios: Annotated[str, typer.Option(help="Comma-separated scenarios to run after B1.")] = "S1,S2,S3,S4,S5,S6,S7",
    labels_after_onset: Annotated[int, typer.Option(help="Rated turns per segment after each onset.", min=100)] = 2000,
    seeds: Annotated[int, typer.Option(help="Runs (seeds) per scenario setting.", min=1)] = 1,
    reference_labels: Annotated[int, typer.Option(help="Rated turns per segment reference.", min=50)] = 500,
    false_alarm_labels: Annotated[int, typer.Option(help="False-alarm budget: 1 per N rated turns.", min=100)] = 10_000,
    phrasing: Annotated[str, typer.Option(help="Comma-separated wordings S1-S4 and S7 run with: bank (the phrase "
                                          "banks) and/or paraphrase (held out from the style classifiers).")] = "bank",
) -> None:
    """Detection quality on simulated scenarios: false alarms, delay, AUROC, attribution F1, S5."""
    from monitor.analyze.engine import AnalysisConfig
    from monitor.bench.detect import run_detect_benchmark
    from monitor.sim.scenarios import SCENARIO_NAMES
    from monitor.sim.traffic import PHRASINGS

    names = tuple(name.strip() for name in scenarios.split(",") if name.strip())
    unknown = [name for name in names if name not in SCENARIO_NAMES]
    if unknown:
        typer.echo(f"error: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIO_NAMES)}", err=True)
        raise typer.Exit(2)
    wordings = tuple(name.strip() for name in phrasing.split(",") if name.strip())
    if not wordings or any(name not in PHRASINGS for name in wordings):
        typer.echo(f"error: --phrasing must name some of {', '.join(PHRASINGS)}, got {phrasing!r}", err=True)
        raise typer.Exit(2)
    result = run_detect_benchmark(full=full, seed=seed, b1_labels=b1_labels, b1_trials=trials,
                                  b1_kind_streams=b1_kind_streams, scenarios=names,
                                  labels_after_onset=labels_after_onset, seeds=seeds,
                                  config=AnalysisConfig(reference_labels=reference_labels,
                                                        false_alarm_labels=false_alarm_labels, window_seconds=1800.0),
                                  phrasing=wordings, echo=lambda line: typer.echo(line, err=True))
    typer.echo(result.report())
