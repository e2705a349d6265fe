// webrtc-sip-gateway browser API: an ES module with no dependencies.
// It speaks the gateway's signaling API (docs/api.md) and drives an
// RTCPeerConnection per call. Types: gateway.d.ts.

/** An error from the gateway (or from reaching it), with the API's code. */
export class GatewayError extends Error {
  constructor(code, message, { status = 0, sipStatus } = {}) {
    super(message);
    this.name = 'GatewayError';
    this.code = code;
    this.status = status;
    if (sipStatus !== undefined) this.sipStatus = sipStatus;
  }
}

const POLL_TIMEOUT_S = 25;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5000;

function trimSlash(url) {
  return String(url).replace(/\/+$/, '');
}

/** One request; JSON in and out; errors become GatewayError. */
async function request(fetchImpl, method, url, { body, bearer, signal } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let response;
  try {
    response = await fetchImpl(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: 'omit',
    });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    // A browser hides why a cross-origin request failed; the usual cause is
    // an origin missing from the gateway's domain-whitelist.
    throw new GatewayError(
      'network_error',
      `cannot reach the gateway at ${url} (network down, or this page's origin is not allowed): ${e && e.message ? e.message : e}`,
    );
  }
  if (response.status === 204) return {};
  let data = {};
  try {
    data = await response.json();
  } catch {
    data = {};
  }
  if (!response.ok) {
    const err = (data && data.error) || {};
    throw new GatewayError(err.code || 'http_error', err.message || `HTTP ${response.status}`, {
      status: response.status,
      sipStatus: err.sip_status,
    });
  }
  return data;
}

/**
 * Creates a session for `user` (the gateway registers it with the SIP
 * server) and starts receiving its events.
 */
export async function connect({ url, user, password, token, displayName, fetch: fetchImpl, rtcConfig, getUserMedia, mediaTimeoutMs, reconnectAfterMs, autoAnswer } = {}) {
  if (!url) throw new GatewayError('bad_argument', 'connect() needs the gateway url');
  if (!user) throw new GatewayError('bad_argument', 'connect() needs a user');
  const f = fetchImpl || globalThis.fetch.bind(globalThis);
  const base = trimSlash(url);
  const body = { user };
  if (password !== undefined) body.password = password;
  if (displayName !== undefined) body.display_name = displayName;
  const created = await request(f, 'POST', `${base}/v1/sessions`, { body, bearer: token });
  // Behind a load balancer the node that made the session names its own
  // URL: the session's requests go there (a redirect across origins would
  // lose the Authorization header).
  const session = new Session({
    base: created.node_url ? trimSlash(created.node_url) : base,
    fetch: f,
    id: created.session,
    secret: created.session_secret,
    user,
    expiresIn: created.expires_in,
    rtcConfig,
    getUserMedia,
    mediaTimeoutMs,
    reconnectAfterMs,
    autoAnswer,
  });
  session._startPolling();
  return session;
}

function emit(target, type, detail) {
  const event = new Event(type);
  event.detail = detail;
  target.dispatchEvent(event);
}

/** A browser user's session: places calls and receives them. */
export class Session extends EventTarget {
  constructor({ base, fetch, id, secret, user, expiresIn, rtcConfig, getUserMedia, mediaTimeoutMs, reconnectAfterMs, autoAnswer }) {
    super();
    this.id = id;
    this.user = user;
    this.expiresIn = expiresIn;
    this.closed = false;
    this._base = base;
    this._fetch = fetch;
    this._secret = secret;
    this._after = 0;
    this._calls = new Map();
    this._early = new Map();
    this._finished = new Set();
    this._abort = null;
    this._rtcConfig = rtcConfig || {};
    // A browser reaches a reachable gateway in well under a second.
    this._mediaTimeoutMs = mediaTimeoutMs === undefined ? 8000 : mediaTimeoutMs;
    this._reconnectAfterMs = reconnectAfterMs === undefined ? 2000 : reconnectAfterMs;
    // Calls the switch asks to be answered by themselves are, with these
    // answer() options (true: the defaults).
    this._autoAnswer = autoAnswer === true ? {} : autoAnswer || null;
    this._getUserMedia =
      getUserMedia || ((constraints) => navigator.mediaDevices.getUserMedia(constraints));
  }

