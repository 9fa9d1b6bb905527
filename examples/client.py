"""Send a signed request (RFC 9421, hmac-sha256) with httpx.

Needs the base install only: pip install customer-verification httpx
"""

import os

import httpx

from customer_auth.client import SignedRequestAuth

# The certificate id and the client key `customer-verification add` printed once (a str, kept
# in a file of its own, never in the code).
certificate_id = os.environ.get("CERTIFICATE_ID", "my-certificate")
with open(os.environ.get("CLIENT_KEY_FILE", "my-certificate.key")) as key_file:
    client_key = key_file.read().strip()
api = os.environ.get("API_URL", "https://api.example.com")

auth = SignedRequestAuth(certificate_id, client_key)
order = {"item": "book", "qty": 1}
answer = httpx.post(f"{api}/echo", json=order, auth=auth)
print(answer.status_code, answer.json())
