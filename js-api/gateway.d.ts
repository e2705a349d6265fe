// Types for gateway.js, the webrtc-sip-gateway browser API.

export interface ConnectOptions {
  /** Base URL of the gateway's signaling API, e.g. "https://gw.example.com:8443". */
  url: string;
  /** The SIP user this browser registers as. */
  user: string;
  /** SIP password for REGISTER (when the gateway registers users). */
  password?: string;
  /** Bearer token from the web application's backend (auth.mode = "token"). */
  token?: string;
  displayName?: string;
  /** Replaces globalThis.fetch (tests). */
  fetch?: typeof fetch;
  /** Extra RTCPeerConnection settings. */
  rtcConfig?: RTCConfiguration;
  /** Replaces navigator.mediaDevices.getUserMedia (tests, custom devices). */
  getUserMedia?: (constraints: MediaStreamConstraints) => Promise<MediaStream>;
  /** How long after both SDPs are set ICE may take to connect before a call
   * fires `media_failed` (default 8000; 0 = only when ICE reports `failed`). */
  mediaTimeoutMs?: number;
  /** How long a call's ICE may stay `disconnected` after it had connected
   * before js-api restarts ICE (default 2000; at `failed` it restarts at
   * once; -1 = never restart by itself). */
  reconnectAfterMs?: number;
  /** Answer by itself a call the switch asks to be answered without the agent
   * (`call.incoming`'s `auto_answer`), after the delay it names, with these
   * answer() options (true: the defaults). Off unless given. */
  autoAnswer?: boolean | CallOptions;
}

/** Codes: the API's error codes (origin_not_allowed, invalid_token, registration_failed,
 * sip_unreachable, bad_sdp, …) plus network_error, bad_argument, session_closed. */
export class GatewayError extends Error {
  readonly code: string;
  /** HTTP status, 0 when the gateway was not reached. */
  readonly status: number;
  readonly sipStatus?: number;
}

export interface GatewayEvent<T> extends Event {
  readonly detail: T;
}

/** Call data as SIP headers: name → one value or several. */
export type CallHeaders = Record<string, string | string[]>;

export interface CallOptions {
  audio?: boolean | MediaTrackConstraints;
  /** Send this stream instead of opening the microphone. */
  stream?: MediaStream;
  /** Headers for our INVITE (call()) or 200 (answer()), within `[sip]`'s rules (else 400 bad_header). */
  headers?: CallHeaders;
}

export interface ProgressOptions extends CallOptions {
  /** Let the caller hear the page before answer() (default false: silence until then). */
  sendAudio?: boolean;
}

export type EndReason =
  | 'hangup' | 'remote_hangup' | 'rejected' | 'cancelled' | 'media_timeout' | 'session_expired'
  | 'transferred' | 'error';

/** How a transfer goes: the far end took the REFER (`accepted`), the
 * target's provisional status (`trying`), or it failed (`failed`, with the
 * SIP status when one came). Success ends the call as `transferred`. */
export type TransferState = 'accepted' | 'trying' | 'failed';

export interface SessionEventMap {
  incoming: GatewayEvent<Call>;
  ended: GatewayEvent<{ reason: string }>;
  error: GatewayEvent<GatewayError>;
}

export declare function connect(options: ConnectOptions): Promise<Session>;

/** `address:port` of each UDP candidate in an SDP (the gateway's). */
export declare function gatewayAddresses(sdp: string | undefined | null): string[];

