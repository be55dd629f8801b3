// The glass-to-glass meters' reader (bench/g2g.mjs, bench/g2g_room.mjs): in the page, for every
// presented frame of the video matching `selector` (requestVideoFrameCallback), decode the 4-bar
// code the source paints (bar b white = bit 3-b of the counter) and record in
// `window.g2g.events` the wall-clock time (ms since the epoch) each new value was first shown.
// Frames caught mid-transition (a bar neither dark nor light) are skipped.
export function readFrameCounter(page, selector) {
  return page.evaluate((sel) => {
    const v = document.querySelector(sel);
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
        if (luma > 64 && luma < 192) clear = false;
        if (luma >= 128) value |= 1 << (3 - b);
      }
      if (clear && value !== window.g2g.last) {
        window.g2g.events.push([value, performance.timeOrigin + now]);
        window.g2g.last = value;
      }
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  }, selector);
}
