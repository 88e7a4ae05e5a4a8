"""gunicorn settings for the Corral web process (deploy/systemd/corral-web.service).

Threaded workers (``gthread``): a follow of container logs (``/api/v1/containers/<id>/logs
?follow=1``) holds one thread for up to an hour, so each worker process serves several requests
at once. Every number can be changed from /etc/corral/corral.env; a malformed value stops
gunicorn with a message naming the variable. Behind nginx on the same machine: bind to loopback
and trust X-Forwarded-* only from it.
"""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A malformed CORRAL_WEB_* variable; the message names it."""


def _env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_int(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def usable_cpus() -> int:
    """CPUs this process may run on (a cpuset or taskset limit counts, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Loopback only: nginx terminates TLS and is the only client. Binding a public address would
# let clients set X-Forwarded-Proto themselves.
bind = [_env_str("CORRAL_WEB_BIND", "127.0.0.1:8000")]

# Processes for CPU-bound work (templates, serializers), threads for requests that wait on
# the database or an agent; 2 x CPUs + 1 is gunicorn's own rule of thumb.
worker_class = "gthread"
workers = _env_int("CORRAL_WEB_WORKERS", 2 * usable_cpus() + 1, minimum=1)
threads = _env_int("CORRAL_WEB_THREADS", 8, minimum=1)

# With gthread the timeout is how long a worker's main loop may be silent (a hung process),
# not a cap on a request, so long log follows are not cut by it.
timeout = _env_int("CORRAL_WEB_TIMEOUT", 60, minimum=5)
graceful_timeout = _env_int("CORRAL_WEB_GRACEFUL_TIMEOUT", 30, minimum=1)
keepalive = 5

# Recycle workers now and then so a slow leak never grows without bound; the jitter keeps
# them from restarting together.
max_requests = _env_int("CORRAL_WEB_MAX_REQUESTS", 5000, minimum=0)
max_requests_jitter = max_requests // 10

# X-Forwarded-Proto/-For are believed only from these addresses (the nginx in front).
forwarded_allow_ips = _env_str("CORRAL_WEB_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}

# Worker heartbeat files in memory, not on a disk that may stall under load.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# Logs to stdout/stderr, collected by journald.
accesslog = "-"
errorlog = "-"
loglevel = _env_str("CORRAL_WEB_LOG_LEVEL", "info")
access_log_format = '%({x-forwarded-for}i)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms'
proc_name = "corral-web"
