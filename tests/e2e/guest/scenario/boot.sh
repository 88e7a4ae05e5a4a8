#!/bin/bash
# Guest side, run by corral-guest-run (as container_engine_t) from the payload disk.
# Brings up the qemu user-mode NIC and runs the scenarios; every result line goes to the
# results channel ($1, the second serial port) and to the console.
RESULTS=${1:-/dev/ttyS1}
P=/opt/corral/payload
# Guest side of qemu user networking (restrict=on: only the harness's guestfwd targets exist).
IF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set lo up
if [ -n "$IF" ]; then
  ip link set "$IF" up
  ip addr add 10.0.2.15/24 dev "$IF"
fi
export PYTHONPATH=$P:/opt/corral/site-packages
export PYTHONDONTWRITEBYTECODE=1
cd "$P" || exit 1
exec python3 -m scenario.run --results "$RESULTS"
