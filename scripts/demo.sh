#!/usr/bin/env bash
# The first README command: the real pipeline on embedded defaults.
# SQLite (./scheduler.db), the database lease, the local RabbitMQ; imports the
# sample fleet, starts a worker, submits the sample requests, waits for the
# placements, shows them, and ends with the dashboard:
# - on a terminal, the worker keeps running (dashboard and API up) until you press Enter;
# - otherwise (piped, CI), or with DEMO_KEEP_RUNNING=0, the worker is stopped and the
#   command that serves the dashboard again is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/scheduler
mkdir -p .demo
scripts/ensure-services.sh
export HTTP_PORT="${HTTP_PORT:-8080}"
export METRICS_PORT="${METRICS_PORT:-9090}"
# An API token for this run (role submit: reads and submissions), kept in .demo/token.
# With a token configured the API would listen on every address: keep it on loopback.
TOKEN="$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')"
printf '%s\n' "$TOKEN" >.demo/token
chmod 600 .demo/token
export HTTP_TOKENS="{\"$TOKEN\": \"submit\"}"
export SCHEDULER_HTTP__HOST=127.0.0.1

echo "== migrating the database and importing examples/fleet.yaml"
$S db upgrade
$S nodes import examples/fleet.yaml

echo "== starting the example webhook receiver with a fresh signing secret (events: .demo/webhooks.log)"
# Deliveries are signed (Standard Webhooks); the receiver verifies each one with the
# standardwebhooks package and refuses anything else.
WEBHOOK_SECRET="$($S webhooks new-secret)"
export WEBHOOK_SECRET
.venv/bin/python examples/webhook_receiver.py --port 0 >.demo/webhooks.log 2>.demo/webhooks.err &
receiver=$!
trap 'kill -TERM $receiver 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  if grep -q "listening on" .demo/webhooks.err 2>/dev/null; then break; fi
  sleep 0.1
done
WEBHOOK_URL="$(sed -n 's/^listening on \(http:[^ ]*\)$/\1hooks/p' .demo/webhooks.err)"
export WEBHOOK_URL

echo "== starting a worker (log: .demo/worker.log)"
$S worker >.demo/worker.log 2>&1 &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null || true; kill -TERM $receiver 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if $S leader --json 2>/dev/null | grep -q '"expired":false'; then break; fi
  if ! kill -0 $worker 2>/dev/null; then echo "worker exited:"; cat .demo/worker.log; exit 1; fi
  sleep 0.2
done

echo "== submitting examples/requests.jsonl and waiting for the outcomes (scheduler submit --wait)"
$S submit --file examples/requests.jsonl --wait --timeout 60 || true

echo "== every task, released ones included (scheduler tasks)"
$S tasks
echo "== nodes and pools (scheduler nodes list)"
$S nodes list
tasks=$(grep -c . examples/requests.jsonl)
# Up to 30 s: a delivery that failed once waits for its retry backoff before it arrives.
for _ in $(seq 1 300); do
  if [ "$(grep -c . .demo/webhooks.log)" -ge "$tasks" ]; then break; fi
  sleep 0.1
done
echo "== webhooks: $(grep -c . .demo/webhooks.log) events received and verified by examples/webhook_receiver.py," \
  "$(grep -c refused .demo/webhooks.err || true) refused"
API="http://127.0.0.1:${HTTP_PORT}"
echo "== the HTTP API, with this run's token (in .demo/token; the dashboard asks for it once)"
echo "curl -H \"Authorization: Bearer \$(cat .demo/token)\" ${API}/nodes"
echo "curl -H \"Authorization: Bearer \$(cat .demo/token)\" -H 'Content-Type: application/json' \\"
echo "     -d '{\"requested_cpu\": 2, \"requested_memory\": 2048}' ${API}/schedule"
curl -sS -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"requested_cpu": 2, "requested_memory": 2048}' "${API}/schedule"
echo
echo "without a token: HTTP $(curl -s -o /dev/null -w '%{http_code}' "${API}/nodes")"
DASHBOARD="${API}/"
METRICS="http://127.0.0.1:${METRICS_PORT}/metrics"
if [ "${DEMO_KEEP_RUNNING:-auto}" = 1 ] || { [ "${DEMO_KEEP_RUNNING:-auto}" = auto ] && [ -t 0 ] && [ -t 1 ]; }; then
  echo "== the dashboard is up: open ${DASHBOARD} and paste the token from .demo/token; metrics: ${METRICS}"
  echo "   the worker keeps running (log: .demo/worker.log); press Enter here to stop it"
  read -r _ || true
  echo "== stopping the worker"
else
  echo "== stopping the worker (not a terminal). To see the dashboard, start a worker on the same database:"
  echo "   HTTP_TOKENS=\"{\\\"\$(cat .demo/token)\\\": \\\"submit\\\"}\" SCHEDULER_HTTP__HOST=127.0.0.1 HTTP_PORT=${HTTP_PORT} METRICS_PORT=${METRICS_PORT} $S worker"
  echo "   then open ${DASHBOARD} and paste the token from .demo/token (Ctrl-C stops the worker)"
fi
