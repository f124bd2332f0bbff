/**
 * The session's view of its machines: the connection actor and its two
 * children, the effects they emit routed to the session, events sent to
 * whichever is active, and their states read where a decision depends on
 * them (the session keeps no copy of any state).
 */
import type { AnyActorRef } from 'xstate';
import type { HandshakeEmitted, TransmissionEmitted } from '../machines/types.js';
import type { ConnectionActor } from './session-options.js';

export interface MachineListeners {
  handshake(e: HandshakeEmitted): void;
  /** The handshake machine finished (its last replies may go out at once). */
  handshakeDone(): void;
  transmission(e: TransmissionEmitted): void;
  /** Sending an event threw: a machine error. */
  failed(message: string): void;
}

export class ConnectionMachines {
  handshake: AnyActorRef | null = null;
  transmission: AnyActorRef | null = null;

  constructor(
    readonly actor: ConnectionActor,
    private readonly listeners: MachineListeners,
  ) {}

  /** Listen to the children that exist now (the handshake from the start, the transmission once negotiated). */
  attachChildren(): void {
    const children = this.actor.getSnapshot().children as Record<string, AnyActorRef | undefined>;
    const hs = children.handshake;
    if (hs && hs !== this.handshake) {
      this.handshake = hs;
      hs.on('*', (e: HandshakeEmitted) => this.listeners.handshake(e));
      hs.subscribe({ complete: () => this.listeners.handshakeDone(), error: () => {} });
    }
    const tx = children.transmission;
    if (tx && tx !== this.transmission) {
      this.transmission = tx;
      tx.on('*', (e: TransmissionEmitted) => this.listeners.transmission(e));
    }
  }

  /** A wire or timer event for the active child (none once the connection is over). */
  send(event: { type: string; [k: string]: unknown }): void {
    const target = this.transmission ?? this.handshake;
    if (!target || this.closed) return;
    // A machine that reached its final state takes no more events (xstate warns on each one).
    if (target.getSnapshot().status !== 'active') return;
    try {
      target.send(event as never);
    } catch (err) {
      this.listeners.failed(`machine error on ${event.type}: ${String(err)}`);
    }
  }

  /** The connection machine finished (or was stopped): nothing more is done for this connection. */
  get closed(): boolean {
    return this.actor.getSnapshot().status !== 'active';
  }

  /** The connection machine's reading region is paused (a budget is used up). */
  get readingPaused(): boolean {
    return (this.actor.getSnapshot().value as { reading?: string }).reading === 'paused';
  }

  /** The handshake machine is performing STARTTLS: the raw socket belongs to the TLS upgrade. */
  get upgrading(): boolean {
    return this.transmission === null && this.handshake !== null && this.handshake.getSnapshot().matches('upgradingTls');
  }

  /** The handshake machine waits for the server to resolve an export or the list: no option is read meanwhile. */
  get resolving(): boolean {
    return this.transmission === null && this.handshake !== null && this.handshake.getSnapshot().matches('resolving');
  }

  /** TLS is up (STARTTLS succeeded, or the connection was TLS from the start): the handshake machine's record. */
  get tls(): boolean {
    return (this.handshake?.getSnapshot().context as { tls?: boolean } | undefined)?.tls === true;
  }

  /** The transmission machine is draining (DISC, EOF, shutdown or idle): new requests are refused. */
  get draining(): boolean {
    // Asked on every completion that empties the connection (each request, with a synchronous backend):
    // the transmission machine's top-level states are atomic, so its value is the state's name.
    return this.transmission !== null && this.transmission.getSnapshot().value === 'draining';
  }
}
