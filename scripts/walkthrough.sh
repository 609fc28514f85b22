#!/usr/bin/env bash
# The README walk-through, as a test: starts a fresh authgate on the embedded
# defaults (private PostgreSQL, console SMS sender), runs every curl command of
# the README's "Walk-through" section in order, and compares each answer with the
# one the README shows, ignoring ids, tokens and times. Codes are read from the
# server's console output, as a reader would. Fails with a diff on the first
# difference; always stops the server.
#
#   scripts/walkthrough.sh            # check (debug build)
#   AUTHGATE_WALKTHROUGH_PROFILE=release scripts/walkthrough.sh
#   AUTHGATE_WALKTHROUGH_RECORD=1 scripts/walkthrough.sh   # print real answers for the README
#
# Needs: cargo, curl, python3, PostgreSQL's server binaries (no running server).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PROFILE=${AUTHGATE_WALKTHROUGH_PROFILE:-debug}
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet --bin authgate
else
  cargo build --quiet --bin authgate
fi
BIN="$ROOT/target/$PROFILE/authgate"

# Under /tmp and world-readable: started as root, authgate runs its PostgreSQL as
# the `postgres` account, which must be able to reach the data folder.
DATA=$(mktemp -d /tmp/authgate-walkthrough.XXXXXX)
chmod 0755 "$DATA"
LOG="$DATA/server.out"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVER_PID=""

cleanup() {
  local status=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    # SIGTERM: authgate drains and stops its private PostgreSQL itself.
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "walkthrough: server did not stop in 30 s; killing it" >&2
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  # A PostgreSQL left behind (server killed hard) would hold the folder.
  if [ -f "$DATA/pg/data/postmaster.pid" ]; then
    pg_pid=$(head -n 1 "$DATA/pg/data/postmaster.pid" 2>/dev/null || true)
    if [ -n "$pg_pid" ]; then kill -QUIT "$pg_pid" 2>/dev/null || true; fi
    sleep 1
  fi
  if [ $status -ne 0 ] && [ -f "$LOG" ]; then
    echo "---- server output (last 40 lines) ----" >&2
    tail -n 40 "$LOG" >&2 || true
  fi
  rm -rf "$DATA"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Only the embedded defaults: no database, Twilio or secret from the caller's
# environment. The server runs in the data folder so no .env is picked up.
(
  cd "$DATA"
  exec env -u DATABASE_URL -u JWT_SECRET -u AUTHGATE_MASTER_KEY -u JWT_ALGORITHM -u SMS_WEBHOOK_URL -u SMS_WEBHOOK_SECRET -u AUTHGATE_TEST_PHONES -u TWILIO_ACCOUNT_SID -u TWILIO_AUTH_TOKEN \
    -u TWILIO_PHONE_NUMBER -u TWILIO_MESSAGING_SERVICE_SID -u SMS_SENDER -u AUTHGATE_RATE_LIMITS \
    AUTHGATE_DATA_DIR="$DATA" PORT="$PORT" RUST_LOG=info AUTHGATE_LOG_FORMAT=text \
    "$BIN" serve
) >"$LOG" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "walkthrough: the server exited during start-up" >&2
    exit 1
  fi
  sleep 0.2
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "walkthrough: server not ready in 60 s" >&2; exit 1; }

python3 - "$ROOT/README.md" "$PORT" "$LOG" <<'PY'
import difflib, json, os, re, subprocess, sys, time

readme, port, log = sys.argv[1], sys.argv[2], sys.argv[3]
record = os.environ.get("AUTHGATE_WALKTHROUGH_RECORD") == "1"
text = open(readme, encoding="utf-8").read()
m = re.search(r"<!-- walkthrough:start -->(.*?)<!-- walkthrough:end -->", text, re.S)
if not m:
    sys.exit("walkthrough: README.md has no <!-- walkthrough:start --> ... <!-- walkthrough:end --> section")
blocks = re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", m.group(1), re.S | re.M)

