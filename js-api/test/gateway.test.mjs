// Unit tests of gateway.js under node's test runner, against an in-memory
// gateway that follows docs/api.md (the real one is exercised by the
// Chromium tests in tests/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, GatewayError } from '../gateway.js';

/** A fake of the gateway's HTTP API: sessions, an event queue, calls. */
class FakeGateway {
  constructor() {
    this.requests = [];
    this.events = [];
    this.nextSeq = 1;
    this.waiters = [];
    this.failNextPolls = 0;
    this.onCreateCall = null;
    this.sessionError = null;
  }

  push(event) {
    this.events.push({ seq: this.nextSeq++, ...event });
    this.waiters.splice(0).forEach((w) => w());
  }

  json(status, body) {
    return new Response(status === 204 ? null : JSON.stringify(body), {
      status,
      headers: { 'content-type': 'application/json' },
    });
  }

  fetch = async (url, init = {}) => {
    const u = new URL(url);
    const body = init.body ? JSON.parse(init.body) : undefined;
    this.requests.push({ method: init.method, host: u.host, path: u.pathname, query: u.search, body, auth: init.headers?.Authorization });
    if (init.method === 'POST' && u.pathname === '/v1/sessions') {
      if (this.sessionError) return this.json(this.sessionError.status, { error: this.sessionError.error });
      const created = { session: 's1', session_secret: 'secret1', expires_in: 300 };
      if (this.nodeUrl) created.node_url = this.nodeUrl;
      return this.json(201, created);
    }
    if (init.headers?.Authorization !== 'Bearer secret1') {
      return this.json(401, { error: { code: 'invalid_session_secret', message: 'no' } });
    }
    if (u.pathname === '/v1/sessions/s1/events') {
      if (this.failNextPolls > 0) {
        this.failNextPolls--;
        throw new TypeError('fetch failed');
      }
      const after = Number(u.searchParams.get('after'));
      const ready = () => this.events.filter((e) => e.seq > after);
      if (ready().length === 0) {
        await new Promise((resolve, reject) => {
          this.waiters.push(resolve);
          init.signal?.addEventListener('abort', () => {
            const e = new Error('aborted');
            e.name = 'AbortError';
            reject(e);
          });
        });
      }
      return this.json(200, { events: ready() });
    }
    if (init.method === 'POST' && u.pathname === '/v1/sessions/s1/calls') {
      if (this.onCreateCall) this.onCreateCall(body);
      if (this.createDelayMs) await new Promise((r) => setTimeout(r, this.createDelayMs));
      return this.json(201, { call: 'c1' });
    }
    if (this.refuseProgress && u.pathname.endsWith('/progress')) {
      return this.json(409, { error: { code: 'early_media_disabled', message: 'off' } });
    }
    if (u.pathname.startsWith('/v1/sessions/s1/calls/c1')) {
      if (init.method === 'DELETE') return this.json(204);
      if (init.method === 'GET') return this.json(200, { call: 'c1', state: 'answered', stats: {} });
      if (u.pathname.endsWith('/renegotiate')) {
        if (this.renegotiateHeld) await this.renegotiateHeld;
        return this.json(200, { sdp: `answer to ${body.sdp}` });
      }
      return this.json(200, {});
    }
    if (init.method === 'DELETE' && u.pathname === '/v1/sessions/s1') return this.json(204);
    return this.json(404, { error: { code: 'not_found', message: 'no such resource' } });
  };
}

/** Just enough RTCPeerConnection for the API's calls. */
class FakePeerConnection extends EventTarget {
  static last = null;
  constructor(config) {
    super();
    this.iceConnectionState = 'new';
    this.config = config;
    this.tracks = [];
    this.remote = null;
    this.closed = false;
    FakePeerConnection.last = this;
  }
  addTrack(track) {
    this.tracks.push(track);
    const sender = { track, async replaceTrack(t) { this.track = t; } };
    (this.senders ||= []).push(sender);
    return sender;
  }
  getSenders() { return this.senders || []; }
  async createAnswer() { return { type: 'answer', sdp: 'v=0 browser answer' }; }
  async createOffer(options) {
    return { type: 'offer', sdp: options && options.iceRestart ? 'v=0 restart offer' : 'v=0 browser offer' };
  }
  async setLocalDescription(d) { this.localDescription = d; }
  async setRemoteDescription(d) { this.remote = d; this.remoteDescription = d; }
  ice(state) {
    this.iceConnectionState = state;
    this.dispatchEvent(new Event('iceconnectionstatechange'));
  }
  async getStats() { return new Map([['o', { type: 'outbound-rtp', kind: 'audio', packetsSent: 7 }]]); }
  close() { this.closed = true; }
}
globalThis.RTCPeerConnection = FakePeerConnection;

