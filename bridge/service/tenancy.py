"""Whose call it is: the tenant of an RPC, for fair queuing and quotas.

A tenant is the name of the token the request carries.  A token several clients share (the
owner's, in the discovery file everyone on the machine reads; ``anonymous`` without auth)
would make them one tenant, so every client that sends its id (``kernelpit-client-id``,
made once per ``connect()`` and sent on all of its channels) is its own tenant there:
``TOKEN/CLIENT`` (the first 8 characters of the id).  Settings and metric labels go by the
token name (:func:`kernelpit.config.tenant_name`).  ``options(tenant=...)`` names another
tenant, and only an admin token may send it (a job runner acting for its submitters).
"""

from __future__ import annotations

from typing import Any

from ..exceptions import InvalidArguments
from ..options import DEFAULTS, CallOptions
from .auth import ANONYMOUS, Identity, caller_identity
from .tokens import OWNER

#: tokens held by several people at once: their clients are told apart
SHARED_TOKENS = frozenset({OWNER, ANONYMOUS})


def tenant(who: Identity) -> str:
    """The tenant of an RPC made by ``who``."""
    if who.client_id and who.name in SHARED_TOKENS:
        return f"{who.name}/{who.client_id[:8]}"
    return who.name


class Tenancy:
    """Puts the caller's tenant in call options (cheaply: a call with default options gets
    one cached options object per tenant)."""

    CACHE = 4096

    def __init__(self) -> None:
        self._defaults: dict[str, CallOptions] = {}

    def resolver(self, context: Any) -> "Resolver":
        """The options resolver of one RPC (a ``Calls`` stream: all its calls)."""
        return Resolver(self, caller_identity(context))

    def options(self, options: CallOptions, context: Any) -> CallOptions:
        return self.resolver(context)(options)

    def default(self, name: str) -> CallOptions:
        found = self._defaults.get(name)
        if found is None:
            if len(self._defaults) >= self.CACHE:
                self._defaults.clear()
            found = self._defaults[name] = CallOptions(tenant=name)
        return found


class Resolver:
    __slots__ = ("_tenancy", "who", "tenant")

    def __init__(self, tenancy: Tenancy, who: Identity) -> None:
        self._tenancy = tenancy
        self.who = who
        self.tenant = tenant(who)

    def __call__(self, options: CallOptions) -> CallOptions:
        """``options`` with the caller's tenant; InvalidArguments when a token that is not an
        admin's names one."""
        if options is DEFAULTS:
            return self._tenancy.default(self.tenant)
        if options.tenant is not None:
            if self.who.role != "admin":
                raise InvalidArguments(
                    f"options(tenant={options.tenant!r}) may only be sent with an admin token; "
                    f"token '{self.who.name}' has role {self.who.role}, and its calls run as "
                    f"tenant '{self.tenant}'. Leave tenant unset")
            return options
        return options.merged(tenant=self.tenant)
