"""Control-plane benchmark: REST submission throughput and submit-to-running latency of no-op jobs, each
beside a plain RQ baseline measured in the same run on the same Redis.

    .venv/bin/python bench/control_plane.py [--jobs 500] [--clients 8] [--rounds 5] [--latency-jobs 20]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Uses Redis database 14 at 127.0.0.1:6379 (flushed) and a throwaway VRAMQ_HOME. Each side first submits
WARM_UP jobs that are not measured.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
from redis import Redis
from rq import Queue
from rq.job import Job as RqJob
from rq.serializers import JSONSerializer
from sqlalchemy import create_engine, text

REDIS_URL = "redis://127.0.0.1:6379/14"
WARM_UP = 50  # submissions on each side before measuring


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def rq_enqueue_rate(redis: Redis, jobs: int, clients: int) -> float:
    queue = Queue("bench-baseline-enqueue", connection=redis, serializer=JSONSerializer)

    def one(_: int) -> None:
        queue.enqueue_call("time.sleep", args=(0,), timeout=-1)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(jobs)))
    rate = jobs / (time.perf_counter() - started)
    queue.empty()
    return rate


def rest_submit_rate(api: str, token: str, jobs: int, clients: int) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"command": ["true"], "vram_mb": 100}
    with httpx.Client(base_url=api, headers=headers, timeout=60) as client:

        def one(_: int) -> None:
            client.post("/api/v1/jobs", json=body).raise_for_status()

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(jobs)))
        return jobs / (time.perf_counter() - started)


def rq_latency(redis: Redis, env: dict[str, str], jobs: int) -> list[float]:
    worker = start(
        env,
        "rq.cli",
        "worker",
        "--url",
        REDIS_URL,
        "--serializer",
        "rq.serializers.JSONSerializer",
        "bench-baseline-latency",
    )
    queue = Queue("bench-baseline-latency", connection=redis, serializer=JSONSerializer)
    try:
        latencies = []
        for _ in range(jobs):
            job = queue.enqueue_call("time.sleep", args=(0,), timeout=-1)
            while RqJob.fetch(job.id, connection=redis, serializer=JSONSerializer).started_at is None:
                time.sleep(0.005)
            fetched = RqJob.fetch(job.id, connection=redis, serializer=JSONSerializer)
            latencies.append((fetched.started_at - fetched.enqueued_at).total_seconds())
            time.sleep(0.05)
        return latencies
    finally:
        worker.terminate()
        worker.wait()


def vramq_latency(api: str, token: str, database_url: str, jobs: int) -> list[tuple[float, float]]:
    """(submit to dispatch, dispatch to running) of each job, in seconds, one job at a time."""
    headers = {"Authorization": f"Bearer {token}"}
    engine = create_engine(database_url)
    query = text("SELECT created_at, dispatched_at, started_at FROM jobs WHERE id = :i")
    phases = []
    with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
        for _ in range(jobs):
            response = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 100})
            response.raise_for_status()
            job_id = response.json()["id"]
            while True:
                with engine.connect() as conn:
                    row = conn.execute(query, {"i": job_id}).one()
                if row.started_at is not None:
                    break
                time.sleep(0.005)
            created, dispatched, started = (
                value if isinstance(value, datetime) else datetime.fromisoformat(value) for value in row
            )
            phases.append(((dispatched - created).total_seconds(), (started - dispatched).total_seconds()))
            time.sleep(0.05)
    engine.dispose()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating RQ and REST measurements")
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="vramq-bench-")
    database_url = args.database_url or f"sqlite:///{home}/vramq.db"
    if database_url.startswith("postgresql"):
        with create_engine(database_url).begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    port = free_port()
    env = {
        **os.environ,
        "VRAMQ_HOME": home,
        "VRAMQ_DATABASE_URL": database_url,
        "VRAMQ_REDIS_URL": REDIS_URL,
        "VRAMQ_PORT": str(port),
        "VRAMQ_GPUS": "1x80GiB",
        "VRAMQ_NODE": "bench",
        "VRAMQ_SLOTS": "4",
        "VRAMQ_SAFETY_MARGIN_MB": "0",
    }
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, check=True, capture_output=True)
    token = (
        subprocess.run(
            [sys.executable, "-m", "app.cli", "user", "add", "bench"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    api = f"http://127.0.0.1:{port}"
    server = start(env, "app.cli", "api")
    children = [server]
    try:
        while True:
            try:
                if httpx.get(f"{api}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rq_enqueue_rate(redis, WARM_UP, args.clients)  # connections, caches and lazy imports, both sides
        rest_submit_rate(api, token, WARM_UP, args.clients)
        print(f"submission, {args.jobs} jobs from {args.clients} clients ({database_url.split(':')[0]}), each round:")
        ratios = []
        for _ in range(args.rounds):  # alternating, so a slow spell of the machine hits both sides
            rq_rate = rq_enqueue_rate(redis, args.jobs, args.clients)
            rest_rate = rest_submit_rate(api, token, args.jobs, args.clients)
            ratios.append(rest_rate / rq_rate)
            print(f"  raw RQ enqueue {rq_rate:6.0f} jobs/s  vramq REST {rest_rate:6.0f} jobs/s  ratio {ratios[-1]:.2f}")
        print(f"  median ratio {statistics.median(ratios):.2f}")
        with create_engine(database_url).begin() as conn:  # clear the backlog before measuring latency
            conn.execute(text("UPDATE jobs SET status = 'cancelled'"))
        children += [start(env, "app.cli", "scheduler"), start(env, "app.cli", "node")]
        time.sleep(3)
        rq_times = rq_latency(redis, env, args.latency_jobs)
        phases = vramq_latency(api, token, database_url, args.latency_jobs)
        rq_median = statistics.median(rq_times)
        vramq_median = statistics.median(dispatch + start for dispatch, start in phases)
        print(f"submit-to-running latency, median of {args.latency_jobs} no-op jobs one at a time:")
        print(f"  plain RQ worker  {rq_median * 1000:8.1f} ms")
        print(f"  vramq            {vramq_median * 1000:8.1f} ms   ratio {vramq_median / rq_median:.1f}x")
        print(
            f"    of which submit to dispatch {statistics.median(p[0] for p in phases) * 1000:.1f} ms, "
            f"dispatch to running {statistics.median(p[1] for p in phases) * 1000:.1f} ms"
        )
    finally:
        for child in reversed(children):
            child.terminate()
            child.wait()
        redis.flushdb()


if __name__ == "__main__":
    main()
