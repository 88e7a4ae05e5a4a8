#!/bin/sh
# corral-agentctl PREFIX start|stop|status|supervise
#
# Runs the Corral agent where PID 1 is not systemd: `start` detaches a tiny supervisor with
# setsid (pid file under PREFIX/run), which restarts the agent when it exits; `stop` ends the
# supervisor and the agent only, so containers (each with its own shim) keep running.
# Installed with the agent by the control plane's SSH bootstrap.
set -u
PREFIX=$1
ACTION=$2
RUN="$PREFIX/run"
SUP_PID="$RUN/supervisor.pid"
AGENT_PID="$RUN/agent.pid"

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
readpid() { [ -f "$1" ] && cat "$1" 2>/dev/null; }

case "$ACTION" in
supervise)
    mkdir -p "$RUN" "$PREFIX/log"
    echo $$ > "$SUP_PID"
    child=""
    trap 'rm -f "$RUN/want-run"; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
    touch "$RUN/want-run"
    while [ -f "$RUN/want-run" ]; do
        PYTHONUNBUFFERED=1 "$PREFIX/venv/bin/python" -m agent --config "$PREFIX/agent.json" run \
            >>"$PREFIX/log/agent.log" 2>&1 </dev/null &
        child=$!
        echo "$child" > "$AGENT_PID"
        wait "$child"
        # wait returns early when a trapped signal arrives: wait for the agent itself.
        while alive "$child"; do sleep 0.2; done
        rm -f "$AGENT_PID"
        [ -f "$RUN/want-run" ] && sleep 2
    done
    rm -f "$SUP_PID"
    ;;
start)
    if alive "$(readpid "$SUP_PID")"; then
        echo "already running"
        exit 0
    fi
    mkdir -p "$RUN" "$PREFIX/log"
    setsid -f sh "$PREFIX/bin/corral-agentctl" "$PREFIX" supervise </dev/null >/dev/null 2>&1
    i=0
    while [ $i -lt 50 ]; do
        alive "$(readpid "$AGENT_PID")" && { echo "started"; exit 0; }
        sleep 0.1
        i=$((i + 1))
    done
    echo "the supervisor did not start the agent" >&2
    exit 1
    ;;
stop)
    sup=$(readpid "$SUP_PID")
    agent=$(readpid "$AGENT_PID")
    rm -f "$RUN/want-run"
    alive "$sup" && kill -TERM "$sup" 2>/dev/null
    alive "$agent" && kill -TERM "$agent" 2>/dev/null
    i=0
    while [ $i -lt 100 ] && { alive "$sup" || alive "$agent"; }; do
        sleep 0.1
        i=$((i + 1))
    done
    alive "$agent" && kill -KILL "$agent" 2>/dev/null
    alive "$sup" && kill -KILL "$sup" 2>/dev/null
    rm -f "$SUP_PID" "$AGENT_PID"
    echo "stopped"
    ;;
status)
    if alive "$(readpid "$AGENT_PID")"; then
        echo "running $(readpid "$AGENT_PID")"
    else
        echo "stopped"
        exit 3
    fi
    ;;
*)
    echo "usage: corral-agentctl PREFIX start|stop|status|supervise" >&2
    exit 2
    ;;
esac
