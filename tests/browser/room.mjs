// Room pages in headless Chromium with a fake 1280x720 camera. Prints one JSON line.
//   node room.mjs ROOM_URL Y4M_FILE [TIMEOUT_SECONDS] [PAGE_A_QUERY] [PAGES] [C_TRANSPORT] [ALL_QUERY]
// With 2 pages (default): A and B call each other peer-to-peer; A pins then unpins B's tile.
// With 3 pages: A and B connect peer-to-peer, then C joins, all three move to the SFU (no
// reload) and receive each other; A pins then unpins B's tile.
// PAGE_A_QUERY (e.g. `codecs=h264`) makes page A a weaker client; the report has each side's
// received codec. C_TRANSPORT `tcp` makes page C behave as behind a UDP-blocking firewall
// (`&transport=tcp`: no UDP candidates towards the SFU): it must reach the SFU over ICE-TCP.
// With 4 pages: after that, D joins declaring only H.264; the room's codec changes mid-call and
// every page receives the three others in H.264.
// ALL_QUERY goes to every page (e.g. `policy=relay`: media only through the TURN server).
// PAGE_A_QUERY with `record=1`: at the end, page A (whose token may record) starts the call's
// recording with its button, every page shows it, and A stops it.
import { launchChromium } from './chromium.mjs';

const [url0, y4m, timeoutArg, queryA, pagesArg, transportC, allQuery] = process.argv.slice(2);
const url = allQuery && allQuery !== '-' ? `${url0}&${allQuery}` : url0;
const timeoutMs = Number(timeoutArg || 60) * 1000;
const pages = Number(pagesArg || 2);
const camera = ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
  `--use-file-for-fake-video-capture=${y4m}`];
const browser = await launchChromium(camera);
// CHROMIUM_A / CHROMIUM_B: that page in a browser of its own started by this executable (the NAT
// lab's wrappers run each one inside its client's network namespace)
const own = {};
for (const name of ['A', 'B']) {
  const exe = process.env[`CHROMIUM_${name}`];
  if (exe) own[name] = await launchChromium(camera, exe);
}
const result = { ok: false, steps: {}, errors: [], console: [] };
const started = Date.now();
const left = () => Math.max(1000, timeoutMs - (Date.now() - started));

const opened = [];
async function open(name, extra) {
  const page = await (own[name] || browser).newPage();
  opened.push(page);
  page.on('console', (m) => { if (m.type() === 'error') result.console.push(`${name}: ${m.text()}`); });
  page.on('pageerror', (e) => result.console.push(`${name}: ${e}`));
  await page.goto(`${url}&name=${name}&identity=${name}${extra && extra !== '-' ? `&${extra}` : ''}`);
  return page;
}

const state = (page) => page.evaluate(() => {
  const s = window.roomState;
  return JSON.parse(JSON.stringify({ ...s, sfu: s.sfu ? { connection: s.sfu.connection, pair: s.sfu.pair } : null }));
});

async function until(page, what, test) {
  const deadline = Date.now() + left();
  let s = null;
  while (Date.now() < deadline) {
    s = await state(page);
    const r = test(s);
    if (r) return r === true ? s : r;
    await page.waitForTimeout(250);
  }
  throw new Error(`${what}: timed out; state ${JSON.stringify(s)}`);
}

const receiving = (p) => p && p.connection === 'connected' && p.framesDecoded > 0;
// page state → the remote peer `id` (default: the only one) once it passes `test`
const peerOf = (id, test) => (s) => {
  const p = id ? s.peers[id] : Object.values(s.peers)[0];
  return test(p) && p;
};

