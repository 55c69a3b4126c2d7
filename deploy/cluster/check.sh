#!/usr/bin/env bash
# Prove the cluster path end to end, on loopback only:
#   three nats-servers from n1.conf n2.conf n3.conf (with deploy/accounts.conf),
#   TLS for clients and routes (a throwaway CA made here), routes with a password;
#   engine on n1, projection on n2, `jetbook demo` on n3, each as its own user;
#   the demo's fill, R3 streams with every replica current, a trader confined
#   to its own account, and the projection caught up;
#   then, under the same permissions: the engine restarted, a hot standby
#   taking over from the active engine killed with -9, the projection
#   restarted, each followed by a demo or a read-model check; and the loss of n1.
# Exit 0 on success. Everything it starts is stopped on exit; the temporary
# folder is removed on success and kept (logs, stores) on failure.
#
#   deploy/cluster/check.sh            (JETBOOK, NATS_SERVER, PYTHON override the binaries)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
JETBOOK=${JETBOOK:-$(command -v jetbook || true)}
[[ -n $JETBOOK ]] || { echo "jetbook not on PATH (set JETBOOK=...)" >&2; exit 2; }
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo "$(dirname "$JETBOOK")/nats-server")}
# The interpreter jetbook runs in (its shebang) has nats-py.
PYTHON=${PYTHON:-$(sed -n '1s/^#! *//p' "$JETBOOK" | awk '{print $1}')}
[[ -x ${PYTHON:-} ]] || PYTHON=python3
HOST=127.0.0.1
CLIENT=(14221 14222 14223) CLUSTER=(16221 16222 16223) MONITOR=(18221 18222 18223)

for port in "${CLIENT[@]}" "${CLUSTER[@]}" "${MONITOR[@]}"; do
  if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then echo "FAIL: port $port on $HOST is already in use" >&2; exit 1; fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/jetbook-cluster-check.XXXXXX")
pids=()
ok=0
cleanup() {
  local rc=$?
  # jetbook processes first (each finishes its batch on SIGTERM), servers last.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((ok)); then rm -rf "$tmp"; else echo "FAILED (exit $rc); logs and stores kept in $tmp" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# Passwords for this run only; the variables are the ones accounts.conf and nN.conf read.
pw() { echo "pw-$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
export JETBOOK_ENGINE_PASSWORD=$(pw) JETBOOK_PROJECTION_PASSWORD=$(pw) JETBOOK_OPERATOR_PASSWORD=$(pw)
export JETBOOK_FANOUT_PASSWORD=$(pw) JETBOOK_GATEWAY_PASSWORD=$(pw) JETBOOK_QUERY_PASSWORD=$(pw) JETBOOK_ROUTE_PASSWORD=$(pw)
export JETBOOK_ALICE_PASSWORD=$(pw) JETBOOK_BOB_PASSWORD=$(pw) JETBOOK_SYS_PASSWORD=$(pw)
url() { echo "tls://$1:$2@$HOST:${CLIENT[$3]}"; }   # user password node-index
export JETBOOK_ROUTES="[$(printf '"nats-route://route:%s@%s:%s", ' "$JETBOOK_ROUTE_PASSWORD" $HOST "${CLUSTER[0]}" \
  "$JETBOOK_ROUTE_PASSWORD" $HOST "${CLUSTER[1]}" "$JETBOOK_ROUTE_PASSWORD" $HOST "${CLUSTER[2]}")]"

# A throwaway CA and one certificate for 127.0.0.1, used by the servers for clients and for routes
# (trustme issues it for both server and client auth). Every jetbook process trusts the CA.
mkdir -p "$tmp/tls"
"$PYTHON" - "$tmp/tls" <<'PY' || fail "cannot make the test CA (pip install trustme)"
import sys, trustme
out = sys.argv[1]
ca = trustme.CA()
leaf = ca.issue_cert("127.0.0.1", "localhost")
ca.cert_pem.write_to_path(f"{out}/ca.pem")
for kind in ("server", "route"):
    leaf.cert_chain_pems[0].write_to_path(f"{out}/{kind}-cert.pem")
    leaf.private_key_pem.write_to_path(f"{out}/{kind}-key.pem")
