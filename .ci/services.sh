#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on loopback: use them if running, start them if
# installed but stopped. The tests never run against anything else.
set -euo pipefail
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! pg_up; then
    echo "starting PostgreSQL"
    for v in /etc/postgresql/*; do
        pg_ctlcluster --skip-systemctl-redirect "$(basename "$v")" main start || true
    done
    for _ in $(seq 50); do pg_up && break; sleep 0.2; done
    pg_up || { echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }
fi
if ! redis_up; then
    echo "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
    redis_up || { echo "Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }
fi
# The test role must be able to create the test database.
psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1 || \
    { echo "cannot connect to PostgreSQL as postgres on 127.0.0.1" >&2; exit 1; }
