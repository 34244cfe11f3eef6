"""The `vramq` command: admin commands run the services, researcher commands talk to the REST API."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from app.config import Settings
from app.units import parse_size_mb

app = typer.Typer(help="vramq: share a GPU node without killing each other's jobs.", no_args_is_help=True)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
app.add_typer(user_app, name="user")


def _settings() -> Settings:
    return Settings()


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _stop_on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


# --- admin -----------------------------------------------------------------------------------------


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from app.db.migrate import upgrade

    settings = _settings()
    upgrade(settings)
    typer.echo(f"database at head: {settings.sqlalchemy_url}")


@user_app.command("add")
def user_add(name: str, admin: Annotated[bool, typer.Option("--admin")] = False) -> None:
    """Create a user; its token is printed alone on the last line, once."""
    from app.db.migrate import upgrade
    from app.db.session import make_engine, make_sessionmaker, transaction
    from app.errors import VramqError
    from app.services.users import create_user

    settings = _settings()
    upgrade(settings)  # a no-op on a current schema; spares a first user on a fresh install an SQL error
    engine = make_engine(settings)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            user, token = create_user(session, name, admin=admin)
            typer.echo(f"created {'admin ' if user.admin else ''}user {user.name}; token:")
    except VramqError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(token)


@app.command()
def api() -> None:
    """Serve the REST API."""
    import uvicorn

    from app.api.main import create_app

    settings = _settings()
    if settings.api_workers > 1:
        uvicorn.run(
            "app.api.main:app_from_env",
            factory=True,
            workers=settings.api_workers,
            host=settings.host,
            port=settings.port,
            access_log=settings.access_log,
        )
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=settings.access_log)


@app.command()
def scheduler() -> None:
    """Run the dispatch loop (one leader among however many run)."""
    from redis import Redis

    from app.db.session import make_engine, make_sessionmaker
    from app.scheduler.loop import Scheduler

    _logging()
    settings = _settings()
    stop = threading.Event()
    _stop_on_signals(stop)
    engine = make_engine(settings)
    Scheduler(settings, make_sessionmaker(engine), Redis.from_url(settings.redis_url)).run(stop)
    engine.dispose()


@app.command()
def node() -> None:
    """Run this node's agent and its RQ workers (needs NVML, or VRAMQ_GPUS to simulate)."""
    from redis import Redis

    from worker.agent import NodeAgent
    from worker.gpu import GpuBackendError, make_backend

    _logging()
    settings = _settings()
    try:
        backend = make_backend(settings)
    except GpuBackendError as exc:
        typer.echo(f"error: {exc}. Set VRAMQ_GPUS (e.g. 2x24GiB) to simulate GPUs.", err=True)
        raise typer.Exit(2) from exc
    agent = NodeAgent(settings, backend, Redis.from_url(settings.redis_url))
    _stop_on_signals(agent.stop)
    agent.run()


@app.command()
def up() -> None:
    """Everything in one foreground command: migrations, Redis if none answers, API, scheduler, one node."""
    from app import embedded_redis
    from app.db.migrate import upgrade
    from app.lifetime import ending_with_me

    settings = _settings()
    env = dict(os.environ, VRAMQ_HOME=str(settings.home))
    if settings.gpus is None and not _nvml_available():
        env["VRAMQ_GPUS"] = "1x16GiB"
        typer.secho(
            "WARNING: no NVIDIA GPU found (NVML unavailable) and VRAMQ_GPUS unset: SIMULATING one 16 GiB GPU.",
            fg="yellow",
            bold=True,
            err=True,
        )
    upgrade(settings)
    children: dict[str, subprocess.Popen[bytes]] = {}
    if not embedded_redis.answers(settings.redis_url):
        typer.echo(f"no Redis at {settings.redis_url}: starting one with its data in {settings.home / 'redis'}")
        children["redis"] = embedded_redis.start(settings.redis_url, settings.home)
    for role in ("api", "scheduler", "node"):
        children[role] = subprocess.Popen([sys.executable, "-m", "app.cli", role], env=env, preexec_fn=ending_with_me())
    typer.echo(f"vramq is up: http://{settings.host}:{settings.port}  (Ctrl-C stops everything)")
    stop = threading.Event()
    _stop_on_signals(stop)
    while not stop.is_set() and all(child.poll() is None for child in children.values()):
        stop.wait(0.5)
    for role, child in children.items():
        if not stop.is_set() and child.returncode is not None:
            typer.secho(f"vramq up: the {role} {_ended(child.returncode)}; stopping everything", fg="red", err=True)
    for child in reversed(children.values()):  # the node first, Redis last
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    failed = [child.args for child in children.values() if child.returncode not in (0, -signal.SIGTERM)]
    if failed and not stop.is_set():
        raise typer.Exit(1)


