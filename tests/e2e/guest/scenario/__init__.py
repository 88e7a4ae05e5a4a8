"""Guest-side scenarios of the Corral test guest (run inside qemu by ``python3 -m scenario.run``).

Each scenario proves one thing about the real agent code on an SELinux-enforcing, systemd,
cgroup v2 host and reports one ``SCENARIO <name> PASS|FAIL|SKIP <detail>`` line.
"""
