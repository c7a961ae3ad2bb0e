"""The cluster settings (``BRIDGE_CLUSTER_ETCD``, ``_GROUP``, ``_TTL``) as one object.

Checked once, here, for :mod:`bridge.service.settings` (whose messages name the setting)
and for whoever builds a replica from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.cluster.etcd import EtcdClient, normalize_endpoint
from bridge.cluster.keys import check_name
from bridge.cluster.lease import MAX_TTL, MIN_TTL, LeaseTiming
from bridge.cluster.replica import LeadershipCallback, Replica, SlotCallback

DEFAULT_GROUP = "connector-bridge"
DEFAULT_TTL = 5
DEFAULT_SLOTS = 8


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``a:2379,http://b:2379`` as normalized endpoints; ValueError saying what is wrong."""
    endpoints = tuple(normalize_endpoint(part) for part in text.split(","))
    duplicates = sorted({e for e in endpoints if endpoints.count(e) > 1})
    if duplicates:
        raise ValueError(f"an endpoint is listed twice: {', '.join(duplicates)}")
    return endpoints


def check_ttl(value: object) -> int:
    """A lease TTL in whole seconds, ``MIN_TTL`` to ``MAX_TTL``; ValueError otherwise."""
    text = str(value).strip() if isinstance(value, str | int) else None
    if isinstance(value, bool) or text is None or not text.isdigit():
        raise ValueError(f"must be a whole number of seconds from {MIN_TTL} to {MAX_TTL}")
    ttl = int(text)
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(
            f"must be from {MIN_TTL} (etcd grants no shorter lease) to {MAX_TTL} seconds"
        )
    return ttl


class _ClusterSettings(Protocol):
    @property
    def cluster_etcd(self) -> str | None: ...

    @property
    def cluster_group(self) -> str: ...

    @property
    def cluster_ttl(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    endpoints: tuple[str, ...]
    group: str = DEFAULT_GROUP
    ttl: int = DEFAULT_TTL

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("a cluster needs at least one etcd endpoint")
        check_name(self.group, "the group name")
        check_ttl(self.ttl)

    @classmethod
    def from_settings(cls, settings: _ClusterSettings) -> ClusterConfig | None:
        """The cluster configuration, or None for a single bridge (no etcd set)."""
        if not settings.cluster_etcd:
            return None
        return cls(parse_endpoints(settings.cluster_etcd), settings.cluster_group,
                   settings.cluster_ttl)  # fmt: skip

    @property
    def timing(self) -> LeaseTiming:
        return LeaseTiming.for_ttl(self.ttl)

    def client(self) -> EtcdClient:
        return EtcdClient(self.endpoints, timeout=self.timing.request_timeout)

    def replica(
        self,
        *,
        member_id: str | None = None,
        slots: Sequence[str] = (),
        on_leadership: LeadershipCallback | None = None,
        on_slot: SlotCallback | None = None,
    ) -> Replica:
        """A replica of this group (not started), on a client of its own."""
        return Replica(self.client(), self.group, ttl=self.ttl, member_id=member_id, slots=slots,
                       on_leadership=on_leadership, on_slot=on_slot)  # fmt: skip
