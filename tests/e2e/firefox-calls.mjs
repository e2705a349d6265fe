// Real Firefox ESR against a running gateway, for tests/browser_firefox.rs.
// Mode (argv[2]):
//   echo   the shipped demo page: connect, call echo, hear the fake
//          microphone's tone come back, hang up
//   sip    the demo page calls DIAL through the SIP server (a SIPp UAS
//          returning our RTP with -rtp_echo): hear the tone, hang up
//   restart  as echo, and then: the page restarts ICE itself
//          (call.restartIce()); the network drops the web leg's UDP both
//          ways (nftables in this namespace) until Firefox reports ICE
//          failed, and js-api recovers by itself; audio is counted after
//          each
//   incoming  the demo page, connected as 1001, says it is ready (a JSON
//          line), answers the SIP caller (SIPp returning our RTP), hears
//          the tone, and waits for the caller's BYE
// Environment: GW_URL, DIAL. Prints one JSON report line (last).
import { flowing, networkBack, networkDown, ufrags, watchRestarts } from './restart-steps.mjs';
import { launch } from './firefox.mjs';

const mode = process.argv[2];
const gw = process.env.GW_URL;
const report = { mode };
const { browser, close } = await launch();

async function waitFor(page, fn, arg, ms = 20000) {
  try {
    await page.waitForFunction(fn, { timeout: ms, polling: 100 }, arg);
    return true;
  } catch {
    return false;
  }
}

// Runs in the page: records `ms` of a track and returns its dominant
// frequency (10 Hz steps, Goertzel) and peak level. Headless Firefox has no
// sound output here, so a live AudioContext (the demo's meters) stays
// suspended; MediaRecorder and an OfflineAudioContext need none.
async function dominantTone(which, ms) {
  const call = window.demo.call;
  const track = which === 'remote'
    ? call.pc.getReceivers().map((r) => r.track).find((t) => t && t.kind === 'audio')
    : call.localStream.getAudioTracks()[0];
  const recorder = new MediaRecorder(new MediaStream([track]));
  const chunks = [];
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.start();
  await new Promise((r) => setTimeout(r, ms));
  await new Promise((r) => { recorder.onstop = r; recorder.stop(); });
  const decoded = await new OfflineAudioContext(1, 48000, 48000)
    .decodeAudioData(await new Blob(chunks).arrayBuffer());
  const x = decoded.getChannelData(0);
  let best = 0;
  let bestPower = 0;
  for (let hz = 100; hz <= 4000; hz += 10) {
    const k = 2 * Math.cos((2 * Math.PI * hz) / decoded.sampleRate);
    let s1 = 0;
    let s2 = 0;
    for (let i = 0; i < x.length; i++) {
      const s0 = x[i] + k * s1 - s2;
      s2 = s1;
      s1 = s0;
    }
    const power = s1 * s1 + s2 * s2 - k * s1 * s2;
    if (power > bestPower) {
      bestPower = power;
      best = hz;
    }
  }
  let peak = 0;
  for (const v of x) peak = Math.max(peak, Math.abs(v));
  return { hz: peak > 0.01 ? best : 0, peak };
}

// Runs in the page: every counter the test checks has passed 100.
function countersPast100() {
  const s = window.demo.stats;
  const legs = s && s.gateway.stats;
  return !!(s && s.browser.packetsReceived > 100 && legs.web.packets_in > 100 &&
    legs.web.packets_out > 100);
}

// Runs in the page: the candidate pair Firefox selected (its remote end is
// the gateway: address, port and transport protocol). Firefox marks it
// with its own `selected` flag (it has no transport stats to name it).
async function selectedPair() {
  const stats = await window.demo.call.pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  let selected = null;
  stats.forEach((s) => {
    if (s.type === 'candidate-pair' && s.selected && s.state === 'succeeded') {
      const remote = byId.get(s.remoteCandidateId);
      const local = byId.get(s.localCandidateId);
      if (remote) {
        selected = {
          remote: `${remote.address}:${remote.port}`,
          protocol: remote.protocol,
          localType: local ? local.candidateType : null,
        };
      }
    }
  });
  return selected;
}

// Runs in the page: the call's ICE state, both descriptions and every
// candidate and pair Firefox knows, for a failure's message.
async function iceSnapshot() {
  const pc = window.demo.call.pc;
  const seen = [];
  (await pc.getStats()).forEach((s) => {
    if (s.type.includes('candidate')) {
      seen.push({ type: s.type, address: s.address, port: s.port, protocol: s.protocol,
        candidateType: s.candidateType, state: s.state });
    }
  });
  return { state: pc.iceConnectionState, local: pc.localDescription && pc.localDescription.sdp,
    remote: pc.remoteDescription && pc.remoteDescription.sdp, stats: seen };
}


