// Launches Debian's headless Chromium as a user's browser is for WebRTC: the
// fake microphone and permission flags, the sandbox off (tests run as root),
// and the flags that keep it off the network these machines do not have
// (see shared/TESTING.md). No --allow-loopback-in-peer-connection: like a
// user's Chromium it offers and pairs only its LAN addresses.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function launch({ audioFile, ignoreHTTPSErrors = false } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'gw-chromium-'));
  const args = [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
  ];
  if (audioFile) args.push(`--use-file-for-fake-audio-capture=${audioFile}`);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    ignoreHTTPSErrors,
    viewport: { width: 1100, height: 820 },
    args,
  });
  const close = async () => {
    // Closing can hang on these machines once pages used media; don't wait forever.
    await Promise.race([context.close(), new Promise((r) => setTimeout(r, 3000))]);
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

// A blank page on http://127.0.0.1 (a secure context: getUserMedia works there).
import { createServer } from 'node:http';

export async function blankPage(context) {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>test</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  const stop = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  };
  return { page, stop };
}

// JSON lines on stdin, queued so none is lost before someone waits for it.
import { createInterface } from 'node:readline';

export function lineReader() {
  const queued = [];
  const waiting = [];
  createInterface({ input: process.stdin }).on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line); else queued.push(line);
  });
  return () =>
    queued.length ? Promise.resolve(queued.shift()) : new Promise((resolve) => waiting.push(resolve));
}

export const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