  /** The last event sequence number handled (polls continue after it). */
  get lastSeq() {
    return this._after;
  }

  _url(path) {
    return `${this._base}/v1/sessions/${encodeURIComponent(this.id)}${path}`;
  }

  _request(method, path, body) {
    return request(this._fetch, method, this._url(path), { body, bearer: this._secret });
  }

  _newPeerConnection() {
    return new RTCPeerConnection({
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
      ...this._rtcConfig,
    });
  }

  /**
   * Calls `to` (a number or a sip: URI); resolves once the gateway took the
   * call. `headers` ({name: value or [values]}) go into the INVITE, within
   * the gateway's `[sip]` header rules.
   */
  async call(to, { audio = true, stream, headers } = {}) {
    if (this.closed) throw new GatewayError('session_closed', 'the session has ended');
    const ownStream = !stream;
    const local = stream || (await this._getUserMedia({ audio }));
    const pc = this._newPeerConnection();
    try {
      local.getAudioTracks().forEach((t) => pc.addTrack(t, local));
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const body = { to, sdp: pc.localDescription.sdp };
      if (headers) body.headers = headers;
      const { call: id } = await this._request('POST', '/calls', body);
      const call = new Call(this, { id, direction: 'outgoing', pc, localStream: local, ownStream, to });
      this._calls.set(id, call);
      // Events that overtook the response belong to this call; they are
      // replayed once the caller has had a chance to add its listeners,
      // and the events that come meanwhile wait behind them, so the call
      // sees them all in order (a ringing replayed after the answer would
      // leave an answered call looking unanswered).
      const early = this._early.get(id) || [];
      this._early.delete(id);
      if (early.length) {
        call._replay = early;
        setTimeout(async () => {
          while (call._replay.length) {
            const e = call._replay.shift();
            await call._handle(e).catch((err) => emit(this, 'error', err));
          }
          call._replay = null;
        }, 0);
      }
      return call;
    } catch (e) {
      pc.close();
      if (ownStream) local.getTracks().forEach((t) => t.stop());
      throw e;
    }
  }

