import type { KV, KvEntry } from '@nats-io/kv';
import {
  ConflictError,
  Id,
  ReinsError,
  TimeoutError,
  ToolResult,
  UnavailableError,
  decode,
  encode,
  newId,
  sha256Hex,
} from '@reins/protocol';
import type { Logger } from '@reins/runtime';
import { z } from 'zod';

const Millis = z.number().int().nonnegative();
const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);

/** Fields every idempotency record carries: what the key is bound to. */
const Binding = {
  /** Tool the key was first used with. */
  tool: Id,
  /** `hashArgs(args)` of the first use; another hash under the same key is a conflict. */
  argsHash: Sha256,
  runId: Id,
  /** Grant of the attempt that wrote the record. */
  grantId: Id,
  /** Agent id of the executor that holds (or held) the lease. */
  owner: Id,
  /** Unique per claim attempt: tells our own claim from a duplicate's on the same executor. */
  attemptId: Id,
};

/**
 * A record in KV `reins_idem`, keyed by `idempotencyKvKey(idempotencyKey)`.
 *
 * - `running`: an executor claimed the key and is running the tool; it renews `leaseUntil`
 *   (compare-and-set) while the tool runs. A lease in the past means the holder died.
 * - `done`: the attempt finished; `result` is the `ToolResult` every repeat gets back. Failures
 *   (`ok: false`, outcome `error` or `unknown`) are stored too, so a repeat never re-runs a tool
 *   silently; an aborted read-only tool leaves no record (nothing happened, it may run again).
 */
export const IdempotencyRecord = z.discriminatedUnion('state', [
  z.object({
    state: z.literal('running'),
    ...Binding,
    startedAt: Millis,
    leaseUntil: Millis,
  }),
  z.object({
    state: z.literal('done'),
    ...Binding,
    result: ToolResult,
    finishedAt: Millis,
  }),
]);
/** A record in KV `reins_idem`; see the schema. */
export type IdempotencyRecord = z.infer<typeof IdempotencyRecord>;
type RunningRecord = Extract<IdempotencyRecord, { state: 'running' }>;
type Binding = Omit<RunningRecord, 'state' | 'startedAt' | 'leaseUntil' | 'attemptId'>;

/**
 * KV key of an idempotency key: its hex sha256 (`:` and other characters allowed in
 * idempotency keys are not valid in KV keys, and a hash cannot be used to build a subject).
 */
export function idempotencyKvKey(idempotencyKey: string): string {
  return sha256Hex(idempotencyKey);
}

/** What `claim` found. */
export type ClaimResult =
  /** This attempt holds the key: run the tool. */
  | { kind: 'claimed'; lease: Lease; takeover: boolean }
  /** An earlier attempt finished: return its stored result. */
  | { kind: 'stored'; result: ToolResult }
  /** A crashed holder's lease expired on a tool that may not run twice; `result` was stored. */
  | { kind: 'lost'; result: ToolResult; previousOwner: string };

/** What `claim` needs besides the key. */
export interface ClaimRequest {
  idempotencyKey: string;
  binding: Binding;
  /** True when the tool may run again after a crashed holder (takeover). */
  idempotent: boolean;
  /** Give up waiting for a concurrent holder at this time (`TimeoutError`). */
  deadline: number;
  signal: AbortSignal;
  /** The result stored when a non-idempotent holder's lease expired. */
  unknownOutcome(previousOwner: string): ToolResult;
}

const MAX_ATTEMPTS = 50;

/** Errors from the KV client become `UnavailableError` (fail closed), Reins errors pass. */
function unavailable(err: unknown, what: string): ReinsError {
  if (err instanceof ReinsError) return err;
  return new UnavailableError(`idempotency ledger unavailable (${what})`, { cause: err });
}

/**
 * The idempotency ledger in KV `reins_idem`: claim with `create`, renew and finish with
 * compare-and-set `update`, wait for concurrent holders with a KV watch.
 */
