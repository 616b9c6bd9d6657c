#!/usr/bin/env bash
# Writes the 100 rules of bench/run's `rules` section to stdout; $1 is the latency webhook's port.
# 12 rules concern every device of loadgen (ids r*-N; metrics temperature, humidity, battery,
# door) and never fire at its values: thresholds with hysteresis and `for`, a rate (of falling:
# loadgen's battery jumps back up every 10,000 readings, which a rising rate fires on), an
# expression. 87 concern devices that do not send (other-N-*). One, `latency`, fires for the
# device lat-1 and POSTs to the latency receiver.
set -euo pipefail
port=$1
metrics=(temperature humidity battery door)
for i in $(seq 0 11); do
  m=${metrics[$((i % 4))]}
  case $((i % 4)) in
    0) cond='above = 1000.0
hysteresis = 1.0
for = "1m"' ;;
    1) cond='below = -1000.0
hysteresis = 1.0' ;;
    2) cond='rate = { per = "1m", below = -1000.0 }' ;;
    3) cond='expr = "value && temperature > 1000.0"' ;;
  esac
  printf '[[rules]]\nname = "all-%d"\ndevices = "r*"\nmetric = "%s"\n%s\nactions = [{ log = "warn" }]\n\n' "$i" "$m" "$cond"
done
for i in $(seq 0 86); do
  m=${metrics[$((i % 4))]}
  printf '[[rules]]\nname = "other-%d"\ndevices = "other-%d-*"\nmetric = "%s"\nabove = 10.0\nactions = [{ webhook = "https://alerts.example.com/hook" }]\n\n' "$i" "$i" "$m"
done
printf '[[rules]]\nname = "latency"\ndevices = "lat-*"\nmetric = "temp"\nabove = 50.0\nactions = [{ webhook = "http://127.0.0.1:%s/hook" }]\n' "$port"