  /** Ends the session: every call is hung up and the user unregistered. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    if (this._abort) this._abort.abort();
    try {
      await this._request('DELETE', '');
    } finally {
      for (const call of this._calls.values()) call._finish('hangup');
      this._calls.clear();
    }
  }

  async _startPolling() {
    let retry = RETRY_MIN_MS;
    while (!this.closed) {
      this._abort = new AbortController();
      let data;
      try {
        data = await request(
          this._fetch,
          'GET',
          this._url(`/events?after=${this._after}&timeout=${POLL_TIMEOUT_S}`),
          { bearer: this._secret, signal: this._abort.signal },
        );
        retry = RETRY_MIN_MS;
      } catch (e) {
        if (this.closed) return;
        if (e instanceof GatewayError && (e.status === 401 || e.status === 404)) {
          this._ended('gone');
          return;
        }
        // A lost poll loses nothing: the next one asks from the same seq.
        emit(this, 'error', e);
        await new Promise((r) => setTimeout(r, retry));
        retry = Math.min(retry * 2, RETRY_MAX_MS);
        continue;
      }
      for (const event of data.events || []) {
        if (event.seq <= this._after) continue;
        this._after = event.seq;
        try {
          await this._dispatch(event);
        } catch (e) {
          emit(this, 'error', e);
        }
      }
    }
  }

  _ended(reason) {
    if (this.closed) return;
    this.closed = true;
    for (const call of this._calls.values()) call._finish('hangup');
    this._calls.clear();
    emit(this, 'ended', { reason });
  }

  async _dispatch(event) {
    if (event.type === 'session.ended') {
      this._ended(event.reason);
      return;
    }
    if (event.type === 'call.incoming') {
      const call = new Call(this, {
        id: event.call,
        direction: 'incoming',
        pc: null,
        from: event.from,
        to: event.to,
        displayName: event.display_name,
        identity: event.identity,
        headers: event.headers,
        autoAnswer: event.auto_answer ? event.auto_answer.after_s : null,
        offer: event.sdp,
      });
      this._calls.set(event.call, call);
      emit(this, 'incoming', call);
      if (this._autoAnswer && call.autoAnswer !== null) {
        setTimeout(() => {
          if (call.state !== 'incoming') return;
          call.answer(this._autoAnswer).catch((e) => emit(this, 'error', e));
        }, call.autoAnswer * 1000);
      }
      return;
    }
    const call = this._calls.get(event.call);
    if (this._finished.has(event.call)) return;
    if (call && call._replay) {
      call._replay.push(event);
    } else if (call) {
      await call._handle(event);
    } else if (event.call) {
      const list = this._early.get(event.call) || [];
      list.push(event);
      this._early.set(event.call, list);
    }
  }
}

/** `address:port` of each UDP candidate in the gateway's SDP. */
export function gatewayAddresses(sdp) {
  if (!sdp) return [];
  const out = [];
  for (const line of sdp.split(/\r?\n/)) {
    const m = /^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ/i.exec(line);
    if (m) out.push(m[1].includes(':') ? `[${m[1]}]:${m[2]}` : `${m[1]}:${m[2]}`);
  }
  return out;
}

/** One call: its RTCPeerConnection and its signaling. */
export class Call extends EventTarget {
  constructor(session, { id, direction, pc, localStream, ownStream, from, to, displayName, identity, headers, autoAnswer, offer }) {
    super();
    this.id = id;
    this.direction = direction;
    this.from = from;
    this.to = to;
    /** Incoming: the caller's display name (the From's), or null. */
    this.displayName = displayName || null;
    /** Incoming: who the switch says calls ({uri, display_name, asserted}), or null. */
    this.identity = identity || null;
    /** Incoming: the switch's call data, header name → values ({} when none). */
    this.headers = headers || {};
    /** Incoming: the switch asks for an answer without the agent after this many seconds, or null. */
    this.autoAnswer = autoAnswer === undefined ? null : autoAnswer;
    this.state = direction === 'incoming' ? 'incoming' : 'calling';
    this.held = false;
    /** Events that overtook the call's creation, then the ones behind them, while they are replayed. */
    this._replay = null;
    this.pc = pc;
    this.localStream = localStream || null;
    this.remoteStream = null;
    this._ownStream = !!ownStream;
    this._session = session;
    this._offer = offer;
    this._remoteSet = false;
    if (pc) this._watchTracks();
  }

  _watchTracks() {
    const pc = this.pc;
    pc.ontrack = (e) => {
      this.remoteStream = e.streams[0] || new MediaStream([e.track]);
      emit(this, 'track', this.remoteStream);
    };
    pc.addEventListener('connectionstatechange', () => {
      // DTLS may fail after ICE is back (Firefox reports it a moment after
      // a restart that raced its giving up): no media until a new peer
      // connection, whatever ICE says.
      if (pc === this.pc && pc.connectionState === 'failed' && this._mediaUp && this._dtlsFailed()) {
        this._pathLost(0);
      }
    });
    pc.addEventListener('iceconnectionstatechange', () => {
      // A peer connection the call has replaced says nothing more.
      if (pc !== this.pc) return;
      const ice = pc.iceConnectionState;
      if (ice === 'connected' || ice === 'completed') {
        clearTimeout(this._restartTimer);
        this._restartTimer = null;
        if (this._mediaUp && this._dtlsFailed()) {
          // ICE came back on a peer connection whose DTLS failed meanwhile
          // (a restart that raced Firefox giving up): no media can flow on
          // it, so the call is not reconnected until a new one carries it.
          this._pathLost(0);
          return;
        }
        this._mediaUp = true;
        if (this._reconnecting) {
          this._reconnecting = false;
          emit(this, 'reconnected', {});
        }
      } else if (ice === 'failed' || ice === 'disconnected') {
        // A path that worked and broke (a network change): restart ICE;
        // one that never worked is reported as no media path.
        if (this._mediaUp) this._pathLost(ice === 'failed' ? 0 : this._session._reconnectAfterMs);
        else if (ice === 'failed') this._mediaFailed();
      }
    });
  }

  /** The media path broke: an ICE restart after `delayMs`, unless it comes back first. */
  _pathLost(delayMs) {
    if (this.state === 'ended' || this._restartTimer || this._session._reconnectAfterMs < 0) return;
    this._restartTimer = setTimeout(() => this._reconnect(), delayMs);
  }

