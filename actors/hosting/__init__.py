"""Where jobline's plain actor classes meet Ray. All Ray API calls are made in one module
of this package, ``ray_calls.py``: the only module of jobline that imports ``ray``.

``actors.wiring`` builds every role (the CreditLedger, one VendorProcessor per vendor,
the Gateways, the Sweeper) as a plain object with its dependencies injected; this
package hosts those objects in Ray actors and runs them as one named, detached app:

- ``JoblineApp`` (``app.py``; the actor ``jobline-app``, on the ledger's node) is the app
  on the cluster. It places and creates every role (``actors.placement`` decides where), waits until
  they are ready, gives a gateway to every node that joins with the gateway resource,
  rewrites the Prometheus targets file when roles move, keeps the recent notices of
  every role for ``jobline serve`` / ``jobline logs``, answers ``jobline status``, and
  stops the app in order (gateways drained, then processors and sweeper, then the
  ledger closed and checkpointed). Every actor is detached: the app outlives the
  process that deployed it.
- ``RoleHost`` (``roles.py``) runs one role's object in a Ray actor, building and
  starting it in ``__init__``, so that a restarted actor (``max_restarts``) reopens the
  database, reloads its jobs and re-binds its port by itself. It logs JSON lines naming its role
  (and is named by it in Ray's own log prefixes) and forwards its notices to the app.
  Other actors reach it through ``RemoteProxy``: ``await proxy.method(*args)`` becomes
  a call of the actor's ``call("method", *args)``, retried across restarts
  (``max_task_retries``), which is safe because every ledger operation and processor
  call is idempotent.
- ``RayRuntime`` (``runtime.py``) is the driver's side: ``start`` (deploy, refusing a
  second app of the same name), ``attach``, ``status``, ``notices``, ``stop``, and the
  harness's calls (``call``, ``kill``, ``node_of``).
- ``connect`` (``cluster.py``) joins a cluster or starts a private local Ray offering
  jobline's resources, retrying a start-up that timed out; the cluster's record of each
  app. ``LocalCluster`` (``local.py``): a multi-node cluster on this machine (the chaos
  suite's node loss).
- ``ray_calls.py``: the Ray primitives the modules above call (start, join or leave a
  Ray; create, find, call and kill an actor; the nodes, the named actors, the cluster's
  key-value store; what the current actor knows of itself) and Ray's errors turned into
  jobline's. Everywhere else an actor handle is an opaque object.

Secrets never travel through Ray: every actor reads them from its own node's
environment (a local Ray's workers inherit the driver's; on a cluster, the environment
of ``ray start`` or the pod). Only the tracing settings that are not secret are passed.

A harness's ``Customization`` (``actors.wiring``) travels to every actor as it is: Ray
pickles it, this package never names it.
"""

from actors.hosting.app import JoblineApp
from actors.hosting.cluster import (
    APP,
    actor_name,
    connect,
    disconnect,
    local_resources,
    read_record,
    start_with_retries,
)
from actors.hosting.local import (
    DEFAULT_HEAD_RESOURCES,
    LocalCluster,
    start_local_ray,
    stop_local_ray,
)
from actors.hosting.roles import RemoteProxy, RoleHost
from actors.hosting.runtime import RayRuntime, remove_leftovers

__all__ = [
    "APP",
    "DEFAULT_HEAD_RESOURCES",
    "JoblineApp",
    "LocalCluster",
    "RayRuntime",
    "RemoteProxy",
    "RoleHost",
    "actor_name",
    "connect",
    "disconnect",
    "local_resources",
    "read_record",
    "remove_leftovers",
    "start_local_ray",
    "start_with_retries",
    "stop_local_ray",
]
