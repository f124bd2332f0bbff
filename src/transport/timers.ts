/**
 * A connection's two clocks: the handshake timeout (a client that has not
 * finished negotiating in time is dropped) and the idle timeout (a
 * negotiated connection with nothing in flight, no byte received and no
 * reply byte taken by the client for that long is closed — a client that
 * stopped reading its replies included). What happens when one fires is the machines'
 * decision: the session sends them `timer.handshake` / `timer.idle`.
 */
export interface TimerHooks {
  /** The handshake took longer than `handshakeTimeout` ms. */
  handshakeExpired(ms: number): void;
  /** Requests are with the backend: not idle. */
  working(): boolean;
  /** Replies are waiting to be written: not idle while the client takes them. */
  repliesWaiting(): boolean;
  /** Reply bytes the client's side has taken so far (undefined: the stream cannot say). */
  bytesTaken(): number | undefined;
  /** Nothing happened for `idleTimeout` ms; `unread`: with replies the client stopped taking. */
  idleExpired(ms: number, unread: boolean): void;
}

export class ConnectionTimers {
  private handshakeTimer: NodeJS.Timeout | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  /** When bytes last arrived or the last request in flight was answered (performance.now()). */
  private lastActivity = 0;
  /** bytesTaken() when the idle clock last looked. */
  private takenAtLastLook: number | undefined = -1;

  /** Milliseconds; 0 or absent: no limit. */
  constructor(
    private readonly limits: { readonly handshakeTimeout?: number; readonly idleTimeout?: number },
    private readonly hooks: TimerHooks,
  ) {}

  /** The connection is open: the handshake clock starts. */
  startHandshake(): void {
    const ms = this.limits.handshakeTimeout ?? 0;
    if (ms <= 0) return;
    this.handshakeTimer = setTimeout(() => {
      this.handshakeTimer = null;
      this.hooks.handshakeExpired(ms);
    }, ms);
    this.handshakeTimer.unref();
  }

  /**
   * Negotiated: the handshake clock stops, the idle clock starts. One timer, set for when the
   * connection would have been idle `idleTimeout` ms; when it fires early (something happened
   * meanwhile) it is set again for the rest, so an idle connection closes on time, not up to
   * twice the timeout late (a fixed interval checking a flag did that).
   */
  negotiated(): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    const ms = this.limits.idleTimeout ?? 0;
    if (ms <= 0) return;
    this.lastActivity = performance.now();
    this.armIdle(ms, ms);
  }

  private armIdle(ms: number, wait: number): void {
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      const now = performance.now();
      // Requests with the backend, or replies the client is taking: not idle.
      if (this.busy()) this.lastActivity = now;
      const idleFor = now - this.lastActivity;
      if (idleFor < ms) return this.armIdle(ms, Math.max(1, Math.ceil(ms - idleFor)));
      this.stop();
      this.hooks.idleExpired(ms, this.hooks.repliesWaiting());
    }, wait);
    this.idleTimer.unref();
  }

  /**
   * Requests with the backend, or replies waiting while the client took reply bytes since the last
   * look. Replies waiting and nothing taken since: the client stopped reading them, idle. A stream
   * that cannot say what was taken (-s over pipes) is busy while replies wait.
   */
  private busy(): boolean {
    if (this.hooks.working()) return true;
    if (!this.hooks.repliesWaiting()) return false;
    const taken = this.hooks.bytesTaken();
    if (taken === undefined) return true;
    const moved = taken !== this.takenAtLastLook;
    this.takenAtLastLook = taken;
    return moved;
  }

  /** Bytes arrived, or the last request in flight was answered: the idle clock starts again from now. */
  touch(): void {
    // Only while the idle clock runs (it is off by default): no clock read per chunk otherwise.
    if (this.idleTimer !== null) this.lastActivity = performance.now();
  }

  stop(): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.handshakeTimer = this.idleTimer = null;
  }
}