function fakeTrack() {
  return { stopped: false, enabled: true, stop() { this.stopped = true; }, clone() { return fakeTrack(); } };
}

function fakeStream() {
  const track = fakeTrack();
  return { track, getAudioTracks: () => [track], getTracks: () => [track] };
}

const until = async (cond) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(cond(), 'condition not reached');
};

test('connect creates a session with the token and polls from seq 0', async () => {
  const gw = new FakeGateway();
  const session = await connect({ url: 'https://gw.test:8443/', user: '1001', token: 'tok', fetch: gw.fetch });
  assert.equal(session.id, 's1');
  assert.deepEqual(gw.requests[0], {
    method: 'POST', host: 'gw.test:8443', path: '/v1/sessions', query: '', body: { user: '1001' }, auth: 'Bearer tok',
  });
  await until(() => gw.requests.some((r) => r.path.endsWith('/events')));
  const poll = gw.requests.find((r) => r.path.endsWith('/events'));
  assert.equal(poll.query, '?after=0&timeout=25');
  assert.equal(poll.auth, 'Bearer secret1');
  await session.close();
});

test('behind a load balancer the session talks to the node that made it', async () => {
  const gw = new FakeGateway();
  gw.nodeUrl = 'https://gw2.test:8443/';
  const session = await connect({ url: 'https://lb.test', user: '1001', fetch: gw.fetch });
  assert.equal(gw.requests[0].host, 'lb.test');
  await until(() => gw.requests.some((r) => r.path.endsWith('/events')));
  assert.ok(
    gw.requests.slice(1).every((r) => r.host === 'gw2.test:8443'),
    JSON.stringify(gw.requests),
  );
  await session.close();
  assert.equal(gw.requests.at(-1).host, 'gw2.test:8443', 'the DELETE too');
});

test('errors carry the API code, HTTP status and SIP status', async () => {
  const gw = new FakeGateway();
  gw.sessionError = { status: 403, error: { code: 'registration_failed', message: 'SIP said 403', sip_status: 403 } };
  await assert.rejects(connect({ url: 'https://gw.test', user: '1001', fetch: gw.fetch }), (e) => {
    assert.ok(e instanceof GatewayError);
    assert.equal(e.code, 'registration_failed');
    assert.equal(e.status, 403);
    assert.equal(e.sipStatus, 403);
    return true;
  });
  const down = async () => { throw new TypeError('Failed to fetch'); };
  await assert.rejects(connect({ url: 'https://gw.test', user: '1001', fetch: down }), (e) => {
    assert.equal(e.code, 'network_error');
    assert.match(e.message, /origin is not allowed/);
    return true;
  });
  await assert.rejects(connect({ url: 'https://gw.test', fetch: gw.fetch }), /needs a user/);
});

