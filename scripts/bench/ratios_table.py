#!/usr/bin/env python3
"""The table of scripts/bench/ratios.sh, from the outputs it left in OUT.

    python3 scripts/bench/ratios_table.py OUT [USERS]

Reads OUT/pgbench-{1,USERS}.txt (pgbench's own report), OUT/<flow>-<users>.json
(authgate-load --json) and OUT/argon2-{before,after}.json, and prints one
Markdown table of the figures, the ratios and their targets, then one line per
load run. A figure whose run failed or is missing shows as n/a (and its target
as not measured), never as met.
"""

import json
import re
import sys
from pathlib import Path

OUT = Path(sys.argv[1])
MANY = int(sys.argv[2]) if len(sys.argv) > 2 else 64
FLOWS = ["code-check", "check", "login", "2fa-login"]


def pgbench(name):
    """(tps, average latency in ms) of OUT/pgbench-NAME.txt, or (None, None)."""
    try:
        text = (OUT / f"pgbench-{name}.txt").read_text()
    except OSError:
        return None, None
    tps = re.search(r"^tps = ([\d.]+) \((?:without initial connection|excluding)", text, re.M)
    tps = tps or re.search(r"^tps = ([\d.]+)", text, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", text, re.M)
    return (float(tps.group(1)) if tps else None, float(lat.group(1)) if lat else None)


def load(flow, users):
    """The one flow entry of OUT/<flow>-<users>.json, or None."""
    try:
        doc = json.loads((OUT / f"{flow}-{users}.json").read_text())
    except (OSError, ValueError):
        return None
    return next((f for f in doc.get("flows", []) if f.get("flow") == flow), None)


def argon2(name):
    try:
        return json.loads((OUT / f"{name}.json").read_text())["argon2_bound"]["per_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def group(run, name, field):
    try:
        return run["step_groups"][name][field]
    except (TypeError, KeyError):
        return None


def num(v, digits=1):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def errors_note(*runs):
    n = sum(r.get("errors_total", 0) for r in runs if r)
    return f" ({n:,} errors)" if n else ""


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# One client: before and after the 1-user runs, the mean of the two.
one = [pgbench(1), pgbench("1-after")]
tps1, lat1 = mean([t for t, _ in one]), mean([l for _, l in one])
tpsN, latN = pgbench(MANY)
runs = {(f, u): load(f, u) for f in FLOWS for u in (1, MANY)}
cc1, ccN = runs[("code-check", 1)], runs[("code-check", MANY)]
checkN, loginN = runs[("check", MANY)], runs[("login", MANY)]
bounds = [b for b in (argon2("argon2-before"), argon2("argon2-after")) if b is not None]
bound = sum(bounds) / len(bounds) if bounds else None

rows = []
verdicts = []


def ratio_row(figure, measured, unit, base, base_text, op, target, digits=1, note=""):
    """A ratio against `base`: met when measured/base `op` target."""
    if measured is None or base is None or base == 0:
        rows.append((figure, "n/a" + note, f"{op} {target:g} × {base_text}", "n/a", "not measured"))
        verdicts.append(None)
        return
    ratio = measured / base
    met = ratio >= target if op == "≥" else ratio <= target
    verdicts.append(met)
    rows.append((
        figure,
        f"{num(measured, digits)} {unit}{note}",
        f"{op} {target:g} × {base_text} = {num(target * base, digits)} {unit}",
        f"{ratio:.2f}",
        "met" if met else "**missed**",
    ))


# The figures the ratios are taken against.
rows.append((
    "pgbench single-row UPDATE, 1 client, before / after the 1-user runs",
    " / ".join(f"{num(t)} tps, avg latency {num(l, 2)} ms" for t, l in one) + f" (mean {num(lat1, 2)} ms)",
    "–", "", "bound",
))
rows.append((f"pgbench single-row UPDATE, {MANY} clients", f"{num(tpsN)} tps, avg latency {num(latN, 2)} ms", "–", "", "bound"))
rows.append((
    "argon2 bound, before / after the login run",
    " / ".join(num(b) for b in bounds) + f" verifies/s (mean {num(bound)})" if bounds else "n/a",
    "–", "", "bound",
))

pairs = None
if ccN and group(ccN, "confirm", "count") is not None:
    pairs = group(ccN, "confirm", "count") / ccN["seconds"]
ratio_row(f"send + confirm pairs/s, {MANY} users (`code-check`, 2 pairs per flow)", pairs, "/s",
          tpsN / 2 if tpsN else None, f"(pgbench tps at {MANY} / 2)", "≥", 0.4, note=errors_note(ccN))
ratio_row(f"code checks/s, {MANY} users (`check`)", checkN and checkN["flows_per_s"], "/s",
          tpsN, f"pgbench tps at {MANY}", "≥", 0.5, note=errors_note(checkN))
ratio_row(f"p99 of a send, {MANY} users (`code-check`: 2fa/enable, 2fa/disable)", group(ccN, "send", "p99_ms"), "ms",
          latN, f"pgbench avg latency at {MANY}", "≤", 3, digits=2)
ratio_row(f"p99 of a confirm, {MANY} users (`code-check`: …/confirm)", group(ccN, "confirm", "p99_ms"), "ms",
          latN, f"pgbench avg latency at {MANY}", "≤", 3, digits=2)
def server_mean(run, name):
    try:
        return run["server_mean_ms"][name]
    except (TypeError, KeyError):
        return None


def client_p50(run, name):
    p50 = group(run, name, "p50_ms")
    return f" (p50 at the client, HTTP over loopback included: {num(p50, 2)} ms)" if p50 is not None else ""


ratio_row("server-side mean of a send, 1 user (`code-check`)", server_mean(cc1, "send"), "ms",
          lat1, "pgbench latency at 1 (mean)", "≤", 3, digits=2,
          note=client_p50(cc1, "send") + errors_note(cc1))
ratio_row("server-side mean of a confirm, 1 user (`code-check`)", server_mean(cc1, "confirm"), "ms",
          lat1, "pgbench latency at 1 (mean)", "≤", 2, digits=2, note=client_p50(cc1, "confirm"))
ratio_row(f"password logins/s, {MANY} users (`login`)", loginN and loginN["flows_per_s"], "/s",
          bound, "argon2 bound (mean)", "≥", 0.9, note=errors_note(loginN))

memory = [(r["server_memory"]["vmhwm_kib"], f"{f} at {u}") for (f, u), r in runs.items()
          if r and r.get("server_memory")]
if memory and len(memory) == len(runs):
    kib, where = max(memory)
    met = kib / 1024 < 100
    verdicts.append(met)
    rows.append(("server peak resident memory (VmHWM), max over all runs",
                 f"{kib / 1024:.1f} MiB ({where})", "< 100 MiB", "", "met" if met else "**missed**"))
else:
    verdicts.append(None)
    rows.append(("server peak resident memory (VmHWM), max over all runs",
                 f"{max(memory)[0] / 1024:.1f} MiB, {len(runs) - len(memory)} run(s) without a figure" if memory else "n/a",
                 "< 100 MiB", "", "not measured"))

depths = [(r["outbox_depth"], f"{f} at {u}") for (f, u), r in runs.items() if r and r.get("outbox_depth")]
if depths:
    d, where = max(depths, key=lambda x: x[0]["max"])
    ends = max(x[0]["end"] for x in depths)
    rows.append(("SMS outbox depth, sampled each second (`/metrics`)",
                 f"max {d['max']:,} ({where}), at end of a run at most {ends:,}", "bounded", "", "shown"))
else:
    rows.append(("SMS outbox depth, sampled each second (`/metrics`)", "n/a (no authgate_sms_outbox_depth)", "bounded", "", ""))

print("| figure | measured | target | ratio | |")
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
met = sum(1 for v in verdicts if v)
missed = sum(1 for v in verdicts if v is False)
unknown = sum(1 for v in verdicts if v is None)
print(f"\nTargets: {met} met, {missed} missed" + (f", {unknown} not measured" if unknown else "") + ".")
print(
    "authgate's one-user latencies are the server's own mean (authgate_http_request_duration_seconds, "
    "receiving a request to its response); the 64-user p99s are measured at the client (authgate-load), "
    "over loopback, HTTP included; "
    "pgbench's are its average per transaction over TCP to the same PostgreSQL. "
    "A send is the request that issues a code and queues its SMS (202), not the SMS's delivery (step `sms`); "
    "a confirm is the request that checks it. A pair is one successful confirm after its send."
)

# One line per load run.
print(f"\n| run | users | flows/s | p50 / p99 ms per step | errors | VmHWM MiB | outbox max / end |")
print("|---|---|---|---|---|---|---|")
for (flow, users), r in sorted(runs.items(), key=lambda x: (x[0][1], FLOWS.index(x[0][0]))):
    if not r:
        print(f"| {flow} | {users} | failed or missing: see {OUT}/{flow}-{users}.txt | | | | |")
        continue
    steps = dict(r["steps"])
    if flow == "code-check":
        # The sends and confirms merged, as the ratios use them; sms stays.
        groups = r.get("step_groups", {})
        steps = {k: v for k, v in [("send", groups.get("send")), ("confirm", groups.get("confirm")),
                                   ("sms", steps.get("sms"))] if v}
    cells = ", ".join(f"{k} {v['p50_ms']:.2f} / {v['p99_ms']:.2f}" for k, v in steps.items())
    errs = "; ".join(f"{n:,} {k}" for k, n in r["errors"].items()) or "0"
    mem = r.get("server_memory")
    mem = f"{mem['vmhwm_kib'] / 1024:.1f}" if mem else "n/a"
    d = r.get("outbox_depth")
    d = f"{d['max']:,} / {d['end']:,}" if d else "n/a"
    print(f"| {flow} | {users} | {r['flows_per_s']:,.1f} | {cells} | {errs} | {mem} | {d} |")