PY
export JETBOOK_TLS_CA="$tmp/tls/ca.pem"

# Small helpers over the monitoring endpoints and nats-py, in one place.
cat >"$tmp/probe.py" <<'EOF'
import asyncio, json, sys, urllib.request

def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=2) as r:
        return json.load(r)

def cmd_healthz(ports):
    """Exit 0 when every node answers /healthz with status ok."""
    for p in ports:
        if get(p, "healthz").get("status") != "ok":
            sys.exit(1)

def jsz(port, query=""):
    return get(port, f"jsz?{query}")

def leader_view(ports, name):
    """The stream as its leader reports it: only the leader knows whether its replicas are current."""
    for port in ports:
        for acc in jsz(port, "accounts=true&streams=true&config=true").get("account_details", []):
            for s in acc.get("stream_detail") or []:
                cl = s.get("cluster") or {}
                if s["name"] == name and cl.get("leader") and cl["leader"] not in {
                    r["name"] for r in cl.get("replicas") or []
                }:
                    return s
    return None

def cmd_meta(ports):
    """Exit 0 when every node has routes to the two others and all see the same meta leader of 3 peers."""
    names = {get(p, "varz")["server_name"] for p in ports}
    leaders = set()
    for p in ports:
        me = get(p, "varz")["server_name"]
        if {r.get("remote_name") for r in get(p, "routez").get("routes") or []} != names - {me}:
            sys.exit(1)
        meta = jsz(p).get("meta_cluster") or {}
        if not meta.get("leader") or meta.get("cluster_size") != 3:
            sys.exit(1)
        leaders.add(meta["leader"])
    if len(leaders) != 1:
        sys.exit(1)
    print(leaders.pop())

def cmd_streams_r3(ports):
    """Exit 0 when JB_CMD and JB_EVT are R3 with a leader and both replicas current; print placement."""
    lines = []
    for name in ("JB_CMD", "JB_EVT"):
        s = leader_view(ports, name)
        if not s or s["config"].get("num_replicas") != 3:
            sys.exit(1)
        cl = s["cluster"]
        reps = cl.get("replicas") or []
        if len(reps) != 2 or not all(r.get("current") for r in reps):
            sys.exit(1)
        lines.append(f"{name}: num_replicas {s['config']['num_replicas']}, leader {cl['leader']}, replicas "
                     + ", ".join(f"{r['name']} (current)" for r in reps)
                     + f", {s['state']['messages']} msgs")
    print("\n".join(lines))

def cmd_engine_ready(ports):
    """Exit 0 once some node hosts a consumer on JB_CMD (the engine's reader)."""
    for p in ports:
        for acc in jsz(p, "accounts=true&streams=true&consumers=true").get("account_details", []):
            for s in acc.get("stream_detail") or []:
                if s["name"] == "JB_CMD" and s.get("consumer_detail"):
                    return
    sys.exit(1)

async def _stream_info(url):
    from jetbook.wiring import connect  # TLS from JETBOOK_TLS_CA, the user from the URL, its inbox prefix
    nc = await connect(url, "check-stream-info", reconnect=False)
    try:
        si = await nc.jetstream().stream_info("JB_EVT")
    finally:
        await nc.close()
    reps = si.cluster.replicas or []
    print(f"stream_info('JB_EVT') via nats-py: config.num_replicas={si.config.num_replicas} "
          f"cluster.leader={si.cluster.leader} "
          f"cluster.replicas={[(r.name, 'current' if r.current else 'behind') for r in reps]} "
          f"last_seq={si.state.last_seq}")
    if si.config.num_replicas != 3 or len(reps) != 2 or not all(r.current for r in reps):
        sys.exit(1)

