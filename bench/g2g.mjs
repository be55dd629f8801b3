// Glass-to-glass meter for bench/g2g.py: opens a player page in headless Chromium, and for every
// presented video frame (requestVideoFrameCallback) decodes the 4-bar code the publisher paints
// (bar b white = bit 3-b of the flip counter); prints one JSON line with the wall-clock time (ms
// since the epoch) at which each new code value was first shown, plus the player's errors.
//   node bench/g2g.mjs URL SECONDS
import { launchChromium } from '../tests/browser/chromium.mjs';

const [url, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg || 20);
const browser = await launchChromium(['--disable-quic']);
const out = { url, events: [], errors: [], console: [] };
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') out.console.push(m.text()); });
  page.on('pageerror', (e) => out.console.push(String(e)));
  await page.goto(url);
  await page.evaluate(() => {
    const v = document.querySelector('video');
    const c = document.createElement('canvas');
    c.width = 16; c.height = 16;
    const ctx = c.getContext('2d', { willReadFrequently: true });
    window.g2g = { events: [], last: -1 };
    const onFrame = (now) => {
      ctx.drawImage(v, 0, 0, 16, 16);
      const d = ctx.getImageData(0, 0, 16, 16).data;
      let value = 0;
      let clear = true;
      for (let b = 0; b < 4; b++) {
        const luma = d[((b * 4 + 2) * 16 + 8) * 4];
        if (luma > 64 && luma < 192) clear = false; // mid-transition or blurred: ignore
        if (luma >= 128) value |= 1 << (3 - b);
      }
      if (clear && value !== window.g2g.last) {
        window.g2g.events.push([value, performance.timeOrigin + now]);
        window.g2g.last = value;
      }
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  });
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
