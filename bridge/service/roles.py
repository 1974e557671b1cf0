"""Which role each RPC needs: one table, by full gRPC method name, for every service.

Three roles, each allowing what the one before it does:

* ``read``: lists, descriptions and watches (nothing changes, nothing runs);
* ``call``: also runs tools (calls, streams, maps, blobs), opens and closes sessions,
  submits, cancels and deletes jobs;
* ``admin``: also restarts, recycles and interrupts workers, lifts quarantines, shuts
  the bridge down and manages tokens.

A method missing from :data:`METHOD_ROLES` needs ``admin``: a new RPC is refused to
everyone but the owner until it is classified here (tests/test_security.py checks that
every RPC of the contract is).  docs/service.md lists the same table.
"""

from __future__ import annotations

ROLES = ("read", "call", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
DEFAULT_ROLE = "admin"

_BRIDGE = "/kernelpit.v1.Bridge/"
_JOBS = "/kernelpit.v1.Jobs/"

METHOD_ROLES: dict[str, str] = {
    **{_BRIDGE + m: "read" for m in (
        "ListTools", "DescribeTool", "GetSession", "ListSessions", "ListWorkers", "Watch",
        "Subscribe", "GetServerInfo", "RenewLease")},
    **{_BRIDGE + m: "call" for m in (
        "Call", "CallStream", "Map", "Calls", "ReadBlob", "WriteBlob", "CreateSession",
        "CloseSession")},
    **{_BRIDGE + m: "admin" for m in (
        "RestartWorker", "InterruptWorker", "RecycleWorker", "Untaint", "Shutdown",
        "Reload", "AddToken", "ListTokens", "RevokeToken", "RotateToken")},
    **{_JOBS + m: "read" for m in ("GetJob", "ListJobs", "WatchJob")},
    **{_JOBS + m: "call" for m in ("SubmitJob", "CancelJob", "DeleteJob")},
}
_RANKS = {method: RANK[role] for method, role in METHOD_ROLES.items()}
_ADMIN = RANK["admin"]


def required_role(method: str) -> str:
    """The role ``method`` (e.g. ``/kernelpit.v1.Bridge/Call``) needs."""
    return METHOD_ROLES.get(method, DEFAULT_ROLE)


def allows(role_rank: int, method: str) -> bool:
    """Whether a token of this rank may call ``method`` (one dict lookup)."""
    return role_rank >= _RANKS.get(method, _ADMIN)


def check_role(role: str) -> str:
    """``role`` if it is one; else ValueError naming the roles there are."""
    if role not in RANK:
        raise ValueError(f"unknown role {role!r}: use read (lists and watches), call (also runs "
                         "tools, sessions and jobs) or admin (also controls workers, shuts down "
                         "and manages tokens)")
    return role
