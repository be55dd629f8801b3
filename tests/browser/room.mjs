// Two room pages in headless Chromium with a fake 1280x720 camera: they join one room, call each
// other peer-to-peer, and page A pins then unpins B's tile. Prints one JSON line.
//   node room.mjs ROOM_URL Y4M_FILE [TIMEOUT_SECONDS] [PAGE_A_QUERY]
// PAGE_A_QUERY (e.g. `codecs=h264`) makes page A a weaker client; the report has each side's
// received codec.
import { launchChromium } from './chromium.mjs';

const [url, y4m, timeoutArg, queryA] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg || 60) * 1000;
const browser = await launchChromium(['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
  `--use-file-for-fake-video-capture=${y4m}`]);
const result = { ok: false, steps: {}, errors: [], console: [] };
const started = Date.now();
const left = () => Math.max(1000, timeoutMs - (Date.now() - started));

async function open(name, extra) {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') result.console.push(`${name}: ${m.text()}`); });
  page.on('pageerror', (e) => result.console.push(`${name}: ${e}`));
  await page.goto(`${url}&name=${name}${extra ? `&${extra}` : ''}`);
  return page;
}

const state = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.roomState)));
// the one remote peer of a page, once it receives video
const remote = (s) => Object.entries(s.peers)[0] || [null, null];

async function until(page, what, test) {
  const deadline = Date.now() + left();
  let s = null;
  while (Date.now() < deadline) {
    s = await state(page);
    const [id, p] = remote(s);
    if (test(id, p, s)) return { id, p, s };
    await page.waitForTimeout(250);
  }
  throw new Error(`${what}: timed out; state ${JSON.stringify(s)}`);
}

try {
  const a = await open('A', queryA);
  const b = await open('B');
  const connected = (id, p) => p && p.connection === 'connected' && p.framesDecoded > 0;
  const ra = await until(a, 'A receives B', connected);
  const rb = await until(b, 'B receives A', connected);
  result.steps.connected = { a: ra.p.pair, b: rb.p.pair, mode: ra.s.mode, ms: Date.now() - started,
    codecs: { a: ra.p.codec, b: rb.p.codec }, constraints: ra.s.constraints };
  // wait for the selected pair to be reported
  const pa = await until(a, 'A pair', (id, p) => p && p.pair);
  result.steps.pair = pa.p.pair;
  const before = await until(a, 'thumbnail', (id, p) => p && p.frameHeight > 0 && p.frameHeight <= 360);
  result.steps.thumbnail = before.p.frameHeight;
  await a.click(`.tile[data-id="${before.id}"]`);
  const pinned = await until(a, 'pinned rises', (id, p) => p && p.frameHeight >= 540);
  result.steps.pinned = pinned.p.frameHeight;
  await a.click(`.tile[data-id="${before.id}"]`);
  const unpinned = await until(a, 'unpinned lowers', (id, p) => p && p.frameHeight > 0 && p.frameHeight <= 360);
  result.steps.unpinned = unpinned.p.frameHeight;
  result.errors = [...(await state(a)).errors, ...(await state(b)).errors];
  result.ok = true;
} catch (e) {
  result.errors.push(String(e));
}
console.log(JSON.stringify(result));
await browser.close();
process.exit(result.ok ? 0 : 1);