test('a lost poll loses no event and none is delivered twice', async () => {
  const gw = new FakeGateway();
  gw.failNextPolls = 1;
  gw.push({
    type: 'call.incoming', call: 'c9', from: '2000', to: '1001', sdp: 'v=0 offer', display_name: 'Queue "Sales"',
    identity: { uri: 'sip:+15551234567@pbx', display_name: 'Jane Doe', asserted: true }, headers: { 'X-Queue': ['sales'] },
  });
  const session = await connect({ url: 'https://gw.test', user: '1001', fetch: gw.fetch });
  const incoming = [];
  session.addEventListener('incoming', (e) => incoming.push(e.detail));
  let errors = 0;
  session.addEventListener('error', () => errors++);
  await until(() => incoming.length === 1);
  assert.equal(errors, 1, 'the lost poll was reported');
  const polls = gw.requests.filter((r) => r.path.endsWith('/events')).map((r) => r.query);
  assert.equal(polls[0], '?after=0&timeout=25');
  assert.equal(polls[1], '?after=0&timeout=25', 'the retry asks from the same place');
  assert.equal(incoming[0].id, 'c9');
  assert.equal(incoming[0].from, '2000');
  assert.equal(incoming[0].direction, 'incoming');
  assert.equal(incoming[0].displayName, 'Queue "Sales"');
  assert.deepEqual(incoming[0].identity, { uri: 'sip:+15551234567@pbx', display_name: 'Jane Doe', asserted: true });
  assert.deepEqual(incoming[0].headers, { 'X-Queue': ['sales'] });
  await until(() => gw.requests.filter((r) => r.path.endsWith('/events')).length >= 3);
  assert.equal(gw.requests.filter((r) => r.path.endsWith('/events')).at(-1).query, '?after=1&timeout=25');
  assert.equal(session.lastSeq, 1);
  await session.close();
});

test('an outgoing call: offer out, answer in (even before the POST returns), controls, end', async () => {
  const gw = new FakeGateway();
  const stream = fakeStream();
  const session = await connect({ url: 'https://gw.test', user: '1001', fetch: gw.fetch, getUserMedia: async () => stream });
  // The gateway answers at once: the event overtakes the 201.
  gw.onCreateCall = () => gw.push({ type: 'call.answered', call: 'c1', sdp: 'v=0 gateway answer' });
  const seen = [];
  const call = await session.call('echo', { headers: { 'X-Ticket': 'T-1' } });
  ['answered', 'held', 'resumed', 'dtmf', 'ended'].forEach((t) => call.addEventListener(t, (e) => seen.push([t, e.detail])));
  const create = gw.requests.find((r) => r.path === '/v1/sessions/s1/calls');
  assert.deepEqual(create.body, { to: 'echo', sdp: 'v=0 browser offer', headers: { 'X-Ticket': 'T-1' } });
  assert.deepEqual(call.headers, {}, 'an outgoing call has no incoming call data');
  const pc = FakePeerConnection.last;
  assert.equal(pc.config.bundlePolicy, 'max-bundle');
  assert.equal(pc.tracks.length, 1);
  await until(() => pc.remote !== null);
  assert.deepEqual(pc.remote, { type: 'answer', sdp: 'v=0 gateway answer' });
  assert.equal(call.state, 'answered');

  const last = (path) => gw.requests.filter((r) => r.path === path).at(-1);
  await call.sendDtmf('12#', 80);
  assert.deepEqual(last('/v1/sessions/s1/calls/c1/dtmf').body, { digits: '12#', duration_ms: 80 });
  await call.hold();
  assert.equal(last('/v1/sessions/s1/calls/c1/hold').method, 'POST');
  gw.push({ type: 'call.held', call: 'c1', by: 'local' });
  gw.push({ type: 'call.dtmf', call: 'c1', digit: '5' });
  await until(() => seen.length === 3);
  assert.deepEqual(seen.map(([t]) => t), ['answered', 'held', 'dtmf'], 'listeners added after call() see every event');
  assert.equal(call.held, true);
  const stats = await call.stats();
  assert.equal(stats.gateway.state, 'answered');
  assert.equal(stats.browser.packetsSent, 7);

  gw.push({ type: 'call.ended', call: 'c1', reason: 'remote_hangup' });
  await until(() => call.state === 'ended');
  assert.deepEqual(seen.at(-1), ['ended', { reason: 'remote_hangup', sipStatus: undefined }]);
  assert.equal(pc.closed, true);
  assert.equal(stream.track.stopped, true, 'the microphone the API opened is released');
  await session.close();
});

