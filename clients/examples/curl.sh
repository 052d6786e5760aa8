#!/usr/bin/env bash
# gptserve with plain curl: list the models, one chat completion, then a streamed one (SSE).
#   GPTSERVE_BASE_URL=http://127.0.0.1:8000/v1 GPTSERVE_API_KEY=secret bash clients/examples/curl.sh
set -euo pipefail
BASE_URL="${GPTSERVE_BASE_URL:-http://127.0.0.1:8000/v1}"
API_KEY="${GPTSERVE_API_KEY:-none}"
API_KEY="${API_KEY%%,*}"  # the first key when the variable lists several
MODEL="${GPTSERVE_MODEL:-SmolLM2-135M-Instruct}"
auth=(-H "Authorization: Bearer $API_KEY")

echo "# GET /models"
curl -sS --fail-with-body "${auth[@]}" "$BASE_URL/models"
echo

echo "# POST /chat/completions"
curl -sS --fail-with-body "${auth[@]}" -H "Content-Type: application/json" "$BASE_URL/chat/completions" -d '{
  "model": "'"$MODEL"'",
  "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
  "temperature": 0, "max_tokens": 32
}'
echo

echo "# POST /chat/completions, streamed"
curl -sS -N --fail-with-body "${auth[@]}" -H "Content-Type: application/json" "$BASE_URL/chat/completions" -d '{
  "model": "'"$MODEL"'",
  "messages": [{"role": "user", "content": "Count from one to five."}],
  "max_tokens": 32, "stream": true
}'
