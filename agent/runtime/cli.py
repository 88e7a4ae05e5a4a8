"""``corral-runtime`` / ``python -m agent.runtime``: the OCI runtime command line.

Follows runc's command shapes so tools that drive runc can drive this: ``create <id> --bundle``,
``start``, ``state``, ``kill <id> [SIGNAL]``, ``delete [--force]``, plus ``run``, ``exec``,
``list`` and ``ps``. Errors are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import gc
import os
import sys

# Names for type checkers only: importing typing, collections.abc and argparse at run time
# costs milliseconds on every invocation (mypy and ruff read the block as usual).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn

    from agent.runtime.runtime import Runtime

# The global options and each command's: (flags, takes a value, default). The hand parser
# below and the argparse parser are both built from these tables, so they cannot drift.
GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], bool, Any], ...] = (
    (("--root",), True, None),  # None: the state module's DEFAULT_ROOT
    (("--log",), True, None),
    (("--log-format",), True, "text"),
    (("--debug",), False, False),
    (("--systemd-cgroup",), False, False),
)
_CREATE = (
    (("--bundle", "-b"), True, "."),
    (("--pid-file",), True, None),
    (("--console-socket",), True, None),
)
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[tuple[tuple[str, ...], bool, Any], ...]]] = {
    # name: (positionals, options); "exec" is left to argparse (its REMAINDER argument)
    "create": (("id",), _CREATE),
    "run": (("id",), (*_CREATE, (("--detach", "-d"), False, False))),
    "start": (("id",), ()),
    "state": (("id",), ()),
    "ps": (("id",), ()),
    "kill": (("id", "signal"), ()),
    "delete": (("id",), ((("--force", "-f"), False, False),)),
    "list": ((), ()),
}
_OPTIONAL_POSITIONALS = {"signal": "SIGTERM"}


class Args:
    """The parsed command line, attribute for attribute what argparse would give."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def parse_fast(argv: Sequence[str]) -> Args | None:
    """Parse a well-formed command line by hand; None for anything else (``--help``, a
    mistake, ``exec``), which argparse then handles with its usual messages. argparse alone
    costs ~20 ms of imports, a large part of a CLI ``create``."""
    values: dict[str, Any] = {_dest(f): d for f, _, d in GLOBAL_OPTIONS}
    rest = _take_options(list(argv), GLOBAL_OPTIONS, values, stop_at_positional=True)
    if rest is None or not rest or rest[0] not in COMMANDS:
        return None
    command, args = rest[0], rest[1:]
    positionals, options = COMMANDS[command]
    values["command"] = command
    values.update({_dest(f): d for f, _, d in options})
    words = _take_options(args, options, values, stop_at_positional=False)
    if words is None:
        return None
    required = [p for p in positionals if p not in _OPTIONAL_POSITIONALS]
    if not len(required) <= len(words) <= len(positionals):
        return None
    for i, name in enumerate(positionals):
        values[name] = words[i] if i < len(words) else _OPTIONAL_POSITIONALS[name]
    if values["log_format"] not in ("text", "json"):
        return None
    return Args(**values)


def _dest(flags: tuple[str, ...]) -> str:
    return flags[0].lstrip("-").replace("-", "_")


