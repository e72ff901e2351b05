import { KvWatchInclude, type KV, type KvEntry } from '@nats-io/kv';
import { z } from 'zod';

/** A partition's lease: who owns it (`''`: nobody). It lasts as long as its owner's membership. */
const Lease = z.object({ owner: z.string() });
/** A live supervisor: it renews this while it runs (the only periodic write). */
const Member = z.object({ expiresAt: z.number() });

/** What the lease manager tells its owner. */
export interface PartitionLeaseEvents {
  /** This supervisor holds partition `n` from now on. Resolve once it serves it; throw to give it back. */
  acquired(n: number): Promise<void>;
  /** This supervisor no longer holds partition `n` (given back, taken over, or its membership lapsed). */
  lost(n: number): Promise<void>;
  /** A failure worth a warning (the loop goes on). */
  warn(err: unknown, message: string): void;
}

/** Options of `PartitionLeases`. */
export interface PartitionLeaseOptions {
  /** This supervisor's agent id. */
  agentId: string;
  partitions: number;
  /** Membership length (default 5 s): a dead owner's partitions move after at most this long. */
  leaseMs?: number;
  /** Time on the NATS server's clock (shared by every supervisor). */
  now(): number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const leaseKey = (n: number) => `lease.${n}`;
const memberKey = (id: string) => `member.${id}`;

/**
 * Partition ownership among the live supervisors, through KV `reins_partitions`. Each
 * supervisor renews one membership key (`member.<id>`, an expiry on the server's clock) every
 * quarter lease; a partition's lease (`lease.<n>`) names its owner and lasts while the owner's
 * membership does. A pass takes free partitions (no owner, or an owner whose membership ended)
 * up to this supervisor's share (partitions ÷ live members, rounded up) and, while another
 * member holds less than the rounded-down share, gives back what it holds above that. Every
 * lease write is a compare-and-set on the key's revision, so two supervisors never both take a
 * partition. A supervisor whose own membership could not be renewed in time lets every
 * partition go; one that paused past its membership finds the lease taken — and meanwhile the
 * partition's audit chain refuses its appends (the fence: see `Partition`).
 */
export class PartitionLeases {
  readonly #kv: KV;
  readonly #o: Required<PartitionLeaseOptions>;
  readonly #events: PartitionLeaseEvents;
  /** Partitions held: the lease revision written. */
  readonly #held = new Map<number, number>();
  /** Every lease seen by the watch: its owner and KV revision. */
  readonly #leases = new Map<number, { owner: string; revision: number }>();
  /** Members seen by the watch: when their membership ends. */
  readonly #members = new Map<string, number>();
  readonly #stopWatches: (() => void)[] = [];
  #timer: NodeJS.Timeout | undefined;
  #pass: Promise<void> = Promise.resolve();
  #stopped = false;
  /** When this supervisor's membership, as last renewed, ends (its own clock). */
  #memberUntil = 0;

  constructor(kv: KV, options: PartitionLeaseOptions, events: PartitionLeaseEvents) {
    this.#kv = kv;
    this.#o = { leaseMs: 5_000, ...options };
    this.#events = events;
  }

