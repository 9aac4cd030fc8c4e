// Opens a page in Debian's headless chromium, waits until a selector matches at least N
// elements, takes a screenshot and prints ONE JSON line: { ok, url, count, texts, error }.
//
//   node shot.mjs --url http://HOST:PORT/ --selector "svg#tree g.node" --min 7 \
//                 --screenshot out.png [--count-also "line.link"] [--timeout 20]
//
// Used for pages that draw rather than play (the controller's live tree).

import { chromium } from "playwright-core";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    selector: { type: "string" },
    min: { type: "string", default: "1" },
    screenshot: { type: "string" },
    "count-also": { type: "string", multiple: true, default: [] },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "20" },
  },
});

if (!opts.url || !opts.selector) {
  console.error("usage: node shot.mjs --url URL --selector CSS [--min N] [--screenshot PATH]");
  process.exit(64);
}

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-zygote", "--disable-dev-shm-usage", "--no-first-run"];
const min = Number(opts.min);
const deadline = Date.now() + Number(opts.timeout) * 1000;
let browser;
const report = { ok: false, url: opts.url, count: 0, also: {}, texts: [], pageErrors: [], error: null };
try {
  browser = await chromium.launch({ executablePath: opts.chromium, args: FLAGS });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (e) => report.pageErrors.push(String(e)));
  await page.goto(opts.url, { waitUntil: "load" });
  while (Date.now() < deadline) {
    report.count = await page.locator(opts.selector).count();
    if (report.count >= min) break;
    await page.waitForTimeout(250);
  }
  for (const sel of opts["count-also"]) report.also[sel] = await page.locator(sel).count();
  report.texts = await page.locator(opts.selector).allTextContents();
  if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });
  report.ok = report.count >= min;
  if (!report.ok) report.error = `${report.count} elements match ${opts.selector}, expected ${min}`;
} catch (e) {
  report.error = String(e && e.stack ? e.stack : e);
} finally {
  if (browser) await browser.close().catch(() => {});
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
