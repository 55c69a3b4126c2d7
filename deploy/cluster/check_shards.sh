#!/usr/bin/env bash
# The cluster path with 2 market shards (issue 15), on loopback only, beside check.sh:
#   three nats-servers from n1.conf n2.conf n3.conf with deploy/accounts.conf made
#   for 2 shards by shard_accounts.py (the account's partition mappings, each
#   permission per shard), TLS and route auth as in check.sh;
#   `jetbook engine --shard 0` on n2 and `--shard 1` on n3, as user engine, R3;
#   each shard's JB_CMD_k and JB_EVT_k led by a different node (n2 and n3, placed
#   with a leader step-down naming the preferred node);
#   the seeded bench flow published through n1 as the operator, n3 killed with -9 a
#   third of the way in (the leader of shard 1's streams and the node its engine is
#   on), then: every command stored once in its shard and decided, and the event
#   kinds per market exactly those of one engine deciding the same commands.
# Exit 0 on success; everything it starts is stopped on exit; the temporary folder
# is kept on failure.
#
#   deploy/cluster/check_shards.sh     (JETBOOK, NATS_SERVER, PYTHON, ORDERS override)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
JETBOOK=${JETBOOK:-$(command -v jetbook || true)}
[[ -n $JETBOOK ]] || { echo "jetbook not on PATH (set JETBOOK=...)" >&2; exit 2; }
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo "$(dirname "$JETBOOK")/nats-server")}
PYTHON=${PYTHON:-$(sed -n '1s/^#! *//p' "$JETBOOK" | awk '{print $1}')}
[[ -x ${PYTHON:-} ]] || PYTHON=python3
ORDERS=${ORDERS:-2000}
HOST=127.0.0.1
CLIENT=(14221 14222 14223) CLUSTER=(16221 16222 16223) MONITOR=(18221 18222 18223)

for port in "${CLIENT[@]}" "${CLUSTER[@]}" "${MONITOR[@]}"; do
  if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then echo "FAIL: port $port on $HOST is already in use" >&2; exit 1; fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/jetbook-cluster-shards.XXXXXX")
pids=()
ok=0
stop() {  # stop PID...: SIGTERM to all, up to 5 s for them together (a zombie counts as gone), then SIGKILL
  local pid alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "$@"; do
      if [[ -e /proc/$pid ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  local rc=$?
  # the engines first, while the servers are there for them to finish on; the servers last
  if ((${#pids[@]} > 3)); then stop "${pids[@]:3}"; fi
  if ((${#pids[@]})); then stop "${pids[@]:0:3}"; fi
  if ((ok)); then rm -rf "$tmp"; else echo "FAILED (exit $rc); logs and stores kept in $tmp" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >"$tmp/last-poll.out" 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

pw() { echo "pw-$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
export JETBOOK_ENGINE_PASSWORD=$(pw) JETBOOK_PROJECTION_PASSWORD=$(pw) JETBOOK_OPERATOR_PASSWORD=$(pw)
export JETBOOK_FANOUT_PASSWORD=$(pw) JETBOOK_GATEWAY_PASSWORD=$(pw) JETBOOK_QUERY_PASSWORD=$(pw) JETBOOK_ROUTE_PASSWORD=$(pw)
export JETBOOK_ALICE_PASSWORD=$(pw) JETBOOK_BOB_PASSWORD=$(pw) JETBOOK_SYS_PASSWORD=$(pw)
url() { echo "tls://$1:$2@$HOST:${CLIENT[$3]}"; }   # user password node-index
export JETBOOK_ROUTES="[$(printf '"nats-route://route:%s@%s:%s", ' "$JETBOOK_ROUTE_PASSWORD" $HOST "${CLUSTER[0]}" \
  "$JETBOOK_ROUTE_PASSWORD" $HOST "${CLUSTER[1]}" "$JETBOOK_ROUTE_PASSWORD" $HOST "${CLUSTER[2]}")]"

mkdir -p "$tmp/tls" "$tmp/deploy/cluster"
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

# The node configs as they are; accounts.conf (which they include as ../accounts.conf) made for 2 shards.
cp "$here"/n?.conf "$tmp/deploy/cluster/"
"$PYTHON" "$here/shard_accounts.py" 2 <"$here/../accounts.conf" >"$tmp/deploy/accounts.conf"
"$PYTHON" - "$tmp/deploy/accounts.conf" <<'PY' || fail "shard_accounts.py's mappings are not protocol/shards.py's"
import sys
from protocol.shards import mappings
text = open(sys.argv[1]).read()
assert all(f'"{src}": "{dest}"' in text for src, dest in mappings(2).items()), mappings(2)
PY
step "nats-server $("$NATS_SERVER" --version | awk '{print $2}'), three nodes, accounts.conf for 2 shards"
for i in 1 2 3; do
  (cd "$tmp" && exec "$NATS_SERVER" -c "$tmp/deploy/cluster/n$i.conf") >"$tmp/n$i.log" 2>&1 &
  pids+=($!)
  node_pid[$i]=$!
done
healthy() { for p in "${MONITOR[@]}"; do curl -fs "http://$HOST:$p/healthz" >/dev/null || return 1; done; }
wait_for 30 "/healthz on all three nodes" healthy

engine() {  # engine SHARD NODE-INDEX
  "$JETBOOK" engine --shard "$1" --shards 2 --replicas 3 --snapshot-every 500 \
    --nats-url "$(url engine "$JETBOOK_ENGINE_PASSWORD" "$2")" >"$tmp/engine-$1.log" 2>&1 &
  pids+=($!)
}
engine 0 1
wait_for 60 "shard 0's engine deciding" grep -q "active: deciding" "$tmp/engine-0.log"
engine 1 2
wait_for 60 "shard 1's engine deciding" grep -q "active: deciding" "$tmp/engine-1.log"
step "jetbook engine --shard 0 on n2, --shard 1 on n3 (user engine, --replicas 3): both deciding"

op=$(url operator "$JETBOOK_OPERATOR_PASSWORD" 0)
check() { timeout 120 "$PYTHON" "$here/check_shards.py" "$@"; }
check place "$op" "${MONITOR[@]}" >"$tmp/place.out" 2>&1 || { cat "$tmp/place.out"; fail "leaders not placed"; }
sed 's/^/    /' "$tmp/place.out"
step "each shard's streams led by its own node"

step "the seeded flow through n1 ($ORDERS commands over 4 markets, 2 per shard), n3 killed under load:"
check load "$op" "$ORDERS" "${node_pid[3]}" >"$tmp/load.out" 2>&1 || { cat "$tmp/load.out"; fail "load"; }
wait "${node_pid[3]}" 2>/dev/null || true  # reap n3, so that the cleanup does not wait for a zombie
sed 's/^/    /' "$tmp/load.out"
check verify "$op" "$ORDERS" >"$tmp/verify.out" 2>&1 || { cat "$tmp/verify.out"; fail "verify"; }
sed 's/^/    /' "$tmp/verify.out"
if grep -h "Violation" "$tmp"/n?.log >"$tmp/violations.out"; then
  cat "$tmp/violations.out"; fail "permission violations (above)"
fi
ok=1
step "OK: 2 shards on 3 nodes, leaders apart, a node lost under load, nothing lost or duplicated, no violations"
