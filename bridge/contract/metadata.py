"""Call metadata both ends of the bridge read and write (apart from the contract's messages)."""

from __future__ import annotations

#: request metadata by which a client asks for results with packed lists ({"$kp": "list"})
ACCEPT_KEY = "kernelpit-accept"
ACCEPT_PACKED = "packed-lists"
#: ... and by which it asks for large results streamed as they are made (contract.streamed)
ACCEPT_STREAMED = "streamed-results"
#: request metadata: the bytes of one list from which a client wants a result streamed
STREAM_FROM_KEY = "kernelpit-stream-from"
#: request metadata naming the client that sent an RPC (the holder of a lease)
CLIENT_ID_KEY = "kernelpit-client-id"


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token."""
    return (("authorization", f"Bearer {token}"),) if token else ()
