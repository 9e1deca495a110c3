"""HAProxy's runtime API (the worker's admin socket): apply plan operations, read state back.

One connection carries a whole batch in interactive (``prompt``) mode, so a thousand commands
cost one round trip each on a local socket and no reconnects. Every answer is checked: HAProxy
answers success with nothing (``set server ... state``, ``add map``, ``del map``) or with a
sentence saying what changed (``set server ... addr``); anything else is a failure, raised as
:class:`RuntimeCommandFailed` naming the command, so the caller falls back to a full reload
rather than leave HAProxy half-updated without knowing it.

The read side (``show servers state``, ``show map``) is what the controller compares with its
files to prove that the running HAProxy and the disk agree.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controllers.haproxy.plan import (
    MapAdd,
    MapName,
    MapSet,
    Op,
    SetAddr,
    SetState,
    ShutdownSessions,
)
from controllers.haproxy.routes import split_address

_PROMPT = b"\n> "
# Admin-state bits of ``show servers state`` meaning "in maintenance" (forced, inherited,
# resolution-driven, or set in the configuration and not lifted since).
_FORCED_MAINT = 0x01
_MAINT_BITS = 0x01 | 0x02 | 0x08 | 0x10


class RuntimeAPIError(OSError):
    """The runtime socket could not be reached or closed in the middle of a batch."""


class RuntimeCommandFailed(RuntimeError):
    """HAProxy answered a command with an error."""

    def __init__(self, command: str, answer: str) -> None:
        super().__init__(f"HAProxy refused {command!r}: {answer.strip() or '(no answer)'}")
        self.command = command
        self.answer = answer


@dataclass(frozen=True, slots=True)
class ServerState:
    """One line of ``show servers state``: address, port and whether the server takes traffic."""

    backend: str
    server: str
    address: str
    port: int
    ready: bool

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.server}"


def command_of(op: Op, map_paths: Mapping[MapName, Path]) -> str:
    """The runtime API command of one operation (values were validated before planning)."""
    if isinstance(op, SetAddr):
        host, port = split_address(op.address)
        return f"set server {op.server} addr {host} port {port}"
    if isinstance(op, SetState):
        return f"set server {op.server} state {op.state}"
    if isinstance(op, ShutdownSessions):
        return f"shutdown sessions server {op.server}"
    if isinstance(op, MapAdd):
        return f"add map {map_paths[op.map]} {op.key} {op.value}"
    if isinstance(op, MapSet):
        return f"set map {map_paths[op.map]} {op.key} {op.value}"
    return f"del map {map_paths[op.map]} {op.key}"


def _succeeded(op: Op, answer: str) -> bool:
    text = answer.strip()
    if isinstance(op, SetAddr):
        return text == "" or "changed" in text or "no need to change" in text
    return text == ""


class RuntimeAPI:
    """The admin socket of the current worker (``stats socket ... level admin``)."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def execute(self, commands: Sequence[str]) -> list[str]:
        """Run ``commands`` on one connection, in order; their answers, in the same order."""
        if not commands:
            return []
        answers: list[str] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                reader = _PromptReader(sock)
                sock.sendall(b"prompt\n")
                reader.answer()
                # Pipelined in chunks: HAProxy reads commands one line at a time, so a chunk in
                # flight never exceeds what the socket buffers hold while we read answers.
                for start in range(0, len(commands), 64):
                    chunk = commands[start : start + 64]
                    sock.sendall("".join(f"{c}\n" for c in chunk).encode())
                    answers.extend(reader.answer() for _ in chunk)
                sock.sendall(b"quit\n")
        except OSError as exc:
            raise RuntimeAPIError(f"HAProxy runtime API {self.path}: {exc}") from exc
        return answers

    def apply(
        self,
        ops: Sequence[Op],
        map_paths: Mapping[MapName, Path],
        *,
        on_done: Callable[[Op], None] | None = None,
    ) -> None:
        """Run every operation; :class:`RuntimeCommandFailed` at the first one HAProxy refuses.

        ``on_done`` hears of each operation that succeeded (metrics).
        """
        commands = [command_of(op, map_paths) for op in ops]
        answers = self.execute(commands)
        for op, command, answer in zip(ops, commands, answers, strict=True):
            if not _succeeded(op, answer):
                raise RuntimeCommandFailed(command, answer)
            if on_done is not None:
                on_done(op)

    # -- reading state back -----------------------------------------------------------------

    def servers_state(self) -> dict[str, ServerState]:
        """``show servers state``: ``backend/server`` -> state, for every server."""
        (answer,) = self.execute(["show servers state"])
        return parse_servers_state(answer.splitlines())

    def map_entries(self, path: Path) -> list[tuple[str, str]]:
        """``show map <file>``: the entries of one map, duplicates included, in HAProxy's order."""
        (answer,) = self.execute([f"show map {path}"])
        if answer.startswith("Unknown map"):
            raise RuntimeCommandFailed(f"show map {path}", answer)
        entries: list[tuple[str, str]] = []
        for line in answer.splitlines():
            fields = line.split()
            if len(fields) == 3:
                entries.append((fields[1], fields[2]))
        return entries


def parse_servers_state(lines: Iterable[str]) -> dict[str, ServerState]:
    """Version 1 of HAProxy's server state format (``be_id be_name srv_id srv_name srv_addr
    srv_op_state srv_admin_state ... srv_port ...``)."""
    states: dict[str, ServerState] = {}
    for line in lines:
        if not line or line.startswith("#") or line.strip() == "1":
            continue
        fields = line.split()
        if len(fields) < 19 or not fields[0].isdigit():
            continue
        backend, server, address = fields[1], fields[3], fields[4]
        op_state, admin_state = int(fields[5]), int(fields[6])
        port = int(fields[18]) if fields[18].isdigit() else 0
        ready = op_state != 0 and not admin_state & _MAINT_BITS
        states[f"{backend}/{server}"] = ServerState(backend, server, address, port, ready)
    return states


class _PromptReader:
    """Splits a prompt-mode stream into answers: each ends with the ``> `` prompt."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def answer(self) -> str:
        while True:
            head, sep, rest = self._buffer.partition(_PROMPT)
            if sep:
                self._buffer = rest
                return head.decode(errors="replace")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise RuntimeAPIError("HAProxy closed the runtime socket mid-batch")
            self._buffer += chunk
