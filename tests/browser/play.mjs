// Plays a WebRTC page in Debian's headless chromium and reports what the browser saw.
//
//   node play.mjs --url http://HOST:PORT/play/cam/web [--seconds 8] [--screenshot out.png]
//                 [--chromium /usr/bin/chromium] [--interval-ms 250]
//
// The page must expose its RTCPeerConnection as `window.pc` (Divisor's /play/<channel>
// page does). For --seconds after the peer connection exists, the script polls
// `pc.getStats()` and finally prints ONE JSON line on stdout:
//
//   { ok, url, connectionState, iceConnectionState, video: { mimeType, framesDecodedFirst,
//     framesDecodedLast, framesDecodedSeries, packetsReceived, packetsLost, frameWidth,
//     frameHeight }, audio: { mimeType, packetsReceived, packetsLost }, firstFrameMs,
//     postToFirstFrameMs, loadToPostMs, stateText, latencyText, srtpCipher, receiverVideoCodecs,
//     console, pageErrors, error }
//
// Timing: an init script (runs before the page's own scripts) records when the page POSTs
// to a /whep/ URL (wrapping fetch and XMLHttpRequest) and when the first video frame is
// presented (requestVideoFrameCallback on the page's <video>, with getStats' framesDecoded
// polled every 20 ms as a fallback); all in the page's performance.now() clock, whose origin
// is the navigation start. `firstFrameMs` is navigation start to first frame,
// `postToFirstFrameMs` is WHEP POST to first frame.
//
// The exit status is 0 whenever the JSON line could be produced (the caller judges the
// figures), 2 when the browser could not be driven at all (the JSON line then has
// `ok: false` and `error`).

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    seconds: { type: "string", default: "8" },
    screenshot: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    "interval-ms": { type: "string", default: "250" },
    "connect-timeout": { type: "string", default: "20" },
  },
});

if (!opts.url) {
  console.error("usage: node play.mjs --url URL [--seconds N] [--screenshot PATH]");
  process.exit(64);
}
const seconds = Number(opts.seconds);
const intervalMs = Number(opts["interval-ms"]);
const connectTimeoutMs = Number(opts["connect-timeout"]) * 1000;

// The flags issue 6 asks for, plus the ones a root shell inside a network namespace needs:
// no zygote (it forks sandboxed helpers that fail without a sandbox), /dev/shm may be small,
// no D-Bus session and no keyring. Autoplay is allowed so audio tracks play without a
// gesture; fake UI for media stream avoids permission prompts.
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-zygote",
  "--disable-dev-shm-usage",
  "--no-first-run",
  "--password-store=basic",
  "--use-mock-keychain",
  "--autoplay-policy=no-user-gesture-required",
  "--disable-features=Translate,MediaRouter,OptimizationHints,WebRtcHideLocalIpsWithMdns",
];

/** Runs in the page before its own scripts: timestamps of WHEP POST and first frame. */
function initScript() {
  const t = (window.__divisorTimes = { post: null, firstFrame: null, firstFrameVia: null });
  const isWhepPost = (url, method) =>
    String(method || "GET").toUpperCase() === "POST" && /\/whep\//.test(String(url));
  const origFetch = window.fetch;
  window.fetch = function (input, init) {
    try {
      const url = typeof input === "string" ? input : input && input.url;
      const method = (init && init.method) || (input && input.method);
      if (t.post === null && isWhepPost(url, method)) t.post = performance.now();
    } catch (_) {}
    return origFetch.apply(this, arguments);
  };
  const origOpen = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url) {
    try {
      if (t.post === null && isWhepPost(url, method)) t.post = performance.now();
    } catch (_) {}
    return origOpen.apply(this, arguments);
  };
  const hooked = new WeakSet();
  const poll = setInterval(async () => {
    for (const v of document.querySelectorAll("video")) {
      if (!hooked.has(v) && typeof v.requestVideoFrameCallback === "function") {
        hooked.add(v);
        v.requestVideoFrameCallback((now) => {
          if (t.firstFrame === null) {
            t.firstFrame = now;
            t.firstFrameVia = "requestVideoFrameCallback";
          }
        });
      }
    }
    if (t.firstFrame === null && window.pc && window.pc.getStats) {
      try {
        const stats = await window.pc.getStats();
        stats.forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "video" && r.framesDecoded > 0) {
            if (t.firstFrame === null) {
              t.firstFrame = performance.now();
              t.firstFrameVia = "getStats";
            }
          }
        });
      } catch (_) {}
    }
    if (t.firstFrame !== null) clearInterval(poll);
  }, 20);
}

