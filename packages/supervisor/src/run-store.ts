import { KvWatchInclude, type KV } from '@nats-io/kv';
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
import { isRunEnded } from '@reins/runtime';
import { BreakerState } from './breakers.js';
import { parse } from '@reins/protocol';

// KV `reins_runs` layout:
//   run.<runId>    → RunRecord (msgpack)
//   brk.<runId>    → BreakerState (msgpack), CAS-updated by every supervisor instance
//   start.<sha256> → runId of a `runs.start` idempotency key

const MAX_CAS_ATTEMPTS = 50;
/** Entries each cache (run records, breaker states) keeps; a miss only costs a KV read. */
const CACHE_MAX = 4096;

/** A cached run record (`record: null`: deleted at `rev`), and when it was last confirmed. */
interface CachedRun {
  record: RunRecord | null;
  rev: number;
  confirmedAt: number;
}

/**
 * Run records and per-run breaker state in KV, updated with compare-and-set.
 *
 * Hot-path caches (both optional in effect: a miss reads KV):
 *
 * - **Run records** (`cached`, after `watch()`): a KV watch on `run.*` (updates only) keeps
 *   every cached record coherent with what any supervisor writes, within the watch's delivery
 *   lag (about a millisecond here) — the same lag the halt markers have, which every runtime
 *   already trusts. Writes of this store update the cache at once (read-your-writes). Fail
 *   closed: while the watch is not running (not started yet, or ended) nothing is cached; a key
 *   not cached, a deleted record or an entry not confirmed (by a KV read, an own write or a
 *   watch update) within `maxAgeMs` is read from KV. A record read from KV is only cached when
 *   the watch was already running when the read was issued, and never over a newer revision.
 * - **Breaker states**: the last state and revision written or read by this store; the next
 *   update CASes on that revision, so a stale entry (another supervisor wrote since) fails the
 *   CAS, is dropped and the state re-read: a decision is only returned once it was written on
 *   top of the exact state it was computed from. Updates of one run's state are serialized in
 *   this process, so concurrent settles and acts of one run do not CAS-conflict with each other.
 */
export class RunStore {
  readonly #kv: KV;
  readonly #runs = new Map<string, CachedRun>();
  /** Bumped whenever the watch starts or ends: reads issued in another epoch are not cached. */
  #epoch = 0;
  #watching = false;
  #stopWatch: (() => void) | undefined;
  readonly #breakers = new Map<string, { state: BreakerState; rev: number }>();
  readonly #breakerQueues = new Map<string, Promise<unknown>>();

  constructor(kv: KV) {
    this.#kv = kv;
  }

