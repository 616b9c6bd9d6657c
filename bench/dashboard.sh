# The dashboard section of bench/run (`bench/run --only dashboard`), sourced by it: its helpers
# (start_hub, record, metric, log...) and settings (repeats, secs) are bench/run's.
#
# A store filled through the store API (fill): 100 devices with a reading every 5 minutes and
# dense-0 with one every 10 s, over the 7 days before now (262,080 readings). On the release hub:
#
#   page       the page's bytes as served (gzip, the HTML, every asset it names and every module
#              those import)
#   load       headless chromium (Selenium, bench/dashboard.py): navigation to a usable fleet page,
#              to dense-0's page with its 1 h charts, and a click on "7d" to its 7-day charts
#   polling    the fleet page left open for a minute while dense-0 reports every 10 s
#              (mosquitto_pub): requests of the routes with an ETag (device detail, latest,
#              readings) answered 304 against all of them, from the hub's own request counters
#
# Needs chromium, chromium-driver and Selenium: the Python of the e2e venv ($E2E_PYTHON, else
# $target/e2e-venv/bin/python; tests/run makes it from tests/py/requirements.txt).

dash_python=${E2E_PYTHON:-$target/e2e-venv/bin/python}
"$dash_python" -c 'import selenium' 2> /dev/null || {
  echo "bench/run: the dashboard section needs selenium: run tests/run once (it makes $target/e2e-venv), or set E2E_PYTHON" >&2
  exit 1
}
need chromium "apt-get install chromium chromium-driver"
need chromedriver "apt-get install chromium chromium-driver"

# requests_304: the sum of the ETag routes' GET counters with status $1, from /metrics.
etag_requests() {
  curl -sf --cacert "$HUB_DATA/tls/ca.crt" -H "Authorization: Bearer $(cat "$HUB_DATA/admin.token")" \
    "https://localhost:$HUB_API/metrics" |
    awk -v s="status=\"$1\"" '/^hub_api_requests_total/ && /method="GET"/ && index($0, s) &&
      /route="\/api\/v1\/devices\/\{id\}(\/latest|\/readings)?"/ { n += $2 } END { print n + 0 }'
}

# dashboard_bytes URL: the page's bytes as served (see above).
dashboard_bytes() {
  local url=$1 bytes assets next seen=" " asset
  bytes=$(curl -sf --cacert "$HUB_DATA/tls/ca.crt" --compressed -o /dev/null -w '%{size_download}' "$url/")
  assets=$(curl -sf --cacert "$HUB_DATA/tls/ca.crt" "$url/" | grep -o '/assets/[^"]*')
  while [ -n "$assets" ]; do
    next=""
    for asset in $assets; do
      case "$seen" in *" $asset "*) continue ;; esac
      seen="$seen$asset "
      bytes=$(( bytes + $(curl -sf --cacert "$HUB_DATA/tls/ca.crt" -H 'accept-encoding: gzip' -o /dev/null -w '%{size_download}' "$url$asset") ))
      case "$asset" in
        *.js) next="$next $(curl -sf --cacert "$HUB_DATA/tls/ca.crt" --compressed "$url$asset" |
          grep -o 'from "\./[^"]*"' | sed 's|^from "\./|/assets/|; s|"$||')" ;;
      esac
    done
    assets=$(echo "$next" | xargs)
  done
  echo "$bytes"
}

for repeat in $(seq "$repeats"); do
  dir=$work/dashboard-$repeat
  mkdir -p "$dir"
  log "dashboard: filling 7 days of 100 devices and dense-0 (every 10 s)"
  "$bin/fill" --dir "$dir/data" --readings 262080 --devices 100 --dense 60480 --span-hours 168 --batch 20000 > /dev/null
  start_hub "$dir"
  # A first run's data dir has no admin token when fill made it: make one through the CLI.
  token=$(cat "$HUB_DATA/admin.token" 2> /dev/null || true)
  [ -n "$token" ] || { echo "bench/run: no admin token in $HUB_DATA" >&2; exit 1; }
  url=https://localhost:$HUB_API

  # The page's bytes on the wire: the HTML, every asset it names and every module those import
  # (`from "./name.hash.js"`), each once, gzip as served.
  page_bytes=$(dashboard_bytes "$url")

  log "dashboard: chromium loads (repeat $repeat), then the fleet page open for 60 s"
  hold_file=$dir/hold-started
  "$dash_python" bench/dashboard.py --url "$url" --token "$token" --repeats 3 --hold 60 \
    --hold-started "$hold_file" > "$dir/load.json" &
  py=$!; pids+=("$py")
  for _ in $(seq 600); do [ -f "$hold_file" ] && break; sleep 0.1; done
  ok0=$(etag_requests 200); nm0=$(etag_requests 304)
  for i in $(seq 6); do
    mosquitto_pub -p "$HUB_MQTT" -q 1 -t devices/dense-0/telemetry -m "{\"temperature\":2$i.0}"
    sleep 10
  done
  wait "$py"; forget "$py"
  ok1=$(etag_requests 200); nm1=$(etag_requests 304)
  stop_hub
  record dashboard "page and fleet" "$repeat" "$(cat "$dir/load.json")" page_bytes="$page_bytes" \
    etag_200="$(( ok1 - ok0 ))" etag_304="$(( nm1 - nm0 ))" \
    rate_304="$(python3 -c "a, b = $((ok1 - ok0)), $((nm1 - nm0)); print(round(b / (a + b), 3) if a + b else 0)")"
  rm -rf "$dir/data"
done
