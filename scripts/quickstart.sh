#!/usr/bin/env bash
# Quick start: build Divisor, make a sample library, run the two units on loopback
# (encoder unit <-link-> protocol unit) and play a stream with real clients.
# Usage: scripts/quickstart.sh [--no-wait]
#   Keeps the servers running until Ctrl-C, unless --no-wait is given or stdin is not a
#   terminal: then it stops them and exits with the client's status.
set -euo pipefail
cd "$(dirname "$0")/.."

WAIT=1
for a in "$@"; do
  case $a in
    --no-wait) WAIT=0 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown argument $a" >&2; exit 2 ;;
  esac
done
[[ -t 0 ]] || WAIT=0

LINK=127.0.0.1:7400
RTSP_HOST=127.0.0.1
RTSP_PORT=8554
LIB=sample-library
KEY=divisor-link.key
LOGDIR=target/quickstart-logs
URL="rtsp://$RTSP_HOST:$RTSP_PORT/vod/demo.mp4"
LIVE_URL="rtsp://$RTSP_HOST:$RTSP_PORT/live/demo"

./scripts/install-deps.sh
echo "quickstart: building (cargo build --release --workspace --bins) ..."
cargo build --release --workspace --bins
./scripts/make-sample-library.sh "$LIB" >/dev/null
if [[ ! -s $KEY ]]; then
  (umask 077; head -c 32 /dev/urandom | base64 > "$KEY")
  echo "quickstart: wrote link key $KEY"
fi

for port in ${LINK##*:} $RTSP_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "quickstart: port $port is already in use on 127.0.0.1 (another Divisor running?)" >&2
    exit 1
  fi
done

mkdir -p "$LOGDIR"
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo; echo "quickstart: stopping"; exit 130' INT TERM

target/release/divisor-encoder --library "$LIB" --link-listen "$LINK" --link-key-file "$KEY" \
  --live demo=loop:demo.mp4 \
  >"$LOGDIR/encoder.log" 2>&1 &
PIDS+=($!)
target/release/divisor-protocol --link-connect "$LINK" --link-key-file "$KEY" \
  --rtsp-listen "$RTSP_HOST:$RTSP_PORT" >"$LOGDIR/protocol.log" 2>&1 &
PIDS+=($!)
echo "quickstart: encoder unit pid ${PIDS[0]} (log $LOGDIR/encoder.log), protocol unit pid ${PIDS[1]} (log $LOGDIR/protocol.log)"

up=0
for _ in $(seq 1 100); do
  for p in "${PIDS[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "quickstart: a unit exited early; last log lines:" >&2
      tail -n 20 "$LOGDIR"/*.log >&2
      exit 1
    fi
  done
  if (exec 3<>"/dev/tcp/$RTSP_HOST/$RTSP_PORT") 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
((up)) || { echo "quickstart: RTSP port $RTSP_PORT did not open in 10 s" >&2; tail -n 20 "$LOGDIR"/*.log >&2; exit 1; }
# The RTSP port opens at once; clients get 503 until the link to the encoder unit is up.
for _ in $(seq 1 100); do
  grep -q "link established" "$LOGDIR/protocol.log" && break
  sleep 0.1
done
grep -q "link established" "$LOGDIR/protocol.log" \
  || { echo "quickstart: the link did not come up in 10 s" >&2; tail -n 20 "$LOGDIR"/*.log >&2; exit 1; }

echo
echo "== ffprobe $URL"
status=0
timeout 30 ffprobe -v error -rtsp_transport tcp \
  -show_entries stream=codec_type,codec_name,width,height,sample_rate:format=duration \
  -of compact=p=0 "$URL" || status=$?

echo
echo "== ffmpeg -rtsp_transport tcp -i $URL -f null -   (plays the whole file in real time)"
if ((status == 0)); then
  set +e
  out=$(timeout 60 ffmpeg -hide_banner -nostdin -loglevel error -stats_period 1 \
    -rtsp_transport tcp -i "$URL" -map 0:v -f null - -progress pipe:1 2>"$LOGDIR/ffmpeg.log")
  status=$?
  set -e
  frames=$(printf '%s\n' "$out" | sed -n 's/^frame=//p' | tail -n 1)
  echo "ffmpeg exit status $status, video frames decoded: ${frames:-0}"
  if [[ -s $LOGDIR/ffmpeg.log ]]; then echo "ffmpeg errors:"; tail -n 10 "$LOGDIR/ffmpeg.log"; fi
fi

echo
echo "== ffmpeg -t 5 $LIVE_URL  (live channel: demo.mp4 looped in real time)"
set +e
timeout 40 ffmpeg -hide_banner -nostdin -loglevel error -rtsp_transport tcp -i "$LIVE_URL" \
  -t 5 -f null - 2>"$LOGDIR/ffmpeg-live.log"
live_status=$?
set -e
echo "ffmpeg (live) exit status $live_status"
if [[ -s $LOGDIR/ffmpeg-live.log ]]; then echo "ffmpeg (live) errors:"; tail -n 10 "$LOGDIR/ffmpeg-live.log"; fi
((status == 0)) && status=$live_status

cat <<MSG

Stream URL: $URL   (any file in $LIB/ is at rtsp://$RTSP_HOST:$RTSP_PORT/vod/<file name>)
Open it with:
  ffplay -rtsp_transport tcp $URL
  vlc $URL
  gst-launch-1.0 playbin uri=$URL
Live channel: $LIVE_URL   (add channels with --live NAME=testsrc|loop:FILE|udp://..|rtp://..)
MSG

if ((WAIT)); then
  echo "Servers are running. Press Ctrl-C to stop."
  wait
fi
exit "$status"