# Each curl block is followed by one `text` block: the answer.
steps = []
for i, (lang, body) in enumerate(blocks):
    if lang == "sh" and body.lstrip().startswith("curl"):
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        if not nxt or nxt[0] != "text":
            sys.exit(f"walkthrough: no answer block after:\n{body}")
        steps.append((body, nxt[1]))
if len(steps) < 10:
    sys.exit(f"walkthrough: only {len(steps)} steps found in the README")

# Values that differ on every run: checked for presence and type, not value.
VOLATILE = {"id", "flowId", "accessToken", "refreshToken", "deviceToken", "createdAt", "updatedAt",
            "expiresAt", "resendAfter", "timestamp", "lastUsedAt", "userAgent"}
# Lists of values that differ on every run: checked for their length only.
VOLATILE_LISTS = {"recoveryCodes"}

def normalise(answer):
    """The answer's lines, with volatile JSON values replaced by a placeholder."""
    out = []
    for line in answer.strip("\n").split("\n"):
        try:
            value = json.loads(line, object_pairs_hook=lambda pairs: dict(pairs))
        except ValueError:
            out.append(line.rstrip())
            continue
        def scrub(v):
            if isinstance(v, dict):
                return {k: (f"<{k}>" if k in VOLATILE and isinstance(x, str)
                            else f"<{len(x)} {k}>" if k in VOLATILE_LISTS and isinstance(x, list)
                            else scrub(x))
                        for k, x in v.items()}
            if isinstance(v, list):
                return [scrub(x) for x in v]
            return v
        out.append(json.dumps(scrub(value), separators=(",", ":"), ensure_ascii=False))
    return out

SMS = re.compile(r"^\[authgate sms\] to \S+: (\d+) is your")

def sms_lines():
    with open(log, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f if SMS.match(line)]

def sms_codes():
    return [SMS.match(line).group(1) for line in sms_lines()]

env = dict(os.environ)
env.update({"ACCESS": "", "REFRESH": "", "FLOW": "", "CODE": "", "RECOVERY": ""})
seen_codes = len(sms_codes())
failed = False
for n, (command, expected) in enumerate(steps, 1):
    run = command.replace("127.0.0.1:3000", f"127.0.0.1:{port}")
    proc = subprocess.run(["bash", "-c", run], env=env, capture_output=True, text=True, timeout=60)
    # The server's own URLs (discovery) name its real port; the README's, 3000.
    actual = proc.stdout.replace(f"127.0.0.1:{port}", "127.0.0.1:3000")
    first = command.strip().split("\n")[0]
    if proc.returncode != 0:
        print(f"walkthrough: step {n} failed to run (exit {proc.returncode}): {first}\n{proc.stderr}", file=sys.stderr)
        sys.exit(1)
    if record:
        print(f"---- step {n}: {first}\n{actual.rstrip()}")
    else:
        want, got = normalise(expected), normalise(actual)
        if want != got:
            diff = "\n".join(difflib.unified_diff(want, got, "README.md", "server", lineterm=""))
            print(f"walkthrough: step {n} answered differently from the README ({first})\n{diff}", file=sys.stderr)
            sys.exit(1)
        print(f"ok   step {n}: {first}")
    # Carry tokens and flow ids forward, as the README tells the reader to.
    for line in actual.split("\n"):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            for key, var in (("accessToken", "ACCESS"), ("refreshToken", "REFRESH"), ("flowId", "FLOW")):
                if isinstance(value.get(key), str):
                    env[var] = value[key]
            codes = value.get("recoveryCodes")
            if isinstance(codes, list) and codes and isinstance(codes[0], str):
                env["RECOVERY"] = codes[0]
    # A step that sent a code: wait for it on the console, as the reader does.
    if '"code_sent' in actual or '"otp_required"' in actual:
        deadline = time.time() + 15
        while len(sms_codes()) <= seen_codes:
            if time.time() > deadline:
                sys.exit(f"walkthrough: step {n} sent no SMS to the console within 15 s")
            time.sleep(0.1)
        codes = sms_codes()
        seen_codes = len(codes)
        env["CODE"] = codes[-1]
        if record:
            print(f"     console: {sms_lines()[-1]}")
print(f"walkthrough: all {len(steps)} answers match the README")
PY
