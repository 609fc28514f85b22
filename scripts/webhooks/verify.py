#!/usr/bin/env python3
"""Checks one webhook request with the standardwebhooks package (PyPI), the
Standard Webhooks project's own Python library: an implementation authgate's
code has no part in.

Reads one JSON object on stdin:
    {"secret": "whsec_...", "headers": {"webhook-id": ..., ...}, "body": "<base64 of the raw body>"}
and prints `ok` (exit 0) or `error: <why>` (exit 1). Anything else is a crash.

tests/api/sms_webhook.rs runs it once per request its loopback receiver gets;
scripts/webhooks/run.sh sets that up.
"""

import base64
import json
import sys

from standardwebhooks import Webhook, WebhookVerificationError


def main() -> int:
    request = json.load(sys.stdin)
    body = base64.b64decode(request["body"])
    headers = {k.lower(): v for k, v in request["headers"].items()}
    try:
        payload = Webhook(request["secret"]).verify(body, headers)
    except WebhookVerificationError as e:
        print(f"error: {e}")
        return 1
    # A verified request is also the documented event.
    if not (isinstance(payload, dict) and payload.get("type") == "sms.send"
            and isinstance(payload.get("data"), dict)
            and payload["data"].get("messageId") == headers.get("webhook-id")):
        print("error: verified, but not an sms.send event carrying its webhook-id")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