  /** Restarts ICE, and again every 5 s until the path is back or the call ends. */
  async _reconnect() {
    this._restartTimer = null;
    const ice = this.pc && this.pc.iceConnectionState;
    const up = (ice === 'connected' || ice === 'completed') && !this._dtlsFailed();
    if (this.state === 'ended' || !this.pc || up) return;
    // A new peer connection still checking gets its time: restarting its
    // ICE before its first DTLS handshake is done left Firefox connected
    // without media in one run of five.
    const fresh = this._renewedAt && Date.now() - this._renewedAt < 15000;
    if (fresh && (ice === 'new' || ice === 'checking')) {
      this._restartTimer = setTimeout(() => this._reconnect(), 5000);
      return;
    }
    if (!this._reconnecting) {
      this._reconnecting = true;
      emit(this, 'reconnecting', {});
    }
    try {
      await this.restartIce();
    } catch (e) {
      // The network may be down still; the next try says more.
    }
    if (this.state !== 'ended' && this._reconnecting && !this._restartTimer) {
      this._restartTimer = setTimeout(() => this._reconnect(), 5000);
    }
  }

  /**
   * Restarts ICE (RFC 8445 §9): a new offer with new ICE credentials goes
   * to the gateway, whose answer is applied. The call, its SIP side and its
   * SRTP keys are unchanged. js-api does this by itself when the path
   * breaks; a page may call it on a network change it knows of.
   */
  async restartIce() {
    // One restart at a time: a second offer while the first awaits its
    // answer would have the answers applied to the wrong offers (new
    // credentials the gateway no longer holds). A call while one is under
    // way joins it.
    if (!this._iceRestart) {
      const restart = this._dtlsFailed() ? this._renewPeerConnection() : this._restartIceOnce();
      this._iceRestart = restart.finally(() => { this._iceRestart = null; });
    }
    return this._iceRestart;
  }

  /**
   * Whether the call's DTLS has failed for good: Firefox's does when ICE
   * fails for a while, and an ICE restart alone then brings ICE back
   * without media.
   */
  _dtlsFailed() {
    const transport = this.pc && this.pc.getSenders().map((s) => s.transport).find(Boolean);
    return !!transport && transport.state === 'failed';
  }

  /**
   * A new peer connection for the call, with the same microphone track: a
   * new certificate and new ICE credentials, offered to the gateway, which
   * starts a new DTLS association on the call (its SIP side goes on).
   */
  async _renewPeerConnection() {
    const old = this.pc;
    if (!old || this.state === 'ended') return;
    const pc = this._session._newPeerConnection();
    try {
      if (this.localStream) this.localStream.getAudioTracks().forEach((t) => pc.addTrack(t, this.localStream));
      await pc.setLocalDescription(await pc.createOffer());
      const { sdp } = await this._request('POST', '/renegotiate', { sdp: pc.localDescription.sdp });
      if (this.state === 'ended' || this.pc !== old) throw new Error('the call moved on');
      this.pc = pc;
      this._renewedAt = Date.now();
      this._watchTracks();
      old.close();
      await pc.setRemoteDescription({ type: 'answer', sdp });
    } catch (e) {
      if (this.pc !== pc) pc.close();
      throw e;
    }
  }

  async _restartIceOnce() {
    if (!this.pc || this.state === 'ended') return;
    const offer = await this.pc.createOffer({ iceRestart: true });
    await this.pc.setLocalDescription(offer);
    const { sdp } = await this._request('POST', '/renegotiate', { sdp: this.pc.localDescription.sdp });
    if (this.state === 'ended' || !this.pc) return;
    await this.pc.setRemoteDescription({ type: 'answer', sdp });
  }

  /** Both descriptions are set: ICE must reach the gateway soon after. */
  _watchMediaPath() {
    const ms = this._session._mediaTimeoutMs;
    if (!ms || this._mediaTimer) return;
    this._mediaTimer = setTimeout(() => {
      if (!this._mediaUp) this._mediaFailed();
    }, ms);
  }

