/**
 * A connection's two clocks: the handshake timeout (a client that has not
 * finished negotiating in time is dropped) and the idle timeout (a
 * negotiated connection with nothing in flight and no byte received for
 * that long is closed). What happens when one fires is the machines'
 * decision: the session sends them `timer.handshake` / `timer.idle`.
 */
export interface TimerHooks {
  /** The handshake took longer than `handshakeTimeout` ms. */
  handshakeExpired(ms: number): void;
  /** Whether anything is still owed (requests in flight, replies unwritten): not idle then. */
  busy(): boolean;
  /** Nothing happened for `idleTimeout` ms. */
  idleExpired(ms: number): void;
}

export class ConnectionTimers {
  private handshakeTimer: NodeJS.Timeout | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  /** Bytes received since the idle timer last looked. */
  private activity = false;

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

  /** Negotiated: the handshake clock stops, the idle clock starts (checked every `idleTimeout` ms). */
  negotiated(): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    const ms = this.limits.idleTimeout ?? 0;
    if (ms <= 0) return;
    this.idleTimer = setInterval(() => {
      if (this.activity || this.hooks.busy()) {
        this.activity = false;
        return;
      }
      this.stop();
      this.hooks.idleExpired(ms);
    }, ms);
    this.idleTimer.unref();
  }

  /** Bytes arrived. */
  touch(): void {
    this.activity = true;
  }

  stop(): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.handshakeTimer = this.idleTimer = null;
  }
}
