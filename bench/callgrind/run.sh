#!/usr/bin/env bash
# Instruction counts per request (valgrind --tool=callgrind): a repeatable measure of the
# gateway's CPU per request on a shared, noisy machine, where wall-clock CPU figures drift.
#
#   bench/callgrind/run.sh governed|governed-nowasm|passthrough N [TOLLGATE_BIN]
#
# Starts the mock provider and the release gateway under callgrind on loopback with the
# bench's scenario policies (kept in step with bench/src/scenario.rs by hand), sends 100
# warm-up requests, zeroes the counters, sends N requests on one keep-alive connection, dumps,
# and prints the instructions per request. The dump also holds the periodic background work
# that ran meanwhile (policy watcher polls, ledger ticks): under valgrind requests are ~50x
# slower while timers are not, so read per-function inclusive costs with
#   callgrind_annotate --inclusive=yes FILE | grep tollgate::pipeline
# rather than only the total. `governed` compiles pii-guard under valgrind (minutes);
# `governed-nowasm` is the governed scenario without the plugin.
# Needs: valgrind, python3, release builds of tollgate and mock-upstream
# (cargo build --release -p tollgate -p mock-upstream --bin mock-upstream).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=${CARGO_TARGET_DIR:-$HERE/../../target}
SCEN=$1; N=$2; BIN=${3:-$TARGET/release/tollgate}
MOCK=$TARGET/release/mock-upstream
[ -x "$MOCK" ] || { echo "no $MOCK: build it (cargo build --release --workspace) or set CARGO_TARGET_DIR" >&2; exit 1; }
W=$(mktemp -d /tmp/tollgate-callgrind.XXXX); cd $W
MP=$((20000 + RANDOM % 10000)); GP=$((MP+1))
$MOCK --listen 127.0.0.1:$MP > mock.log 2>&1 & MOCKPID=$!
BASE=http://127.0.0.1:$MP/v1
mkdir -p pol/access pol/routing pol/plugins
DIST=$HERE/../../plugins/dist
if [ "$SCEN" = governed ] || [ "$SCEN" = governed-nowasm ]; then
cat > pol/gateway.toml <<T
[providers.mock-a]
family = "openai"
base_url = "$BASE"
credential = { env = "TOLLGATE_BENCH_PROVIDER_KEY" }
[providers.mock-b]
family = "openai"
base_url = "$BASE"
credential = { env = "TOLLGATE_BENCH_PROVIDER_KEY" }
[providers.mock-c]
family = "openai"
base_url = "$BASE"
credential = { env = "TOLLGATE_BENCH_PROVIDER_KEY" }
[models."bench-a"]
provider = "mock-a"
upstream_model = "bench-chat-1"
pricing = { input_per_mtok = 0.15, output_per_mtok = 0.6 }
tags = ["chat"]
[models."bench-b"]
provider = "mock-b"
upstream_model = "bench-chat-1"
pricing = { input_per_mtok = 0.2, output_per_mtok = 0.8 }
tags = ["chat"]
[models."bench-c"]
provider = "mock-c"
upstream_model = "bench-chat-1"
pricing = { input_per_mtok = 2.5, output_per_mtok = 10.0 }
tags = ["chat", "premium"]
[groups."bench-chat"]
routing = "cheapest-healthy"
tags = ["chat"]
deployments = [
  { model = "bench-a", priority = 0, region = "us", weight = 3 },
  { model = "bench-b", priority = 1, region = "eu", weight = 1 },
  { model = "bench-c", priority = 2, region = "us", weight = 1 },
]
[[budgets]]
scope = "organization"
window = "monthly"
limit_usd = 1000000.0
[[quotas]]
scope = "key"
metric = "requests"
limit = 1000000000
window = "minute"
[plugins]
allowed_dirs = ["$DIST"]
T
[ "$SCEN" = governed-nowasm ] || cat > pol/plugins/pii-guard.toml <<T
description = "pii-guard on the bench group"
wasm = "$DIST/pii-guard.wasm"
world = "guardrail"
phases = ["request"]
failure_mode = "closed"
[applies_to]
models = ["bench-chat"]
[config]
mode = "mask"
T
echo 'request.max_tokens == null || request.max_tokens <= 4096' > pol/access/max-tokens.cel
echo 'request.client_ip == null || cidr_contains("127.0.0.0/8", request.client_ip)' > pol/access/loopback-only.cel
echo '!("premium" in model.tags) || key.team == "research"' > pol/access/no-premium-groups.cel
cat > pol/routing/cheapest-healthy.rhai <<'T'
fn route(request, candidates) {
    candidates.sort(|a, b| {
        if a.health.in_cooldown != b.health.in_cooldown {
            return if a.health.in_cooldown { 1 } else { -1 };
        }
        let x = a.price.input + a.price.output;
        let y = b.price.input + b.price.output;
        if x < y { -1 } else if x > y { 1 } else { a.priority - b.priority }
    });
    candidates
}
T
else
cat > pol/gateway.toml <<T
[providers.mock]
family = "openai"
base_url = "$BASE"
credential = { env = "TOLLGATE_BENCH_PROVIDER_KEY" }
[models."bench-chat"]
provider = "mock"
upstream_model = "bench-chat-1"
pricing = { input_per_mtok = 0.15, output_per_mtok = 0.6 }
T
fi
DB="sqlite://$W/t.db"
KEY=$(RUST_LOG=warn $BIN keys create --name bench --mcp '*' --models '*' --json --database "$DB" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("key") or d.get("secret"))')
export TOLLGATE_BENCH_PROVIDER_KEY=sk-bench RUST_LOG=info
if [ -n "${PERF:-}" ]; then
  $BIN serve --policies pol --listen 127.0.0.1:$GP --database "$DB" --data-dir $W > gw.log 2>&1 & GWPID=$!
else
  valgrind --tool=callgrind --callgrind-out-file=$W/cg.out --dump-instr=no $BIN serve --policies pol --listen 127.0.0.1:$GP --database "$DB" --data-dir $W > gw.log 2>&1 & GWPID=$!
fi
for i in $(seq 1 600); do curl -s -o /dev/null http://127.0.0.1:$GP/health && break; sleep 0.5; done
python3 "$HERE/drive.py" $GP $KEY 100
if [ -n "${PERF:-}" ]; then
  echo "gw pid $GWPID key $KEY port $GP dir $W"; exit 0
fi
callgrind_control -z $GWPID >/dev/null
python3 "$HERE/drive.py" $GP $KEY $N
sleep 1
callgrind_control -d $GWPID >/dev/null
sleep 1
kill $GWPID; sleep 2; kill $MOCKPID || true
F=$(ls -t $W/cg.out.* 2>/dev/null | head -1)
TOT=$(callgrind_annotate $F 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
echo "$SCEN N=$N total_Ir=$TOT per_req=$((TOT / N)) file=$F"
