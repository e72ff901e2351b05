import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { z } from 'zod';
import {
  ConflictError,
  ProtocolError,
  UnavailableError,
  type AuditEntry,
  type GrantSigner,
} from '@reins/protocol';
import {
  AuditWriter,
  PARTITION_ACQUIRE_ACTION,
  readAuditMessages,
  type AuditInput,
  type AuditLogger,
} from './audit-log.js';
import type { BreakerConfig } from './breakers.js';
import { isTerminal, type RunStore } from './run-store.js';
import { RunState, applyRecord, newRunState, type Carried } from './run-state.js';

/** What a partition needs of its supervisor. */
export interface PartitionDeps {
  nc: NatsConnection;
  prefix: string;
  signer: GrantSigner;
  /** Keys of the supervisors that may have owned the partition before (empty: any). */
  trusted: readonly string[];
  agentId: string;
  logger: AuditLogger & { error(obj: object, msg: string): void };
  /** KV `reins_partitions`: checkpoints (`state.<n>`) beside the leases. */
  kv: KV;
  runs: RunStore;
  breakers: BreakerConfig;
  /** The partition of a run (`Subjects.partitionOf`). */
  partitionOf: (runId: string) => number;
}

/** A partition's state as of a stream sequence of its chain: where a new owner starts. */
const Checkpoint = z.object({
  streamSeq: z.number().int().nonnegative(),
  at: z.number(),
  runs: z.array(RunState),
});

/** How long an ended run's state stays (late settles still count) once it holds nothing. */
const ENDED_RETAIN_MS = 60_000;
/** A settle or observation not on record yet rides on the run's next record, or this late. */
const CARRY_MS = 1_000;

/** The audit writer id of partition `n`'s chain. */
export const partitionWriter = (n: number) => `part-${n}`;

const empty = (): Carried => ({ settles: [], observations: [] });

/**
 * One run partition, as its owner holds it: the state of its runs (run-scope ledger and breaker
 * state) in memory, and its audit chain (`audit.part-<n>`), to which every decision about its
 * runs is appended — once, before the decision takes effect — with what is needed to rebuild
 * that state (`applyRecord`). A settle or an observation, which needs no answer of its own on
 * record, is applied at once and carried by the run's next record (or a carrier record within a
 * second); lost with a crashed owner, a settle's reservation is charged in full when its lease
 * ends, as a lost settle always was.
 *
 * Two copies of the state are kept: `live`, which decisions read and change, and `durable`,
 * which only stored records change (the same `applyRecord` a successor replays), so a
 * checkpoint is exactly the replay of the chain up to its stream sequence.
 *
 * Taking a partition over appends `partition.acquire`: the chain's appends are compare-and-set
 * on the subject's last sequence, so an earlier owner that still believes it owns the
 * partition (paused past its lease) has its next append refused — it grants nothing more
 * (`lost` turns true and every call throws `UnavailableError` with `partitionMoved`).
 */
export class Partition {
  readonly n: number;
  readonly #d: PartitionDeps;
  readonly #live = new Map<string, RunState>();
  readonly #durable = new Map<string, RunState>();
  readonly #carried = new Map<string, { c: Carried; since: number }>();
  #writer!: AuditWriter;
  /** Stream sequence the durable copy reflects. */
  #durableSeq = 0;
  #checkpointedSeq = 0;
  #lost = false;

  private constructor(n: number, deps: PartitionDeps) {
    this.n = n;
    this.#d = deps;
  }

