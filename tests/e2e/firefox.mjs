// Launches Debian's headless Firefox ESR as a user's browser is for WebRTC,
// driven by puppeteer-core over WebDriver BiDi (Firefox's own automation
// protocol, no patched build): the fake microphone (a steady tone) and
// no permission prompt, as chromium.mjs's fake-device flags do for
// Chromium, and nothing else changed about WebRTC — its host candidates
// stay mDNS names, loopback stays unpaired, as for a user.
import puppeteer from 'puppeteer-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'gw-firefox-'));
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
    headless: true,
    userDataDir: profile,
    acceptInsecureCerts: true,
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.autoplay.default': 0,
      // Keep it off the network these machines do not have.
      'network.captive-portal-service.enabled': false,
      'network.connectivity-service.enabled': false,
      'browser.safebrowsing.update.enabled': false,
      'app.update.enabled': false,
    },
  });
  const close = async () => {
    await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5000))]);
    rmSync(profile, { recursive: true, force: true });
  };
  return { browser, close };
}
