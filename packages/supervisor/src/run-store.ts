import type { KV } from '@nats-io/kv';
import {
  ConflictError,
  NotFoundError,
  RunRecord,
  UnavailableError,
  assertId,
  decode,
  encode,
  sha256Hex,
  type RunStatus,
} from '@reins/protocol';
import { BreakerState } from './breakers.js';
import { parse } from '@reins/protocol';

// KV `reins_runs` layout:
//   run.<runId>    → RunRecord (msgpack)
//   brk.<runId>    → BreakerState (msgpack), CAS-updated by every supervisor instance
//   start.<sha256> → runId of a `runs.start` idempotency key

const MAX_CAS_ATTEMPTS = 50;

/** Run records and per-run breaker state in KV, updated with compare-and-set. */
export class RunStore {
  readonly #kv: KV;

  constructor(kv: KV) {
    this.#kv = kv;
  }

  /** Creates a run record; fails with `ConflictError` if the id exists. */
  async create(record: RunRecord): Promise<void> {
    try {
      await this.#kv.create(`run.${assertId(record.runId, 'runId')}`, encode(RunRecord, record));
    } catch (cause) {
      throw new ConflictError(`run ${record.runId} already exists`, { cause });
    }
  }

  /** The run record, or `undefined`. Throws `UnavailableError` when KV cannot be read. */
  async get(runId: string): Promise<RunRecord | undefined> {
    const e = await this.#read(`run.${assertId(runId, 'runId')}`);
    return e ? decode(RunRecord, e.value, { name: 'run record' }) : undefined;
  }

  /** The run record; throws `NotFoundError` for an unknown run (fail closed). */
  async require(runId: string): Promise<RunRecord> {
    const r = await this.get(runId);
    if (!r) throw new NotFoundError(`unknown run ${runId}`, { details: { runId } });
    return r;
  }

  /**
   * Applies `fn` to the record with CAS, retrying on conflicts. `fn` returns the new record or
   * `undefined` to leave it unchanged. Returns the stored record.
   */
  async update(runId: string, fn: (r: RunRecord) => RunRecord | undefined): Promise<RunRecord> {
    const key = `run.${assertId(runId, 'runId')}`;
    for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
      const e = await this.#read(key);
      if (!e) throw new NotFoundError(`unknown run ${runId}`, { details: { runId } });
      const current = decode(RunRecord, e.value, { name: 'run record' });
      const next = fn(current);
      if (!next) return current;
      try {
        await this.#kv.update(
          key,
          encode(RunRecord, { ...next, updatedAt: Date.now() }),
          e.revision,
        );
        return next;
      } catch {
        // lost the race: re-read and retry
      }
    }
    throw new ConflictError(`run ${runId} is being updated by too many writers`);
  }

  /** Sets a run's status (and optional fields) unless it already ended. */
  setStatus(runId: string, status: RunStatus, extra: Partial<RunRecord> = {}): Promise<RunRecord> {
    return this.update(runId, (r) =>
      isTerminal(r.status) ? undefined : { ...r, ...extra, status },
    );
  }

  /** Lists run records, newest first. */
  async list(filter: { status?: RunStatus; tenant?: string; limit: number }): Promise<RunRecord[]> {
    const keys: string[] = [];
    for await (const k of await this.#kv.keys('run.*')) keys.push(k);
    const records: RunRecord[] = [];
    for (const k of keys) {
      const e = await this.#read(k);
      if (!e) continue;
      try {
        records.push(decode(RunRecord, e.value, { name: 'run record' }));
      } catch {
        // a corrupt record is skipped in listings; `get` reports it
      }
    }
    return records
      .filter((r) => (filter.status ? r.status === filter.status : true))
      .filter((r) => (filter.tenant ? r.tenant === filter.tenant : true))
      .sort((a, b) => b.createdAt - a.createdAt)
      .slice(0, filter.limit);
  }

  /** The run id recorded for a start idempotency key, if any. */
  async startKey(key: string): Promise<string | undefined> {
    const e = await this.#read(`start.${sha256Hex(key)}`);
    return e ? new TextDecoder().decode(e.value) : undefined;
  }

  /** Records a start idempotency key; returns the run id that won (ours or an earlier one). */
  async claimStartKey(key: string, runId: string): Promise<string> {
    try {
      await this.#kv.create(`start.${sha256Hex(key)}`, new TextEncoder().encode(runId));
      return runId;
    } catch {
      return (await this.startKey(key)) ?? runId;
    }
  }

  /** Applies a breaker function to a run's breaker state with CAS. */
  async updateBreakers<T>(
    runId: string,
    init: () => BreakerState,
    fn: (s: BreakerState) => { state: BreakerState; result: T },
  ): Promise<T> {
    const key = `brk.${assertId(runId, 'runId')}`;
    for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
      const e = await this.#read(key);
      const current = e
        ? parse(BreakerState, JSON.parse(new TextDecoder().decode(e.value)), 'breaker state')
        : init();
      const { state, result } = fn(current);
      const data = new TextEncoder().encode(JSON.stringify(state));
      try {
        if (e) await this.#kv.update(key, data, e.revision);
        else await this.#kv.create(key, data);
        return result;
      } catch {
        // conflict: retry
      }
    }
    throw new ConflictError(`breaker state of run ${runId} is contended`);
  }

  async #read(key: string) {
    try {
      const e = await this.#kv.get(key);
      return e && e.operation === 'PUT' && e.value.length > 0 ? e : undefined;
    } catch (cause) {
      throw new UnavailableError('run store (KV reins_runs) is unavailable', { cause });
    }
  }
}

/** True for statuses a run never leaves. */
export function isTerminal(status: RunStatus): boolean {
  return status === 'completed' || status === 'stopped' || status === 'failed';
}