def _take_options(
    args: list[str],
    table: tuple[tuple[tuple[str, ...], bool, Any], ...],
    values: dict[str, Any],
    *,
    stop_at_positional: bool,
) -> list[str] | None:
    """Consume the options of ``table`` into ``values``; the words left, or None when a word
    looks like an option we do not know (argparse decides what it means)."""
    by_flag = {flag: (flags, takes) for flags, takes, _ in table for flag in flags}
    words: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("-") or word == "-":
            if stop_at_positional:
                return args[i:]
            words.append(word)
            i += 1
            continue
        name, eq, inline = word.partition("=")
        if name not in by_flag:
            return None
        flags, takes = by_flag[name]
        if not takes:
            if eq:
                return None
            values[_dest(flags)] = True
        elif eq:
            values[_dest(flags)] = inline
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            i += 1
            values[_dest(flags)] = args[i]
        else:
            return None
        i += 1
    return words


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="corral-runtime", description=__doc__)
    helps = {"--root": "state directory", "--log": "log file (default: stderr)"}
    helps["--systemd-cgroup"] = "accepted for runc parity"
    for flags, takes, default in GLOBAL_OPTIONS:
        _add_option(parser, flags, takes, default, helps.get(flags[0]))
    parser.set_defaults(root=None)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (positionals, options) in COMMANDS.items():
        p = sub.add_parser(name)
        for positional in positionals:
            if positional in _OPTIONAL_POSITIONALS:
                p.add_argument(positional, nargs="?", default=_OPTIONAL_POSITIONALS[positional])
            else:
                p.add_argument(positional)
        for flags, takes, default in options:
            _add_option(p, flags, takes, default, None)
    p = sub.add_parser("exec")
    p.add_argument("id")
    p.add_argument("--env", "-e", action="append", default=None)
    p.add_argument("--cwd")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _add_option(
    parser: argparse.ArgumentParser, flags: tuple[str, ...], takes: bool, default: Any, help: Any
) -> None:
    if not takes:
        parser.add_argument(*flags, action="store_true", help=help)
    elif flags[0] == "--log-format":
        parser.add_argument(*flags, choices=("text", "json"), default=default)
    else:
        parser.add_argument(*flags, default=default, help=help)


def parse_args(argv: Sequence[str] | None = None) -> Any:
    """The command line as attributes (an :class:`Args` or an argparse ``Namespace``)."""
    argv = sys.argv[1:] if argv is None else argv
    return parse_fast(argv) or build_parser().parse_args(argv)


def _setup_logging(args: Any) -> None:
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
    # A short-lived process: the cyclic garbage collector would only re-scan the objects
    # our imports create (~10 % of a CLI run's CPU). The shim we fork turns it on again.
    gc.disable()
    args = parse_args(argv)
    _setup_logging(args)
    from agent.runtime.errors import ConfigError, ContainerNotFound, RuntimeFailure
    from agent.runtime.runtime import Runtime

    # One fork, not two: this process exits right after ``create`` (``run``: right after the
    # shim), so the shim is its child only briefly and then anyone's a double fork gives it
    # to; the middle process's fork and exit cost ~1-3 ms.
    rt = Runtime(args.root, double_fork=False) if args.root else Runtime(double_fork=False)
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


def run() -> NoReturn:
    """The command's entry point (``python -m agent.runtime``, the console script): ``main``,
    then an exit that skips the interpreter's teardown, ~4 ms of a ~40 ms CLI ``run`` that
    would only free memory the kernel frees anyway. What is buffered is flushed first."""
    code = main()
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        sys.exit(code)  # let the interpreter report the failed write as it would
    os._exit(code)


def _dispatch(rt: Runtime, args: Any) -> int:
    import json

    from agent.runtime.errors import RuntimeFailure

    cmd = args.command
    console = getattr(args, "console_socket", None)
    console = os.path.abspath(console) if console else None  # the shim does not share our cwd
    if cmd == "create":
        rt.create(args.id, args.bundle, pid_file=args.pid_file, console_socket=console)
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
            rt.create(args.id, args.bundle, pid_file=args.pid_file, console_socket=console)
            rt.start(args.id)
            return 0
        code = rt.run(args.id, args.bundle, echo=True, console_socket=console)
        return code if code is not None else 1
    elif cmd == "exec":
        argv = args.args[1:] if args.args[:1] == ["--"] else args.args
        if not argv:
            raise RuntimeFailure("exec", "give a command to run")
        return rt.exec(args.id, argv, env=args.env, cwd=args.cwd)
    return 0


if __name__ == "__main__":
    run()
