"""Agent command line: ``python -m agent enroll ...`` and ``python -m agent run``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.config import DEFAULT_CONFIG, DEFAULT_STATE_DIR, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description="Corral host agent")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent config file")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    enroll_p = sub.add_parser("enroll", help="register this host with a control plane")
    enroll_p.add_argument("--server", required=True, help="control plane URL")
    enroll_p.add_argument("--token", required=True, help="single-use enrollment token")
    enroll_p.add_argument("--name", help="host name (default: this machine's)")
    enroll_p.add_argument("--address", default="", help="address the host is known by")
    enroll_p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    enroll_p.add_argument("--broker-url", help="override the broker URL the server hands out")
    sub.add_parser("run", help="run the agent (consume this host's queue, send heartbeats)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    if args.command == "enroll":
        from agent.enroll import EnrollError, enroll

        try:
            config = enroll(
                server=args.server,
                token=args.token,
                config_path=args.config,
                state_dir=args.state_dir,
                name=args.name,
                address=args.address,
                broker_url=args.broker_url,
            )
        except EnrollError as exc:
            print(f"corral-agent: {exc}", file=sys.stderr)
            return 2
        print(f"enrolled as host {config.name} ({config.host_id}); queue {config.queue}")
        return 0

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"corral-agent: {exc}", file=sys.stderr)
        return 2
    from agent.worker import run

    run(config, loglevel=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