/** Runs in the page: one snapshot of the stats that matter. */
async function snapshot() {
  const out = {
    hasPc: !!window.pc,
    connectionState: window.pc ? window.pc.connectionState : null,
    iceConnectionState: window.pc ? window.pc.iceConnectionState : null,
    video: null,
    audio: null,
    stateText: null,
    latencyText: null,
    srtpCipher: null,
    times: window.__divisorTimes || null,
  };
  const text = (sel) => {
    const e = document.querySelector(sel);
    return e ? e.textContent.trim() : null;
  };
  out.stateText = text("#state");
  out.latencyText = text("#latency");
  if (!window.pc) return out;
  const stats = await window.pc.getStats();
  const codecs = new Map();
  stats.forEach((r) => {
    if (r.type === "codec") codecs.set(r.id, r.mimeType);
    if (r.type === "transport" && r.srtpCipher) out.srtpCipher = r.srtpCipher;
  });
  stats.forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    const s = {
      mimeType: codecs.get(r.codecId) || null,
      packetsReceived: r.packetsReceived || 0,
      packetsLost: r.packetsLost || 0,
      bytesReceived: r.bytesReceived || 0,
    };
    if (r.kind === "video") {
      Object.assign(s, {
        framesDecoded: r.framesDecoded || 0,
        framesReceived: r.framesReceived || 0,
        keyFramesDecoded: r.keyFramesDecoded || 0,
        frameWidth: r.frameWidth || 0,
        frameHeight: r.frameHeight || 0,
        nackCount: r.nackCount || 0,
        pliCount: r.pliCount || 0,
      });
      out.video = s;
    } else if (r.kind === "audio") {
      Object.assign(s, { totalSamplesReceived: r.totalSamplesReceived || 0 });
      out.audio = s;
    }
  });
  return out;
}

const result = {
  ok: false,
  url: opts.url,
  connectionState: null,
  iceConnectionState: null,
  video: null,
  audio: null,
  firstFrameMs: null,
  firstFrameVia: null,
  postToFirstFrameMs: null,
  loadToPostMs: null,
  stateText: null,
  latencyText: null,
  srtpCipher: null,
  receiverVideoCodecs: null,
  console: [],
  pageErrors: [],
  error: null,
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const profile = mkdtempSync(join(tmpdir(), "divisor-chromium-"));
let context = null;
let status = 0;
try {
  // A fresh user-data dir per run: no cache, no state from earlier runs.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium,
    headless: true,
    args: FLAGS,
    ignoreDefaultArgs: ["--enable-automation"],
    viewport: { width: 960, height: 640 },
    timeout: 30000,
  });
  // Chrome gathers ICE candidates on every interface only for pages holding camera or
  // microphone permission; otherwise just on the default route's interface, and a test
  // namespace has no default route (so no candidates at all). Granting the permission
  // (no device is opened) makes the page behave as on a machine with a default route.
  await context.grantPermissions(["camera", "microphone"]);
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => {
    if (result.console.length < 50) result.console.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => {
    if (result.pageErrors.length < 20) result.pageErrors.push(String(e));
  });
  await page.addInitScript(initScript);
  await page.goto(opts.url, { waitUntil: "load", timeout: 15000 });
  result.receiverVideoCodecs = await page.evaluate(() =>
    [...new Set(RTCRtpReceiver.getCapabilities("video").codecs.map((c) => c.mimeType))],
  );
  // Wait for the page to create its peer connection.
  const pcDeadline = Date.now() + connectTimeoutMs;
  while (!(await page.evaluate(() => !!window.pc)) && Date.now() < pcDeadline) await sleep(50);
  const series = [];
  let last = null;
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    last = await page.evaluate(snapshot);
    series.push(last.video ? last.video.framesDecoded : 0);
    await sleep(intervalMs);
  }
  last = await page.evaluate(snapshot);
  series.push(last.video ? last.video.framesDecoded : 0);
  if (opts.screenshot) await page.screenshot({ path: opts.screenshot });

  result.ok = last.hasPc;
  if (!last.hasPc) result.error = "the page never set window.pc";
  result.connectionState = last.connectionState;
  result.iceConnectionState = last.iceConnectionState;
  result.stateText = last.stateText;
  result.latencyText = last.latencyText;
  result.srtpCipher = last.srtpCipher;
  result.audio = last.audio;
  if (last.video) {
    const { framesDecoded, ...rest } = last.video;
    result.video = {
      ...rest,
      framesDecodedFirst: series[0],
      framesDecodedLast: framesDecoded,
      framesDecodedSeries: series,
    };
  }
  const t = last.times;
  if (t) {
    result.firstFrameMs = t.firstFrame === null ? null : Math.round(t.firstFrame);
    result.firstFrameVia = t.firstFrameVia;
    result.loadToPostMs = t.post === null ? null : Math.round(t.post);
    result.postToFirstFrameMs =
      t.post === null || t.firstFrame === null ? null : Math.round(t.firstFrame - t.post);
  }
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
  status = 2;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(status);