try {
  const a = await open('A', queryA);
  const b = await open('B');
  const ra = await until(a, 'A receives B', peerOf('B', receiving));
  const rb = await until(b, 'B receives A', peerOf('A', receiving));
  const sa = await state(a);
  result.steps.connected = { a: ra.pair, b: rb.pair, mode: sa.mode, ms: Date.now() - started,
    codecs: { a: ra.codec, b: rb.codec }, constraints: sa.constraints };
  // ROOM_WANT_DIRECT=1: wait for a pair without a relay end (ICE may start on the relay and move
  // to a direct pair once its checks get through the NATs)
  const direct = (p) => p && p.pair && (process.env.ROOM_WANT_DIRECT !== '1'
    || (p.pair.local.type !== 'relay' && p.pair.remote.type !== 'relay'));
  const pa = await until(a, 'A pair', peerOf('B', direct));
  result.steps.pair = pa.pair;
  result.steps.pair_b = (await until(b, 'B pair', peerOf('A', direct))).pair;
  let c = null;
  if (pages >= 3) {
    const joinedAt = Date.now();
    c = await open('C', transportC === 'tcp' ? 'transport=tcp' : null);
    const all = { A: a, B: b, C: c };
    const seen = {};
    for (const [name, page] of Object.entries(all)) {
      const others = Object.keys(all).filter((x) => x !== name);
      const s = await until(page, `${name} receives ${others} through the SFU`, (s) =>
        s.mode === 'sfu' && others.every((o) => receiving(s.peers[o])) && s);
      seen[name] = { mode: s.mode, pair: s.sfu && s.sfu.pair,
        heights: Object.fromEntries(others.map((o) => [o, s.peers[o].frameHeight])),
        codecs: Object.fromEntries(others.map((o) => [o, s.peers[o].codec])) };
    }
    result.steps.sfu = { ms: Date.now() - joinedAt, pages: seen };
  }
  const thumb = await until(a, 'thumbnail', peerOf('B', (p) => p && p.frameHeight > 0 && p.frameHeight <= 360));
  result.steps.thumbnail = thumb.frameHeight;
  await a.click('.tile[data-id="B"]');
  // a higher layer: at least twice as tall (720p, or 360p when the sender's CPU adapts)
  const pinned = await until(a, 'pinned rises', peerOf('B', (p) => p && p.frameHeight >= 2 * thumb.frameHeight));
  result.steps.pinned = pinned.frameHeight;
  await a.click('.tile[data-id="B"]');
  // a lower layer again (below what the pinned tile got)
  const unpinned = await until(a, 'unpinned lowers', peerOf('B', (p) => p && p.frameHeight > 0
    && p.frameHeight <= 360 && p.frameHeight < pinned.frameHeight));
  result.steps.unpinned = unpinned.frameHeight;
  if (pages >= 4) {
    // D decodes only H.264: the room's codec changes mid-call and everyone publishes in it
    const joinedAt = Date.now();
    const all = { A: a, B: b, C: c, D: await open('D', 'codecs=h264') };
    const seen = {};
    for (const [name, page] of Object.entries(all)) {
      const others = Object.keys(all).filter((x) => x !== name);
      const h264 = (p) => receiving(p) && p.codec === 'video/H264';
      const s = await until(page, `${name} receives ${others} in H.264`, (s) =>
        others.every((o) => h264(s.peers[o])) && s);
      // and frames keep coming in it
      const frames = Object.fromEntries(others.map((o) => [o, s.peers[o].framesDecoded]));
      await until(page, `${name} decodes H.264 from ${others}`, (s) =>
        others.every((o) => h264(s.peers[o]) && s.peers[o].framesDecoded >= frames[o] + 10));
      seen[name] = Object.fromEntries(others.map((o) => [o, s.peers[o].codec]));
    }
    result.steps.recodec = { ms: Date.now() - joinedAt, constraints: (await state(a)).constraints,
      pages: seen };
  }
  if ((queryA || '').split('&').includes('record=1')) {
    // A's token may record (B's may not): A's button starts the call's recording, every page
    // shows it, and A stops it again
    await until(a, 'A may record', (s) => s.canRecord);
    const canB = (await state(b)).canRecord;
    const at = Date.now();
    await a.click('#record');
    for (const p of opened) await until(p, 'recording shown', (s) => s.recording === true);
    const shownMs = Date.now() - at;
    const rec = await b.isVisible('#rec');
    await a.waitForTimeout(6000);
    await a.click('#record');
    for (const p of opened) await until(p, 'recording stopped', (s) => s.recording === false);
    result.steps.recording = { a_can: true, b_can: canB, shown_ms: shownMs, b_shows_rec: rec };
  }
  result.errors = [...(await state(a)).errors, ...(await state(b)).errors];
  result.ok = true;
} catch (e) {
  result.errors.push(String(e));
}
console.log(JSON.stringify(result));
for (const b of [browser, ...Object.values(own)]) await b.close();
process.exit(result.ok ? 0 : 1);
