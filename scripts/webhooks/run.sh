#!/usr/bin/env bash
# Checks authgate's SMS webhook signatures with an implementation that is not
# authgate's: the standardwebhooks package from PyPI (the Standard Webhooks
# project's Python library). Installs it into a virtualenv under target/, then
# runs the ignored test in tests/api/sms_webhook.rs that sends real codes
# through the webhook to a loopback receiver handing each request to
# scripts/webhooks/verify.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

# Pinned: a new release is taken on purpose, not by surprise.
STANDARDWEBHOOKS_VERSION="1.1.0"
venv="$root/target/webhooks-venv"
python="${PYTHON:-python3}"

case "$root" in
  *[[:space:]]*)
    echo "scripts/webhooks/run.sh: the checkout path contains a space; AUTHGATE_WEBHOOK_VERIFIER is split on spaces" >&2
    exit 1 ;;
esac
if ! command -v "$python" >/dev/null; then
  echo "scripts/webhooks/run.sh: $python not found (set PYTHON to a Python 3 interpreter)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" || {
    echo "scripts/webhooks/run.sh: cannot create a virtualenv (on Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
echo "standardwebhooks $("$venv/bin/python" -c 'import standardwebhooks; print(standardwebhooks.__version__)') in $venv"

AUTHGATE_WEBHOOK_VERIFIER="$venv/bin/python $root/scripts/webhooks/verify.py" \
  cargo test --test api sms_webhook_independent -- --ignored
