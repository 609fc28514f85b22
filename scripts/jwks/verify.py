#!/usr/bin/env python3
"""An independent verifier of authgate's access tokens: PyJWT, not the Rust
library authgate signs with, and nothing but the published keys.

    verify.py URL --issuer ISS --audience AUD [--algorithms EdDSA,ES256]
              [--cooldown SECONDS]

URL is the JWKS (`/.well-known/jwks.json`) or the discovery document
(`/.well-known/openid-configuration`), whose `jwks_uri` is followed and
whose `issuer` must be ISS. Tokens are read one per line on standard input;
for each, one JSON line is printed (and flushed, so a caller can feed tokens
one at a time while keys rotate):

    {"ok": true, "kid": ..., "alg": ..., "claims": {...}}
    {"ok": false, "error": "..."}

The key is the JWKS entry the token's `kid` names. PyJWKClient keeps the
set for 5 minutes and fetches it again for a kid it has not seen, at most
once per cooldown (PyJWT's default, 30 s): a key published ahead as the
next one (an ordinary rotation) is already known; one made and activated
at once (`keys rotate --force`) waits for that refetch. The only
algorithm accepted is that key's own (so `alg: none` or an HMAC keyed with
the public key is refused). Signature, `exp`, `nbf`, `iat`, issuer and
audience are checked. Exits 0 once standard input ends; 2 on bad usage or a
discovery document for another issuer.
"""

import argparse
import json
import sys
import urllib.request

import jwt


def jwks_url_of(url, issuer):
    if not url.rstrip("/").endswith("/openid-configuration"):
        return url
    with urllib.request.urlopen(url, timeout=10) as response:
        doc = json.load(response)
    if doc.get("issuer") != issuer:
        sys.exit(f"verify.py: the discovery document is for issuer {doc.get('issuer')!r}, not {issuer!r}")
    return doc["jwks_uri"]


def verify(client, token, allowed, issuer, audience):
    header = jwt.get_unverified_header(token)
    key = client.get_signing_key_from_jwt(token)
    algorithms = [a for a in allowed if a == key.algorithm_name]
    if not algorithms:
        raise jwt.InvalidAlgorithmError(f"key {key.key_id} is {key.algorithm_name}, not one of {allowed}")
    claims = jwt.decode(
        token,
        key.key,
        algorithms=algorithms,
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return {"ok": True, "kid": header.get("kid"), "alg": header.get("alg"), "claims": claims}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the JWKS URL or the openid-configuration URL")
    parser.add_argument("--issuer", required=True, help="the expected iss")
    parser.add_argument("--audience", required=True, help="this service's audience")
    parser.add_argument("--algorithms", default="EdDSA,ES256", help="accepted algorithms, comma-separated")
    parser.add_argument(
        "--cooldown", type=float, default=30, help="seconds between refetches for unknown kids (PyJWT's default: 30)"
    )
    args = parser.parse_args()
    allowed = [a.strip() for a in args.algorithms.split(",") if a.strip()]

    client = jwt.PyJWKClient(jwks_url_of(args.url, args.issuer), timeout=10, cooldown_duration=args.cooldown)
    for line in sys.stdin:
        token = line.strip()
        if not token:
            continue
        try:
            out = verify(client, token, allowed, args.issuer, args.audience)
        except Exception as e:  # every refusal is an answer, not a crash
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
