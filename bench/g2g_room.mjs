// Glass-to-glass through the SFU: three room pages in one headless Chromium (three, so the room
// is in SFU mode); page A publishes `&source=clock` (a canvas whose 4-bar counter advances every
// 100 ms, each advance's wall-clock time recorded), page B pins A and decodes the counter from
// every presented frame of A's tile (requestVideoFrameCallback). Latency = B's presentation time −
// A's paint time of that value (one machine, one clock). Prints one JSON line.
//   node bench/g2g_room.mjs ROOM_PAGE_URL SECONDS
import { launchChromium } from '../tests/browser/chromium.mjs';
import { readFrameCounter } from './frame_counter.mjs';

const [url, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg || 20);
const browser = await launchChromium(['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream']);
const out = { url, latencies_ms: [], errors: [] };
try {
  const open = async (name, extra = '') => {
    const p = await browser.newPage();
    p.on('pageerror', (e) => out.errors.push(`${name}: ${e}`));
    await p.goto(`${url}&identity=${name}&name=${name}${extra}`);
    return p;
  };
  const a = await open('A', '&source=clock');
  const b = await open('B');
  await b.waitForTimeout(1500);
  await open('C');
  await b.waitForFunction(() => window.roomState.mode === 'sfu' && window.roomState.peers.A
    && window.roomState.peers.A.framesDecoded > 0, null, { timeout: 30000 });
  await b.click('.tile[data-id="A"]');
  await b.waitForTimeout(3000);
  await readFrameCounter(b, '.tile[data-id="A"] video');
  await b.waitForTimeout(seconds * 1000);
  const seen = await b.evaluate(() => window.g2g.events);
  const flips = await a.evaluate(() => window.clockFlips);
  out.height = await b.evaluate(() => window.roomState.peers.A.frameHeight);
  for (const [value, shownAt] of seen) {
    // the latest paint of this value before it was shown (values repeat every 1.6 s)
    const painted = flips.filter(([v, t]) => v === value && t <= shownAt).pop();
    if (painted && shownAt - painted[1] < 1500) out.latencies_ms.push(Math.round(shownAt - painted[1]));
  }
} catch (e) {
  out.errors.push(String(e));
}
const v = [...out.latencies_ms].sort((x, y) => x - y);
const q = (p) => (v.length ? v[Math.min(v.length - 1, Math.floor(p * v.length))] : null);
out.p50 = q(0.5);
out.p95 = q(0.95);
out.n = v.length;
delete out.latencies_ms;
console.log(JSON.stringify(out));
await browser.close();
