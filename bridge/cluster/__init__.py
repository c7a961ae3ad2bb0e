"""Several bridges for one account: a group of replicas coordinated on etcd.

- :mod:`~bridge.cluster.etcd`: :class:`EtcdClient`, a thin client for etcd's v3 JSON
  gateway over several endpoints, every call bounded in time, failing over between them;
- :mod:`~bridge.cluster.lease`: :class:`LeaseTiming`, how long a lease is counted on and
  how often it is renewed (the margins);
- :mod:`~bridge.cluster.replica`: :class:`Replica`, one member of a group: its lease, the
  leadership, its slots and its member entry, kept by a thread of its own;
- :mod:`~bridge.cluster.slots`: the fixed set of named slots shared out over the members;
- :mod:`~bridge.cluster.members`: member entries and :func:`cluster_view`, the group as
  ``connector-bridge status`` shows it;
- :mod:`~bridge.cluster.keys`: where a group lives in etcd;
- :mod:`~bridge.cluster.config`: :class:`ClusterConfig`, the ``BRIDGE_CLUSTER_*`` settings.
"""

from bridge.cluster.config import ClusterConfig
from bridge.cluster.etcd import EtcdClient, EtcdError
from bridge.cluster.lease import LeaseTiming
from bridge.cluster.members import ClusterView, MemberInfo, cluster_view, read_view
from bridge.cluster.replica import Replica, ReplicaCounters
from bridge.cluster.slots import slot_names

__all__ = [
    "ClusterConfig",
    "ClusterView",
    "EtcdClient",
    "EtcdError",
    "LeaseTiming",
    "MemberInfo",
    "Replica",
    "ReplicaCounters",
    "cluster_view",
    "read_view",
    "slot_names",
]