def cmd_stream_info(url):
    asyncio.run(_stream_info(url))

async def _trader(url, market, jetbook):
    """As alice: the refusals (another account, the logs, another's inbox), then her own order accepted."""
    from jetbook.wiring import connect

    errors = []

    async def on_error(e):
        errors.append(str(e).lower())

    async def refused(what, subject):
        for _ in range(50):  # the server's -ERR may come after the PONG of a flush
            if any(f'"{subject.lower()}"' in e for e in errors):
                print(f"{what}: refused ({subject})")
                return True
            await asyncio.sleep(0.1)
        print(f"{what}: ALLOWED")
        return False

    nc = await connect(url, "check-alice", reconnect=False)
    nc._error_cb = on_error
    ok = True
    for what, subject in ((f"alice publishes on jb.cmd.{market}.bob", f"jb.cmd.{market}.bob"),
                          ("alice publishes on jb.wal.>", f"jb.wal.{market}.fill"),
                          ("alice creates a JB_EVT consumer", "$JS.API.CONSUMER.CREATE.JB_EVT"),
                          ("alice deletes JB_EVT", "$JS.API.STREAM.DELETE.JB_EVT")):
        await nc.publish(subject, b"\x80", reply=nc.new_inbox())
        await nc.flush()
        ok &= await refused(what, subject)
    for what, subject in (("alice reads JB_EVT live", "jb.evt.>"), ("alice listens on the engine's inbox", "_INBOX_engine.>")):
        await nc.subscribe(subject)
        await nc.flush()
        ok &= await refused(what, subject)
    proc = await asyncio.create_subprocess_exec(
        jetbook, "submit", "place", "-m", market, "-a", "alice", "--side", "sell", "--price", "302000",
        "--qty", "1", "--client-order-id", "check-1", "--no-wait", "--nats-url", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await proc.communicate())[0].decode().strip()
    print(f"alice: jetbook submit place -a alice --no-wait -> {out}")
    await nc.close()
    return ok and proc.returncode == 0

def cmd_trader(url, market, jetbook):
    if not asyncio.run(_trader(url, market, jetbook)):
        sys.exit(1)

if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    fn = globals()["cmd_" + cmd]
    try:
        if cmd in ("healthz", "meta", "streams_r3", "engine_ready"):
            fn([int(a) for a in args])
        else:
            fn(*args)
    except (OSError, ValueError, KeyError):
        sys.exit(1)
