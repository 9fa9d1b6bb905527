"""The plugin's configuration as Kong's schema: every option with its default and validation.
The Kong plugin declares it (customer_verification.Schema); the service middlewares take the
same options, with the same defaults."""
from customer_auth import signature
from customer_auth.consumers import BY_ID, BY_USERNAME
from customer_auth.verification import RFC9421, V1

_HEADER_NAME = {"type": "string", "required": True, "match": "^[%w%-]+$"}

Schema = (
    {"signature_schemes": {"type": "array", "required": True, "default": [V1, RFC9421], "len_min": 1,
                           "elements": {"type": "string", "one_of": [V1, RFC9421]}}},
    {"required_components": {"type": "array", "required": True,
                             "default": ["@method", "@path", "@query", "content-digest"],
                             "elements": {"type": "string", "match": "^[@%w%-]+$"}}},
    {"max_body_size": {"type": "integer", "required": True, "default": 1048576, "between": [0, 1073741824]}},
    {"certificate_id_header": {**_HEADER_NAME, "default": signature.CERTIFICATE_ID_HEADER}},
    {"request_time_header": {**_HEADER_NAME, "default": signature.REQUEST_TIME_HEADER}},
    {"signature_header": {**_HEADER_NAME, "default": signature.SIGNATURE_HEADER}},
    {"customer_id_header": {**_HEADER_NAME, "default": "X-Customer-Id"}},
    {"clock_skew": {"type": "integer", "required": True, "default": 300, "between": [1, 86400]}},
    {"cache_ttl": {"type": "number", "required": True, "default": 60, "between": [0, 86400]}},
    {"negative_cache_ttl": {"type": "number", "required": True, "default": 5, "between": [0, 86400]}},
    {"stale_ttl": {"type": "number", "required": True, "default": 300, "between": [0, 604800]}},
    {"cache_size": {"type": "integer", "required": True, "default": 10000, "between": [1, 10000000]}},
    {"hide_credentials": {"type": "boolean", "required": True, "default": False}},
    {"consumer_by": {"type": "array", "required": True, "default": [],
                     "elements": {"type": "string", "one_of": [BY_USERNAME, BY_ID]}}},
    {"consumer_optional": {"type": "boolean", "required": True, "default": False}},
    {"anonymous": {"type": "string", "required": False, "default": None}},
    {"run_on_preflight": {"type": "boolean", "required": True, "default": True}},
    {"replay_protection": {"type": "boolean", "required": True, "default": False,
                           "description": "Accept each signed request once: an RFC 9421 signature must carry a nonce, "
                                          "claimed once per certificate across the cluster on the primary database "
                                          "while the signature is fresh; v1 requests get 400. With the primary "
                                          "unreachable, requests get 503."}},
)

DEFAULTS = {name: spec["default"] for field in Schema for name, spec in field.items()}


def with_defaults(config):
    """Every option: its value in ``config`` (Kong's keys such as ``__seq__`` left out), or its
    default where it has none."""
    return {name: default if config.get(name) is None else config[name] for name, default in DEFAULTS.items()}
