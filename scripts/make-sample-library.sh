#!/usr/bin/env bash
# Generate the sample media library with the ffmpeg CLI (only the files that are missing).
# Usage: scripts/make-sample-library.sh [DIR]   (default: sample-library)
set -euo pipefail

DIR=${1:-sample-library}
mkdir -p "$DIR"
command -v ffmpeg >/dev/null || { echo "make-sample-library: ffmpeg not found; run scripts/install-deps.sh" >&2; exit 1; }

# ffmpeg FILE DURATION VIDEO_OPTS... -- AUDIO_OPTS... ; writes to a temp name, renames when done.
gen() {
  local out=$1 dur=$2; shift 2
  local path="$DIR/$out"
  [[ -s $path ]] && return 0
  local tmp="$DIR/.tmp.$$.$out"
  echo "make-sample-library: generating $path"
  ffmpeg -hide_banner -loglevel error -nostdin -y \
    -f lavfi -i "testsrc2=size=640x360:rate=25:duration=$dur" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=$dur" \
    -map 0:v -map 1:a \
    -c:v libx264 -preset ultrafast -pix_fmt yuv420p -profile:v high \
    -crf 28 -g 50 -keyint_min 50 -sc_threshold 0 \
    "$@" -t "$dur" "$tmp"
  mv -f "$tmp" "$path"
}

gen demo.mp4    10 -bf 0 -c:a aac -b:a 96k -ac 2 -movflags +faststart
gen bframes.mp4  6 -bf 2 -c:a aac -b:a 96k -ac 2 -movflags +faststart
gen demo.mkv    10 -bf 0 -c:a libopus -b:a 64k -ac 2
gen demo.ts     10 -bf 0 -c:a aac -b:a 96k -ac 2 -f mpegts

if [[ ! -s $DIR/README.txt ]]; then
  cat > "$DIR/README.txt" <<'TXT'
Divisor sample library. Every media file here is served at rtsp://HOST:PORT/vod/<file name>.
This README is deliberately not media: asking the server for it must get "415 Unsupported Media Type".
TXT
fi
ls -l "$DIR"
