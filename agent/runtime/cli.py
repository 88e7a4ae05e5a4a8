"""``corral-runtime`` / ``python -m agent.runtime``: the OCI runtime command line.

Follows runc's command shapes so tools that drive runc can drive this: ``create <id> --bundle``,
``start``, ``state``, ``kill <id> [SIGNAL]``, ``delete [--force]``, plus ``run``, ``exec``,
``list`` and ``ps``. Errors are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from agent.runtime.errors import ConfigError, ContainerNotFound, RuntimeFailure
from agent.runtime.runtime import Runtime
from agent.runtime.state import DEFAULT_ROOT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral-runtime", description=__doc__)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="state directory")
    parser.add_argument("--log", default=None, help="log file (default: stderr)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--systemd-cgroup", action="store_true", help="accepted for runc parity")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("create", "run"):
        p = sub.add_parser(name)
        p.add_argument("id")
        p.add_argument("--bundle", "-b", default=".")
        p.add_argument("--pid-file")
        p.add_argument("--console-socket")
        if name == "run":
            p.add_argument("--detach", "-d", action="store_true")
    for name in ("start", "state", "ps"):
        sub.add_parser(name).add_argument("id")
    p = sub.add_parser("kill")
    p.add_argument("id")
    p.add_argument("signal", nargs="?", default="SIGTERM")
    p = sub.add_parser("delete")
    p.add_argument("id")
    p.add_argument("--force", "-f", action="store_true")
    p = sub.add_parser("exec")
    p.add_argument("id")
    p.add_argument("--env", "-e", action="append", default=None)
    p.add_argument("--cwd")
    p.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("list")
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    if not (args.log or args.debug):
        return  # the runtime logs nothing below WARNING; skip importing logging at all
    import logging

    handler: logging.Handler = (
        logging.FileHandler(args.log) if args.log else logging.StreamHandler(sys.stderr)
    )
    if args.log_format == "json":
        fmt = '{"level": "%(levelname)s", "time": "%(asctime)s", "msg": "%(message)s"}'
    else:
        fmt = "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    rt = Runtime(args.root)
    try:
        return _dispatch(rt, args)
    except ConfigError as exc:
        print(f"corral-runtime: invalid config: {exc}", file=sys.stderr)
    except ContainerNotFound as exc:
        print(f"corral-runtime: {exc}", file=sys.stderr)
    except RuntimeFailure as exc:
        print(f"corral-runtime: {args.command} failed at {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"corral-runtime: {args.command}: {exc}", file=sys.stderr)
    return 1


def _dispatch(rt: Runtime, args: argparse.Namespace) -> int:
    cmd = args.command
    if getattr(args, "console_socket", None):
        raise RuntimeFailure("console-socket", "terminals are not supported by this runtime yet")
    if cmd == "create":
        rt.create(args.id, args.bundle, pid_file=args.pid_file)
    elif cmd == "start":
        rt.start(args.id)
    elif cmd == "state":
        print(json.dumps(rt.state(args.id), indent=2))
    elif cmd == "kill":
        rt.kill(args.id, args.signal)
    elif cmd == "delete":
        rt.delete(args.id, force=args.force)
    elif cmd == "list":
        for st in rt.list():
            print(f"{st['id']}\t{st.get('pid', 0)}\t{st['status']}\t{st['bundle']}")
    elif cmd == "ps":
        print(json.dumps(rt.ps(args.id)))
    elif cmd == "run":
        if args.detach:
            rt.create(args.id, args.bundle, pid_file=args.pid_file)
            rt.start(args.id)
            return 0
        code = rt.run(args.id, args.bundle, echo=True)
        return code if code is not None else 1
    elif cmd == "exec":
        argv = args.args[1:] if args.args[:1] == ["--"] else args.args
        if not argv:
            raise RuntimeFailure("exec", "give a command to run")
        return rt.exec(args.id, argv, env=args.env, cwd=args.cwd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