EOF
probe() { timeout 20 "$PYTHON" "$tmp/probe.py" "$@"; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s until COMMAND succeeds.
wait_for() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >"$tmp/last-poll.out" 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

step "nats-server $("$NATS_SERVER" --version | awk '{print $2}'), three nodes on $HOST, stores under $tmp/data"
for i in 1 2 3; do (cd "$tmp" && "$NATS_SERVER" -t -c "$here/n$i.conf") >/dev/null 2>&1 || fail "n$i.conf does not parse"; done
for i in 1 2 3; do
  # The configs use store_dir "data/nN", relative to the working directory.
  (cd "$tmp" && exec "$NATS_SERVER" -c "$here/n$i.conf") >"$tmp/n$i.log" 2>&1 &
  pids+=($!)
done

wait_for 30 "/healthz on all three nodes" \
  probe healthz "${MONITOR[@]}"
wait_for 30 "routes between all three nodes and one JetStream meta leader" probe meta "${MONITOR[@]}"
step "cluster jetbook formed: n1 n2 n3 routed to each other, JetStream meta leader $(cat "$tmp/last-poll.out")"

start_engine() {  # start_engine LOG: an engine on n1 as user engine
  # --snapshot-every 5: restarts and the standby recover through the snapshot store (JB_SNAP) too.
  "$JETBOOK" engine --nats-url "$(url engine "$JETBOOK_ENGINE_PASSWORD" 0)" --replicas 3 --snapshot-every 5 \
    >"$1" 2>&1 &
  pids+=($!)
  engine_pid=$!
}
start_projection() {
  "$JETBOOK" project --nats-url "$(url projection "$JETBOOK_PROJECTION_PASSWORD" 1)" \
    --db "$tmp/rm.db" >>"$tmp/project.log" 2>&1 &
  pids+=($!)
  projection_pid=$!
}
# demo_ok OUT: a demo through n3 as the operator, with its one fill
demo_ok() {
  timeout 40 "$JETBOOK" demo --nats-url "$(url operator "$JETBOOK_OPERATOR_PASSWORD" 2)" >"$1" 2>&1 &&
    grep -q "took 10 from alice order 1 at 300000" "$1"
}
start_engine "$tmp/engine.log"
wait_for 30 "the engine reading JB_CMD" probe engine_ready "${MONITOR[@]}"
step "engine on n1 (user engine, --replicas 3) is reading JB_CMD"

start_projection
wait_for 30 "the projection's read model" test -s "$tmp/rm.db"
step "projection on n2 (user projection) started, read model $tmp/rm.db"

step "jetbook demo on n3 (user operator):"
rc=0
timeout 60 "$JETBOOK" demo --nats-url "$(url operator "$JETBOOK_OPERATOR_PASSWORD" 2)" >"$tmp/demo.out" 2>&1 || rc=$?
((rc == 0)) || { cat "$tmp/demo.out"; fail "jetbook demo exited with $rc"; }
sed 's/^/    | /' "$tmp/demo.out"
grep -qE '(^|[^0-9])1 fill([^s]|$)' "$tmp/demo.out" || fail "demo output lacks '1 fill'"
grep -q "took 10 from alice order 1 at 300000" "$tmp/demo.out" || fail "demo output lacks the expected fill"
market=$(awk '/^market /{print $2; exit}' "$tmp/demo.out")
step "demo: '1 fill' and 'took 10 from alice order 1 at 300000' found (market $market)"

wait_for 30 "JB_CMD and JB_EVT R3 with both replicas current" probe streams_r3 "${MONITOR[@]}"
sed 's/^/    /' "$tmp/last-poll.out"
probe stream_info "$(url operator "$JETBOOK_OPERATOR_PASSWORD" 2)" | sed 's/^/    /' || fail "JB_EVT is not R3"

step "trader alice on n3 (user alice):"
probe trader "$(url alice "$JETBOOK_ALICE_PASSWORD" 2)" "$market" "$JETBOOK" >"$tmp/alice.out" 2>&1 \
  || { sed 's/^/    /' "$tmp/alice.out"; fail "trader alice: see above"; }
sed 's/^/    /' "$tmp/alice.out"
grep -q "user:alice.*Publish Violation.*jb.cmd.$market.bob" "$tmp/n3.log" || fail "n3 did not log alice's violation"
step "alice's refusals logged by n3, her own order accepted"

# The projection (n2) must fold everything the engine (n1) wrote, alice's order included.
book_has_alice() {
  timeout 10 "$JETBOOK" book -m "$market" --db "$tmp/rm.db" >"$tmp/book.out" 2>&1 && grep -q "sell *302000 *1 " "$tmp/book.out"
}
wait_for 30 "alice's ask in the read model" book_has_alice
step "read model on n2 caught up:"
sed 's/^/    | /' "$tmp/book.out"

# Any other permission violation means a jetbook process needs a permission
# deploy/accounts.conf does not grant (or tried something it should not).
if grep -h "Violation" "$tmp"/n?.log | grep -v "user:alice" >"$tmp/violations.out"; then
  cat "$tmp/violations.out"; fail "unexpected permission violations (above)"
fi
step "no permission violations in the server logs except alice's refusals"

# Every role restarts and fails over under these permissions, as its own user.
# 1. The engine, stopped and started again: it recovers from JB_EVT (and its snapshots) and decides again.
kill -TERM "$engine_pid"; wait "$engine_pid" 2>/dev/null || true
start_engine "$tmp/engine2.log"
wait_for 60 "a demo through n3 after the engine restarted" demo_ok "$tmp/demo-restart.out"
grep -q "resuming at command" "$tmp/engine2.log" || fail "the restarted engine did not recover (engine2.log)"
step "engine restarted (user engine): recovered, then $(awk '/^market /{print $2; exit}' "$tmp/demo-restart.out") gave its fill"

# 2. A hot standby beside it; the active one killed with -9; the standby takes the lease and decides.
active_pid=$engine_pid
start_engine "$tmp/engine3.log"
wait_for 30 "the second engine to stand by" grep -q "standby" "$tmp/engine3.log"
kill -9 "$active_pid"; wait "$active_pid" 2>/dev/null || true
step "active engine killed (kill -9); its standby (user engine) must take over"
wait_for 60 "the standby to become active" grep -q "active: deciding" "$tmp/engine3.log"
wait_for 60 "a demo through n3 after the standby took over" demo_ok "$tmp/demo-standby.out"
step "standby took over: $(awk '/^market /{print $2; exit}' "$tmp/demo-standby.out") gave its fill"

# 3. The projection, stopped and started again: it resumes from its own position and catches up.
kill -TERM "$projection_pid"; wait "$projection_pid" 2>/dev/null || true
standby_market=$(awk '/^market /{print $2; exit}' "$tmp/demo-standby.out")
wait_for 60 "a demo while the projection is down" demo_ok "$tmp/demo-noproj.out"
noproj_market=$(awk '/^market /{print $2; exit}' "$tmp/demo-noproj.out")
start_projection
book_has_demo() {
  timeout 10 "$JETBOOK" book -m "$noproj_market" --db "$tmp/rm.db" >"$tmp/book2.out" 2>&1 &&
    grep -q "buy *300500 *5 " "$tmp/book2.out"
}
wait_for 60 "the restarted projection to fold $noproj_market" book_has_demo
step "projection restarted (user projection): caught up with $standby_market and $noproj_market"
if grep -h "Violation" "$tmp"/n?.log | grep -v "user:alice" >"$tmp/violations.out"; then
  cat "$tmp/violations.out"; fail "permission violations while restarting or failing over (above)"
fi
step "engine restart, standby takeover and projection restart: no permission violations"

# A writer started with the default --replicas 1 must not turn the R3 log into R1.
"$PYTHON" - "$(url engine "$JETBOOK_ENGINE_PASSWORD" 1)" <<'PY' || fail "ensure_streams(replicas=1) failed"
import asyncio, sys
from protocol.streams import ensure_streams
from jetbook.wiring import connect
async def main():
    nc = await connect(sys.argv[1], "check-replicas", reconnect=False)
    await ensure_streams(nc.jetstream(), 1)
    await nc.close()
asyncio.run(main())
PY
wait_for 30 "JB_CMD and JB_EVT still R3" probe streams_r3 "${MONITOR[@]}"
step "ensure_streams with replicas=1 (as user engine) left both streams R3"

# Failover: kill -9 the node the engine is connected to. The engine, which was
# given only n1's URL, must reconnect to a discovered node with its password,
# and a new demo through n3 must still give its one fill.
kill -9 "${pids[0]}"
step "n1 killed (kill -9); the engine must fail over to n2 or n3"
wait_for 90 "a demo through n3 after n1 died" demo_ok "$tmp/demo2.out"
step "demo after failover: $(awk '/^market /{print $2; exit}' "$tmp/demo2.out"), $(grep -c '^  trade' "$tmp/demo2.out") fill"
grep -q "Authorization Violation" "$tmp/engine3.log" && fail "the engine lost its credentials on failover"

ok=1
step "OK: 3-node cluster, TLS and route auth, R3 streams kept, engine/projection/demo on different nodes, permissions enforced, restarts and failover"
