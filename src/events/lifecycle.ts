import { BerthError, errorMessage } from '../errors.js';
import type { ContainerRecord } from '../container/types.js';
import type { SandboxRecord } from '../sandbox/types.js';

// Lifecycle events of pods and containers, derived from the record changes the two services' stores report (the one
// place a state changes), and fanned out to subscribers (the CRI event stream kubelet's evented PLEG reads) and to
// in-process listeners (metrics).
//
// Kinds follow the CRI: a container is CREATED when its record is written, STARTED on CREATED -> RUNNING, STOPPED
// when it becomes EXITED (whoever noticed: StopContainer, the exit watcher, reconciliation), DELETED when its record
// is removed. A pod (an id of its own, as containerd and CRI-O report sandboxes) is CREATED then STARTED when its
// record is written READY, STOPPED on READY -> NOTREADY, DELETED when removed.
//
// Each event carries the pod's record and its containers' records as they were at that moment: frozen snapshots, so
// a subscriber that reads it later still sees that moment (kubelet caches the pod status from the event itself).

export type LifecycleKind = 'CREATED' | 'STARTED' | 'STOPPED' | 'DELETED';

export interface LifecycleEvent {
  kind: LifecycleKind;
  subject: 'container' | 'pod';
  /** The container's id, or the pod's for a pod's own events. */
  id: string;
  podId: string;
  /** Unix nanoseconds, strictly increasing over the events of this process. */
  atNs: bigint;
  /** The pod as it was then; absent when it was already gone (a container outliving its pod record). */
  pod?: Readonly<SandboxRecord>;
  /** The pod's containers then (a deleted container no longer among them). */
  containers: Readonly<ContainerRecord>[];
}

/** A change as in-process listeners get it: no snapshot of the pod's containers, so nothing is built for them. */
export interface Transition {
  kind: LifecycleKind;
  subject: 'container' | 'pod';
  id: string;
  podId: string;
  atNs: bigint;
  /** The record after the change (before it, for DELETED). */
  record: Readonly<ContainerRecord> | Readonly<SandboxRecord>;
}

/** Where the hub reads the pod and its containers when an event needs them. */
export interface LifecycleView {
  pod(id: string): Readonly<SandboxRecord> | undefined;
  containersOf(podId: string): Readonly<ContainerRecord>[];
}

/** How many events a subscriber may fall behind before its stream is ended (kubelet then relists). */
export const DEFAULT_SUBSCRIBER_BUFFER = 1024;

export class EventSubscription {
  private queue: LifecycleEvent[] = [];
  private wake?: () => void;
  private failure?: BerthError;
  private ended = false;
  private readonly endedSignal: Promise<void>;
  private signalEnded!: () => void;

  constructor(
    private readonly limit: number,
    private readonly detach: (sub: EventSubscription) => void,
  ) {
    this.endedSignal = new Promise((resolve) => (this.signalEnded = resolve));
  }

  /** Resolves once the subscription has ended (closed, or dropped for falling behind). */
  get whenEnded(): Promise<void> {
    return this.endedSignal;
  }

  get pending(): number {
    return this.queue.length;
  }

  /** Called by the hub; never blocks: a subscriber that has `limit` events unread is dropped, and learns so. */
  push(event: LifecycleEvent): void {
    if (this.ended) return;
    if (this.queue.length >= this.limit) {
      this.failure = new BerthError(
        'resource_exhausted',
        `event subscriber fell ${this.limit} events behind and was dropped: relist, then subscribe again`,
      );
      this.queue = [];
      this.close();
      return;
    }
    this.queue.push(event);
    this.wakeReader();
  }

  /** Ends the subscription with an error its reader gets (after nothing else: what it had queued is dropped). */
  fail(reason: string): void {
    if (this.ended) return;
    this.failure = new BerthError('internal', `${reason}: relist, then subscribe again`);
    this.queue = [];
    this.close();
  }