  /** Tells the page, once, in words, that no media path was found. */
  _mediaFailed() {
    if (this._mediaUp || this._mediaReported || this.state === 'ended' || !this.pc) return;
    this._mediaReported = true;
    const addresses = gatewayAddresses(this.pc.remoteDescription && this.pc.remoteDescription.sdp);
    const where = addresses.length ? addresses.join(', ') : 'the address in its answer';
    emit(this, 'media_failed', {
      addresses,
      message: `no media path: the browser could not reach the gateway at ${where} — ` +
        'check [media] public-address and the firewall',
    });
  }

  async _setAnswer(sdp) {
    if (this._remoteSet || !sdp || !this.pc) return;
    this._remoteSet = true;
    await this.pc.setRemoteDescription({ type: 'answer', sdp });
    this._watchMediaPath();
  }

  async _handle(event) {
    switch (event.type) {
      case 'call.ringing':
        // Only a call still being placed rings.
        if (this.state !== 'calling') break;
        this.state = 'ringing';
        emit(this, 'ringing', {});
        break;
      case 'call.early_media':
        this.state = 'early_media';
        await this._setAnswer(event.sdp);
        emit(this, 'early_media', {});
        break;
      case 'call.answered':
        this.state = 'answered';
        await this._setAnswer(event.sdp);
        emit(this, 'answered', {});
        break;
      case 'call.held':
        this.held = true;
        emit(this, 'held', { by: event.by });
        break;
      case 'call.resumed':
        this.held = false;
        emit(this, 'resumed', { by: event.by });
        break;
      case 'call.dtmf':
        emit(this, 'dtmf', { digit: event.digit });
        break;
      case 'call.transfer':
        emit(this, 'transfer', { state: event.state, sipStatus: event.sip_status });
        break;
      case 'call.answer_requested':
        emit(this, 'answer_requested', {});
        // The switch asks for the ringing call to be answered (NOTIFY talk);
        // a page that connected with autoAnswer lets js-api do it.
        if (this._session._autoAnswer && this.state === 'incoming') {
          this.answer(this._session._autoAnswer).catch((e) => emit(this._session, 'error', e));
        }
        break;
      case 'call.ended':
        this._finish(event.reason, event.sip_status);
        break;
      default:
        break;
    }
  }

  _finish(reason, sipStatus) {
    if (this.state === 'ended') return;
    this.state = 'ended';
    clearTimeout(this._mediaTimer);
    clearTimeout(this._restartTimer);
    if (this.pc) this.pc.close();
    for (const { quiet } of this._earlyMuted || []) quiet.stop();
    this._earlyMuted = null;
    if (this._ownStream && this.localStream) this.localStream.getTracks().forEach((t) => t.stop());
    this._session._calls.delete(this.id);
    this._session._finished.add(this.id);
    emit(this, 'ended', { reason, sipStatus });
  }

  _request(method, path, body) {
    return this._session._request(method, `/calls/${encodeURIComponent(this.id)}${path}`, body);
  }

  /**
   * Answers an incoming call with the microphone (or `stream`). After
   * progress() the media is up already: the caller starts hearing the page.
   */
  async answer({ audio = true, stream, headers } = {}) {
    if (this.direction !== 'incoming') throw new GatewayError('invalid_call_state', 'only an incoming call can be answered');
    const extra = headers ? { headers } : {};
    if (this.state === 'early_media') {
      await this._request('POST', '/answer', extra);
      this._unmuteEarly();
      this.state = 'answered';
      return;
    }
    const sdp = await this._answerSdp({ audio, stream });
    await this._request('POST', '/answer', { sdp, ...extra });
    this.state = 'answered';
    this._watchMediaPath();
  }

  /**
   * Early media before answering an incoming call (needs `[sip] early-media`
   * on the gateway): the media path is set up now and the caller gets a 183,
   * so answer() later is heard at once. The page hears the caller from now
   * on; the caller hears silence from the page until answer(), unless
   * `sendAudio` is true.
   */
  async progress({ audio = true, stream, sendAudio = false } = {}) {
    if (this.direction !== 'incoming' || this.state !== 'incoming') {
      throw new GatewayError('invalid_call_state', 'only an incoming call not yet answered can start early media');
    }
    const sdp = await this._answerSdp({ audio, stream });
    if (!sendAudio) this._muteEarly();
    try {
      await this._request('POST', '/progress', { sdp });
    } catch (e) {
      // The call stays as it was (still incoming): answer() may follow.
      this._unmuteEarly();
      if (this.pc) this.pc.close();
      this.pc = null;
      if (this._ownStream && this.localStream) this.localStream.getTracks().forEach((t) => t.stop());
      this.localStream = null;
      throw e;
    }
    this.state = 'early_media';
    this._watchMediaPath();
  }