test('events that overtook the call and the ones after them reach it in order', async () => {
  const gw = new FakeGateway();
  const session = await connect({ url: 'https://gw.test', user: '1001', fetch: gw.fetch, getUserMedia: async () => fakeStream() });
  // Ringing overtakes the 201 (the API keeps it for the call); the answer
  // comes just after the 201, before the API has replayed the ringing.
  gw.onCreateCall = () => gw.push({ type: 'call.ringing', call: 'c1' });
  gw.createDelayMs = 20;
  const seen = [];
  const call = await session.call('5000');
  gw.push({ type: 'call.answered', call: 'c1', sdp: 'v=0 gateway answer' });
  ['ringing', 'answered'].forEach((t) => call.addEventListener(t, () => seen.push(t)));
  await until(() => seen.length === 2);
  assert.deepEqual(seen, ['ringing', 'answered']);
  assert.equal(call.state, 'answered', 'not ringing again after the answer');
  // A late ringing changes nothing either.
  gw.push({ type: 'call.ringing', call: 'c1' });
  gw.push({ type: 'call.held', call: 'c1', by: 'remote' });
  await until(() => call.held);
  assert.equal(call.state, 'answered');
  assert.deepEqual(seen, ['ringing', 'answered']);
  await session.close();
});

const ANSWER_TWO_CANDIDATES = 'v=0\r\nm=audio 20000 UDP/TLS/RTP/SAVPF 111\r\n' +
  'a=candidate:1 1 udp 2130706431 192.0.2.10 20000 typ host\r\n' +
  'a=candidate:2 1 udp 2130706175 127.0.0.1 20000 typ host\r\n';

/** A session whose call to echo is answered with ANSWER_TWO_CANDIDATES; its media_failed events. */
async function answeredCall(mediaTimeoutMs, reconnectAfterMs) {
  const gw = new FakeGateway();
  gw.onCreateCall = () => gw.push({ type: 'call.answered', call: 'c1', sdp: ANSWER_TWO_CANDIDATES });
  const session = await connect({
    url: 'https://gw.test', user: '1001', fetch: gw.fetch, getUserMedia: async () => fakeStream(), mediaTimeoutMs,
    reconnectAfterMs,
  });
  const call = await session.call('echo');
  const failed = [];
  call.addEventListener('media_failed', (e) => failed.push(e.detail));
  await until(() => FakePeerConnection.last.remote !== null);
  return { session, failed, pc: FakePeerConnection.last, call, gw };
}

test('a path that breaks after it worked is restarted: reconnecting, a new offer, reconnected', async () => {
  const { session, failed, pc, call, gw } = await answeredCall(0, 30);
  const seen = [];
  for (const type of ['reconnecting', 'reconnected']) call.addEventListener(type, () => seen.push(type));
  pc.ice('connected');
  pc.ice('disconnected');
  // A short blip that heals by itself within reconnectAfterMs: nothing.
  pc.ice('connected');
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(seen, []);
  pc.ice('disconnected');
  await until(() => seen.length === 1);
  assert.equal(seen[0], 'reconnecting');
  await until(() => pc.remote.sdp === 'answer to v=0 restart offer');
  const renegotiate = gw.requests.find((r) => r.path === '/v1/sessions/s1/calls/c1/renegotiate');
  assert.deepEqual(renegotiate.body, { sdp: 'v=0 restart offer' });
  assert.equal(pc.localDescription.sdp, 'v=0 restart offer');
  pc.ice('connected');
  assert.deepEqual(seen, ['reconnecting', 'reconnected']);
  assert.equal(failed.length, 0, 'a path that worked is no media failure');
  assert.equal(call.state, 'answered');
  await session.close();
});

test('ICE restarts never overlap: one asked for while another awaits its answer joins it', async () => {
  const { session, pc, call, gw } = await answeredCall(0, 0);
  try {
    pc.ice('connected');
    const renegotiations = () => gw.requests.filter((r) => r.path.endsWith('/renegotiate')).length;
    let answer;
    gw.renegotiateHeld = new Promise((r) => { answer = r; });
    // The path breaks; while js-api's restart awaits its answer the old
    // path is reported failed too (as Firefox does) and the page asks for
    // a restart of its own: still one offer, one answer.
    pc.ice('disconnected');
    await until(() => renegotiations() === 1);
    pc.ice('failed');
    const asked = call.restartIce();
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(renegotiations(), 1);
    gw.renegotiateHeld = null;
    answer();
    await asked;
    assert.equal(pc.remote.sdp, 'answer to v=0 restart offer');
    assert.equal(renegotiations(), 1);
    // Once it is done, the next is a new one.
    await call.restartIce();
    assert.equal(renegotiations(), 2);
    pc.ice('connected');
  } finally {
    await session.close();
  }
});

