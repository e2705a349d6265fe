// The demo page: a support engineer's check of one user's audio path
// through the gateway. Uses only the public js-api.
import { connect } from '/js/gateway.js';

const $ = (id) => document.getElementById(id);
const state = { session: null, call: null, audio: null, timers: [] };
// For automated checks of the page (tests read these).
window.demo = state;
// What the browser sends as it is: the tests' tones must come through unfiltered.
const rawAudio = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };

function log(text, kind) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  if (kind) li.className = kind;
  $('log').prepend(li);
}

function setStatus(text, kind) {
  const el = $('session-status');
  el.textContent = text;
  el.className = `pill ${kind || 'idle'}`;
}

function buttons() {
  const connected = !!state.session && !state.session.closed;
  const call = state.call && state.call.state !== 'ended' ? state.call : null;
  $('connect').disabled = connected;
  $('disconnect').disabled = !connected;
  $('call').disabled = !connected || !!call;
  $('hangup').disabled = !call;
  $('hold').disabled = !call || call.state !== 'answered' || call.held;
  $('resume').disabled = !call || !call.held;
  $('transfer').disabled = !call || call.state !== 'answered';
  const shown = call && state.mediaFailed && call.state === 'answered' ? 'no media path' : null;
  $('call-state').textContent = call
    ? (shown || (call.held ? 'on hold' : call.state))
    : state.call ? 'ended' : 'none';
}

/** Level (0..1) and dominant frequency (Hz) of an analyser's input. */
function measure(analyser, buf, freqBuf) {
  analyser.getFloatTimeDomainData(buf);
  let peak = 0;
  for (const v of buf) peak = Math.max(peak, Math.abs(v));
  analyser.getFloatFrequencyData(freqBuf);
  let best = 0;
  for (let i = 1; i < freqBuf.length; i++) if (freqBuf[i] > freqBuf[best]) best = i;
  const hz = (best * analyser.context.sampleRate) / analyser.fftSize;
  return { level: peak, hz: peak > 0.01 ? Math.round(hz) : 0 };
}

function meter(stream, levelId, freqId, key) {
  if (!state.audio) state.audio = new AudioContext();
  const ctx = state.audio;
  ctx.resume();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 8192;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const freqBuf = new Float32Array(analyser.frequencyBinCount);
  const timer = setInterval(() => {
    const m = measure(analyser, buf, freqBuf);
    state[key] = m;
    $(levelId).style.width = `${Math.min(100, m.level * 100)}%`;
    $(freqId).textContent = m.hz ? `${m.hz} Hz` : '–';
  }, 100);
  state.timers.push(timer);
}

function stopTimers() {
  state.timers.forEach(clearInterval);
  state.timers = [];
}

const drops = (leg) =>
  leg.dropped_foreign_source + leg.dropped_auth_failed + leg.dropped_replay + leg.dropped_malformed +
  leg.dropped_payload_type + leg.dropped_not_ready + leg.dropped_overload;

async function counters() {
  const call = state.call;
  if (!call || call.state === 'ended') return;
  try {
    const { gateway, browser } = await call.stats();
    state.stats = { gateway, browser };
    const keying = gateway.keying && gateway.keying.web
      ? ` · browser ${gateway.keying.web === 'dtls' ? 'DTLS-SRTP' : 'SDES-SRTP'} · SIP ${gateway.keying.sip === 'srtp' ? 'SRTP' : 'RTP'}`
      : '';
    $('codec').textContent = gateway.codec ? `(${gateway.codec}${keying})` : '';
    $('b-in').textContent = browser.packetsReceived;
    $('b-out').textContent = browser.packetsSent;
    const { web, sip } = gateway.stats;
    for (const [p, leg] of [['w', web], ['s', sip]]) {
      $(`${p}-in`).textContent = leg.packets_in;
      $(`${p}-out`).textContent = leg.packets_out;
      $(`${p}-drop`).textContent = drops(leg);
      $(`${p}-lost`).textContent = leg.lost;
      $(`${p}-jitter`).textContent = `${(leg.jitter_us / 1000).toFixed(1)} ms`;
    }
  } catch {
    // The call may have just ended; the next event says so.
  }
}

function watch(call) {
  if (state.call === call) return;
  state.call = call;
  state.mediaFailed = null;
  $('media-problem').hidden = true;
  const on = (type, text) => call.addEventListener(type, (e) => { log(text(e.detail || {})); buttons(); });
  on('ringing', () => 'ringing');
  on('early_media', () => 'early media');
  on('reconnecting', () => 'media path lost: reconnecting (ICE restart)');
  on('reconnected', () => 'reconnected');
  on('answered', () => 'answered');
  on('held', (d) => `on hold (by ${d.by})`);
  on('resumed', (d) => `resumed (by ${d.by})`);
  on('dtmf', (d) => `DTMF received: ${d.digit}`);
  on('transfer', (d) => `transfer ${d.state}${d.sipStatus ? ` (SIP ${d.sipStatus})` : ''}`);
  on('ended', (d) => `call ended: ${d.reason}${d.sipStatus ? ` (SIP ${d.sipStatus})` : ''}`);
  call.addEventListener('media_failed', (e) => {
    state.mediaFailed = e.detail.message;
    log(e.detail.message, 'error');
    $('call-state').textContent = 'no media path';
    $('media-problem').textContent = e.detail.message;
    $('media-problem').hidden = false;
  });
  call.addEventListener('ended', () => {
    // A caller that gives up during early media takes the Answer button with it.
    if (state.incoming === call) $('incoming').hidden = true;
    stopTimers();
    buttons();
  });
  const hear = (stream) => {
    $('remote-audio').srcObject = stream;
    meter(stream, 'remote-level', 'remote-freq', 'remote');
  };
  call.addEventListener('track', (e) => hear(e.detail));
  // Answering an incoming call sets up the stream before we get here.
  if (call.remoteStream) hear(call.remoteStream);
  if (call.localStream) meter(call.localStream, 'mic-level', 'mic-freq', 'mic');
  state.timers.push(setInterval(counters, 1000));
  buttons();
}