  /** Our answer to the gateway's offer, with the microphone (or `stream`) on a new peer connection. */
  async _answerSdp({ audio, stream }) {
    const local = stream || (await this._session._getUserMedia({ audio }));
    this._ownStream = !stream;
    this.localStream = local;
    this.pc = this._session._newPeerConnection();
    this._watchTracks();
    await this.pc.setRemoteDescription({ type: 'offer', sdp: this._offer });
    local.getAudioTracks().forEach((t) => this.pc.addTrack(t, local));
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    return this.pc.localDescription.sdp;
  }

  /** Until the answer the caller gets silence: each sender sends a disabled copy of its track (packets keep flowing, so the gateway's media timer stays quiet). */
  _muteEarly() {
    this._earlyMuted = [];
    for (const sender of this.pc.getSenders()) {
      if (!sender.track) continue;
      const quiet = sender.track.clone();
      quiet.enabled = false;
      this._earlyMuted.push({ sender, track: sender.track, quiet });
      sender.replaceTrack(quiet).catch(() => {});
    }
  }

  _unmuteEarly() {
    for (const { sender, track, quiet } of this._earlyMuted || []) {
      if (this.pc) sender.replaceTrack(track).catch(() => {});
      quiet.stop();
    }
    this._earlyMuted = null;
  }

  /** Refuses an incoming call (486 Busy Here unless `status` says otherwise). */
  async reject(status) {
    await this._request('POST', '/reject', status === undefined ? {} : { status });
  }

  /** Ends the call (CANCEL before an answer, BYE after). */
  async hangup() {
    if (this.state === 'ended') return;
    try {
      await this._request('DELETE', '');
    } catch (e) {
      if (!(e instanceof GatewayError && e.code === 'call_not_found')) throw e;
    }
    this._finish('hangup');
  }

  /** Sends DTMF digits (0-9, *, #, A-D) toward the far end. */
  async sendDtmf(digits, durationMs = 100) {
    await this._request('POST', '/dtmf', { digits: String(digits), duration_ms: durationMs });
  }

  async hold() {
    await this._request('POST', '/hold');
  }

  /**
   * Transfers the answered call: `transfer('5001')` asks the far end to call
   * 5001 instead (blind); `transfer({ replaces: otherCall })` joins the far
   * end with the far end of the page's other call (attended). Progress comes
   * as `transfer` events; success ends the call with reason `transferred`.
   */
  async transfer(target) {
    let body;
    if (target instanceof Call) {
      body = { replaces: target.id };
    } else if (target && typeof target === 'object' && 'replaces' in target) {
      const other = target.replaces;
      body = { replaces: other instanceof Call ? other.id : String(other) };
    } else {
      body = { to: String(target) };
    }
    await this._request('POST', '/transfer', body);
  }

  async resume() {
    await this._request('POST', '/resume');
  }

  /** The gateway's view of the call (state, codec, per-leg counters) and the browser's RTP counters. */
  async stats() {
    const gateway = await this._request('GET', '');
    const browser = { packetsSent: 0, packetsReceived: 0, bytesSent: 0, bytesReceived: 0, audioLevel: 0 };
    if (this.pc) {
      const report = await this.pc.getStats();
      report.forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'audio') {
          browser.packetsSent = s.packetsSent || 0;
          browser.bytesSent = s.bytesSent || 0;
        }
        if (s.type === 'inbound-rtp' && s.kind === 'audio') {
          browser.packetsReceived = s.packetsReceived || 0;
          browser.bytesReceived = s.bytesReceived || 0;
          browser.audioLevel = s.audioLevel || 0;
        }
      });
    }
    return { gateway, browser };
  }
}
