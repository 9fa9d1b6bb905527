"""customer_verification: a Kong plugin that authenticates API clients by a signed request.

The client signs with HTTP Message Signatures (RFC 9421) or with the older three headers
``client-certificate-id``, ``client-request-time`` and ``client-request-signature``. On success
the upstream receives ``X-Customer-Id: <uuid>`` and Kong knows the customer; otherwise the client
gets a JSON ``{"message": ...}`` answer. This file is the Kong contract; the rules are in
customer_auth/core, the Kong face in customer_auth/kong.

Kong runs it as ``python customer_verification.py -p <kong prefix> -g --no-lua-style``
(``--dump`` prints the plugin's description for Kong's ``query_cmd``).
"""

if __name__ == "__main__":
    from customer_auth.kong import bootstrap

    # Before anything else is imported: the supervisor of several processes takes over here.
    bootstrap.supervise_or_patch("customer_verification")

from customer_auth.core import options
from customer_auth.kong.plugin import Plugin

version = "1.2.0"

# An authentication priority: after Kong's pre-function (1000000), before acl (950),
# rate-limiting (910) and request-transformer (801), so none of them sees an unverified caller.
priority = 1200

Schema = options.Schema  # the options, their defaults and rules

__all__ = ["Plugin", "Schema", "priority", "version"]

if __name__ == "__main__":
    bootstrap.serve("customer_verification", Plugin, version, priority, Schema)
