#!/usr/bin/env bash
# Posts saved demo events to a running `risk-responder serve --demo` (default
# http://127.0.0.1:3000), as their senders would: Graph `users` notifications as they are,
# Sentinel alerts and incidents signed with Standard Webhooks using the embedded
# development key (config/local-secrets.json; development only, never a real key).
#
#   scripts/demo_post.sh events/demo/*.json
#   RR_URL=http://127.0.0.1:4000 scripts/demo_post.sh events/demo/01-sentinel-alert-adele.json
set -euo pipefail
url="${RR_URL:-http://127.0.0.1:3000}"
key_b64="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["webhook_hmac_keys"][0].removeprefix("whsec_"))' \
  "$(dirname "$0")/../config/local-secrets.json")"
key_hex="$(printf '%s' "$key_b64" | base64 -d | od -An -v -tx1 | tr -d ' \n')"
for file in "$@"; do
  if grep -q '"clientState"' "$file"; then
    path=/graph/notifications
    status=$(curl -sS -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
      --data-binary "@$file" "$url$path")
  else
    path=/sentinel/alerts
    id="msg_demo_$(date +%s%N)"
    ts="$(date +%s)"
    sig="$({ printf '%s.%s.' "$id" "$ts"; cat "$file"; } \
      | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key_hex" -binary | base64 -w0)"
    status=$(curl -sS -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
      -H "webhook-id: $id" -H "webhook-timestamp: $ts" -H "webhook-signature: v1,$sig" \
      --data-binary "@$file" "$url$path")
  fi
  echo "$status  POST $path  $file"
done