  /**
   * Takes partition `n` over: opens its chain, loads the last checkpoint, replays the records
   * after it, and appends `partition.acquire` (the fence).
   */
  static async open(n: number, deps: PartitionDeps): Promise<Partition> {
    const p = new Partition(n, deps);
    p.#writer = await AuditWriter.open(deps.nc, {
      writerId: partitionWriter(n),
      prefix: deps.prefix,
      signer: deps.signer,
      logger: deps.logger,
      shared: { trusted: deps.trusted },
      onStored: (entries, streamSeq) => p.#stored(entries, streamSeq),
    });
    const cp = await deps.kv.get(`state.${n}`).catch(() => null);
    const parsed = cp?.operation === 'PUT' ? Checkpoint.safeParse(parseJson(cp.value)) : undefined;
    let from = 0;
    if (parsed?.success) {
      for (const s of parsed.data.runs) p.#durable.set(s.runId, s);
      from = parsed.data.streamSeq;
    }
    for await (const m of readAuditMessages(deps.nc, {
      writer: partitionWriter(n),
      prefix: deps.prefix,
      afterStreamSeq: from,
    })) {
      for (const e of m.batch?.entries ?? []) await p.#replay(e);
      from = m.streamSeq;
    }
    p.#durableSeq = from;
    p.#checkpointedSeq = parsed?.success ? parsed.data.streamSeq : 0;
    for (const [id, s] of p.#durable) p.#live.set(id, structuredClone(s));
    await p.record({ action: PARTITION_ACQUIRE_ACTION, details: { owner: deps.agentId } });
    return p;
  }

  /** True once another supervisor took the partition over (or it was given back). */
  get lost(): boolean {
    return this.#lost;
  }

  /** Run ids with state here (live and recently ended). */
  get runIds(): string[] {
    return [...this.#live.keys()];
  }

  /** Stops serving: appends nothing more. */
  close(): void {
    this.#lost = true;
  }

  /** The state of a run, if this partition holds it. */
  peek(runId: string): RunState | undefined {
    return this.#live.get(runId);
  }

  /**
   * The state of a run of this partition, created from its run record the first time (a new
   * run: nothing spent). Undefined for a run with no record.
   */
  async state(runId: string): Promise<RunState | undefined> {
    this.#assertOwned();
    // A run of another partition has its state with that partition's owner: deciding on it
    // here would spend its budget twice.
    if (this.#d.partitionOf(runId) !== this.n) {
      throw new ProtocolError(`run ${runId} is not in partition ${this.n}`, {
        details: { runId, partition: this.n },
      });
    }
    const known = this.#live.get(runId);
    if (known) return known;
    const rec = await this.#d.runs.get(runId);
    if (!rec) return undefined;
    // Another request may have created it while the record was read.
    const again = this.#live.get(runId);
    if (again) return again;
    const s = newRunState(rec);
    this.#live.set(runId, s);
    return s;
  }

  /**
   * Appends a decision about a run (with what the run carries) and resolves once it is
   * stored. Throws `UnavailableError` (retryable; `partitionMoved` when another supervisor owns
   * the partition now) when it is not: then the decision must not take effect.
   */
  async record(
    input: Omit<AuditInput, 'actor'> & { actor?: string | undefined },
  ): Promise<AuditEntry> {
    this.#assertOwned();
    const carried = input.runId !== undefined ? this.#takeCarried(input.runId) : undefined;
    const details = carried ? { ...input.details, carried } : input.details;
    try {
      return await this.#writer.append({
        ...input,
        actor: input.actor ?? this.#d.agentId,
        ...(details !== undefined ? { details } : {}),
      });
    } catch (err) {
      if (carried && input.runId !== undefined) this.#putBack(input.runId, carried);
      if (err instanceof ConflictError) {
        this.#lost = true;
        this.#d.logger.warn(
          { partition: this.n },
          'another supervisor took this partition over; no longer serving it',
        );
        throw moved(this.n, err);
      }
      this.#d.logger.error({ err, partition: this.n, action: input.action }, 'AUDIT WRITE FAILED');
      throw new UnavailableError('audit log unavailable', { cause: err });
    }
  }

  /** A settle or observation applied to the live state, to ride on the run's next record. */
  carry(runId: string, item: Partial<Carried>): void {
    const slot = this.#carried.get(runId) ?? { c: empty(), since: Date.now() };
    slot.c.settles.push(...(item.settles ?? []));
    slot.c.observations.push(...(item.observations ?? []));
    this.#carried.set(runId, slot);
  }

  /**
   * Periodic chores: carries older than a second go on record, ended runs that hold nothing are
   * forgotten after a while, and the durable state is checkpointed when it moved.
   */
  async chores(now: number): Promise<void> {
    if (this.#lost) return;
    for (const [runId, slot] of [...this.#carried]) {
      if (now - slot.since < CARRY_MS) continue;
      await this.record({ action: 'settle', runId, ts: now }).catch(() => undefined);
    }
    for (const [runId, s] of [...this.#live]) {
      if (s.endedAt === undefined || now - s.endedAt < ENDED_RETAIN_MS) continue;
      if (Object.keys(s.reservations).length > 0) continue;
      // Sealed but its end not on record (the terminal write failed): keep it sealed.
      const rec = await this.#d.runs.get(runId).catch(() => undefined);
      if (!rec || !isTerminal(rec.status)) continue;
      this.#live.delete(runId);
      this.#durable.delete(runId);
    }
    await this.checkpoint();
  }

  /** Writes the durable state, if it moved since the last checkpoint. */
  async checkpoint(): Promise<void> {
    if (this.#lost || this.#durableSeq === this.#checkpointedSeq) return;
    const seq = this.#durableSeq;
    const value = { streamSeq: seq, at: Date.now(), runs: [...this.#durable.values()] };
    await this.#d.kv.put(`state.${this.n}`, new TextEncoder().encode(JSON.stringify(value)));
    this.#checkpointedSeq = seq;
  }

  /** Carries on record, a last checkpoint and an anchor, then stops (the lease is being given back). */
  async release(): Promise<void> {
    if (!this.#lost) {
      for (const runId of [...this.#carried.keys()])
        await this.record({ action: 'settle', runId }).catch(() => undefined);
      await this.checkpoint().catch(() => undefined);
      // Anchor the chain's head, so a chain cut short after this is found (as at a stop).
      await this.#writer.close().catch((err: unknown) => {
        this.#d.logger.warn({ err, partition: this.n }, 'cannot anchor the partition chain head');
      });
    }
    this.#lost = true;
  }

  #assertOwned(): void {
    if (this.#lost) throw moved(this.n);
  }

  #takeCarried(runId: string): Carried | undefined {
    const slot = this.#carried.get(runId);
    if (!slot) return undefined;
    this.#carried.delete(runId);
    return slot.c;
  }

  #putBack(runId: string, c: Carried): void {
    const slot = this.#carried.get(runId);
    if (!slot) this.#carried.set(runId, { c, since: Date.now() });
    else {
      slot.c.settles.unshift(...c.settles);
      slot.c.observations.unshift(...c.observations);
    }
  }

  /** A stored batch of the chain, applied to the durable copy. */
  #stored(entries: readonly AuditEntry[], streamSeq: number): void {
    for (const e of entries) {
      if (e.runId === undefined) continue;
      let s = this.#durable.get(e.runId);
      if (!s) {
        const live = this.#live.get(e.runId);
        if (!live) continue; // a decision about a run with no state (refused before it had one)
        s = newRunState({
          runId: live.runId,
          budget: live.cap,
          createdAt: live.createdAt,
          parentRunId: live.parentRunId,
        });
        this.#durable.set(e.runId, s);
      }
      applyRecord(s, e, this.#d.breakers);
    }
    this.#durableSeq = streamSeq;
  }

  /** A record of the chain after the checkpoint, applied as its owner applied it. */
  async #replay(e: AuditEntry): Promise<void> {
    if (e.runId === undefined) return;
    let s = this.#durable.get(e.runId);
    if (!s) {
      const rec = await this.#d.runs.get(e.runId);
      if (!rec) return;
      s = newRunState(rec);
      this.#durable.set(e.runId, s);
    }
    applyRecord(s, e, this.#d.breakers);
  }
}

/** The error a request to a partition this supervisor no longer owns gets: retry elsewhere. */
export function moved(n: number, cause?: unknown): UnavailableError {
  return new UnavailableError(`partition ${n} moved to another supervisor; retry`, {
    ...(cause !== undefined ? { cause } : {}),
    details: { partitionMoved: n },
  });
}

function parseJson(b: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(b));
  } catch {
    return undefined;
  }
}