  /** Partitions this supervisor holds now. */
  get held(): readonly number[] {
    return [...this.#held.keys()];
  }

  /** Runs a first pass (so a lone supervisor serves every partition when it resolves), then one per quarter lease. */
  async start(): Promise<void> {
    await this.#watch('lease.>');
    await this.#watch('member.>');
    // The watches report changes from now on; what is there already is read once, so the first
    // pass knows every lease and member (a live owner is never mistaken for a dead one).
    for (const filter of ['lease.>', 'member.>']) {
      for await (const key of await this.#kv.keys(filter)) {
        const e = await this.#kv.get(key);
        if (e) this.#seen(e, true);
      }
    }
    this.#pass = this.#tick();
    await this.#pass;
    this.#schedule();
  }

  /** Gives every partition back (the next owner need not wait for the membership to end). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#pass;
    for (const stop of this.#stopWatches) stop();
    for (const n of [...this.#held.keys()]) await this.#giveBack(n);
    await this.#kv.delete(memberKey(this.#o.agentId)).catch(() => undefined);
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#pass = this.#tick().finally(() => this.#schedule());
    }, this.#o.leaseMs / 4);
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    const sent = Date.now();
    try {
      const now = this.#o.now();
      await this.#kv.put(
        memberKey(this.#o.agentId),
        enc.encode(JSON.stringify({ expiresAt: now + this.#o.leaseMs })),
      );
      this.#memberUntil = sent + this.#o.leaseMs;
      this.#members.set(this.#o.agentId, now + this.#o.leaseMs);
      await this.#balance(now);
    } catch (err) {
      this.#events.warn(err, 'partition lease pass failed');
      // Not renewed: once the membership may have ended, others may take the partitions over.
      // Stop serving them a little before (a quarter lease of margin for clock rates).
      if (Date.now() > this.#memberUntil - this.#o.leaseMs / 4) {
        for (const n of [...this.#held.keys()]) {
          this.#held.delete(n);
          await this.#events.lost(n);
        }
      }
    }
  }

  /** Whether the lease of `n`, as last seen, is free at `now`. */
  #free(n: number, now: number): boolean {
    const l = this.#leases.get(n);
    if (!l || l.owner === '') return true;
    // Ours but not held: a lease of an earlier process with this agent id (restarted).
    if (l.owner === this.#o.agentId) return !this.#held.has(n);
    const until = this.#members.get(l.owner);
    return until === undefined || until <= now;
  }

  async #balance(now: number): Promise<void> {
    const members = [...this.#members].filter(([, until]) => until > now).map(([id]) => id);
    const count = new Map<string, number>();
    for (const [n, l] of this.#leases)
      if (!this.#free(n, now)) count.set(l.owner, (count.get(l.owner) ?? 0) + 1);
    const share = Math.ceil(this.#o.partitions / members.length);
    const floor = Math.floor(this.#o.partitions / members.length);
    // Free partitions, starting at a place of its own so peers rarely collide.
    const start = hashOf(this.#o.agentId) % this.#o.partitions;
    for (let i = 0; i < this.#o.partitions && this.#held.size < share; i++) {
      const n = (start + i) % this.#o.partitions;
      if (!this.#held.has(n) && this.#free(n, now)) await this.#take(n);
    }
    // Leases that still name this supervisor but that it does not serve (dropped when its
    // membership could not be renewed, or left by an earlier process with its id, beyond its
    // share): others see a live owner and would never take them — free them.
    for (const [n, l] of [...this.#leases]) {
      if (l.owner !== this.#o.agentId || this.#held.has(n)) continue;
      await this.#kv
        .update(leaseKey(n), enc.encode(JSON.stringify({ owner: '' })), l.revision)
        .catch(() => undefined);
    }
    // Another member short of the rounded-down share: give back what is above it.
    const short = members.some((m) => m !== this.#o.agentId && (count.get(m) ?? 0) < floor);
    if (!short) return;
    for (const n of [...this.#held.keys()].slice(floor)) await this.#giveBack(n);
  }

  async #take(n: number): Promise<void> {
    const seen = this.#leases.get(n);
    let revision: number;
    try {
      const value = enc.encode(JSON.stringify({ owner: this.#o.agentId }));
      revision = seen
        ? await this.#kv.update(leaseKey(n), value, seen.revision)
        : await this.#kv.create(leaseKey(n), value);
    } catch {
      return; // another supervisor was first (the watch will show it)
    }
    this.#held.set(n, revision);
    this.#leases.set(n, { owner: this.#o.agentId, revision });
    try {
      await this.#events.acquired(n);
    } catch (err) {
      this.#events.warn(err, `partition ${n}: cannot take it over; giving it back`);
      await this.#giveBack(n);
    }
  }

  async #giveBack(n: number): Promise<void> {
    const revision = this.#held.get(n);
    if (revision === undefined) return;
    this.#held.delete(n);
    await this.#events.lost(n);
    await this.#kv
      .update(leaseKey(n), enc.encode(JSON.stringify({ owner: '' })), revision)
      .catch(() => undefined);
  }

  /** Keeps `#leases` or `#members` current from a KV watch (one filter: nats-server 2.9). */
  async #watch(filter: 'lease.>' | 'member.>'): Promise<void> {
    const it = await this.#kv.watch({ key: filter, include: KvWatchInclude.UpdatesOnly });
    this.#stopWatches.push(() => it.stop());
    void (async () => {
      for await (const e of it) this.#seen(e);
    })().catch((err: unknown) => this.#events.warn(err, 'partition lease watch ended'));
  }

  /** A lease or member as the watch (or, with `initial`, the first read) saw it. */
  #seen(e: KvEntry, initial = false): void {
    const value = e.operation === 'PUT' ? parseJson(e.value) : undefined;
    if (e.key.startsWith('lease.')) {
      const n = Number(e.key.slice('lease.'.length));
      if (!Number.isInteger(n)) return;
      if ((this.#leases.get(n)?.revision ?? 0) >= e.revision) return; // the watch saw newer
      const lease = Lease.safeParse(value);
      const owner = lease.success ? lease.data.owner : '';
      this.#leases.set(n, { owner, revision: e.revision });
      const mine = this.#held.get(n);
      // Taken by another supervisor after our write: we paused past our membership.
      if (mine !== undefined && owner !== this.#o.agentId && e.revision > mine) {
        this.#held.delete(n);
        void this.#events.lost(n);
      }
    } else {
      const id = e.key.slice('member.'.length);
      if (initial && this.#members.has(id)) return; // the watch saw newer
      const m = Member.safeParse(value);
      if (m.success) this.#members.set(id, m.data.expiresAt);
      else this.#members.delete(id);
    }
  }
}

function parseJson(b: Uint8Array): unknown {
  try {
    return JSON.parse(dec.decode(b));
  } catch {
    return undefined;
  }
}

function hashOf(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}