test('a call whose DTLS failed gets a new peer connection on its next restart, with the same track', async () => {
  const { session, pc, call, gw } = await answeredCall(0, -1);
  try {
    pc.ice('connected');
    const track = pc.getSenders()[0].track;
    // Firefox's DTLS fails with ICE; an ICE restart would bring ICE back
    // and no media.
    pc.getSenders()[0].transport = { state: 'failed' };
    await call.restartIce();
    assert.notEqual(call.pc, pc, 'a new peer connection');
    assert.equal(pc.closed, true, 'the old one is closed');
    assert.equal(call.pc.getSenders()[0].track, track, 'the same microphone');
    const renegotiate = gw.requests.filter((r) => r.path.endsWith('/renegotiate'));
    assert.equal(renegotiate.length, 1);
    assert.deepEqual(renegotiate[0].body, { sdp: 'v=0 browser offer' }, 'a whole new offer');
    assert.equal(call.pc.remote.sdp, 'answer to v=0 browser offer');
    // The old peer connection's events no longer reach the call.
    const seen = [];
    call.addEventListener('media_failed', () => seen.push('media_failed'));
    pc.ice('failed');
    call.pc.ice('connected');
    assert.deepEqual(seen, []);
    assert.equal(call.state, 'answered');
  } finally {
    await session.close();
  }
});

/** An answered call whose path broke after it worked: js-api's ICE restart is out; its reconnect events. */
async function restartingCall() {
  const c = await answeredCall(0, 0);
  const seen = [];
  for (const type of ['reconnecting', 'reconnected']) c.call.addEventListener(type, () => seen.push(type));
  c.pc.ice('connected');
  c.pc.ice('disconnected');
  await until(() => c.gw.requests.some((r) => r.path.endsWith('/renegotiate')));
  return { ...c, seen };
}

test('ICE back on a peer connection whose DTLS failed meanwhile is no reconnection: a new one is made', async () => {
  const { session, pc, call, gw, seen } = await restartingCall();
  try {
    // The restart's checks get through just as Firefox gives its DTLS up.
    pc.getSenders()[0].transport = { state: 'failed' };
    pc.ice('connected');
    await until(() => call.pc !== pc);
    assert.deepEqual(seen, ['reconnecting'], 'not reconnected on the dead one');
    const offers = gw.requests.filter((r) => r.path.endsWith('/renegotiate')).map((r) => r.body.sdp);
    assert.deepEqual(offers, ['v=0 restart offer', 'v=0 browser offer']);
    await until(() => call.pc.remote !== null);
    call.pc.ice('connected');
    assert.deepEqual(seen, ['reconnecting', 'reconnected']);
  } finally {
    await session.close();
  }
});

test('DTLS failing after ICE came back makes a new peer connection', async () => {
  const { session, pc, call, gw, seen } = await restartingCall();
  try {
    pc.ice('connected');
    assert.deepEqual(seen, ['reconnecting', 'reconnected']);
    // Firefox reports its DTLS failed a moment later.
    pc.getSenders()[0].transport = { state: 'failed' };
    pc.connectionState = 'failed';
    pc.dispatchEvent(new Event('connectionstatechange'));
    await until(() => call.pc !== pc);
    await until(() => call.pc.remote !== null);
    call.pc.ice('connected');
    assert.deepEqual(seen, ['reconnecting', 'reconnected', 'reconnecting', 'reconnected']);
  } finally {
    await session.close();
  }
});

test('a call whose ICE never connects says so in words, naming the gateway addresses', async () => {
  const { session, failed, pc } = await answeredCall(50);
  pc.ice('checking');
  await until(() => failed.length === 1);
  assert.deepEqual(failed[0].addresses, ['192.0.2.10:20000', '127.0.0.1:20000']);
  assert.equal(
    failed[0].message,
    'no media path: the browser could not reach the gateway at 192.0.2.10:20000, 127.0.0.1:20000 — ' +
      'check [media] public-address and the firewall',
  );
  pc.ice('failed');
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(failed.length, 1, 'reported once');
  await session.close();
});