  /**
   * Starts the run record watch (see the class comment); resolves once it is live. Throws
   * `UnavailableError` when the watch cannot be created. Idempotent.
   */
  async watch(): Promise<void> {
    if (this.#watching) return;
    let w;
    try {
      w = await this.#kv.watch({ key: 'run.*', include: KvWatchInclude.UpdatesOnly });
    } catch (cause) {
      throw new UnavailableError('run store: cannot watch run records', { cause });
    }
    this.#epoch++;
    this.#runs.clear();
    this.#watching = true;
    const epoch = this.#epoch;
    this.#stopWatch = () => w.stop();
    void (async () => {
      try {
        for await (const e of w) {
          if (e.operation === 'PUT' && e.value.length > 0) {
            let record: RunRecord | null;
            try {
              record = decode(RunRecord, e.value, { name: 'run record' });
            } catch {
              record = null; // unreadable: forget it, so reads go to KV (and report it)
            }
            if (record) this.#remember(e.key, record, e.revision);
            else this.#runs.delete(e.key);
          } else {
            this.#remember(e.key, null, e.revision);
          }
        }
      } finally {
        // The watch ended: stop trusting the cache (fail closed: every read goes to KV).
        if (this.#epoch === epoch) this.#unwatch();
      }
    })().catch(() => undefined);
  }

  /** Stops the run record watch and empties the cache. */
  stopWatch(): void {
    const stop = this.#stopWatch;
    this.#unwatch();
    stop?.();
  }

  #unwatch(): void {
    this.#epoch++;
    this.#watching = false;
    this.#stopWatch = undefined;
    this.#runs.clear();
  }

  /** Records a revision of a run key unless a newer one is cached. */
  #remember(key: string, record: RunRecord | null, rev: number): void {
    if (!this.#watching) return;
    const had = this.#runs.get(key);
    if (had && had.rev > rev) return;
    this.#runs.delete(key);
    this.#runs.set(key, { record, rev, confirmedAt: Date.now() });
    if (this.#runs.size > CACHE_MAX) {
      const oldest = this.#runs.keys().next();
      if (!oldest.done) this.#runs.delete(oldest.value);
    }
  }

  /**
   * The run record, from the watched cache when it was confirmed within `maxAgeMs`, else from
   * KV (see the class comment). Treat the record as read-only. Throws `NotFoundError` for an
   * unknown run and `UnavailableError` when KV cannot be read.
   */
  async cached(runId: string, maxAgeMs: number): Promise<RunRecord> {
    const key = `run.${assertId(runId, 'runId')}`;
    const hit = this.#watching ? this.#runs.get(key) : undefined;
    if (hit?.record && Date.now() - hit.confirmedAt <= maxAgeMs) return hit.record;
    const epoch = this.#epoch;
    const e = await this.#read(key);
    const record = e ? decode(RunRecord, e.value, { name: 'run record' }) : undefined;
    if (record && e && epoch === this.#epoch) this.#remember(key, record, e.revision);
    if (!record) throw new NotFoundError(`unknown run ${runId}`, { details: { runId } });
    return record;
  }

  /** Creates a run record; fails with `ConflictError` if the id exists. */
  async create(record: RunRecord): Promise<void> {
    const key = `run.${assertId(record.runId, 'runId')}`;
    const epoch = this.#epoch;
    let rev: number;
    try {
      rev = await this.#kv.create(key, encode(RunRecord, record));
    } catch (cause) {
      throw new ConflictError(`run ${record.runId} already exists`, { cause });
    }
    if (epoch === this.#epoch) this.#remember(key, record, rev);
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
   * `undefined` to leave it unchanged. Returns the stored record (as written: with its
   * `updatedAt`), so that every caller, the writer or one that lost the race, gets the same.
   */
  async update(runId: string, fn: (r: RunRecord) => RunRecord | undefined): Promise<RunRecord> {
    const key = `run.${assertId(runId, 'runId')}`;
    for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
      const e = await this.#read(key);
      if (!e) throw new NotFoundError(`unknown run ${runId}`, { details: { runId } });
      const current = decode(RunRecord, e.value, { name: 'run record' });
      const next = fn(current);
      if (!next) return current;
      const epoch = this.#epoch;
      try {
        const stored = { ...next, updatedAt: Date.now() };
        const rev = await this.#kv.update(key, encode(RunRecord, stored), e.revision);
        if (epoch === this.#epoch) this.#remember(key, stored, rev);
        return stored;
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
    for await (const k of await this.#kv.keys('run.*')) if (!keys.includes(k)) keys.push(k);
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

  /**
   * Applies a breaker function to a run's breaker state with CAS, starting from the state this
   * store last wrote or read (see the class comment). Updates of one run are serialized here.
   */
  updateBreakers<T>(
    runId: string,
    init: () => BreakerState,
    fn: (s: BreakerState) => { state: BreakerState; result: T },
  ): Promise<T> {
    const key = `brk.${assertId(runId, 'runId')}`;
    const prev = this.#breakerQueues.get(key) ?? Promise.resolve();
    const next = prev.then(() => this.#updateBreakers(key, runId, init, fn));
    const tail = next.catch(() => undefined);
    this.#breakerQueues.set(key, tail);
    void tail.then(() => {
      if (this.#breakerQueues.get(key) === tail) this.#breakerQueues.delete(key);
    });
    return next;
  }

  async #updateBreakers<T>(
    key: string,
    runId: string,
    init: () => BreakerState,
    fn: (s: BreakerState) => { state: BreakerState; result: T },
  ): Promise<T> {
    for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
      let snap = i === 0 ? this.#breakers.get(key) : undefined;
      if (!snap) {
        const e = await this.#read(key);
        snap = e
          ? {
              state: parse(
                BreakerState,
                JSON.parse(new TextDecoder().decode(e.value)),
                'breaker state',
              ),
              rev: e.revision,
            }
          : { state: init(), rev: 0 };
      }
      const { state, result } = fn(snap.state);
      const data = new TextEncoder().encode(JSON.stringify(state));
      try {
        const rev =
          snap.rev === 0
            ? await this.#kv.create(key, data)
            : await this.#kv.update(key, data, snap.rev);
        this.#breakers.delete(key);
        this.#breakers.set(key, { state, rev });
        if (this.#breakers.size > CACHE_MAX) {
          const oldest = this.#breakers.keys().next();
          if (!oldest.done) this.#breakers.delete(oldest.value);
        }
        return result;
      } catch {
        // conflict (or a stale cached revision): re-read and retry
        this.#breakers.delete(key);
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

/** True for statuses a run never leaves (the runtime's `isRunEnded`). */
export const isTerminal: (status: RunStatus) => boolean = isRunEnded;
