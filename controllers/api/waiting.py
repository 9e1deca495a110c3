"""``manticore/waiting/data``: the FIFO waiting list, in Manticore's shape, on pages.

Every value is one JSON object ``{"<id>": {"queue": n, "claimed": bool, "since": t}}``:
``queue`` numbers are unique and only their order matters; ``claimed`` is true once the user was
given a core + HMI pair; ``since`` (ours, optional) is when the user joined.

**Why pages.** Manticore keeps the whole list in that one value. Consul refuses values over
512 KiB (and transaction bodies over 512 KiB), and an entry costs ``len(id) + ~50`` bytes
(about 90 bytes for a 36-character UUID), so one value would hold 5,000-13,000 users. The list
must hold 20,000 and more, so it continues on pages of the same shape:

* ``manticore/waiting/data`` is page 0 and always exists (``{}`` when the list is empty), so a
  reader that knows only Manticore's key sees a valid, if partial, list;
* ``manticore/waiting/data-<n>`` are the further pages. All of them sit under the plain prefix
  ``manticore/waiting/data``, so one recursive GET reads the whole list at one index
  (:func:`decode_pages`);
* each page stays below :data:`PAGE_BUDGET` (128 KiB of JSON), a quarter of Consul's value
  limit, so a transaction carrying two changed pages (base64 in the body, 4/3 larger) stays
  under 512 KiB (:func:`transactions`);
* entries keep their page for life (assignment-stable): a change touches only the pages of
  the users it concerns, and new users go to the last page while it has room, then to a new
  page (:func:`plan_pages`). Emptied pages are deleted (page 0 is written ``{}``).

**Limits.** A page holds ``PAGE_BUDGET / (len(id) + ~50)`` users: about 1,450 with 36-character
ids, 1,150 with the longest (64-character) ids. The number of pages is not bounded by Consul;
the list is bounded by :data:`DEFAULT_MAX_USERS` (``MANTICORE_WAITING_LIST_MAX_USERS``), at
which point the waitlist refuses to add users (their requests stay, they join when others
leave) and says so loudly. At 20,000 users of 36-character ids the list is about 1.8 MB on 13
pages; at 50,000 about 4.5 MB on 33 pages, all read in one GET.

The waitlist controller is the only writer; the intake API and the status CLI read the list
through :func:`decode_pages` so everyone sees it the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from controllers.api.ids import WAITING_KEY, UserId, is_user_id

VALUE_LIMIT = 512 * 1024
PAGE_BUDGET = 128 * 1024
# Two full pages, base64-encoded, plus the JSON of the operations: under 512 KiB.
TXN_BUDGET = 2 * PAGE_BUDGET
DEFAULT_MAX_USERS = 50_000

_PAGE_KEY = re.compile(r"^" + re.escape(WAITING_KEY) + r"(?:-([1-9][0-9]{0,8}))?$")


class WaitingEntry(BaseModel):
    """One user in the waiting list."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    queue: int = Field(ge=0, description="Position key: unique, only the order matters")
    claimed: bool = Field(description="True once the user has been given a core + HMI pair")
    since: int | None = Field(
        default=None, ge=0, description="Unix time the user joined the list (queue wait metrics)"
    )


class WaitingPage(RootModel[dict[UserId, WaitingEntry]]):
    """One value of the waiting list (``manticore/waiting/data`` or ``...data-<n>``)."""


class StoredValue(Protocol):
    """A KV pair as read from Consul (``reconciler.clients.consul.KVEntry`` is one)."""

    @property
    def key(self) -> str: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def modify_index(self) -> int: ...


def page_key(number: int) -> str:
    return WAITING_KEY if number == 0 else f"{WAITING_KEY}-{number}"


def page_number(key: str) -> int | None:
    """The page a key holds, or None for a key under the prefix that is not a page."""
    match = _PAGE_KEY.match(key)
    if match is None:
        return None
    return int(match.group(1) or 0)


# -------------------------------------------------------------------------- encoding


def encode_entry(user: str, entry: WaitingEntry) -> bytes:
    """``"<id>":{...}``: the bytes one user adds to its page (plus a comma).

    Formatted by hand (a page is re-encoded on every change, 1,000+ entries at a time); the
    result is exactly the canonical JSON of the entry, which a test holds it to.
    """
    if not is_user_id(user):
        raise ValueError(f"not a user id: {user!r}")
    since = "" if entry.since is None else f',"since":{entry.since}'
    claimed = "true" if entry.claimed else "false"
    return f'"{user}":{{"claimed":{claimed},"queue":{entry.queue}{since}}}'.encode()


