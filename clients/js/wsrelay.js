// wsrelay's JavaScript client: joins a room, reconnects by itself with
// capped exponential backoff and jitter, resumes from the last position it
// saw, and hands each message to the application once, in order. When the
// relay can no longer replay what was missed, it says so (`onReset`), and
// the application reloads its state from its own backend.
//
// One ES module, no dependencies, no build step: it runs in browsers and in
// Node (give it the `ws` package's WebSocket). The wire protocol it speaks
// is docs/PROTOCOL.md's position-aware mode, subprotocol `wsrelay.v1`.

/** The subprotocol of the position-aware mode. */
export const PROTOCOL = "wsrelay.v1";

// A number of messages, or a duration in the units the relay reads
// (humantime's): "30s", "5m", "1h 30m", "500ms".
const UNIT = "(nsec|ns|usec|us|µs|msec|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d|weeks?|w|months?|M|years?|y)";
const REWIND = new RegExp(`^(\\d+|(\\d+\\s*${UNIT}\\s*)+)$`);

const CONNECTING = "connecting";
const OPEN = "open";
const CLOSED = "closed";

export class RelayClient {
  /**
   * Connects to `url` (a room's URL, e.g. wss://relay.example.com/rooms/chat)
   * at once. See wsrelay.d.ts for the options.
   */
  constructor(url, options = {}) {
    this.url = String(url);
    this.options = options;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("no WebSocket here: pass options.WebSocket (in Node, the ws package's)");
    }
    // The relay refuses anything else with 400, which a browser sees only
    // as a failed connection: say so here instead of retrying for ever.
    const rewind = options.rewind;
    if (rewind !== undefined && !REWIND.test(String(rewind).trim())) {
      throw new TypeError(`rewind must be a number of messages or a duration such as "30s", not ${JSON.stringify(rewind)}`);
    }
    this.backoff = { initial: 250, max: 30_000, ...options.backoff };
    /** The room's epoch, once joined (or as given, to resume from a stored position). */
    this.epoch = options.epoch ?? null;
    /** The position of the last message handed to the application (0: none). */
    this.position = options.position ?? 0;
    this.state = CLOSED;
    this.socket = null;
    this.attempts = 0;
    this.timer = null;
    this.closed = false;
    // Connecting starts once the constructor has returned, so callbacks
    // may use the client.
    queueMicrotask(() => this.#connect());
  }

  /** Sends a message to the room (a string, or binary data); false if not connected. */
  send(data) {
    if (this.state !== OPEN) return false;
    this.socket.send(data);
    return true;
  }

  /** Drops the connection (or the wait for the next attempt) and connects again at once, resuming where it stood. */
  reconnect() {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.#forget(socket);
    socket?.close();
    this.attempts = 0;
    this.#connect();
  }

  /** Closes for good: no more reconnecting. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.#forget(socket);
    socket?.close(1000);
    this.#setState(CLOSED);
  }

  #connect() {
    this.timer = null;
    // Closed before the first attempt (or a retry) came round.
    if (this.closed) return;
    const url = new URL(this.url);
    for (const p of ["since", "epoch", "rewind"]) url.searchParams.delete(p);
    if (this.epoch !== null) {
      url.searchParams.set("since", String(this.position));
      url.searchParams.set("epoch", this.epoch);
    } else if (this.options.rewind !== undefined) {
      url.searchParams.set("rewind", String(this.options.rewind));
    }
    const protocols = [PROTOCOL];
    if (this.options.token) protocols.push(`bearer.${this.options.token}`);
    this.#setState(CONNECTING);
    let socket;
    try {
      socket = new this.WebSocket(url.toString(), protocols);
    } catch (error) {
      this.#fail(error);
      return;
    }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    // The next frame is the message at this position (after an "@" frame).
    let next = null;
    let joined = false;
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      const data = event.data;
      if (next !== null) {
        const position = next;
        next = null;
        // A message it already has (never expected; cheap to be sure of).
        if (position <= this.position) return;
        const skipped = position - this.position - 1;
        this.position = position;
        this.options.onMessage?.(data, { position, epoch: this.epoch, skipped });
        return;
      }
      if (typeof data === "string" && data.startsWith("#")) {
        let notice;
        try {
          notice = JSON.parse(data.slice(1));
        } catch {
          this.#fail(new Error(`unreadable notice from the relay: ${data.slice(0, 40)}`));
          return;
        }
        if (notice.type === "joined") {
          joined = true;
          this.#joined(notice);
        }
        return;
      }
      if (typeof data === "string" && data.startsWith("@") && joined) {
        next = Number(data.slice(1));
        return;
      }
      this.#fail(new Error(`unexpected frame from the relay: ${String(data).slice(0, 40)}`));
    };
    socket.onclose = (event) => {
      // The relay closing with 1000 means it: an operator closed the
      // room's clients (its API). Anything else is worth another try.
      if (event.code === 1000 && joined) {
        this.#forget(socket);
        this.closed = true;
        this.#setState(CLOSED);
        this.options.onClose?.({ code: event.code, reason: event.reason });
        return;
      }
      this.#dropped(socket);
    };
    socket.onerror = () => {}; // onclose follows, with the code.
  }

  #joined(notice) {
    const resumed = this.epoch !== null;
    const recovered = notice.recovered !== false;
    this.attempts = 0;
    if (resumed && !recovered) {
      // What was missed is gone: the application reloads its state.
      this.epoch = notice.epoch;
      this.position = notice.position;
      this.options.onReset?.({ epoch: notice.epoch, position: notice.position });
    } else {
      this.epoch = notice.epoch;
      // A fresh join stands where the relay puts it; a resumed one where it was.
      if (!resumed) this.position = notice.position;
    }
    this.#setState(OPEN);
    this.options.onJoin?.({
      epoch: notice.epoch,
      position: notice.position,
      replay: notice.replay,
      recovered: resumed ? recovered : null,
    });
  }

  /** Stops listening to `socket`, if it is the current one. */
  #forget(socket) {
    if (!socket || socket !== this.socket) return;
    this.socket = null;
    socket.onmessage = socket.onclose = null;
  }

  /** `socket` ended: connect again after a backoff, unless closed for good. */
  #dropped(socket) {
    if (socket !== this.socket || this.closed) return;
    this.#forget(socket);
    const limit = this.options.maxAttempts ?? Infinity;
    if (this.attempts >= limit) {
      this.#fail(new Error(`gave up after ${this.attempts} attempts without joining`));
      return;
    }
    this.#setState(CONNECTING);
    // Full backoff doubling from `initial`, capped at `max`, with equal
    // jitter: a crowd that lost the same relay does not return at once.
    const ceiling = Math.min(this.backoff.max, this.backoff.initial * 2 ** Math.min(this.attempts, 30));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempts += 1;
    this.timer = setTimeout(() => this.#connect(), delay);
  }

  #fail(error) {
    this.options.onError?.(error);
    this.close();
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.options.onState?.(state);
  }
}
