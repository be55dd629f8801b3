// Glass-to-glass meter for bench/g2g.py: opens a player page in headless Chromium, and for every
// presented video frame (requestVideoFrameCallback) decodes the 4-bar code the publisher paints
// (bar b white = bit 3-b of the flip counter); prints one JSON line with the wall-clock time (ms
// since the epoch) at which each new code value was first shown, plus the player's errors.
//   node bench/g2g.mjs URL SECONDS
import { launchChromium } from '../tests/browser/chromium.mjs';
import { readFrameCounter } from './frame_counter.mjs';

const [url, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg || 20);
const browser = await launchChromium(['--disable-quic']);
const out = { url, events: [], errors: [], console: [] };
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') out.console.push(m.text()); });
  page.on('pageerror', (e) => out.console.push(String(e)));
  await page.goto(url);
  await readFrameCounter(page, 'video');
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const s = await page.evaluate(() => ({
    events: window.g2g.events,
    errors: (window.tidecastPlayer || {}).errors || [],
  }));
  out.events = s.events;
  out.errors = s.errors;
} catch (e) {
  out.console.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
