// Steps the ICE-restart tests of both browsers share (echo-calls.mjs for
// Chromium, firefox-calls.mjs for Firefox), on the demo page's call; the
// page object is Playwright's or Puppeteer's (both have evaluate).
import { execFileSync } from 'node:child_process';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Both sides' ICE ufrags of the call's current descriptions, and its id. */
export function ufrags(page) {
  return page.evaluate(() => {
    const ufrag = (d) => (/a=ice-ufrag:(\S+)/.exec(d ? d.sdp : '') || [])[1];
    const pc = window.demo.call.pc;
    return { browser: ufrag(pc.localDescription), gateway: ufrag(pc.remoteDescription), call: window.demo.call.id };
  });
}

/** Packets the page received in the next 1.5 s. */
export async function flowing(page) {
  const received = () => page.evaluate(async () => (await window.demo.call.stats()).browser.packetsReceived);
  const a = await received();
  await sleep(1500);
  return (await received()) - a;
}

/** Records the call's reconnecting/reconnected events in window.__restarts. */
export function watchRestarts(page) {
  return page.evaluate(() => {
    window.__restarts = [];
    for (const type of ['reconnecting', 'reconnected']) {
      window.demo.call.addEventListener(type, () => window.__restarts.push(type));
    }
  });
}

/** The network drops UDP from and to `ports` (nftables in this namespace) until networkBack(). */
export function networkDown(ports) {
  const nft = (...args) => execFileSync('nft', args);
  nft('add', 'table', 'inet', 'blip');
  nft('add', 'chain', 'inet', 'blip', 'out', '{ type filter hook output priority 0 ; }');
  nft('add', 'rule', 'inet', 'blip', 'out', 'udp', 'dport', ports, 'drop');
  nft('add', 'rule', 'inet', 'blip', 'out', 'udp', 'sport', ports, 'drop');
}

export function networkBack() {
  execFileSync('nft', ['delete', 'table', 'inet', 'blip']);
}