async function run(what, fn) {
  try {
    await fn();
  } catch (e) {
    log(`${what} failed: ${e.code ? `${e.code}: ` : ''}${e.message}`, 'error');
    state.lastError = e;
  }
  buttons();
}

$('connect').onclick = () => run('connect', async () => {
  setStatus('connecting…');
  const opts = { url: location.origin, user: $('user').value.trim() };
  if ($('password').value) opts.password = $('password').value;
  if ($('token').value.trim()) opts.token = $('token').value.trim();
  if ($('auto-answer').checked) opts.autoAnswer = { audio: rawAudio };
  try {
    state.session = await connect(opts);
  } catch (e) {
    setStatus('not connected', 'bad');
    throw e;
  }
  setStatus(`connected as ${opts.user}`, 'ok');
  log(`session ${state.session.id} for ${opts.user}`);
  state.session.addEventListener('incoming', (e) => {
    const call = e.detail;
    state.incoming = call;
    // The switch's asserted caller first; textContent keeps any markup in a name inert.
    const who = call.identity && call.identity.asserted ? call.identity : null;
    const name = (who && who.display_name) || call.displayName;
    const number = who ? who.uri : call.from;
    $('incoming-from').textContent = `Incoming call from ${name ? `${name} (${number})` : number}`;
    // The switch's call data (X- headers, User-to-User…), as text.
    const data = $('incoming-data');
    data.replaceChildren(...Object.entries(call.headers).map(([header, values]) => {
      const li = document.createElement('li');
      li.textContent = `${header}: ${values.join(', ')}`;
      return li;
    }));
    $('listen').hidden = false;
    $('incoming').hidden = false;
    log(`incoming call from ${call.from}`);
    call.addEventListener('answer_requested', () => {
      log(opts.autoAnswer ? 'the switch asks for this call to be answered: answering'
        : 'the switch asks for this call to be answered');
      if (opts.autoAnswer) {
        call.addEventListener('answered', () => {
          $('incoming').hidden = true;
          watch(call);
        }, { once: true });
      }
    });
    if (opts.autoAnswer && call.autoAnswer !== null) {
      log(`the switch asks for auto-answer in ${call.autoAnswer} s`);
      // js-api answers it; the page follows.
      call.addEventListener('answered', () => {
        $('incoming').hidden = true;
        watch(call);
      }, { once: true });
    }
  });
  state.session.addEventListener('ended', (e) => { setStatus(`session ended (${e.detail.reason})`, 'bad'); buttons(); });
});

$('disconnect').onclick = () => run('disconnect', async () => {
  await state.session.close();
  stopTimers();
  setStatus('not connected');
  log('session closed');
});

$('call').onclick = () => run('call', async () => {
  const audio = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };
  const to = $('to').value.trim();
  log(`calling ${to}`);
  watch(await state.session.call(to, { audio }));
});

$('hangup').onclick = () => run('hang up', () => state.call.hangup());
$('hold').onclick = () => run('hold', () => state.call.hold());
$('resume').onclick = () => run('resume', () => state.call.resume());
$('transfer').onclick = () => run('transfer', async () => {
  const to = $('to').value.trim();
  log(`transferring to ${to}`);
  await state.call.transfer(to);
});

$('listen').onclick = () => run('early media', async () => {
  const call = state.incoming;
  await call.progress({ audio: rawAudio });
  $('listen').hidden = true;
  log('early media: listening before the answer');
  watch(call);
});
$('answer').onclick = () => run('answer', async () => {
  $('incoming').hidden = true;
  const call = state.incoming;
  // After Listen first the call is watched already.
  const early = call.state === 'early_media';
  await call.answer({ audio: rawAudio });
  if (!early) watch(call);
});
$('reject').onclick = () => run('reject', async () => {
  $('incoming').hidden = true;
  await state.incoming.reject();
});

for (const key of $('pad').querySelectorAll('button')) {
  key.onclick = () => run('DTMF', async () => {
    const call = state.call;
    if (call && call.state === 'answered') {
      await call.sendDtmf(key.textContent);
      log(`DTMF sent: ${key.textContent}`);
    } else {
      $('to').value += key.textContent;
    }
  });
}

buttons();
