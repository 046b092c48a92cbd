// Types for wsrelay.js, wsrelay's JavaScript client.

/** The subprotocol of the position-aware mode (docs/PROTOCOL.md). */
export declare const PROTOCOL: "wsrelay.v1";

/** Where a message stands: its room's epoch and its position in the room. */
export interface Position {
  epoch: string;
  position: number;
}

export interface Joined extends Position {
  /** Messages replayed before live ones on this join. */
  replay: number;
  /** On a reconnect: whether everything missed is coming; null on the first join. */
  recovered: boolean | null;
}

export type State = "connecting" | "open" | "closed";

/**
 * What the client uses of a WebSocket: the browser's, or the ws package's
 * in Node (whose event types differ from the DOM's, hence the loose ones).
 */
export interface WebSocketLike {
  binaryType: string;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: any): void;
  close(code?: number, reason?: string): void;
}

/** A constructor compatible with the browser's WebSocket (e.g. the ws package's). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Where a message handed to onMessage stands. */
export interface At extends Position {
  /**
   * Positions between this message and the one before that the relay did
   * not send (0 almost always): the client's own messages when echo is off,
   * or messages a `drop_oldest`/`drop_newest` slow-consumer policy dropped
   * for it. See docs/PROTOCOL.md.
   */
  skipped: number;
}

export interface Options {
  /** Sent as a `bearer.<token>` subprotocol (never in the URL). */
  token?: string;
  /** Resume from a stored place (e.g. saved across a page reload): the epoch and the position of the last message had. */
  epoch?: string;
  position?: number;
  /**
   * On the first connection only, without `epoch`: replay this many of the
   * room's latest messages, or those this young ("30s", "5m"). Anything else
   * throws a TypeError at once (the relay would refuse every attempt).
   */
  rewind?: number | string;
  /** Each message once, in order, with its position. Binary messages are ArrayBuffers. */
  onMessage?: (data: string | ArrayBuffer, at: At) => void;
  /** Each (re)join, once the relay says where the client stands. */
  onJoin?: (joined: Joined) => void;
  /** The relay could not replay what was missed: reload the application's state. */
  onReset?: (at: Position) => void;
  onState?: (state: State) => void;
  /** A protocol error, or maxAttempts failed attempts in a row; the client has closed for good. */
  onError?: (error: Error) => void;
  /** The relay closed the connection with 1000 (an operator closed the room's clients): the client has closed for good. */
  onClose?: (close: { code: number; reason: string }) => void;
  /**
   * Attempts in a row that may fail without a join before the client gives up
   * (onError); by default it never does. A browser cannot tell a refused
   * request (401, 404) from a network failure: both are close 1006.
   */
  maxAttempts?: number;
  /** Reconnect delays in ms: doubling from `initial` up to `max`, each with jitter (250 and 30 000 by default). */
  backoff?: { initial?: number; max?: number };
  /** The WebSocket to use; by default the global one (browsers, Node 22+). */
  WebSocket?: WebSocketConstructor;
}

export declare class RelayClient {
  constructor(url: string | URL, options?: Options);
  readonly url: string;
  /** The room's epoch, once joined. */
  readonly epoch: string | null;
  /** The position of the last message handed to onMessage (0: none). */
  readonly position: number;
  readonly state: State;
  /** Sends a message to the room; false if not connected. */
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): boolean;
  /** Drops the connection (or the wait for the next attempt) and connects again at once, resuming where it stood. */
  reconnect(): void;
  /** Closes for good. */
  close(): void;
}
