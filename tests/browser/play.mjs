// Opens a tidecast player page in headless Chromium and reports playback as one JSON line.
//   node play.mjs URL SECONDS [TIMEOUT_SECONDS]
// Succeeds when the <video> currentTime advanced by SECONDS with no fatal hls.js error.
// Reports, from when the playhead first progressed at playback speed (the start-up wait,
// including a player's seek to the live edge and the wait for data after it, is not a stall): `stalled` (seconds the playhead stood still while playing,
// sampled every 50 ms), `stalls` (how often), `back` (largest backwards jump of the
// playhead), `stallsAt` (where: [playhead, seconds, readyState]), and the player's live latency (hls.js `latency`, dash.js `getCurrentLiveLatency`).
import { launchChromium } from './chromium.mjs';

const [url, secondsArg, timeoutArg] = process.argv.slice(2);
const want = Number(secondsArg || 5);
const timeoutMs = Number(timeoutArg || 60) * 1000;
const browser = await launchChromium(['--disable-quic']);
const result = { ok: false, url, start: null, end: null, errors: [], fatal: null, level: null, console: [] };
try {
  const page = await browser.newPage();
  await page.addInitScript(() => {
    const m = { stalled: 0, stalls: 0, back: 0, last: null, still: false, first: null, at: [] };
    window.__playback = m;
    setInterval(() => {
      const v = document.querySelector('video');
      if (!v) return;
      const t = v.currentTime;
      if (m.last === null) {
        // started: the playhead progressed at playback speed between two samples. A jump (the
        // player seeking to its start position at the live edge) is start-up, not playback: the
        // wait for data after it is join time, not a stall.
        const d = m.first === null ? 0 : t - m.first;
        if (!v.paused && d > 0.001 && d < 0.5) m.last = t;
        else m.first = t;
        return;
      }
      if (t < m.last - 0.05) m.back = Math.max(m.back, m.last - t);
      const standing = !v.paused && !v.ended && Math.abs(t - m.last) < 0.001;
      if (standing) {
        m.stalled += 0.05;
        if (!m.still) { m.stalls += 1; m.at.push([Math.round(t * 100) / 100, 0, v.readyState]); }
        m.at[m.at.length - 1][1] = Math.round((m.at[m.at.length - 1][1] + 0.05) * 100) / 100;
      }
      m.still = standing;
      m.last = t;
    }, 50);
  });
  page.on('console', (m) => { if (m.type() === 'error') result.console.push(m.text()); });
  page.on('pageerror', (e) => result.console.push(String(e)));
  await page.goto(url);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const s = await page.evaluate(() => {
      const v = document.querySelector('video');
      const p = window.tidecastPlayer || {};
      return {
        t: v ? v.currentTime : 0,
        paused: v ? v.paused : true,
        errors: p.errors || [],
        fatal: p.fatal || null,
        level: p.hls && p.hls.levels && p.hls.currentLevel >= 0 ? p.hls.levels[p.hls.currentLevel].height : null,
        latency: p.hls ? p.hls.latency : (p.dash && p.dash.getCurrentLiveLatency ? p.dash.getCurrentLiveLatency() : null),
        playback: window.__playback || null,
        targetLatency: p.hls ? p.hls.targetLatency : null,
        startedBy: p.startedBy || null,
        startupMs: p.startupMs || null,
        resyncs: p.resyncs || 0,
        buffered: v && v.buffered.length ? v.buffered.end(v.buffered.length - 1) - v.currentTime : 0,
      };
    });
    result.errors = s.errors;
    result.fatal = s.fatal;
    result.level = s.level;
    result.latency = s.latency;
    result.targetLatency = s.targetLatency;
    result.buffered = s.buffered;
    result.startedBy = s.startedBy;
    result.startupMs = s.startupMs;
    result.resyncs = s.resyncs;
    if (s.playback) {
      result.stalled = Math.round(s.playback.stalled * 100) / 100;
      result.stalls = s.playback.stalls;
      result.back = Math.round(s.playback.back * 100) / 100;
      result.stallsAt = s.playback.at.slice(0, 20); // [playhead, seconds, readyState]
    }
    if (s.t > 0 && result.start === null) result.start = s.t;
    result.end = s.t;
    if (result.start !== null && s.t - result.start >= want) { result.ok = !s.fatal; break; }
    await new Promise((r) => setTimeout(r, 250));
  }
} catch (e) {
  result.console.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
