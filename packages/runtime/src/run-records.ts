import { KvWatchInclude, type KV, type KvWatchEntry } from '@nats-io/kv';
import {
  AbortedError,
  Buckets,
  RunRecord,
  TimeoutError,
  UnavailableError,
  assertId,
  decode,
  type RunStatus,
} from '@reins/protocol';
import { openBucket } from './infrastructure.js';
import type { Runtime } from './runtime.js';
import { retryTransport } from './transport-retry.js';

// KV `reins_runs` keeps each run record at `run.<runId>` (written by the supervisor's run store).
const KEY_PREFIX = 'run.';

/** How long opening the watch, or the first read of a waited record, is retried. */
const OPEN_TIMEOUT_MS = 30_000;

/** How long the shared watch stays open after its last waiter is gone (a next wait reuses it). */
const IDLE_CLOSE_MS = 30_000;

/** True for statuses a run never leaves. */
export function isRunEnded(status: RunStatus): boolean {
  return status === 'completed' || status === 'stopped' || status === 'failed';
}

interface Waiter {
  resolve: (record: RunRecord) => void;
  reject: (err: Error) => void;
}

/** Options of `RunRecords.waitForEnd`. */
export interface WaitForEndOptions {
  /** Give up after this long with a `TimeoutError` (default: no deadline). */
  timeoutMs?: number;
  /** Give up with an `AbortedError`. */
  signal?: AbortSignal;
}

const shared = new WeakMap<Runtime, RunRecords>();

/**
 * Run records read straight from KV `reins_runs` — no supervisor needed — and waits for runs to
 * end, all through one shared KV watch per process (one ephemeral consumer however many runs
 * are waited for). Waiting is push, not poll: a wait registers, makes sure the watch is live,
 * reads the record once (it may have ended already), then is woken by the watch update that
 * ends the run. The watch is opened on the first wait and closed after it has had no waiter for
 * a while; if it ends (a server restart), it is opened again and every waiter's record read
 * again, so an end written meanwhile is not missed.
 *
 * Records are decoded with the protocol's `RunRecord` schema; an undecodable record is reported
 * as `UnavailableError` by `get` and ignored by the watch (a later valid update still wakes).
 * Note that a record's `used` is not kept in KV (spend lives in the budget ledger): ask the
 * supervisor (`runs.get`) for it.
 */
