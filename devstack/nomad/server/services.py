"""Native service discovery (``provider = "nomad"``): registrations stored in Nomad's state."""

from __future__ import annotations

from typing import Any

from devstack.nomad.events import Event

from .jobs import JobWrites


class NativeServices(JobWrites):
    # --- native service discovery (provider "nomad") -----------------------------------------

    def register_native(
        self, owner: str, alloc: dict[str, Any], regs: list[dict[str, Any]]
    ) -> None:
        index = self.state.begin()
        events = []
        node = self.state.nodes.get(alloc["NodeID"]) or {}
        for r in regs:
            entry = {
                "ID": r["ID"],
                "ServiceName": r["Name"],
                "Namespace": alloc["Namespace"],
                "NodeID": alloc["NodeID"],
                "Datacenter": node.get("Datacenter", self.config.datacenter),
                "JobID": alloc["JobID"],
                "AllocID": alloc["ID"],
                "Tags": r["Tags"],
                "Address": r["Address"],
                "Port": r["Port"],
                "CreateIndex": index,
                "ModifyIndex": index,
                "_owner": owner,
            }
            self.state.services[r["ID"]] = entry
            events.append(
                Event(
                    "Service",
                    "ServiceRegistration",
                    r["Name"],
                    alloc["Namespace"],
                    {"Service": {k: v for k, v in entry.items() if k != "_owner"}},
                )
            )
        self.state.touch("services", index)
        self.state.commit(index, events)

    def deregister_native(self, owner: str) -> None:
        gone = [s for s in self.state.services.values() if s["_owner"] == owner]
        if not gone:
            return
        index = self.state.begin()
        events = []
        for s in gone:
            del self.state.services[s["ID"]]
            events.append(
                Event(
                    "Service",
                    "ServiceDeregistration",
                    s["ServiceName"],
                    s["Namespace"],
                    {"Service": {k: v for k, v in s.items() if k != "_owner"}},
                )
            )
        self.state.touch("services", index)
        self.state.commit(index, events)