  /** The next event; undefined once closed; throws the overflow error of a subscriber that fell behind. */
  async next(): Promise<LifecycleEvent | undefined> {
    for (;;) {
      if (this.failure) throw this.failure;
      const event = this.queue.shift();
      if (event) return event;
      if (this.ended) return undefined;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /** Idempotent; the hub forgets the subscription at once. */
  close(): void {
    if (this.ended) return;
    this.ended = true;
    this.detach(this);
    this.signalEnded();
    this.wakeReader();
  }

  private wakeReader(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

export class LifecycleEvents {
  private readonly subscribers = new Set<EventSubscription>();
  private readonly listeners: ((t: Transition) => void)[] = [];
  private lastNs = 0n;
  private view?: LifecycleView;
  private closed = false;

  constructor(private readonly onListenerError: (err: unknown) => void = () => undefined) {}

  /** Given once both services exist (they are made after the hub, which their stores report to). */
  attach(view: LifecycleView): void {
    this.view = view;
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  subscribe(limit = DEFAULT_SUBSCRIBER_BUFFER): EventSubscription {
    const sub = new EventSubscription(limit, (s) => this.subscribers.delete(s));
    if (this.closed) sub.close();
    else this.subscribers.add(sub);
    return sub;
  }

  /** Ends every subscription, and any made later (shutdown: open streams would hold the server's drain). */
  close(): void {
    this.closed = true;
    for (const sub of [...this.subscribers]) sub.close();
  }

  /** In-process listeners hear every transition synchronously; they must be cheap. */
  listen(listener: (t: Transition) => void): void {
    this.listeners.push(listener);
  }

  readonly containerChanged = (before: Readonly<ContainerRecord> | undefined, after: Readonly<ContainerRecord> | undefined): void => {
    const record = after ?? before;
    if (!record) return;
    const kind = containerKind(before, after);
    if (kind) this.emit(kind, 'container', record.id, record.sandboxId, record);
  };

  readonly sandboxChanged = (before: Readonly<SandboxRecord> | undefined, after: Readonly<SandboxRecord> | undefined): void => {
    const record = after ?? before;
    if (!record) return;
    for (const kind of podKinds(before, after)) this.emit(kind, 'pod', record.id, record.id, record);
  };

  private emit(kind: LifecycleKind, subject: 'container' | 'pod', id: string, podId: string, record: Transition['record']): void {
    const atNs = this.stamp();
    for (const listener of this.listeners) {
      try {
        listener({ kind, subject, id, podId, atNs, record });
      } catch (err) {
        this.onListenerError(err);
      }
    }
    // Nobody streaming: nothing to build (the hot path pays for events only while kubelet listens).
    if (this.subscribers.size === 0) return;
    let event: LifecycleEvent;
    try {
      const pod = subject === 'pod' ? (record as Readonly<SandboxRecord>) : this.view?.pod(podId);
      event = { kind, subject, id, podId, atNs, pod, containers: this.view?.containersOf(podId) ?? [] };
    } catch (err) {
      // The change is made by now: its RPC must not fail for an event. Subscribers lose this one; so they relist.
      this.onListenerError(err);
      for (const sub of [...this.subscribers]) sub.fail(`an event could not be built (${errorMessage(err)})`);
      return;
    }
    for (const sub of [...this.subscribers]) sub.push(event);
  }

  /**
   * The events' clock, also for PodSandboxStatus's timestamp: kubelet keeps a pod's cached status only when what
   * arrives is newer than it, so two readings never share a time and a status read after an event is later than it.
   */
  stamp(): bigint {
    const wall = BigInt(Date.now()) * 1_000_000n;
    this.lastNs = wall > this.lastNs ? wall : this.lastNs + 1n;
    return this.lastNs;
  }
}

function containerKind(before: Readonly<ContainerRecord> | undefined, after: Readonly<ContainerRecord> | undefined): LifecycleKind | undefined {
  if (!after) return 'DELETED';
  if (!before) return after.state === 'EXITED' ? 'STOPPED' : after.state === 'RUNNING' ? 'STARTED' : 'CREATED';
  if (before.state === after.state) return undefined;
  if (after.state === 'RUNNING') return 'STARTED';
  if (after.state === 'EXITED') return 'STOPPED';
  return undefined;
}

function podKinds(before: Readonly<SandboxRecord> | undefined, after: Readonly<SandboxRecord> | undefined): LifecycleKind[] {
  if (!after) return ['DELETED'];
  // A pod's record is written READY when its namespaces and network exist: it is created and started at once.
  if (!before) return after.state === 'READY' ? ['CREATED', 'STARTED'] : ['CREATED'];
  if (before.state === 'READY' && after.state === 'NOTREADY') return ['STOPPED'];
  return [];
}