def _ended(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


@app.command()
def health(
    node: Annotated[bool, typer.Option("--node", help="also require this node's live snapshot")] = False,
) -> None:
    """Exit 0 when SQL and Redis answer (and, with --node, this node publishes): for container health checks."""
    from redis import Redis
    from sqlalchemy import text

    from app.constants import NODE_KEY
    from app.db.session import make_engine

    settings = _settings()
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        with Redis.from_url(settings.redis_url, socket_connect_timeout=2) as redis:
            redis.ping()
            if node and not redis.exists(NODE_KEY.format(node=settings.node)):
                raise RuntimeError(f"node {settings.node} publishes no snapshot")
    except Exception as exc:  # noqa: BLE001 - any failure is unhealthy
        typer.echo(f"unhealthy: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo("healthy")


@app.command()
def simulate(
    trace: Annotated[Path, typer.Option(help="CSV trace (format in WORKLOADS.md)", exists=True, dir_okay=False)],
    gpus: Annotated[str, typer.Option(help="GPUs of each node, e.g. 4x24GiB")] = "4x24GiB",
    nodes: Annotated[int, typer.Option(min=1)] = 1,
    policy: Annotated[str, typer.Option(help="vramq | fifo-ledger | exclusive | free-memory")] = "vramq",
    schedule_out: Annotated[Path | None, typer.Option(help="write one CSV row per attempt")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
    restart_cost: Annotated[
        float, typer.Option(min=0, help="seconds of its work a preempted or moved job redoes when it resumes")
    ] = 0.0,
) -> None:
    """Replay a trace through the placement policy on a simulated clock."""
    from app.simulator.engine import POLICIES, Simulation
    from app.simulator.report import infeasibilities, schedule_rows, summarise, uses_ledger, write_schedule
    from app.simulator.trace import TraceError, load_trace
    from app.units import parse_gpu_spec

    if policy not in POLICIES:
        raise typer.BadParameter(f"choose one of {', '.join(POLICIES)}", param_hint="--policy")
    try:
        sizes = parse_gpu_spec(gpus)
        jobs = load_trace(trace)
        if schedule_out and not os.access(schedule_out.parent, os.W_OK):  # told now, not after the replay
            raise ValueError(
                f"cannot write the schedule to {schedule_out}: {schedule_out.parent} is not a writable folder"
            )
        sim = Simulation(jobs, sizes, nodes=nodes, policy=policy, restart_s=restart_cost)  # refuses inf
    except (TraceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    result = sim.run()
    figures = summarise(sim, result)
    rows = schedule_rows(sim, result)
    figures["infeasible"] = infeasibilities(jobs, rows, sizes, uses_ledger(policy))
    if result.refused:
        names = [jobs[index].job_id for index in result.refused]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        typer.echo(f"warning: {len(names)} refused on arrival, more than a {gpus} node can hold: {shown}", err=True)
    if schedule_out:
        write_schedule(schedule_out, rows)
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        if key != "users":
            typer.echo(f"{key:>22}: {value}")
    for name, user in figures["users"].items():
        typer.echo(f"{name:>22}: {user}")


def _nvml_available() -> bool:
    from worker.gpu import GpuBackendError
    from worker.gpu.nvml import NvmlBackend

    try:
        NvmlBackend().close()
    except GpuBackendError:
        return False
    return True


# --- researcher ------------------------------------------------------------------------------------


def _client() -> httpx.Client:
    settings = _settings()
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    return httpx.Client(base_url=settings.api_url, headers=headers, timeout=30)


def _call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        with _client() as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the vramq API: {exc}", err=True)
        raise typer.Exit(1) from exc
    if response.is_error:
        try:
            error = response.json()["error"]
            typer.echo(f"error ({error['code']}): {error['message']}", err=True)
        except (ValueError, KeyError, TypeError):
            typer.echo(f"error: HTTP {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    return response


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _vram_request(text: str) -> int | str:
    """--vram: MiB (4000), a size with its unit (8GiB), or auto (what the job's history suggests)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return parse_size_mb(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}, or auto") from None


def _env_items(items: list[str] | None) -> list[str] | None:
    for item in items or []:
        name, equals, _ = item.partition("=")
        if not name or not equals:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}")
    return items


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    vram: Annotated[
        str,
        typer.Option(
            "--vram", "-m", parser=_vram_request, metavar="SIZE", help="VRAM per GPU: MiB, a size (8GiB), or auto"
        ),
    ],
    gpus: Annotated[int, typer.Option(help="GPUs")] = 1,
    name: Annotated[str | None, typer.Option(help="job name")] = None,
    priority: int = 0,
    time_limit: Annotated[int | None, typer.Option(help="seconds")] = None,
    retries: Annotated[int, typer.Option(help="max retries")] = 0,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", callback=_env_items, metavar="KEY=VALUE", help="repeatable")
    ] = None,
    retry_on: Annotated[
        list[str] | None,
        typer.Option(metavar="REASON", help="a failure to retry: oom, lost, error, timeout, cap_exceeded; repeatable"),
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="default: the current directory")] = None,
) -> None:
    """Submit a job: vramq submit --vram 4000 -- python train.py"""
    if not ctx.args:
        typer.echo("error: give the command after --, e.g. vramq submit --vram 4000 -- python train.py", err=True)
        raise typer.Exit(2)
    body = {
        "command": ctx.args,
        "vram_mb": vram,
        "gpus": gpus,
        "name": name,
        "priority": priority,
        "time_limit_s": time_limit,
        "max_retries": retries,
        "retry_on": retry_on,
        "env": dict(item.split("=", 1) for item in env or []),
        "workdir": str((workdir or Path.cwd()).resolve()),
    }
    job = _call("POST", "/api/v1/jobs", json={k: v for k, v in body.items() if v is not None}).json()
    typer.echo(f"job {job['id']} {job['status']}")
    for warning in job["warnings"]:
        typer.echo(f"warning: {warning}", err=True)


@app.command("ls")
def list_jobs(status: str | None = None, user: str | None = None, limit: int = 20) -> None:
    """List jobs, newest first; a queued one with why it waits and, when known, when it may start."""
    params = {k: v for k, v in {"status": status, "user": user, "limit": limit}.items() if v is not None}
    for job in _call("GET", "/api/v1/jobs", params=params).json():
        where = f"{job['node']}:{job['gpu_indices']}" if job["node"] else "-"
        reason = f" ({job['failure_reason']})" if job["failure_reason"] else ""
        typer.echo(
            f"{job['id']:>6}  {job['user']:<12} {job['status'] + reason:<24} {job['vram_mb']:>7} MB  "
            f"{where:<16} {job['name'] or ' '.join(job['command'])[:40]}"
        )
        if job["pending_reason"]:
            start = job["estimated_start"]
            when = f" (estimated start {datetime.fromisoformat(start).astimezone():%Y-%m-%d %H:%M:%S})" if start else ""
            typer.echo(f"{'':8}waiting: {job['pending_reason']}{when}")


@app.command()
def show(job_id: int) -> None:
    """One job, with its attempts."""
    _print_json(
        {
            **_call("GET", f"/api/v1/jobs/{job_id}").json(),
            "runs": _call("GET", f"/api/v1/jobs/{job_id}/runs").json(),
        }
    )


@app.command()
def logs(
    job_id: int,
    attempt: int | None = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
) -> None:
    """Print a job's output."""
    params: dict[str, Any] = {"attempt": attempt} if attempt else {}
    if not follow:
        sys.stdout.write(_call("GET", f"/api/v1/jobs/{job_id}/logs", params=params).text)
        return
    _call("GET", f"/api/v1/jobs/{job_id}")  # a clear error for an unknown job before streaming
    with (
        _client() as client,
        client.stream(
            "GET", f"/api/v1/jobs/{job_id}/logs", params={**params, "follow": "true"}, timeout=None
        ) as response,
    ):
        for chunk in response.iter_text():
            sys.stdout.write(chunk)
            sys.stdout.flush()


@app.command()
def cancel(job_id: int) -> None:
    """Cancel a job (a running one is stopped: SIGTERM, then SIGKILL)."""
    job = _call("POST", f"/api/v1/jobs/{job_id}/cancel").json()
    typer.echo(f"job {job['id']} {job['status']}{' (stopping)' if job['status'] == 'running' else ''}")


@app.command()
def gpus() -> None:
    """Every GPU of every live node: who holds what."""
    for gpu in _call("GET", "/api/v1/gpus").json():
        typer.echo(
            f"{gpu['node']}:{gpu['index']} {gpu['name']:<24} total {gpu['total_mb']:>7}  used {gpu['used_mb']:>7}  "
            f"reserved {gpu['reserved_mb']:>7}  foreign {gpu['foreign_mb']:>7}  available {gpu['available_mb']:>7}"
            f"  load {gpu['load']:.2f}  jobs {gpu['jobs']}{'  (simulated)' if gpu['simulated'] else ''}"
        )


@app.command()
def models(name: Annotated[str | None, typer.Argument(help="show this model's versions")] = None) -> None:
    """List models, or one model's versions."""
    _print_json(_call("GET", f"/api/v1/models/{name}/versions" if name else "/api/v1/models").json())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
