"""Who is calling: the hook between authentication and the access log.

The authentication interceptor sets :data:`KEY_NAME` to the name of the API key
that authenticated the RPC (``KEY_NAME.set(name)``, in the RPC's task, before or
around the handler); the access log line of the RPC then carries it as
``key_name``. Unset (``""``) when the server has no API keys.
"""

from __future__ import annotations

from contextvars import ContextVar

#: The authenticated API key's name for the current RPC ("" without keys).
KEY_NAME: ContextVar[str] = ContextVar("driftd_key_name", default="")
