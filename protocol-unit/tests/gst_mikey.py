#!/usr/bin/python3
"""GStreamer's own MIKEY/SDP/SRTP code, driven from the command line for srtp_gst.rs.

Run with the system python (python3-gi, gir1.2-gst-plugins-base-1.0, gstreamer1.0-plugins-bad).

  caps SDP_FILE
      Parse the SDP the way rtspsrc does (gst_sdp_media_get_caps_from_media +
      gst_sdp_media_attributes_to_caps, which reads a=key-mgmt through
      gst_mikey_message_to_caps). Prints the srtpdec caps of media 0.

  client-key URI SSRC KEY_HEX RTCP_HEX
      Act as rtspsrc on SETUP: build a MIKEY message with gst_mikey_message_new_from_caps
      for KEY_HEX (key||salt), add the crypto session, and print the KeyMgmt header value
      (gst_sdp_make_keymgmt). Then protect the RTCP packet RTCP_HEX with srtpenc using that
      key and print the SRTCP packet as hex on a second line.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import Gst, GstSdp  # noqa: E402


def caps_from_sdp(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    res, msg = GstSdp.SDPMessage.new_from_text(text)
    if res != GstSdp.SDPResult.OK:
        sys.exit(f"SDP parse failed: {res}")
    media = msg.get_media(0)
    pt = int(media.get_format(0))
    caps = GstSdp.SDPMedia.get_caps_from_media(media, pt)
    if caps is None:
        sys.exit("no caps from media")
    caps = caps.make_writable() if hasattr(caps, "make_writable") else caps
    if media.attributes_to_caps(caps) != GstSdp.SDPResult.OK:
        sys.exit("attributes_to_caps failed")
    # attributes_to_caps parsed a=key-mgmt with GStreamer's MIKEY parser
    # (gst_mikey_message_to_caps): the key and the SRTP parameters come from there. (The
    # crypto-session map is not reachable from python: parse_keymgmt's result does not map
    # and new_from_bytes wants a MIKEYDecryptInfo python cannot build; srtpdec starts at
    # ROC 0 without it, which is what the server announces.)
    s = caps.get_structure(0)
    if not s.has_field("srtp-key"):
        sys.exit("MIKEY gave no srtp-key")
    s.set_name("application/x-srtp")
    print(s.to_string())


def client_key(uri, ssrc, key_hex, rtcp_hex):
    key = bytes.fromhex(key_hex)
    buf = Gst.Buffer.new_wrapped(key)
    caps = Gst.Caps.from_string(
        "application/x-srtcp, srtp-cipher=(string)aes-128-icm, srtp-auth=(string)hmac-sha1-80, "
        "srtcp-cipher=(string)aes-128-icm, srtcp-auth=(string)hmac-sha1-80"
    )
    caps.set_value("srtp-key", buf)
    msg = GstSdp.MIKEYMessage.new_from_caps(caps)
    if msg is None:
        sys.exit("new_from_caps failed")
    msg.add_cs_srtp(0, int(ssrc), 0)
    print(GstSdp.sdp_make_keymgmt(uri, msg.base64_encode()))

    # Protect one RTCP packet with srtpenc, as rtspsrc's RTCP path does.
    pipe = Gst.parse_launch(
        "appsrc name=src format=time caps=application/x-rtcp ! srtpenc name=enc "
        "rtp-cipher=aes-128-icm rtp-auth=hmac-sha1-80 rtcp-cipher=aes-128-icm "
        "rtcp-auth=hmac-sha1-80 ! appsink name=sink sync=false"
    )
    enc = pipe.get_by_name("enc")
    enc.set_property("key", buf)
    src = pipe.get_by_name("src")
    # srtpenc protects RTCP on its rtcp_sink_%u pads: relink appsrc there.
    src.unlink(enc)
    sink = pipe.get_by_name("sink")
    enc.unlink(sink)
    rtcp_sink = enc.request_pad_simple("rtcp_sink_0")
    src.get_static_pad("src").link(rtcp_sink)
    enc.get_static_pad("rtcp_src_0").link(sink.get_static_pad("sink"))
    pipe.set_state(Gst.State.PLAYING)
    src.emit("push-buffer", Gst.Buffer.new_wrapped(bytes.fromhex(rtcp_hex)))
    src.emit("end-of-stream")
    sample = sink.emit("try-pull-sample", 5 * Gst.SECOND)
    pipe.set_state(Gst.State.NULL)
    if sample is None:
        sys.exit("srtpenc produced no SRTCP")
    b = sample.get_buffer()
    ok, info = b.map(Gst.MapFlags.READ)
    print(bytes(info.data).hex())
    b.unmap(info)


def main():
    Gst.init(None)
    if len(sys.argv) == 3 and sys.argv[1] == "caps":
        caps_from_sdp(sys.argv[2])
    elif len(sys.argv) == 6 and sys.argv[1] == "client-key":
        client_key(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
