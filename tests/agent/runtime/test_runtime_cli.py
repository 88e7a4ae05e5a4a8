"""The CLI's command line: the hand parser (the fast path) agrees with argparse on every shape
it accepts, leaves everything else to argparse, and the CLI imports little at start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.runtime.cli import build_parser, parse_fast

REPO = Path(__file__).resolve().parents[3]

ACCEPTED = [
    ["create", "c1", "--bundle", "/b"],
    ["create", "c1", "--bundle=/b", "--pid-file", "/p"],
    ["--root", "/r", "run", "c1", "-b", "/b", "-d"],
    ["--root=/r", "--debug", "delete", "-f", "c1"],
    ["delete", "c1", "--force"],
    ["kill", "c1"],
    ["kill", "c1", "KILL"],
    ["list"],
    ["state", "c1"],
    ["--log", "/l", "--log-format", "json", "start", "c1"],
    ["run", "--pid-file=/p", "c1", "--console-socket", "/s"],
    ["--systemd-cgroup", "ps", "c1"],
]


@pytest.mark.parametrize("argv", ACCEPTED, ids=" ".join)
def test_fast_parser_gives_what_argparse_gives(argv: list[str]) -> None:
    fast = parse_fast(argv)
    assert fast is not None
    assert vars(fast) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["create"],  # missing id: argparse says so
        ["create", "a", "b"],
        ["exec", "c1", "--", "ls"],
        ["--log-format", "xml", "list"],
        ["delete", "-x", "c1"],
        ["--debug=1", "list"],
        ["create", "c1", "--bundle"],
        ["bogus"],
        [],
    ],
    ids=lambda argv: " ".join(argv) or "(empty)",
)
def test_anything_unusual_is_left_to_argparse(argv: list[str]) -> None:
    assert parse_fast(argv) is None


def test_a_bad_command_line_is_one_argparse_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.runtime", "create"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "the following arguments are required: id" in done.stderr


def modules_after(code: str) -> set[str]:
    """The modules a fresh ``python -S`` has loaded after running ``code``."""
    script = f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}; print(sorted(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, check=True
    )
    return set(eval(done.stdout))  # noqa: S307 - our own subprocess printed a list


def test_cli_start_up_imports_neither_argparse_nor_typing() -> None:
    loaded = modules_after("import agent.runtime.cli")
    assert not {"argparse", "typing", "dataclasses", "json"} & loaded


def test_output_and_status_survive_the_exit_that_skips_teardown(tmp_path: Path) -> None:
    from agent.runtime.state import StateStore

    store = StateStore(tmp_path / "st")
    store.make_dir("c1")
    store.write("c1", {"id": "c1", "status": "stopped", "bundle": "/b", "exit_code": 3})
    cli = [sys.executable, "-m", "agent.runtime", "--root", str(tmp_path / "st")]
    done = subprocess.run([*cli, "state", "c1"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0
    assert json.loads(done.stdout)["exit_code"] == 3  # block-buffered into a pipe: flushed
    done = subprocess.run([*cli, "state", "c2"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("corral-runtime: ")


def test_the_create_path_imports_no_dataclasses_typing_or_datetime(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "ociVersion": "1.0.2",
                "process": {"args": ["/bin/true"]},
                "root": {"path": "rootfs"},
                "linux": {"namespaces": [{"type": "mount"}]},
            }
        )
    )
    loaded = modules_after(
        "import agent.runtime.cli, agent.runtime.runtime, agent.runtime.shim, "
        "agent.runtime.report, agent.runtime.terminal; "
        "from agent.runtime.config import load_config; "
        f"assert load_config({str(tmp_path)!r}).process.args == ('/bin/true',)"
    )
    assert "agent.runtime.process" in loaded
    slow = {"argparse", "typing", "dataclasses", "inspect", "datetime", "logging", "socket"}
    slow |= {"pathlib"}
    assert not (slow | {"agent.runtime.cgroups"}) & loaded