test('a call whose ICE connects reports no media failure, and ICE failing is reported at once', async () => {
  const first = await answeredCall(50);
  first.pc.ice('connected');
  await new Promise((r) => setTimeout(r, 120));
  assert.equal(first.failed.length, 0);
  await first.session.close();

  // With the timer off, only ICE's own verdict counts.
  const second = await answeredCall(0);
  await new Promise((r) => setTimeout(r, 120));
  assert.equal(second.failed.length, 0);
  second.pc.ice('failed');
  assert.equal(second.failed.length, 1);
  await second.session.close();
});

test('hangup sends DELETE and ends the call once', async () => {
  const gw = new FakeGateway();
  const session = await connect({ url: 'https://gw.test', user: '1001', fetch: gw.fetch, getUserMedia: async () => fakeStream() });
  const call = await session.call('sip:5000@pbx.test');
  let ended = 0;
  call.addEventListener('ended', () => ended++);
  await call.hangup();
  const deletes = () => gw.requests.filter((r) => r.method === 'DELETE').map((r) => r.path);
  assert.deepEqual(deletes(), ['/v1/sessions/s1/calls/c1']);
  gw.push({ type: 'call.ended', call: 'c1', reason: 'hangup' });
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(ended, 1);
  await session.close();
  assert.deepEqual(deletes(), ['/v1/sessions/s1/calls/c1', '/v1/sessions/s1']);
});

test('early media on an incoming call: our answer by progress, silence until answer(), then the answer alone', async () => {
  const gw = new FakeGateway();
  gw.push({ type: 'call.incoming', call: 'c1', from: '2000', to: '1001', sdp: 'v=0 gateway offer' });
  const stream = fakeStream();
  const session = await connect({ url: 'https://gw.test', user: '1001', fetch: gw.fetch, getUserMedia: async () => stream });
  const incoming = [];
  session.addEventListener('incoming', (e) => incoming.push(e.detail));
  await until(() => incoming.length === 1);
  const call = incoming[0];
  await call.progress();
  const pc = FakePeerConnection.last;
  assert.deepEqual(pc.remote, { type: 'offer', sdp: 'v=0 gateway offer' });
  const posted = (path) => gw.requests.filter((r) => r.method === 'POST' && r.path.endsWith(path));
  assert.deepEqual(posted('/progress').map((r) => r.body), [{ sdp: 'v=0 browser answer' }]);
  assert.equal(call.state, 'early_media');
  const sender = pc.getSenders()[0];
  assert.notEqual(sender.track, stream.track, 'the caller gets a quiet copy');
  assert.equal(sender.track.enabled, false);
  assert.equal(stream.track.enabled, true, "the page's own track is left alone");
  await call.answer();
  assert.deepEqual(posted('/answer').map((r) => r.body), [{}], 'no second SDP');
  assert.equal(FakePeerConnection.last, pc, 'the same peer connection');
  assert.equal(sender.track, stream.track, 'the caller hears the page from the answer on');
  assert.equal(call.state, 'answered');
  await assert.rejects(call.progress(), /not yet answered/);
  await session.close();
});

test('early media the gateway refuses leaves the call incoming, to be answered as usual', async () => {
  const gw = new FakeGateway();
  gw.refuseProgress = true;
  gw.push({ type: 'call.incoming', call: 'c1', from: '2000', to: '1001', sdp: 'v=0 gateway offer' });
  const streams = [];
  const session = await connect({
    url: 'https://gw.test', user: '1001', fetch: gw.fetch,
    getUserMedia: async () => { streams.push(fakeStream()); return streams.at(-1); },
  });
  const incoming = [];
  session.addEventListener('incoming', (e) => incoming.push(e.detail));
  await until(() => incoming.length === 1);
  const call = incoming[0];
  await assert.rejects(call.progress({ sendAudio: true }), (e) => e.code === 'early_media_disabled');
  assert.equal(call.state, 'incoming');
  assert.equal(FakePeerConnection.last.closed, true, 'its peer connection is closed');
  assert.equal(streams[0].track.stopped, true, 'and its microphone released');
  await call.answer({ headers: { 'X-Agent-Id': '7' } });
  assert.equal(call.state, 'answered');
  const answers = gw.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/answer'));
  assert.deepEqual(answers.map((r) => r.body), [{ sdp: 'v=0 browser answer', headers: { 'X-Agent-Id': '7' } }]);
  await session.close();
});

