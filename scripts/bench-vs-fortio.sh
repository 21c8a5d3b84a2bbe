#!/usr/bin/env bash
# Compare meshgate bench with fortio on the same loopback backend, at the
# same fixed rate, 3 times interleaved: the latency each reports (p50, p99)
# should agree. fortio's histogram gets 10 µs buckets (-r), as its default
# 1 ms buckets would only interpolate sub-millisecond percentiles.
# Usage: scripts/bench-vs-fortio.sh MESHGATE FORTIO [RATE] [SECONDS]
set -euo pipefail
meshgate=$1 fortio=$2 rate=${3:-1000} secs=${4:-10}
port=18480
"$meshgate" bench serve --http 127.0.0.1:$port --tls "" --grpc "" --tcp "" >/dev/null &
serve=$!
trap 'kill $serve 2>/dev/null; wait $serve 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
url="http://127.0.0.1:$port/"
printf '%-10s %-4s %10s %10s\n' tool run "p50 ms" "p99 ms"
for run in 1 2 3; do
	read -r f50 f99 < <("$fortio" load -qps "$rate" -c 16 -t "${secs}s" -uniform -r 0.00001 -payload-size 1024 -p 50,99 "$url" 2>&1 |
		awk '/^# target 50%/ {p50=$4*1000} /^# target 99%/ {p99=$4*1000} END {printf "%.3f %.3f\n", p50, p99}')
	printf '%-10s %-4s %10s %10s\n' fortio "$run" "$f50" "$f99"
	read -r m50 m99 < <("$meshgate" bench --quiet --rate "$rate" --connections 16 --body 1024 --duration "${secs}s" "$url" |
		awk '$1 == "'"$url"'" {print $3, $5}')
	printf '%-10s %-4s %10s %10s\n' meshgate "$run" "$m50" "$m99"
done