// The restart mode's steps on an answered, audible call (see the top).
async function restarts(page) {
  await watchRestarts(page);
  report.before = await ufrags(page);
  await page.evaluate(() => window.demo.call.restartIce());
  report.afterRestart = await ufrags(page);
  report.restartConnected = await waitFor(page, () => ['connected', 'completed'].includes(window.demo.call.pc.iceConnectionState), null, 10000);
  report.packetsAfterRestart = await flowing(page);
  // The gateway's web ports: the range, or BLIP_PORTS (its one web port).
  networkDown(process.env.BLIP_PORTS || '20000-29999');
  try {
    // Down until Firefox gives ICE up (its DTLS goes with it).
    await page.evaluate(() => {
      const pc = window.demo.call.pc;
      window.__iceFailed = false;
      pc.addEventListener('iceconnectionstatechange', () => {
        if (pc.iceConnectionState === 'failed') window.__iceFailed = true;
      });
    });
    report.reconnecting = await waitFor(page, () => window.__restarts.includes('reconnecting'), null, 20000);
    report.packetsWhileDown = await flowing(page);
    report.iceFailed = await waitFor(page, () => window.__iceFailed, null, 30000);
  } finally {
    networkBack();
  }
  report.reconnected = await waitFor(page, () => window.__restarts.includes('reconnected'), null, 20000);
  report.afterBlip = await ufrags(page);
  report.transportAfterBlip = await page.evaluate(() => {
    const pc = window.demo.call.pc;
    const t = pc.getSenders().map((x) => x.transport).find(Boolean);
    return { dtls: t ? t.state : null, connection: pc.connectionState, ice: pc.iceConnectionState };
  });
  // Audio back within a few seconds of ICE (a new peer connection's DTLS
  // handshake comes first).
  for (let i = 0; i < 6; i++) {
    report.packetsAfterBlip = await flowing(page);
    if (report.packetsAfterBlip > 40) break;
  }
  report.remoteAfterBlip = await page.evaluate(dominantTone, 'remote', 2000);
  report.restarts = await page.evaluate(() => window.__restarts);
}

try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => { report.pageErrors = (report.pageErrors || []).concat(String(e)); });
  report.userAgent = await browser.userAgent();
  await page.goto(`${gw}/demo/`);
  if (mode === 'incoming') await page.evaluate(() => { document.getElementById('user').value = '1001'; });
  await page.click('#connect');
  report.connected = await waitFor(page, () => document.getElementById('session-status').textContent.startsWith('connected'));
  if (mode === 'incoming') {
    process.stdout.write(JSON.stringify({ ready: report.connected }) + '\n');
    report.rang = await waitFor(page, () => !document.getElementById('incoming').hidden, null, 30000);
    await page.click('#answer');
  } else {
    if (process.env.DIAL) {
      await page.evaluate((to) => { document.getElementById('to').value = to; }, process.env.DIAL);
    }
    await page.click('#call');
  }
  report.answered = await waitFor(page, () => !!(window.demo.call && window.demo.call.state === 'answered'));
  report.counted = await waitFor(page, countersPast100, null, 8000);
  if (!report.counted) {
    // Taken before the call can end for want of media; kept if it does.
    const ice = await page.evaluate(iceSnapshot);
    report.counted = await waitFor(page, countersPast100, null, 22000);
    if (!report.counted) {
      report.ice = ice;
      throw new Error('no media flowed both ways');
    }
  }
  report.mic = await page.evaluate(dominantTone, 'mic', 1500);
  report.remote = await page.evaluate(dominantTone, 'remote', 2000);
  report.heard = report.mic.hz > 0 && Math.abs(report.remote.hz - report.mic.hz) <= 20;
  if (mode === 'restart') await restarts(page);
  report.stats = await page.evaluate(() => window.demo.stats);
  report.selected = await page.evaluate(selectedPair);
  const endedBy = (why) => waitFor(page, (w) => [...document.querySelectorAll('#log li')].some((li) => li.textContent.includes(`call ended: ${w}`)), why, mode === 'incoming' ? 30000 : 5000);
  if (mode === 'incoming') {
    report.ended = await endedBy('remote_hangup');
  } else {
    await page.click('#hangup');
    report.ended = await endedBy('hangup');
  }
  report.log = await page.evaluate(() => [...document.querySelectorAll('#log li')].map((li) => li.textContent).reverse());
} catch (e) {
  report.error = String(e && e.stack || e);
}
await close();
process.stdout.write(JSON.stringify(report) + '\n');
process.exit(0);
