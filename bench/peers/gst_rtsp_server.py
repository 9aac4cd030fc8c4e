#!/usr/bin/python3
"""GStreamer's RTSP server (gst-rtsp-server through python3-gi) as a peer for divisor-bench.

Serves one MP4 file (H.264 video) at rtsp://0.0.0.0:PORT/MOUNT: by default one pipeline per
client, so every client gets its own VoD session as with Divisor's VoD server; with --shared
one pipeline feeds every client, as a live channel.
Needs the Debian packages python3-gi and gir1.2-gst-rtsp-server-1.0.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--mount", default="/vod/bench")
    p.add_argument("--file", required=True)
    p.add_argument(
        "--shared",
        action="store_true",
        help="one pipeline for every client (a live channel) instead of one per client (VoD)",
    )
    a = p.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    loc = a.file.replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{loc}" ! qtdemux ! h264parse ! '
        "rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    factory.set_shared(a.shared)
    server.get_mount_points().add_factory(a.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {a.port}", file=sys.stderr)
        return 1
    print(f"gst-rtsp-server: rtsp://0.0.0.0:{a.port}{a.mount} -> {a.file}", file=sys.stderr)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