export declare class Session extends EventTarget {
  readonly id: string;
  readonly user: string;
  readonly expiresIn: number;
  readonly closed: boolean;
  readonly lastSeq: number;
  call(to: string, options?: CallOptions): Promise<Call>;
  close(): Promise<void>;
  addEventListener<K extends keyof SessionEventMap>(
    type: K, listener: (ev: SessionEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

export interface CallEventMap {
  ringing: GatewayEvent<{}>;
  early_media: GatewayEvent<{}>;
  answered: GatewayEvent<{}>;
  /** The media path broke after it worked (a network change): js-api is
   * restarting ICE, and tries again every 5 s. */
  reconnecting: GatewayEvent<{}>;
  /** The path is back after `reconnecting`; the call never stopped. */
  reconnected: GatewayEvent<{}>;
  held: GatewayEvent<{ by: 'local' | 'remote' }>;
  resumed: GatewayEvent<{ by: 'local' | 'remote' }>;
  dtmf: GatewayEvent<{ digit: string }>;
  transfer: GatewayEvent<{ state: TransferState; sipStatus?: number }>;
  /** The switch asks for this ringing call to be answered (NOTIFY talk);
   * with `connect({ autoAnswer })` js-api answers it itself. */
  answer_requested: GatewayEvent<{}>;
  track: GatewayEvent<MediaStream>;
  /** ICE found no path to the gateway: the call is up in signaling but no
   * audio can flow. `addresses` are the gateway's candidates (address:port);
   * `message` says so in words for the page to show. */
  media_failed: GatewayEvent<{ addresses: string[]; message: string }>;
  ended: GatewayEvent<{ reason: EndReason; sipStatus?: number }>;
}

export interface LegStats {
  packets_in: number; bytes_in: number; packets_out: number; bytes_out: number;
  control_packets: number;
  /** Transcoded calls: packets made up (in-band FEC or concealment) for ones lost on the way in. */
  made_up: number;
  /** Transcoded calls: our Opus toward the browser carries in-band FEC (the browser reported loss). */
  fec_out: boolean;
  dropped_foreign_source: number; dropped_auth_failed: number; dropped_replay: number;
  dropped_malformed: number; dropped_payload_type: number; dropped_not_ready: number;
  dropped_overload: number;
  lost: number; jitter_us: number;
  peer_fraction_lost: number; peer_cumulative_lost: number; peer_jitter_us: number;
}

export interface CallerIdentity {
  uri: string;
  display_name: string | null;
  /** True when the switch asserted it (P-Asserted-Identity), false when it is the From. */
  asserted: boolean;
}

export interface CallStats {
  gateway: {
    call: string; state: string; direction: string; to: string;
    /** The browser leg's codec as 'name/clock' ('' until the legs are joined). */
    codec: string;
    /** Each leg's codec, and whether the gateway transcodes between them (null until joined). */
    codecs: { web: string; sip: string; transcoded: boolean } | null;
    /** The far end's RTP address as its latest SDP gives it ('0.0.0.0:0' until a delayed offer's ACK). */
    sip_media: string | null;
    /** How each leg is protected ('' until the legs are joined). */
    keying: { web: 'dtls' | 'sdes' | ''; sip: 'srtp' | 'rtp' | '' };
    held: 'local' | 'remote' | null;
    /** The browser's address and the gateway's address it sends to, once ICE chose them; 'tcp' on ICE-TCP. */
    web_path: { browser: string; gateway: string | null; transport: 'udp' | 'tcp' } | null;
    stats: { web: LegStats; sip: LegStats };
  };
  browser: {
    packetsSent: number; packetsReceived: number; bytesSent: number; bytesReceived: number;
    audioLevel: number;
  };
}

export declare class Call extends EventTarget {
  readonly id: string;
  readonly direction: 'incoming' | 'outgoing';
  readonly from?: string;
  readonly to?: string;
  /** Incoming: the caller's display name (the From's), or null. */
  readonly displayName: string | null;
  /** Incoming: who the switch says calls — its P-Asserted-Identity, else the From. */
  readonly identity: CallerIdentity | null;
  /** Incoming: the switch's call data (X- headers, User-to-User…), name → values. */
  readonly headers: Record<string, string[]>;
  /** Incoming: seconds after which the switch asks for an answer without the agent, or null. */
  readonly autoAnswer: number | null;
  readonly state: 'incoming' | 'calling' | 'ringing' | 'early_media' | 'answered' | 'ended';
  readonly held: boolean;
  /** Replaced by a new one when the browser's DTLS failed with its path (see restartIce). */
  readonly pc: RTCPeerConnection | null;
  readonly localStream: MediaStream | null;
  readonly remoteStream: MediaStream | null;
  /** Answers an incoming call; after progress() its media is up already and options are not read. */
  answer(options?: CallOptions): Promise<void>;
  /** Early media before answering an incoming call (POST …/calls/{cid}/progress; needs
   * `[sip] early-media`): the caller gets a 183, the page hears the caller at once. */
  progress(options?: ProgressOptions): Promise<void>;
  reject(status?: number): Promise<void>;
  hangup(): Promise<void>;
  /** ICE restart: a new offer with new ICE credentials, the gateway's answer
   * applied (POST …/calls/{cid}/renegotiate); the call goes on. When the
   * browser's DTLS transport has failed, a new peer connection instead (a
   * new DTLS association on the same call). One runs at a time. */
  restartIce(): Promise<void>;
  sendDtmf(digits: string, durationMs?: number): Promise<void>;
  hold(): Promise<void>;
  resume(): Promise<void>;
  /** Blind transfer to a number or SIP URI, or attended: `{ replaces: otherCall }`
   * (POST …/calls/{cid}/transfer). */
  transfer(target: string | Call | { replaces: Call | string }): Promise<void>;
  stats(): Promise<CallStats>;
  addEventListener<K extends keyof CallEventMap>(
    type: K, listener: (ev: CallEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}