test('a call the switch asks to be answered by itself is, after its delay, only when the page asked for it', async () => {
  const gw = new FakeGateway();
  gw.push({ type: 'call.incoming', call: 'c1', from: '2000', to: '1001', sdp: 'v=0 gateway offer', auto_answer: { after_s: 0 } });
  const session = await connect({
    url: 'https://gw.test', user: '1001', fetch: gw.fetch, getUserMedia: async () => fakeStream(), autoAnswer: true,
  });
  const incoming = [];
  session.addEventListener('incoming', (e) => incoming.push(e.detail));
  await until(() => incoming.length === 1);
  assert.equal(incoming[0].autoAnswer, 0);
  await until(() => incoming[0].state === 'answered');
  const answers = gw.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/answer'));
  assert.deepEqual(answers.map((r) => r.body), [{ sdp: 'v=0 browser answer' }]);
  await session.close();

  const quiet = new FakeGateway();
  quiet.push({ type: 'call.incoming', call: 'c1', from: '2000', to: '1001', sdp: 'v=0 gateway offer', auto_answer: { after_s: 0 } });
  const manual = await connect({ url: 'https://gw.test', user: '1001', fetch: quiet.fetch, getUserMedia: async () => fakeStream() });
  const rung = [];
  manual.addEventListener('incoming', (e) => rung.push(e.detail));
  await until(() => rung.length === 1);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(rung[0].state, 'incoming', 'without autoAnswer the page decides');
  assert.equal(quiet.requests.filter((r) => r.path.endsWith('/answer')).length, 0);
  await manual.close();
});

test('transfers: blind to a number, attended naming the other call; progress events; ended as transferred', async () => {
  const gw = new FakeGateway();
  gw.onCreateCall = () => gw.push({ type: 'call.answered', call: 'c1', sdp: 'v=0 gateway answer' });
  const session = await connect({ url: 'https://gw.test', user: '1001', fetch: gw.fetch, getUserMedia: async () => fakeStream() });
  const call = await session.call('5000');
  const seen = [];
  call.addEventListener('transfer', (e) => seen.push(e.detail));
  await until(() => call.state === 'answered');
  const last = () => gw.requests.filter((r) => r.path === '/v1/sessions/s1/calls/c1/transfer').at(-1);
  await call.transfer(5001);
  assert.deepEqual(last().body, { to: '5001' });
  await call.transfer({ replaces: 'c7' });
  assert.deepEqual(last().body, { replaces: 'c7' });
  await call.transfer(call);
  assert.deepEqual(last().body, { replaces: 'c1' }, 'a Call stands for its id');
  gw.push({ type: 'call.transfer', call: 'c1', state: 'failed', sip_status: 603 });
  gw.push({ type: 'call.transfer', call: 'c1', state: 'accepted' });
  gw.push({ type: 'call.ended', call: 'c1', reason: 'transferred' });
  await until(() => call.state === 'ended');
  assert.deepEqual(seen, [{ state: 'failed', sipStatus: 603 }, { state: 'accepted', sipStatus: undefined }]);
  await session.close();
});

test('the switch asking for a ringing call to be answered: an event, and an answer only with autoAnswer', async () => {
  for (const autoAnswer of [true, undefined]) {
    const gw = new FakeGateway();
    gw.push({ type: 'call.incoming', call: 'c1', from: '2000', to: '1001', sdp: 'v=0 gateway offer' });
    const session = await connect({
      url: 'https://gw.test', user: '1001', fetch: gw.fetch, getUserMedia: async () => fakeStream(), autoAnswer,
    });
    const incoming = [];
    session.addEventListener('incoming', (e) => incoming.push(e.detail));
    await until(() => incoming.length === 1);
    let requested = 0;
    incoming[0].addEventListener('answer_requested', () => requested++);
    gw.push({ type: 'call.answer_requested', call: 'c1' });
    await until(() => requested === 1);
    await new Promise((r) => setTimeout(r, 30));
    const answers = gw.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/answer')).length;
    assert.equal(answers, autoAnswer ? 1 : 0, `autoAnswer ${autoAnswer}`);
    await session.close();
  }
});