export class IdempotencyLedger {
  readonly #kv: KV;
  readonly #leaseMs: number;
  readonly #logger: Logger;
  readonly #maxRecordBytes: number;

  constructor(kv: KV, options: { leaseMs: number; logger: Logger; maxRecordBytes: number }) {
    this.#kv = kv;
    this.#leaseMs = options.leaseMs;
    this.#logger = options.logger;
    this.#maxRecordBytes = options.maxRecordBytes;
  }

  /** Encodes a record; throws `ProtocolError` / `PayloadTooLargeError` when it cannot be stored. */
  encode(record: IdempotencyRecord): Uint8Array {
    return encode(IdempotencyRecord, record, {
      maxPayloadBytes: this.#maxRecordBytes,
      name: 'idempotency record',
    });
  }

  #running(binding: Binding): RunningRecord {
    const now = Date.now();
    return {
      state: 'running',
      ...binding,
      attemptId: newId('try'),
      startedAt: now,
      leaseUntil: now + this.#leaseMs,
    };
  }

  async #get(key: string): Promise<KvEntry | null> {
    try {
      return await this.#kv.get(key);
    } catch (err) {
      throw unavailable(err, 'get');
    }
  }

  /**
   * Claims the key, or finds what an earlier attempt left. Throws `ConflictError` when the key is
   * bound to another tool, run or arguments, `TimeoutError` when a live holder does not finish
   * before `deadline`, `UnavailableError` when KV cannot be reached (no run without a claim).
   */
  async claim(request: ClaimRequest): Promise<ClaimResult> {
    const key = idempotencyKvKey(request.idempotencyKey);
    const { binding } = request;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      if (request.signal.aborted) throw request.signal.reason;
      const fresh = this.#running(binding);
      let createError: unknown;
      try {
        const revision = await this.#kv.create(key, this.encode(fresh));
        return { kind: 'claimed', lease: new Lease(this, key, fresh, revision), takeover: false };
      } catch (err) {
        if (err instanceof ReinsError) throw err;
        createError = err;
      }
      const entry = await this.#get(key);
      if (entry === null || entry.operation !== 'PUT') {
        // Either KV refused the create for another reason, or the key was deleted in between.
        if (attempt > 2) throw unavailable(createError, 'create');
        continue;
      }
      let record: IdempotencyRecord;
      try {
        record = decode(IdempotencyRecord, entry.value, { name: 'idempotency record' });
      } catch (cause) {
        throw new ConflictError('idempotency record is unreadable; refusing to run the tool', {
          cause,
          retryable: false,
          details: { reason: 'corrupt_record', idempotencyKey: request.idempotencyKey },
        });
      }
      for (const field of ['tool', 'argsHash', 'runId'] as const) {
        if (record[field] !== binding[field]) {
          throw new ConflictError(
            `idempotency key ${request.idempotencyKey} is already used for another ${field === 'argsHash' ? 'set of arguments' : field}`,
            {
              retryable: false,
              details: { reason: `mismatch_${field}`, idempotencyKey: request.idempotencyKey },
            },
          );
        }
      }
      if (record.state === 'done') return { kind: 'stored', result: record.result };
      if (record.attemptId === fresh.attemptId) {
        // Our own create landed although the client saw an error (e.g. a timed-out ack).
        const lease = new Lease(this, key, fresh, entry.revision);
        return { kind: 'claimed', lease, takeover: false };
      }
      const now = Date.now();
      if (record.leaseUntil > now) {
        if (now >= request.deadline) {
          throw new TimeoutError(
            `an earlier attempt with idempotency key ${request.idempotencyKey} is still running`,
            { details: { idempotencyKey: request.idempotencyKey, owner: record.owner } },
          );
        }
        await this.#waitForChange(
          key,
          entry.revision,
          Math.min(record.leaseUntil, request.deadline) - now + 5,
          request.signal,
        );
        continue;
      }
      // The holder stopped renewing its lease: it crashed (or lost NATS) mid-run.
      if (request.idempotent) {
        const taken = this.#running(binding);
        try {
          const revision = await this.#kv.update(key, this.encode(taken), entry.revision);
          this.#logger.warn(
            { idempotencyKey: request.idempotencyKey, previousOwner: record.owner },
            'took over an expired idempotency lease; running the idempotent tool again',
          );
          return { kind: 'claimed', lease: new Lease(this, key, taken, revision), takeover: true };
        } catch (err) {
          if (err instanceof ReinsError) throw err;
          continue; // someone else moved first (or KV is down: the next get says so)
        }
      }
      const result = request.unknownOutcome(record.owner);
      try {
        await this.#kv.update(
          key,
          this.encode({
            ...binding,
            state: 'done',
            attemptId: fresh.attemptId,
            result,
            finishedAt: Date.now(),
          }),
          entry.revision,
        );
        return { kind: 'lost', result, previousOwner: record.owner };
      } catch (err) {
        if (err instanceof ReinsError) throw err;
        continue;
      }
    }
    throw new ConflictError(`idempotency key ${request.idempotencyKey} is heavily contended`, {
      details: { idempotencyKey: request.idempotencyKey },
    });
  }

  /** Resolves when `key` gets a revision newer than `afterRevision`, after `ms`, or on abort. */
  async #waitForChange(
    key: string,
    afterRevision: number,
    ms: number,
    signal: AbortSignal,
  ): Promise<void> {
    let watch;
    try {
      watch = await this.#kv.watch({ key });
    } catch (err) {
      throw unavailable(err, 'watch');
    }
    const stop = () => watch.stop();
    const timer = setTimeout(stop, Math.max(1, ms));
    signal.addEventListener('abort', stop, { once: true });
    try {
      for await (const e of watch) if (e.revision > afterRevision) break;
    } catch (err) {
      throw unavailable(err, 'watch');
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', stop);
      watch.stop();
    }
  }

  /** @internal Compare-and-set write; returns the new revision. */
  async update(key: string, record: IdempotencyRecord, revision: number): Promise<number> {
    return this.#kv.update(key, this.encode(record), revision);
  }

  /** @internal Compare-and-set delete. */
  async remove(key: string, revision: number): Promise<void> {
    await this.#kv.delete(key, { previousSeq: revision });
  }

  /**
   * @internal The current revision and record of `key` (`record` undefined when deleted or
   * unreadable); undefined when there is none. Errors propagate.
   */
  async current(
    key: string,
  ): Promise<{ revision: number; record: IdempotencyRecord | undefined } | undefined> {
    const e = await this.#kv.get(key);
    if (!e) return undefined;
    if (e.operation !== 'PUT') return { revision: e.revision, record: undefined };
    let record: IdempotencyRecord | undefined;
    try {
      record = decode(IdempotencyRecord, e.value, { name: 'idempotency record' });
    } catch {
      record = undefined;
    }
    return { revision: e.revision, record };
  }

  /** @internal The current revision of `key`, or undefined (errors propagate). */
  async revisionOf(key: string): Promise<number | undefined> {
    const e = await this.#kv.get(key);
    return e?.operation === 'PUT' ? e.revision : undefined;
  }

  get leaseMs(): number {
    return this.#leaseMs;
  }

  get logger(): Logger {
    return this.#logger;
  }
}

