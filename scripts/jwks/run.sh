#!/usr/bin/env bash
# Verifies real authgate tokens with an independent JWT library: PyJWT (from
# PyPI, in a venv under target/) fetches the JWKS through the discovery
# document and checks tokens the API tests make (tests/api/jwks_verifier.rs,
# ignored by a plain `cargo test`). Idempotent: the venv is made and PyJWT
# installed only when missing or at another version.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYJWT_VERSION=2.15.1
CRYPTOGRAPHY_VERSION=50.0.2
VENV="$PWD/target/jwks-venv"
PY="$VENV/bin/python"

apt_install() {
  echo "installing $* (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

installed() {
  "$PY" -c "import jwt, cryptography, sys; sys.exit(jwt.__version__ != '$PYJWT_VERSION' or cryptography.__version__ != '$CRYPTOGRAPHY_VERSION')" 2>/dev/null
}

if ! installed; then
  command -v python3 >/dev/null || apt_install python3 python3-venv
  if ! "$PY" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    # Debian's python3 has no ensurepip until python3-venv is installed.
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV"
    fi
  fi
  echo "installing PyJWT $PYJWT_VERSION (cryptography $CRYPTOGRAPHY_VERSION) into $VENV"
  "$PY" -m pip install -q --disable-pip-version-check \
    "PyJWT[crypto]==$PYJWT_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION"
  installed
fi

# The program and its arguments, separated by spaces.
export AUTHGATE_JWT_VERIFIER="$PY $PWD/scripts/jwks/verify.py"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --test api jwks_verifier -- --ignored 2>&1 | tee "$log"
# A filter that matched nothing passes too: insist that the tests ran.
if ! grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$log"; then
  echo "scripts/jwks/run.sh: no jwks_verifier test ran" >&2
  exit 1
fi