def encode_page(entries: Mapping[str, WaitingEntry]) -> bytes:
    """A page's canonical bytes: users in queue order, fields sorted, no spaces."""
    ordered = sorted(entries.items(), key=lambda item: (item[1].queue, item[0]))
    return b"{" + b",".join(encode_entry(user, entry) for user, entry in ordered) + b"}"


def entry_size(user: str, entry: WaitingEntry) -> int:
    return len(encode_entry(user, entry)) + 1


# -------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Problem:
    """Something in the stored list that could not be used, reported by the reader."""

    key: str
    message: str
    kind: str
    user: str | None = None


@dataclass(frozen=True)
class PageState:
    """A page as stored: its ModifyIndex (the CAS index) and raw bytes."""

    number: int
    index: int
    raw: bytes
    valid: bool = True
    # Every entry of the stored value was accepted (nothing invalid or duplicated to drop).
    clean: bool = True

    @property
    def key(self) -> str:
        return page_key(self.number)


@dataclass(frozen=True)
class WaitingList:
    """The whole list, read from every page, with where each user is stored."""

    entries: Mapping[str, WaitingEntry] = field(default_factory=dict)
    page_of: Mapping[str, int] = field(default_factory=dict)
    pages: Mapping[int, PageState] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()

    def ordered(self) -> list[tuple[str, WaitingEntry]]:
        """Users in queue order."""
        return sorted(self.entries.items(), key=lambda item: (item[1].queue, item[0]))

    def claimed(self) -> list[str]:
        return [user for user, entry in self.ordered() if entry.claimed]

    def waiting(self) -> list[str]:
        return [user for user, entry in self.ordered() if not entry.claimed]

    @property
    def encoded_bytes(self) -> int:
        return sum(len(p.raw) for p in self.pages.values())

    @property
    def largest_page_bytes(self) -> int:
        return max((len(p.raw) for p in self.pages.values()), default=0)


def decode_pages(stored: Iterable[StoredValue]) -> WaitingList:
    """Every page under ``manticore/waiting/data`` -> one list.

    A page that is not a JSON object, or an entry that fails validation, is reported in
    ``problems`` and left out; nothing else is affected. A user found on two pages keeps the
    entry of the lower page (the other is reported and will be rewritten without it).
    """
    entries: dict[str, WaitingEntry] = {}
    page_of: dict[str, int] = {}
    pages: dict[int, PageState] = {}
    problems: list[Problem] = []
    for item in sorted(stored, key=lambda s: page_number(s.key) or 0):
        number = page_number(item.key)
        if number is None:
            problems.append(Problem(item.key, "not a waiting-list page; ignored", "foreign-key"))
            continue
        raw = item.value or b""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError as exc:
            data = exc
        if not isinstance(data, dict):
            problems.append(
                Problem(item.key, "page is not a JSON object; its users are re-queued", "page")
            )
            pages[number] = PageState(number, item.modify_index, raw, valid=False, clean=False)
            continue
        dropped = len(problems)
        for user, value in data.items():
            if not isinstance(user, str) or not is_user_id(user):
                problems.append(Problem(item.key, f"invalid user id {user!r}", "schema"))
                continue
            try:
                entry = WaitingEntry.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ())) or "(entry)"
                problems.append(
                    Problem(item.key, f"{user}: {where}: {first.get('msg')}", "schema", user)
                )
                continue
            if user in entries:
                problems.append(
                    Problem(item.key, f"{user} is also on page {page_of[user]}", "duplicate", user)
                )
                continue
            entries[user] = entry
            page_of[user] = number
        pages[number] = PageState(number, item.modify_index, raw, clean=len(problems) == dropped)
    return WaitingList(entries, page_of, pages, tuple(problems))


def merge_pages(parts: Iterable[WaitingList]) -> WaitingList:
    """Lists decoded page by page -> one list (a user on two pages keeps the lower page)."""
    entries: dict[str, WaitingEntry] = {}
    page_of: dict[str, int] = {}
    pages: dict[int, PageState] = {}
    problems: list[Problem] = []
    for part in sorted(parts, key=lambda p: min(p.pages, default=-1)):
        pages.update(part.pages)
        problems.extend(part.problems)
        for user, entry in part.entries.items():
            number = part.page_of[user]
            if user in entries:
                problems.append(
                    Problem(
                        page_key(number),
                        f"{user} is also on page {page_of[user]}",
                        "duplicate",
                        user,
                    )
                )
                state = pages[number]
                pages[number] = PageState(number, state.index, state.raw, state.valid, clean=False)
                continue
            entries[user] = entry
            page_of[user] = number
    return WaitingList(entries, page_of, pages, tuple(problems))