/**
 * A held claim. Renews the lease (compare-and-set) every third of its length while the tool
 * runs; `lost` aborts when another executor took the key over (our lease expired).
 */
export class Lease {
  readonly #ledger: IdempotencyLedger;
  readonly #key: string;
  readonly #record: RunningRecord;
  #revision: number;
  #timer: NodeJS.Timeout | undefined;
  #renewing: Promise<void> | undefined;
  readonly #lost = new AbortController();

  constructor(ledger: IdempotencyLedger, key: string, record: RunningRecord, revision: number) {
    this.#ledger = ledger;
    this.#key = key;
    this.#record = record;
    this.#revision = revision;
  }

  /** Unique id of this claim attempt (stored in the record). */
  get attemptId(): string {
    return this.#record.attemptId;
  }

  /** Aborted when the claim was taken over by another executor. */
  get lost(): AbortSignal {
    return this.#lost.signal;
  }

  /** Starts renewing. */
  start(): void {
    this.#timer = setInterval(
      () => {
        this.#renewing ??= this.#renew().finally(() => (this.#renewing = undefined));
      },
      Math.max(1, Math.floor(this.#ledger.leaseMs / 3)),
    );
    this.#timer.unref();
  }

  async #renew(): Promise<void> {
    const record = { ...this.#record, leaseUntil: Date.now() + this.#ledger.leaseMs };
    try {
      this.#revision = await this.#ledger.update(this.#key, record, this.#revision);
    } catch (err) {
      let current: number | undefined;
      try {
        current = await this.#ledger.revisionOf(this.#key);
      } catch {
        // KV unreachable: keep the tool running and try again at the next tick.
        this.#ledger.logger.warn({ err }, 'could not renew idempotency lease');
        return;
      }
      if (current !== this.#revision) {
        this.#ledger.logger.error(
          { key: this.#key },
          'idempotency lease lost to another executor; aborting the tool',
        );
        this.#lost.abort(
          new ConflictError('idempotency lease was taken over by another executor', {
            retryable: false,
          }),
        );
      }
    }
  }

