// Headless Chromium as every browser test and benchmark starts it (Debian's chromium, or
// $CHROMIUM): no sandbox, no GPU, no background traffic, autoplay allowed. `extraArgs` adds flags
// (fake camera, QUIC off, …).
import { chromium } from 'playwright-core';

export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
      ...extraArgs],
  });
}