export class RunRecords {
  readonly #runtime: Runtime;
  #kv: Promise<KV> | undefined;
  readonly #waiters = new Map<string, Set<Waiter>>();
  /** The live watch (resolves once it is created), or undefined. */
  #watch: Promise<void> | undefined;
  #stopWatch: (() => void) | undefined;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor(runtime: Runtime) {
    this.#runtime = runtime;
  }

  /** The instance shared by everything on this runtime; closed when its connection closes. */
  static of(runtime: Runtime): RunRecords {
    let r = shared.get(runtime);
    if (!r) {
      const created = new RunRecords(runtime);
      shared.set(runtime, created);
      void runtime.nc.closed().then(() => created.close());
      r = created;
    }
    return r;
  }

  /**
   * The run record as stored in KV, or `undefined` for an unknown run. Throws `UnavailableError`
   * when the bucket cannot be read or the record does not decode, `ProtocolError` for a bad id.
   */
  async get(runId: string): Promise<RunRecord | undefined> {
    const key = `${KEY_PREFIX}${assertId(runId, 'runId')}`;
    let e;
    try {
      e = await (await this.#bucket()).get(key);
    } catch (cause) {
      throw new UnavailableError('run records (KV reins_runs) cannot be read', { cause });
    }
    if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
    try {
      return decode(RunRecord, e.value, { name: 'run record' });
    } catch (cause) {
      throw new UnavailableError(`run record ${runId} does not decode`, {
        cause,
        retryable: false,
      });
    }
  }

  /**
   * Waits until the run has ended (completed, stopped or failed) and returns its record as
   * stored. A run that is not known yet is waited for too (its record may be about to be
   * written). Throws `TimeoutError` at `timeoutMs`, `AbortedError` when `signal` aborts,
   * `UnavailableError` when the watch cannot be opened or the record not read.
   */
  waitForEnd(runId: string, options: WaitForEndOptions = {}): Promise<RunRecord> {
    const key = `${KEY_PREFIX}${assertId(runId, 'runId')}`;
    if (this.#closed) return Promise.reject(new UnavailableError('run records are closed'));
    const { signal, timeoutMs } = options;
    if (signal?.aborted)
      return Promise.reject(
        new AbortedError('stopped waiting for the run', { cause: signal.reason }),
      );
    return new Promise<RunRecord>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        const set = this.#waiters.get(key);
        set?.delete(waiter);
        if (set?.size === 0) this.#waiters.delete(key);
        this.#maybeIdle();
      };
      const waiter: Waiter = {
        resolve: (r) => {
          cleanup();
          resolve(r);
        },
        reject: (err) => {
          cleanup();
          reject(err);
        },
      };
      const onAbort = () =>
        waiter.reject(new AbortedError('stopped waiting for the run', { cause: signal?.reason }));
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          // Say where the run stood; the read is best effort.
          void this.get(runId)
            .catch(() => undefined)
            .then((r) =>
              waiter.reject(
                new TimeoutError(`run ${runId} did not end in time`, {
                  details: { runId, status: r?.status ?? 'unknown' },
                }),
              ),
            );
        }, timeoutMs);
      }
      let set = this.#waiters.get(key);
      if (!set) this.#waiters.set(key, (set = new Set()));
      set.add(waiter);
      if (this.#idleTimer) clearTimeout(this.#idleTimer);
      this.#idleTimer = undefined;
      // The watch first, then the read: an end written after the read reaches the watch.
      void this.#ensureWatch()
        .then(() => this.#check(key, runId))
        .catch((err: unknown) =>
          waiter.reject(
            err instanceof Error
              ? err
              : new UnavailableError('cannot wait for the run', { cause: err }),
          ),
        );
    });
  }

  /** Stops the watch and fails every waiter with `UnavailableError`. */
  close(): void {
    this.#closed = true;
    this.#closeWatch();
    const waiters = [...this.#waiters.values()].flatMap((s) => [...s]);
    this.#waiters.clear();
    for (const w of waiters) w.reject(new UnavailableError('run records closed'));
  }

  /** Reads the record of a waited-for key and wakes its waiters if the run has ended. */
  async #check(key: string, runId: string): Promise<void> {
    if (!this.#waiters.has(key)) return;
    const record = await retryTransport('run record read', () => this.get(runId), {
      timeoutMs: OPEN_TIMEOUT_MS,
    });
    if (record && isRunEnded(record.status)) this.#wake(key, record);
  }

  #wake(key: string, record: RunRecord): void {
    const set = this.#waiters.get(key);
    if (!set) return;
    for (const w of [...set]) w.resolve(record);
  }

  #bucket(): Promise<KV> {
    this.#kv ??= openBucket(this.#runtime.nc, Buckets.runs);
    this.#kv.catch(() => (this.#kv = undefined));
    return this.#kv;
  }

  #ensureWatch(): Promise<void> {
    this.#watch ??= this.#openWatch();
    return this.#watch;
  }

  async #openWatch(): Promise<void> {
    let iter;
    try {
      // A consumer create may time out while a cluster has lost a node (see `retryTransport`).
      iter = await retryTransport(
        'run record watch',
        async () =>
          (await this.#bucket()).watch({
            key: `${KEY_PREFIX}*`,
            include: KvWatchInclude.UpdatesOnly,
          }),
        { timeoutMs: OPEN_TIMEOUT_MS },
      );
    } catch (cause) {
      this.#watch = undefined;
      throw new UnavailableError('cannot watch run records (KV reins_runs)', { cause });
    }
    if (this.#closed) {
      iter.stop();
      return;
    }
    this.#stopWatch = () => iter.stop();
    const current = this.#watch;
    void (async () => {
      try {
        for await (const e of iter) this.#onEntry(e);
      } catch {
        // ended with an error: handled below like any end
      }
      if (this.#watch !== current) return;
      // The watch ended on its own (a server restart): open it again for the waiters left, and
      // read their records again, since an end may have been written while no watch ran.
      this.#watch = undefined;
      this.#stopWatch = undefined;
      await this.#rewatch();
    })();
  }

  async #rewatch(): Promise<void> {
    for (let attempt = 0; !this.#closed && this.#waiters.size > 0; attempt++) {
      try {
        await this.#ensureWatch();
        await Promise.all(
          [...this.#waiters.keys()].map((key) =>
            this.#check(key, key.slice(KEY_PREFIX.length)).catch(() => undefined),
          ),
        );
        return;
      } catch {
        await new Promise((r) => setTimeout(r, Math.min(2_000, 100 * 2 ** attempt)));
      }
    }
  }

  #onEntry(e: KvWatchEntry): void {
    if (e.operation !== 'PUT' || !this.#waiters.has(e.key)) return;
    let record: RunRecord;
    try {
      record = decode(RunRecord, e.value, { name: 'run record' });
    } catch {
      return; // undecodable: a later valid write still wakes the waiters
    }
    if (isRunEnded(record.status)) this.#wake(e.key, record);
  }

  #maybeIdle(): void {
    if (this.#waiters.size > 0 || !this.#watch || this.#idleTimer) return;
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      if (this.#waiters.size === 0) this.#closeWatch();
    }, IDLE_CLOSE_MS);
    this.#idleTimer.unref();
  }

  #closeWatch(): void {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    const stop = this.#stopWatch;
    this.#watch = undefined;
    this.#stopWatch = undefined;
    stop?.();
  }
}