  async #quiesce(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#renewing;
  }

  /**
   * Stores the final record (compare-and-set on our revision). A write that fails is checked and
   * tried again for up to a lease length: one that timed out may have landed (then the stored
   * record is ours), and KV may be back in a moment (a NATS server restart). Returns false
   * (logged) when it could not be written: the lease was lost or KV stayed down; the record then
   * stays `running` until its lease expires.
   */
  async finish(record: IdempotencyRecord): Promise<boolean> {
    await this.#quiesce();
    if (this.#lost.signal.aborted) return false;
    const deadline = Date.now() + this.#ledger.leaseMs;
    for (let attempt = 0; ; attempt++) {
      try {
        this.#revision = await this.#ledger.update(this.#key, record, this.#revision);
        return true;
      } catch (err) {
        let current: { revision: number; record: IdempotencyRecord | undefined } | undefined;
        try {
          current = await this.#ledger.current(this.#key);
        } catch {
          current = undefined; // KV unreachable: try again below
        }
        if (current && current.revision !== this.#revision) {
          // Someone wrote after our claim: our own final write (landed although it timed out),
          // or another executor that took an expired lease over.
          const mine =
            current.record?.state === 'done' && current.record.attemptId === this.attemptId;
          if (mine) {
            this.#revision = current.revision;
            return true;
          }
          this.#ledger.logger.error(
            { err, key: this.#key },
            'could not store idempotency result: the claim was taken over',
          );
          return false;
        }
        if (Date.now() + 250 * 2 ** Math.min(attempt, 3) > deadline) {
          this.#ledger.logger.error({ err, key: this.#key }, 'could not store idempotency result');
          return false;
        }
        this.#ledger.logger.warn({ err, key: this.#key, attempt }, 'storing idempotency result');
        await new Promise((r) => setTimeout(r, 250 * 2 ** Math.min(attempt, 3)));
      }
    }
  }

  /** Deletes the claim (nothing happened; the key may be used again). */
  async release(): Promise<void> {
    await this.#quiesce();
    if (this.#lost.signal.aborted) return;
    try {
      await this.#ledger.remove(this.#key, this.#revision);
    } catch (err) {
      this.#ledger.logger.warn({ err, key: this.#key }, 'could not release idempotency claim');
    }
  }
}
