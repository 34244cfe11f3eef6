"""Second half of scripts/gpu_check.sh: submits the jobs through the API and reports the figures."""

import os
import sys
import time

import httpx

API = os.environ["VRAMQ_API_URL"]
HEADERS = {"Authorization": f"Bearer {os.environ['VRAMQ_TOKEN']}"}
OVERHEAD_PROBE = (
    "import os, time, tensorflow as tf\n"
    "x = tf.random.normal([2048, 2048]); y = tf.linalg.matmul(x, x); _ = y.numpy()\n"
    "info = tf.config.experimental.get_memory_info('GPU:0')\n"
    "print('TF_ALLOCATOR_PEAK_MB', info['peak'] // (1 << 20), flush=True)\n"
    "time.sleep(8)\n"
)


def call(method: str, path: str, **kwargs: object) -> httpx.Response:
    response = httpx.request(method, API + path, headers=HEADERS, timeout=30, **kwargs)  # type: ignore[arg-type]
    response.raise_for_status()
    return response


def wait(ids: list[int], timeout: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [call("GET", f"/api/v1/jobs/{i}").json() for i in ids]
        if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs
        time.sleep(2)
    raise SystemExit("jobs did not finish in time")


GREEDY = (
    "import tensorflow as tf\n"
    "x = tf.random.normal([3000 * 1024 * 256])  # 3000 MiB of float32: more than a 2500 MB request holds\n"
    "print('allocated', float(tf.reduce_sum(x)))\n"
)


def runtime_checks() -> bool:
    """Issue 3 on a real GPU: growth under a cap, OOM then a larger retry, autolog on a plain script."""
    plain = call("POST", "/api/v1/jobs", json={"command": ["python", "examples/plain_keras.py"], "vram_mb": 8000})
    greedy = call("POST", "/api/v1/jobs", json={"command": ["python", "-c", GREEDY], "vram_mb": 2500, "max_retries": 3})
    plain_job, greedy_job = wait([plain.json()["id"], greedy.json()["id"]])
    runs = call("GET", f"/api/v1/jobs/{greedy_job['id']}/runs").json()
    print(f"growth: plain_keras reserved 8000 MB, NVML peak {plain_job['peak_vram_mb']} MB ({plain_job['status']})")
    print(
        "oom retry:", [(r["attempt"], r["vram_mb"], r["outcome"], r["failure_reason"], r["peak_vram_mb"]) for r in runs]
    )
    versions = call("GET", "/api/v1/models/plain_digits/versions").json()
    print(f"autolog: plain_digits versions {[v['version'] for v in versions]}, metrics {versions[-1]['metrics']}")
    return (
        plain_job["status"] == "succeeded"
        and (plain_job["peak_vram_mb"] or 0) < 8000
        and greedy_job["status"] == "succeeded"
        and runs[0]["failure_reason"] == "oom"
        and bool(versions)
    )


def main() -> int:
    gpu = call("GET", "/api/v1/gpus").json()[0]
    print(f"GPU {gpu['name']}: total {gpu['total_mb']} MB, used {gpu['used_mb']}, foreign {gpu['foreign_mb']}")
    per_job = min(6000, (gpu["available_mb"] - 512) // 4)
    body = {"command": ["python", "examples/digits.py", "--epochs", "15"], "vram_mb": per_job}
    ids = [call("POST", "/api/v1/jobs", json={**body, "name": f"digits-{n}"}).json()["id"] for n in range(4)]
    probe = call("POST", "/api/v1/jobs", json={"command": ["python", "-c", OVERHEAD_PROBE], "vram_mb": per_job}).json()
    print(f"4 digits jobs of {per_job} MB each ({4 * per_job} MB of {gpu['total_mb']} MB) + 1 overhead probe")
    jobs = wait([*ids, probe["id"]])
    ok = True
    for job in jobs:
        runs = call("GET", f"/api/v1/jobs/{job['id']}/runs").json()
        peak = job["peak_vram_mb"]
        util = runs[-1]["util"]  # None: this GPU gives no per-process utilisation (the policy uses history)
        print(
            f"job {job['id']} {job['name'] or 'probe'}: {job['status']} {job['failure_reason'] or ''} "
            f"reserved {job['vram_mb']} MB, NVML peak {peak} MB, attempts {len(runs)}, "
            f"mean NVML utilisation {'unknown' if util is None else f'{util:.2f}'}"
        )
        ok &= job["status"] == "succeeded" and (peak or 0) <= job["vram_mb"]
    log = call("GET", f"/api/v1/jobs/{probe['id']}/logs").text
    allocator = next(
        (int(line.split()[1]) for line in log.splitlines() if line.startswith("TF_ALLOCATOR_PEAK_MB")), None
    )
    probe_peak = jobs[-1]["peak_vram_mb"]
    if allocator is not None and probe_peak:
        print(
            f"per-process overhead: NVML footprint {probe_peak} MB - TF allocator peak {allocator} MB "
            f"= {probe_peak - allocator} MB"
        )
    ok &= runtime_checks()
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
