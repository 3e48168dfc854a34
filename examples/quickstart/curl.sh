#!/usr/bin/env bash
# Calls tollgate with curl: a chat completion and a stream. Needs TOLLGATE_API_KEY.
set -euo pipefail
BASE="${TOLLGATE_BASE_URL:-http://127.0.0.1:8080/v1}"
curl -sS "$BASE/chat/completions" \
  -H "Authorization: Bearer $TOLLGATE_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"model": "demo-chat", "messages": [{"role": "user", "content": "Hello, tollgate"}]}'
echo
curl -sSN "$BASE/chat/completions" \
  -H "Authorization: Bearer $TOLLGATE_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"model": "demo-chat", "stream": true, "messages": [{"role": "user", "content": "Stream it"}]}'
