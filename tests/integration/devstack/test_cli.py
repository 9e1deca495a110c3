"""The ``devstack`` command: every subcommand has a help; a missing piece breaks only itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack import cli

pytestmark = pytest.mark.integration

# One option of each subcommand that proves its own arguments were loaded.
OPTIONS = {
    "consul": "--port",
    "nomad": "--consul-addr",
    "elb": "--load-balancer",
    "haproxy": "--stats-port",
    "up": "--ephemeral",
    "status": "--json",
    "down": "--timeout",
}


def test_every_command_is_listed_in_the_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: devstack")
    assert set(OPTIONS) == {command.name for command in cli.COMMANDS}
    for name in OPTIONS:
        assert f"    {name} " in out


@pytest.mark.parametrize(("command", "option"), sorted(OPTIONS.items()))
def test_each_command_has_its_own_help(
    command: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: devstack {command}")
    assert option in out


def test_python_dash_m_devstack_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "up", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: devstack up" in result.stdout
    assert "--port-offset" in result.stdout


def test_no_command_prints_the_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: devstack" in capsys.readouterr().out


def test_a_command_that_cannot_load_breaks_only_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = cli.Command("broken", "a piece still being written", "devstack.not_written_yet")
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, broken))

    assert cli.main(["broken"]) == 2
    assert "devstack.not_written_yet cannot be loaded" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    assert "broken" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        cli.main(["elb", "--help"])
    assert exited.value.code == 0


def test_status_and_down_without_a_stack_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--home", str(tmp_path)]) == 1
    assert "not running" in capsys.readouterr().out
    assert cli.main(["down", "--home", str(tmp_path)]) == 1
    assert "not running" in capsys.readouterr().out


def test_elb_rejects_a_malformed_listener(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["elb", "--port", "0", "--listener", "HTTP:80"]) == 2
    assert "PROTOCOL:LB_PORT:INSTANCE_PORT" in capsys.readouterr().err


# Runs a module with chosen top-level packages made unimportable, as if the [devstack] extra
# had not been installed.
WITHOUT_EXTRA = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Missing())
for name in list(sys.modules):
    if name.split(".")[0] in blocked:
        del sys.modules[name]
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without(blocked: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, blocked, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("blocked", "argv", "distribution"),
    [
        ("aiohttp", ("devstack", "consul", "--port", "0"), "aiohttp"),
        ("aiohttp", ("devstack.consul", "--port", "0"), "aiohttp"),
        ("aiohttp", ("devstack", "nomad"), "aiohttp"),
        ("aiohttp,moto,uvloop", ("devstack", "up", "--ephemeral"), "aiohttp"),
        ("moto", ("devstack", "up", "--ephemeral"), "moto[server]"),
        ("moto", ("devstack", "elb", "--port", "0"), "moto[server]"),
    ],
)
def test_a_missing_extra_is_named_with_the_install_command(
    blocked: str, argv: tuple[str, ...], distribution: str
) -> None:
    result = run_without(blocked, *argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"the optional dependency {distribution!r} is not installed" in result.stderr
    assert "pip install 'manticore-reconciler[devstack]'" in result.stderr


def test_the_help_and_the_stack_bookkeeping_work_without_the_extra(tmp_path: Path) -> None:
    result = run_without("aiohttp,moto,uvloop", "devstack", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: devstack" in result.stdout
    result = run_without("aiohttp", "devstack", "consul", "--help")
    assert result.returncode == 0, result.stderr
    assert "pip install 'manticore-reconciler[devstack]'" in result.stdout
    result = run_without("aiohttp,moto,uvloop", "devstack", "status", "--home", str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "not running" in result.stdout
