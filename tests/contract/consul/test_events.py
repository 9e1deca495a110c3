"""User events: ``PUT /v1/event/fire/<name>`` and ``GET /v1/event/list``, as
``agent/event_endpoint.go`` and ``agent/user_event.go`` have them."""

from __future__ import annotations

import base64
import threading
import time
import uuid

import httpx


def _uuid_index(event_id: str) -> int:
    hexed = event_id.replace("-", "")
    return int(hexed[:16], 16) ^ int(hexed[16:], 16)


def _listed(client: httpx.Client, name: str, count: int) -> httpx.Response:
    """The list for ``name`` once it holds ``count`` events (a real agent receives its own
    events back through gossip, a moment after firing)."""
    deadline = time.monotonic() + 5
    while True:
        r = client.get("/v1/event/list", params={"name": name})
        if len(r.json()) >= count or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_fire_returns_the_event(consul_http: httpx.Client) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    r = consul_http.put(f"/v1/event/fire/{name}", content=b"deploy v2")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert list(body) == [
        "ID",
        "Name",
        "Payload",
        "NodeFilter",
        "ServiceFilter",
        "TagFilter",
        "Version",
        "LTime",
    ]
    assert uuid.UUID(body["ID"])
    assert body["Name"] == name
    assert base64.b64decode(body["Payload"]) == b"deploy v2"
    assert (body["NodeFilter"], body["ServiceFilter"], body["TagFilter"]) == ("", "", "")
    assert (body["Version"], body["LTime"]) == (1, 0)
    # Without a body the payload is null.
    assert consul_http.put(f"/v1/event/fire/{name}").json()["Payload"] is None


def test_list_by_name_with_its_index(consul_http: httpx.Client) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    first = consul_http.put(f"/v1/event/fire/{name}", content=b"1").json()
    second = consul_http.put(f"/v1/event/fire/{name}", content=b"2").json()
    r = _listed(consul_http, name, 2)
    events = r.json()
    assert [e["ID"] for e in events] == [first["ID"], second["ID"]]
    assert [base64.b64decode(e["Payload"]) for e in events] == [b"1", b"2"]
    assert events[0]["LTime"] > 0
    assert events[1]["LTime"] > events[0]["LTime"]
    assert int(r.headers["X-Consul-Index"]) == _uuid_index(second["ID"])
    # No event of that name: index 1, so a watch does not spin.
    r = consul_http.get("/v1/event/list", params={"name": f"none-{uuid.uuid4().hex}"})
    assert (r.json(), r.headers["X-Consul-Index"]) == ([], "1")


def test_list_blocks_until_the_next_event(consul_http: httpx.Client, consul_addr: str) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    consul_http.put(f"/v1/event/fire/{name}")
    index = int(_listed(consul_http, name, 1).headers["X-Consul-Index"])

    def later() -> None:
        time.sleep(0.3)
        with httpx.Client(base_url=f"http://{consul_addr}", headers=consul_http.headers) as c:
            c.put(f"/v1/event/fire/{name}", content=b"next")

    t = threading.Thread(target=later)
    t.start()
    started = time.monotonic()
    r = consul_http.get("/v1/event/list", params={"name": name, "index": index, "wait": "5s"})
    elapsed = time.monotonic() - started
    t.join()
    assert 0.2 < elapsed < 4
    events = r.json()
    assert base64.b64decode(events[-1]["Payload"]) == b"next"
    assert int(r.headers["X-Consul-Index"]) == _uuid_index(events[-1]["ID"])
    # Same index and nothing new: the full wait, then the same answer.
    started = time.monotonic()
    again = consul_http.get(
        "/v1/event/list",
        params={"name": name, "index": r.headers["X-Consul-Index"], "wait": "300ms"},
    )
    assert time.monotonic() - started >= 0.29
    assert again.json() == events


def test_filters_decide_whether_this_agent_records_it(consul_http: httpx.Client) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    missed = consul_http.put(
        f"/v1/event/fire/{name}", params={"service": f"^no-such-{uuid.uuid4().hex}$"}
    )
    assert missed.status_code == 200
    assert missed.json()["ServiceFilter"].startswith("^no-such-")
    hit = consul_http.put(f"/v1/event/fire/{name}", params={"node": ".*"}).json()
    events = _listed(consul_http, name, 1).json()
    assert [e["ID"] for e in events] == [hit["ID"]]
    assert events[0]["NodeFilter"] == ".*"


def test_event_errors(consul_http: httpx.Client) -> None:
    r = consul_http.put("/v1/event/fire/")
    assert (r.status_code, r.text) == (400, "Missing name")
    r = consul_http.put("/v1/event/fire/x", params={"tag": "a"})
    assert (r.status_code, r.text) == (500, "Cannot provide tag filter without service filter")
    r = consul_http.get("/v1/event/list", params={"index": "x"})
    assert (r.status_code, r.text) == (400, "Invalid index")
