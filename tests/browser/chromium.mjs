// Headless Chromium as every browser test and benchmark starts it (Debian's chromium, or
// $CHROMIUM): no sandbox, no GPU, no background traffic, autoplay allowed. `extraArgs` adds flags
// (fake camera, QUIC off, …); `executablePath` another browser binary or wrapper (the NAT lab
// starts each page's browser inside its own network namespace).
import { chromium } from 'playwright-core';

export function launchChromium(extraArgs = [], executablePath = null) {
  return chromium.launch({
    executablePath: executablePath || process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
      ...extraArgs],
  });
}