def decode_values(values: Mapping[str, Any]) -> WaitingList:
    """:func:`decode_pages` for ``{key: raw bytes}`` (tests, the status CLI)."""

    @dataclass(frozen=True)
    class _Stored:
        key: str
        value: bytes | None
        modify_index: int = 0

    return decode_pages(_Stored(k, v) for k, v in values.items())


# -------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class PageWrite:
    """One page to write (``value``) or delete (``value is None``), CAS on ``index``.

    ``index`` 0 means the page must not exist yet.
    """

    number: int
    value: bytes | None
    index: int
    removes_claimed: bool = False

    @property
    def key(self) -> str:
        return page_key(self.number)

    @property
    def size(self) -> int:
        return len(self.value or b"")


@dataclass(frozen=True)
class PagePlan:
    """The desired pages and the writes that get the stored pages there."""

    pages: Mapping[int, Mapping[str, WaitingEntry]]
    writes: tuple[PageWrite, ...]

    @property
    def page_of(self) -> dict[str, int]:
        return {user: n for n, entries in self.pages.items() for user in entries}


def plan_pages(
    desired: Mapping[str, WaitingEntry], previous: WaitingList, *, budget: int = PAGE_BUDGET
) -> PagePlan:
    """Lay ``desired`` out on pages, keeping every known user on its page.

    New users (in queue order) go to the last page while it has room under ``budget``, then to
    a new page after it. Only pages whose bytes change are written.
    """
    pages: dict[int, dict[str, WaitingEntry]] = {n: {} for n in previous.pages}
    pages.setdefault(0, {})
    before: dict[int, dict[str, WaitingEntry]] = {n: {} for n in pages}
    for user, number in previous.page_of.items():
        before[number][user] = previous.entries[user]
    newcomers: list[tuple[str, WaitingEntry]] = []
    for user, entry in desired.items():
        home = previous.page_of.get(user)
        if home is not None and previous.pages[home].valid:
            pages[home][user] = entry
        else:
            newcomers.append((user, entry))

    def unchanged(number: int) -> bool:
        stored = previous.pages.get(number)
        return stored is not None and stored.clean and pages[number] == before[number]

    # Sizes of untouched pages are their stored sizes: a plan encodes only what changes.
    sizes = {
        n: len(previous.pages[n].raw) if unchanged(n) else len(encode_page(entries))
        for n, entries in pages.items()
    }
    newcomers.sort(key=lambda item: (item[1].queue, item[0]))
    last = max(pages)
    for user, entry in newcomers:
        cost = entry_size(user, entry)
        if sizes[last] + cost > budget:
            last += 1
            pages[last] = {}
            before[last] = {}
            sizes[last] = 2
        pages[last][user] = entry
        sizes[last] += cost
    writes: list[PageWrite] = []
    for number in sorted(pages):
        if unchanged(number):
            continue
        entries = pages[number]
        stored = previous.pages.get(number)
        removes_claimed = any(
            old.claimed and not (u in entries and entries[u].claimed)
            for u, old in before[number].items()
        )
        if not entries and number != 0:
            if stored is not None:
                writes.append(PageWrite(number, None, stored.index, removes_claimed))
            continue
        value = encode_page(entries)
        if stored is None or stored.raw != value:
            writes.append(PageWrite(number, value, stored.index if stored else 0, removes_claimed))
    final = {n: e for n, e in pages.items() if e or n == 0}
    return PagePlan(final, tuple(writes))


def transactions(writes: Sequence[PageWrite], *, budget: int = TXN_BUDGET) -> list[list[PageWrite]]:
    """Group page writes into transactions whose values total at most ``budget`` raw bytes.

    Pages that release a claimed user go first, so that while a plan is applied in several
    transactions the cluster never holds more claimed users than it planned for.
    """
    ordered = sorted(writes, key=lambda w: (not w.removes_claimed, w.number))
    groups: list[list[PageWrite]] = []
    current: list[PageWrite] = []
    used = 0
    for write in ordered:
        if current and used + write.size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(write)
        used += write.size
    if current:
        groups.append(current)
    return groups
