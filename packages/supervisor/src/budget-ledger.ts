import { jetstream, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { z } from 'zod';
import type { Usage } from '@reins/protocol';
import { Budget, Buckets, ReinsError, assertId, parse } from '@reins/protocol';
import { ConflictError, ProtocolError, UnavailableError } from '@reins/protocol';
import { BoundedMap, isCasConflict } from '@reins/runtime';
import { backoffDelay, sleep } from './backoff.js';
import {
  Amount,
  DIMENSIONS,
  add,
  capOf,
  fromBudget,
  fromUsage,
  subClip,
  toUser,
  zero,
  type BudgetDimension,
  type LedgerAmount,
  fitsCap,
} from './amounts.js';

export type { BudgetDimension, LedgerAmount } from './amounts.js';

// Ledger layout (JetStream KV, history 1, CAS on every write):
//
//   bucket `reins_budget`, one key per scope (`run.<id>`, `agent.<id>`, `role.<id>`,
//   `tenant.<id>`, `global`), value = JSON ScopeDoc:
//     { v: 1, cap: Budget, committed: Amount,
//       reservations: { [grantId | "carve:<child>"]: { amount: Amount, expiresAt: ms | null } },
//       settled: grantId[]  (ring of the last N settles applied to this scope),
//       sealed?: { used: Amount } }                      (a released child carve)
//   bucket `reins_budget_grants` (bucket TTL = retention), one key per grant id, value = JSON
//     { scopes: string[], amount: Amount, expiresAt, state: 'reserved' | 'settled', actual? }
//
// USD is stored as integer micro-dollars so sums are exact. A reservation is taken on each
// scope in sorted key order, each with its own CAS; a CAS write only succeeds when the scope
// still satisfies committed + reserved + amount <= cap, so the invariant holds on every key at
// every revision no matter how many ledgers write. A denial on a later scope rolls back the
// earlier ones; a crash mid-way leaves reservations that expire with their lease.

const Reservation = z.object({ amount: Amount, expiresAt: z.number().int().nullable() });
type Reservation = z.infer<typeof Reservation>;

const ScopeDoc = z.object({
  v: z.literal(1),
  cap: Budget,
  committed: Amount,
  reservations: z.record(z.string(), Reservation),
  settled: z.array(z.string()),
  sealed: z.object({ used: Amount }).optional(),
});
type ScopeDoc = z.infer<typeof ScopeDoc>;

const GrantRecord = z.object({
  scopes: z.array(z.string()).min(1),
  amount: Amount,
  expiresAt: z.number().int(),
  state: z.enum(['reserved', 'settled']),
  actual: Amount.optional(),
  settledAt: z.number().int().optional(),
});
type GrantRecord = z.infer<typeof GrantRecord>;

/** An amount in user units: dollars, tokens (input + output), input/output tokens and steps. */

/** What `reserve` and `carve` answer. A denial names the scope and dimension that refused. */
export type ReserveResult =
  | { ok: true; expiresAt: number | null }
  | {
      ok: false;
      scope: string;
      /** `sealed`: the scope is a child carve that was already released. */
      dimension: BudgetDimension | 'sealed';
      cap: number;
      /** committed + reserved + amount on that dimension, had it been admitted. */
      wouldBe: number;
      /** The amount asked for on that dimension (a model call's worst case: input + output cap). */
      requested: number;
      /** Spent (settled or charged) on that dimension. */
      committed: number;
      /** Held by other open reservations on that dimension. */
      reserved: number;
    };

/** What `settle` answers. */
export interface SettleResult {
  /** True when the grant is (now or already) settled; false for an unknown grant id. */
  settled: boolean;
  /** True when an earlier settle of the same grant already counted. */
  duplicate: boolean;
  /** True when the reaper had already charged the reservation on some scope (now corrected to the actual). */
  reaped: boolean;
  /** Dimensions where the actual exceeded the reservation, by how much (user units). */
  overshoot?: Partial<LedgerAmount>;
}

/** A ledger scope's state, for reporting. */
export interface ScopeReport {
  scope: string;
  cap: Budget;
  committed: LedgerAmount;
  reserved: LedgerAmount;
  /** Number of open reservations (including child carves). */
  reservations: number;
  sealed: boolean;
}

/** An expired reservation removed by `reap`. */
export interface ReapedReservation {
  scope: string;
  grantId: string;
  amount: LedgerAmount;
  expiresAt: number;
}

/** What `releaseCarve` answers. */
export interface ReleaseCarveResult {
  /** False when the carve was already released (or never existed). */
  released: boolean;
  /** What the child used (committed plus still-open reservations at release). */
  used: LedgerAmount;
  /** What went back to the parent: carved minus used, never negative. */
  returned: LedgerAmount;
}

/** Options of `BudgetLedger.open`. */
export interface BudgetLedgerOptions {
  /** Scope bucket (default `reins_budget`). */
  bucket?: string;
  /** Grant record bucket (default `reins_budget_grants`). */
  grantsBucket?: string;
  /** How long grant records are kept for settle dedupe and late settles (default 7 days). */
  grantRetentionMs?: number;
  /** Timeout of each KV operation (default 2000 ms). */
  opTimeoutMs?: number;
  /** CAS attempts per scope write before giving up with a ConflictError (default 100). */
  maxAttempts?: number;
  /** Upper bound of the time spent retrying one scope write (default 5000 ms). */
  casDeadlineMs?: number;
  /** Settled grant ids remembered per scope for dedupe of concurrent settles (default 128). */
  settledRing?: number;
  /** KV replicas when the buckets are created (default 1). */
  replicas?: number;
  /**
   * Clock of reservation expiry, reaping and settle times (default `Date.now`). Every ledger on
   * the same buckets must use the same clock: supervisors pass the NATS server's (`ServerClock`).
   */
  now?: () => number;
}

/** A running reaper; stop it (or `await using`) to end the loop. */
export interface Reaper extends AsyncDisposable {
  stop(): Promise<void>;
}

/** Options of `BudgetLedger.startReaper`. */
export interface ReaperOptions {
  /** Called with every non-empty batch of reaped reservations (audit them). */
  onReaped?: (reaped: ReapedReservation[]) => void;
  /** Called when a reap pass fails (the next pass retries). */
  onError?: (err: unknown) => void;
}

/** Options of `BudgetLedger.reap`. */
export interface ReapOptions {
  /** Ends the pass at the next KV operation; what was reaped so far is returned. */
  signal?: AbortSignal;
  /** Called for a scope the pass skipped because its doc is corrupt (the pass goes on). */
  onError?: (err: unknown) => void;
}

/** Parameters of `reserve`. */
export interface ReserveRequest {
  grantId: string;
  /** Scope keys: `run.<id>`, `agent.<id>`, `role.<id>`, `tenant.<id>`, `global`. */
  scopes: readonly string[];
  amount: z.input<typeof Usage>;
  /** How long the reservation lives unsettled before the reaper charges it in full. */
  leaseMs: number;
}

/** Parts of a step that map to ledger scopes. */
export interface ScopeParts {
  runId?: string;
  agentId?: string;
  role?: string;
  tenant?: string;
  /** Include the `global` scope (default true). */
  global?: boolean;
}

const SCOPE_PATTERN = /^(?:(?:run|agent|role|tenant)\.[A-Za-z0-9_-]{1,64}|global)$/;
const MAX_LEASE_MS = 24 * 3600_000;
const GRANTS_BUCKET = Buckets.budgetGrants;
const CACHE_MAX = 4096;
/** Scope reads a reap pass keeps in flight at once. */
const REAP_READ_CONCURRENCY = 16;
/** CAS attempts a reap pass makes on one scope before leaving it to the next pass. */
const REAP_ATTEMPTS = 3;

/** Returns `scope` when it is a valid ledger scope key; throws a `ProtocolError` otherwise. */
export function assertBudgetScope(scope: unknown): string {
  if (typeof scope !== 'string' || !SCOPE_PATTERN.test(scope)) {
    const shown = typeof scope === 'string' ? JSON.stringify(scope.slice(0, 80)) : typeof scope;
    throw new ProtocolError(
      `invalid budget scope ${shown}: expected run.<id>, agent.<id>, role.<id>, tenant.<id> or global`,
      { details: { field: 'scope' } },
    );
  }
  return scope;
}

/** The sorted ledger scope keys of a step (`run.<id>`, `agent.<id>`, …, `global`). Ids are validated. */
export function budgetScopes(parts: ScopeParts): string[] {
  const out: string[] = [];
  if (parts.runId !== undefined) out.push(`run.${assertId(parts.runId, 'runId')}`);
  if (parts.agentId !== undefined) out.push(`agent.${assertId(parts.agentId, 'agentId')}`);
  if (parts.role !== undefined) out.push(`role.${assertId(parts.role, 'role')}`);
  if (parts.tenant !== undefined) out.push(`tenant.${assertId(parts.tenant, 'tenant')}`);
  if (parts.global !== false) out.push('global');
  return out.sort();
}

/** The reservations of `doc` whose lease ended at or before `now` (carves never expire). */
function expiredOf(doc: ScopeDoc, now: number): [string, Reservation][] {
  return Object.entries(doc.reservations).filter(
    ([, r]) => r.expiresAt !== null && r.expiresAt <= now,
  );
}

function reservedOf(doc: ScopeDoc): Amount {
  let sum = zero();
  for (const r of Object.values(doc.reservations)) sum = add(sum, r.amount);
  return sum;
}

function without<V>(rec: Record<string, V>, keys: readonly string[]): Record<string, V> {
  return Object.fromEntries(Object.entries(rec).filter(([k]) => !keys.includes(k)));
}

function emptyDoc(): ScopeDoc {
  return { v: 1, cap: {}, committed: zero(), reservations: {}, settled: [] };
}

function cloneDoc(doc: ScopeDoc): ScopeDoc {
  return {
    ...doc,
    committed: { ...doc.committed },
    reservations: { ...doc.reservations },
    settled: [...doc.settled],
  };
}

export type Fit = { ok: true } | Extract<ReserveResult, { ok: false }>;

function fits(scope: string, doc: ScopeDoc, amount: Amount): Fit {
  if (doc.sealed) {
    return {
      ok: false,
      scope,
      dimension: 'sealed',
      cap: 0,
      wouldBe: 0,
      requested: 0,
      committed: 0,
      reserved: 0,
    };
  }
  return fitsCap(scope, doc.cap, doc.committed, reservedOf(doc), amount);
}

function unavailable(what: string, cause: unknown): ReinsError {
  if (cause instanceof ReinsError) return cause;
  return new UnavailableError(`budget ledger unavailable: ${what}`, { cause });
}

/** Reserved grants a ledger remembers until their settle. */
const GRANT_CACHE_SIZE = 10_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Snapshot {
  doc: ScopeDoc | null;
  /** KV revision, 0 when the key does not exist (or was deleted: create handles that). */
  rev: number;
}

type Mutation<T> = { result: T; write?: ScopeDoc };

/**
 * What one ledger instance counted since it was opened (read `BudgetLedger.stats`). For
 * benchmarks and metrics: how much the shared scopes are contended.
 */
export interface BudgetLedgerStats {
  /** Scope writes (compare-and-set) that landed: reservations, settles, carves, caps, reaps. */
  readonly casWrites: number;
  /**
   * Compare-and-set writes that lost to another writer (another ledger, or a concurrent call
   * of this one) and were retried on a fresh read — or, in the reaper, left to its next pass.
   * Scope writes and grant-record settles both count.
   */
  readonly casConflicts: number;
}

/**
 * Budget ledger over JetStream KV with compare-and-set: reserve before spend, settle after,
 * reap what crashed holders left behind. Any number of ledgers (processes, connections) may
 * share the buckets. Every KV failure surfaces as a retryable `UnavailableError` — callers deny
 * (fail closed). Pass a connection opened with `noAsyncTraces: true` for speed.
 */
export class BudgetLedger {
  readonly #kv: KV;
  readonly #grants: KV;
  readonly #jsm: JetStreamManager;
  /** Stream and subject prefix of the scope bucket, for listing its keys. */
  readonly #stream: string;
  readonly #subjectPrefix: string;
  /** The tail of each scope's queue of read-modify-writes (see `#mutate`). */
  readonly #queues = new Map<string, Promise<void>>();
  readonly #cache = new Map<string, { doc: ScopeDoc; rev: number }>();
  /**
   * Grants this ledger reserved, as written: the settle that usually follows (on this
   * supervisor) skips a read. A stale entry only costs a failed CAS and a fresh read.
   */
  readonly #grantCache = new BoundedMap<string, { record: GrantRecord; rev: number }>(
    GRANT_CACHE_SIZE,
  );
  readonly #maxAttempts: number;
  readonly #casDeadlineMs: number;
  readonly #ring: number;
  readonly #now: () => number;
  readonly #stats = { casWrites: 0, casConflicts: 0 };

  private constructor(
    kv: KV,
    grants: KV,
    jsm: JetStreamManager,
    bucket: string,
    options: BudgetLedgerOptions,
  ) {
    this.#kv = kv;
    this.#grants = grants;
    this.#jsm = jsm;
    this.#stream = `KV_${bucket}`;
    this.#subjectPrefix = `$KV.${bucket}.`;
    this.#maxAttempts = options.maxAttempts ?? 100;
    this.#casDeadlineMs = options.casDeadlineMs ?? 5_000;
    this.#ring = options.settledRing ?? 128;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Opens (creating when missing) the ledger buckets on a connection. Throws an
   * `UnavailableError` when JetStream cannot be reached.
   */
  static async open(nc: NatsConnection, options: BudgetLedgerOptions = {}): Promise<BudgetLedger> {
    const js: JetStreamClient = jetstream(nc, { timeout: options.opTimeoutMs ?? 2_000 });
    const kvm = new Kvm(js);
    try {
      const replicas = options.replicas ?? 1;
      const bucket = options.bucket ?? Buckets.budget;
      const kv = await kvm.create(bucket, { history: 1, replicas });
      const grants = await kvm.create(options.grantsBucket ?? GRANTS_BUCKET, {
        history: 1,
        replicas,
        ttl: options.grantRetentionMs ?? 7 * 24 * 3600_000,
      });
      const jsm = await js.jetstreamManager(false);
      return new BudgetLedger(kv, grants, jsm, bucket, options);
    } catch (err) {
      throw unavailable('cannot open the ledger buckets', err);
    }
  }

  /** Counters since this ledger was opened (a copy; see `BudgetLedgerStats`). */
  get stats(): BudgetLedgerStats {
    return { ...this.#stats };
  }

  /** Sets (replaces) the cap of a scope. Lowering a cap below what is used denies new reservations. */
  async setCap(scope: string, cap: z.input<typeof Budget>): Promise<void> {
    assertBudgetScope(scope);
    const parsed = parse(Budget, cap, 'budget cap');
    await this.#mutate(scope, (doc) => {
      const next = cloneDoc(doc ?? emptyDoc());
      next.cap = parsed;
      return { result: undefined, write: next };
    });
  }

  /**
   * Reserves `amount` on every scope, all or nothing. Returns `{ ok: true }` or the first
   * scope and dimension that refused; nothing stays reserved on a refusal. Reserving again
   * with the same grant id, scopes and amount is a no-op (safe retry). Throws a
   * `ProtocolError` for bad input, a `ConflictError` when the grant id is taken by another
   * reservation or contention did not settle in time, and an `UnavailableError` when KV fails.
   */
  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    const grantId = assertId(req.grantId, 'grantId');
    const scopes = [...new Set(req.scopes.map(assertBudgetScope))].sort();
    if (scopes.length === 0) throw new ProtocolError('reserve: no scopes');
    const amount = fromUsage(req.amount, 'reservation amount');
    if (!Number.isInteger(req.leaseMs) || req.leaseMs <= 0 || req.leaseMs > MAX_LEASE_MS) {
      throw new ProtocolError(`reserve: leaseMs must be an integer in 1..${MAX_LEASE_MS}`);
    }
    const expiresAt = this.#now() + req.leaseMs;
    const record: GrantRecord = { scopes, amount, expiresAt, state: 'reserved' };
    // The grant record and the scope reservations are written concurrently (one round trip
    // less); the reservation is only reported once both landed. A reservation whose grant
    // record is missing (crash in between) expires with its lease like any other.
    const created = this.#createGrant(grantId, record).then(
      (at) => ({ ok: true as const, at }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    /** Scopes that hold this grant's reservation (rolled back on a refusal). */
    const taken: string[] = [];
    /** Of those, the ones this call wrote (rolled back when the grant id is someone else's). */
    const wrote: string[] = [];
    let refused: Extract<ReserveResult, { ok: false }> | undefined;
    try {
      for (const scope of scopes) {
        const r = await this.#mutate<{ fit: Fit; wrote: boolean }>(scope, (doc) => {
          const current = doc ?? emptyDoc();
          if (current.reservations[grantId]) return { result: { fit: { ok: true }, wrote: false } };
          const f = fits(scope, current, amount);
          if (!f.ok) return { result: { fit: f, wrote: false } };
          const next = cloneDoc(current);
          next.reservations[grantId] = { amount, expiresAt };
          return { result: { fit: f, wrote: true }, write: next };
        });
        if (r.wrote) wrote.push(scope);
        if (!r.fit.ok) {
          refused = r.fit;
          break;
        }
        taken.push(scope);
      }
    } catch (err) {
      // Best effort; what cannot be rolled back now expires with its lease. When the grant id
      // turned out to be someone else's, their reservations stay.
      const c = await created;
      this.#grantCache.delete(grantId);
      await this.#rollback(grantId, c.ok ? taken : wrote).catch(() => undefined);
      throw err;
    }
    const c = await created;
    if (!c.ok) {
      // The grant id is taken by another reservation (or the record could not be written):
      // undo only what this call reserved.
      await this.#rollback(grantId, wrote).catch(() => undefined);
      throw c.err;
    }
    if (refused) {
      this.#grantCache.delete(grantId);
      await this.#rollback(grantId, taken);
      await this.#grants.delete(grantId).catch(() => undefined);
      return refused;
    }
    return { ok: true, expiresAt: c.at };
  }

  /**
   * Commits what a granted call really used and releases its reservation. Settling the same
   * grant again counts once (`duplicate: true`). A reservation the reaper already charged in
   * full is corrected to the actual spend (`reaped: true`), and actual usage above the
   * reservation is committed as is (`overshoot`). An unknown grant id (never
   * reserved, refused, or older than the retention) answers `settled: false`.
   */
  async settle(grantId: string, actual: z.input<typeof Usage>): Promise<SettleResult> {
    assertId(grantId, 'grantId');
    const amount = fromUsage(actual, 'actual usage');
    const remembered = this.#grantCache.get(grantId);
    this.#grantCache.delete(grantId);
    let entry = remembered ?? (await this.#getGrant(grantId));
    if (!entry) return { settled: false, duplicate: false, reaped: false };
    if (entry.record.state === 'settled') return { settled: true, duplicate: true, reaped: false };
    let reaped = false;
    // A remembered record may be stale (settled elsewhere): it is trusted only while the scopes
    // still hold its reservation; otherwise the record is read afresh before anything counts.
    let trusted = remembered === undefined;
    const scopes = entry.record.scopes;
    for (let i = 0; i < scopes.length; i++) {
      const scope = scopes[i] as string;
      const charged = entry.record.amount;
      const applied = await this.#mutate<'dup' | 'ok' | 'reaped' | 'unverified'>(scope, (doc) => {
        const current = doc ?? emptyDoc();
        if (current.settled.includes(grantId)) return { result: 'dup' };
        if (!trusted && current.reservations[grantId] === undefined)
          return { result: 'unverified' };
        const next = cloneDoc(current);
        const held = next.reservations[grantId] !== undefined;
        next.reservations = without(next.reservations, [grantId]);
        // Held: commit the actual. Reaped: the reaper charged the reserved amount; correct it
        // to the actual (up when the call overshot, down otherwise).
        next.committed = held
          ? add(next.committed, amount)
          : subClip(add(next.committed, amount), charged);
        next.settled.push(grantId);
        if (next.settled.length > this.#ring)
          next.settled.splice(0, next.settled.length - this.#ring);
        return { result: held ? 'ok' : 'reaped', write: next };
      });
      if (applied === 'unverified') {
        entry = await this.#getGrant(grantId);
        if (!entry) return { settled: false, duplicate: false, reaped: false };
        if (entry.record.state === 'settled')
          return { settled: true, duplicate: true, reaped: false };
        trusted = true;
        i--;
        continue;
      }
      if (applied === 'reaped') reaped = true;
    }
    // Mark the grant settled; whoever wins this CAS reports the settle, others a duplicate.
    for (;;) {
      const rec: GrantRecord = {
        ...entry.record,
        state: 'settled',
        actual: amount,
        settledAt: this.#now(),
      };
      try {
        await this.#grants.update(grantId, encoder.encode(JSON.stringify(rec)), entry.rev);
        break;
      } catch (err) {
        if (!isCasConflict(err)) throw unavailable('cannot mark the grant settled', err);
        this.#stats.casConflicts++;
        const again = await this.#getGrant(grantId);
        if (!again || again.record.state === 'settled') {
          return { settled: true, duplicate: true, reaped };
        }
        entry = again;
      }
    }
    const over: Partial<LedgerAmount> = {};
    const diff = toUser(subClip(amount, entry.record.amount));
    for (const d of DIMENSIONS) if (diff[d] > 0) over[d] = diff[d];
    const result: SettleResult = { settled: true, duplicate: false, reaped };
    if (Object.keys(over).length > 0) result.overshoot = over;
    return result;
  }

  /**
   * Charges every reservation whose lease ended at or before `now` (no settle came: its holder
   * crashed, or the settle was lost) in full to its scope — fail closed: an unsettled call may
   * have been made — and reports them; a settle that still arrives corrects the charge to the
   * actual. Scans every scope key: run it from a background reaper, not a hot path.
   *
   * A pass is bounded: it lists the scopes once (a snapshot, not a live consumer), reads them
   * all, and only writes the scopes that hold an expired reservation, each with a few quick CAS
   * attempts. A scope that stays contended is skipped (its reservations are still expired, so
   * the next pass returns them) instead of backing off for seconds, so several reapers on one
   * bucket neither stall each other nor starve the reservers. A corrupt scope is reported to
   * `onError` and skipped; a KV failure ends the pass with an `UnavailableError`. An aborted
   * `signal` ends the pass at the next KV operation and returns what was reaped so far.
   */
  async reap(now: number = this.#now(), options: ReapOptions = {}): Promise<ReapedReservation[]> {
    const { reaped, error } = await this.#reapPass(now, options);
    if (error !== undefined) throw error;
    return reaped;
  }

  /**
   * Runs `reap()` about every `intervalMs` (jittered, so reapers sharing a bucket spread out;
   * never two passes at once) until stopped. Failures go to `onError` and the next pass tries
   * again. `stop()` aborts a running pass at its next KV operation, so it resolves within about
   * one operation timeout; reservations reaped by that pass are still reported to `onReaped`.
   */
  startReaper(intervalMs: number, options: ReaperOptions = {}): Reaper {
    if (!(intervalMs > 0)) throw new ProtocolError('startReaper: intervalMs must be positive');
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let running: Promise<void> = Promise.resolve();
    const abort = new AbortController();
    const report = (fn: (() => void) | undefined) => {
      try {
        fn?.();
      } catch {
        // A throwing callback must not end the loop.
      }
    };
    const schedule = () => {
      if (stopped) return;
      timer = setTimeout(tick, intervalMs * (0.5 + Math.random()));
      timer.unref();
    };
    const tick = () => {
      running = (async () => {
        const { reaped, error } = await this.#reapPass(this.#now(), {
          signal: abort.signal,
          ...(options.onError ? { onError: options.onError } : {}),
        });
        if (reaped.length > 0) report(() => options.onReaped?.(reaped));
        if (error !== undefined && !abort.signal.aborted) report(() => options.onError?.(error));
        schedule();
      })();
    };
    schedule();
    const stop = async () => {
      stopped = true;
      clearTimeout(timer);
      abort.abort();
      await running;
    };
    return { stop, [Symbol.asyncDispose]: stop };
  }

  /** The current state of a scope (a fresh read). A scope never written reports zeros and no cap. */
  async get(scope: string): Promise<ScopeReport> {
    assertBudgetScope(scope);
    const { doc } = await this.#read(scope);
    const d = doc ?? emptyDoc();
    return {
      scope,
      cap: d.cap,
      committed: toUser(d.committed),
      reserved: toUser(reservedOf(d)),
      reservations: Object.keys(d.reservations).length,
      sealed: d.sealed !== undefined,
    };
  }

  /**
   * Carves a child budget out of a parent scope: reserves `budget` on the parent (no lease:
   * it lives until `releaseCarve`) and makes it the child's cap, all or nothing. Every
   * dimension the parent caps must be given in `budget` (else `ProtocolError`), so a child can
   * never spend what the parent does not hold for it. Carving again with the same budget is a
   * no-op (safe retry). Answers like `reserve`.
   */
  async carve(
    parentScope: string,
    childScope: string,
    budget: z.input<typeof Budget>,
  ): Promise<ReserveResult> {
    assertBudgetScope(parentScope);
    assertBudgetScope(childScope);
    if (parentScope === childScope) throw new ProtocolError('carve: parent and child are the same');
    const cap = parse(Budget, budget, 'carved budget');
    const amount = fromBudget(cap);
    const key = `carve:${childScope}`;
    const fit = await this.#mutate<Fit>(parentScope, (doc) => {
      const current = doc ?? emptyDoc();
      const missing = DIMENSIONS.filter(
        (d) => capOf(current.cap, d) !== undefined && capOf(cap, d) === undefined,
      );
      if (missing.length > 0) {
        throw new ProtocolError(
          `carve: ${parentScope} caps ${missing.join(', ')}; the child budget must set them too`,
          { details: { missing } },
        );
      }
      const existing = current.reservations[key];
      if (existing) {
        if (JSON.stringify(existing.amount) === JSON.stringify(amount))
          return { result: { ok: true } };
        throw new ConflictError(
          `carve: ${childScope} already holds another carve of ${parentScope}`,
        );
      }
      const f = fits(parentScope, current, amount);
      if (!f.ok) return { result: f };
      const next = cloneDoc(current);
      next.reservations[key] = { amount, expiresAt: null };
      return { result: f, write: next };
    });
    if (!fit.ok) return fit;
    try {
      await this.#mutate(childScope, (doc) => {
        const current = doc ?? emptyDoc();
        if (current.sealed) throw new ConflictError(`carve: ${childScope} was already released`);
        const next = cloneDoc(current);
        next.cap = cap;
        return { result: undefined, write: next };
      });
    } catch (err) {
      await this.#rollback(key, [parentScope]).catch(() => undefined);
      throw err;
    }
    return { ok: true, expiresAt: null };
  }

  /**
   * Ends a child carve: seals the child (no new reservations), commits what it used on the
   * parent and returns the rest. Reservations still open on the child count as used. Calling
   * it again is a no-op (`released: false`). Settles that arrive on the child after release
   * are committed on the child only.
   */
  async releaseCarve(parentScope: string, childScope: string): Promise<ReleaseCarveResult> {
    assertBudgetScope(parentScope);
    assertBudgetScope(childScope);
    const used = await this.#mutate<Amount>(childScope, (doc) => {
      const current = doc ?? emptyDoc();
      if (current.sealed) return { result: current.sealed.used };
      const next = cloneDoc(current);
      const u = add(current.committed, reservedOf(current));
      next.sealed = { used: u };
      return { result: u, write: next };
    });
    const key = `carve:${childScope}`;
    const carved = await this.#mutate<Amount | null>(parentScope, (doc) => {
      const r = doc?.reservations[key];
      if (!doc || !r) return { result: null };
      const next = cloneDoc(doc);
      next.reservations = without(next.reservations, [key]);
      next.committed = add(next.committed, used);
      return { result: r.amount, write: next };
    });
    return {
      released: carved !== null,
      used: toUser(used),
      returned: toUser(carved ? subClip(carved, used) : zero()),
    };
  }

  async #createGrant(grantId: string, record: GrantRecord): Promise<number> {
    try {
      const rev = await this.#grants.create(grantId, encoder.encode(JSON.stringify(record)));
      this.#grantCache.set(grantId, { record, rev });
      return record.expiresAt;
    } catch (err) {
      if (!isCasConflict(err)) throw unavailable('cannot record the grant', err);
    }
    const existing = await this.#getGrant(grantId);
    if (
      existing?.record.state === 'reserved' &&
      JSON.stringify(existing.record.scopes) === JSON.stringify(record.scopes) &&
      JSON.stringify(existing.record.amount) === JSON.stringify(record.amount)
    ) {
      return existing.record.expiresAt; // a retry of the same reservation
    }
    throw new ConflictError(`grant id ${grantId} is already used`, { retryable: false });
  }

  async #getGrant(grantId: string): Promise<{ record: GrantRecord; rev: number } | null> {
    let e;
    try {
      e = await this.#grants.get(grantId);
    } catch (err) {
      throw unavailable('cannot read the grant', err);
    }
    if (!e || e.operation !== 'PUT') return null;
    return { record: this.#decode(GrantRecord, e.value, `grant ${grantId}`), rev: e.revision };
  }

  async #rollback(id: string, scopes: readonly string[]): Promise<void> {
    for (const scope of scopes) {
      await this.#mutate(scope, (doc) => {
        if (!doc?.reservations[id]) return { result: undefined };
        const next = cloneDoc(doc);
        next.reservations = without(next.reservations, [id]);
        return { result: undefined, write: next };
      });
    }
  }

  #decode<S extends z.ZodType>(schema: S, bytes: Uint8Array, what: string): z.output<S> {
    let raw: unknown;
    try {
      raw = JSON.parse(decoder.decode(bytes));
    } catch (cause) {
      throw new UnavailableError(`budget ledger: ${what} is corrupt`, { cause, retryable: false });
    }
    const r = schema.safeParse(raw);
    if (!r.success) {
      throw new UnavailableError(`budget ledger: ${what} is corrupt`, {
        cause: r.error,
        retryable: false,
      });
    }
    return r.data;
  }

  async #read(scope: string): Promise<Snapshot> {
    let e;
    try {
      e = await this.#kv.get(scope);
    } catch (err) {
      throw unavailable(`cannot read ${scope}`, err);
    }
    if (!e || e.operation !== 'PUT') return { doc: null, rev: 0 };
    return { doc: this.#decode(ScopeDoc, e.value, `scope ${scope}`), rev: e.revision };
  }

  /** Caches a doc just written. Bounded, least recently written first out: a miss only costs a read. */
  #remember(scope: string, doc: ScopeDoc, rev: number): void {
    this.#cache.delete(scope);
    this.#cache.set(scope, { doc, rev });
    if (this.#cache.size > CACHE_MAX) {
      const oldest = this.#cache.keys().next();
      if (!oldest.done) this.#cache.delete(oldest.value);
    }
  }

  /**
   * The scope keys of the bucket, from one stream-info snapshot (paged by the client). Not
   * `kv.keys()`: its ordered consumer only ends on a message with nothing pending or on an idle
   * heartbeat, so under a steady stream of writes a listing can run for tens of seconds.
   */
  async #listScopes(): Promise<string[]> {
    let subjects: Record<string, number>;
    try {
      const info = await this.#jsm.streams.info(this.#stream, {
        subjects_filter: `${this.#subjectPrefix}>`,
      });
      subjects = info.state.subjects ?? {};
    } catch (err) {
      throw unavailable('cannot list scopes', err);
    }
    return Object.keys(subjects)
      .filter((s) => s.startsWith(this.#subjectPrefix))
      .map((s) => s.slice(this.#subjectPrefix.length))
      .filter((k) => SCOPE_PATTERN.test(k));
  }

  /**
   * One reap pass (see `reap`). Never throws: a failure that ends the pass comes back as
   * `error`, next to what was reaped before it.
   */
  async #reapPass(
    now: number,
    options: ReapOptions,
  ): Promise<{ reaped: ReapedReservation[]; error?: ReinsError }> {
    const { signal, onError } = options;
    const reaped: ReapedReservation[] = [];
    const skip = (err: unknown): boolean => {
      // A corrupt doc (not retryable) is that scope's problem; anything else ends the pass.
      if (!(err instanceof UnavailableError) || err.retryable) return false;
      try {
        onError?.(err);
      } catch {
        // ignore a throwing callback
      }
      return true;
    };
    let error: ReinsError | undefined;
    const fail = (err: unknown) => {
      error ??= unavailable('reap pass failed', err);
    };
    try {
      const scopes = await this.#listScopes();
      // Read everything first (a few reads in flight), keep what holds an expired reservation.
      const due: { scope: string; snap: Snapshot }[] = [];
      let next = 0;
      const reader = async () => {
        while (error === undefined && !signal?.aborted) {
          const scope = scopes[next++];
          if (scope === undefined) return;
          try {
            const snap = await this.#read(scope);
            if (snap.doc && expiredOf(snap.doc, now).length > 0) due.push({ scope, snap });
          } catch (err) {
            if (!skip(err)) fail(err);
          }
        }
      };
      await Promise.all(
        Array.from({ length: Math.min(REAP_READ_CONCURRENCY, scopes.length) }, reader),
      );
      // Write only those, in random order so reapers sharing the bucket rarely collide.
      for (let i = due.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1));
        const a = due[i];
        const b = due[j];
        if (a && b) [due[i], due[j]] = [b, a];
      }
      for (const { scope, snap } of due) {
        if (error !== undefined || signal?.aborted) break;
        try {
          reaped.push(...(await this.#reapScope(scope, snap, now, signal)));
        } catch (err) {
          if (!skip(err)) fail(err);
        }
      }
    } catch (err) {
      fail(err);
    }
    return error === undefined ? { reaped } : { reaped, error };
  }

  /**
   * Removes the expired reservations of one scope, starting from a doc already read. A few
   * quick CAS attempts; a scope still contended after them is left to the next pass.
   */
  async #reapScope(
    scope: string,
    first: Snapshot,
    now: number,
    signal: AbortSignal | undefined,
  ): Promise<ReapedReservation[]> {
    let snap = first;
    for (let attempt = 0; ; attempt++) {
      if (!snap.doc) return [];
      const expired = expiredOf(snap.doc, now);
      if (expired.length === 0) return [];
      const next = cloneDoc(snap.doc);
      next.reservations = without(
        next.reservations,
        expired.map(([id]) => id),
      );
      // Fail closed: a reservation nobody settled is charged in full, as if spent. Its holder
      // may have crashed after the model call, or the settle was lost: returning it would let
      // the run spend past its cap. A settle that still comes corrects it to the actual.
      for (const [, r] of expired) next.committed = add(next.committed, r.amount);
      try {
        const rev = await this.#kv.update(scope, encoder.encode(JSON.stringify(next)), snap.rev);
        this.#stats.casWrites++;
        this.#remember(scope, next, rev);
        return expired.map(([grantId, r]) => ({
          scope,
          grantId,
          amount: toUser(r.amount),
          expiresAt: r.expiresAt ?? 0,
        }));
      } catch (err) {
        this.#cache.delete(scope);
        if (!isCasConflict(err)) throw unavailable(`cannot write ${scope}`, err);
        this.#stats.casConflicts++;
      }
      if (attempt + 1 >= REAP_ATTEMPTS || signal?.aborted) return [];
      await sleep(backoffDelay(attempt));
      snap = await this.#read(scope);
    }
  }

  /**
   * The CAS loop every scope write goes through. `fn` sees the current doc and returns the
   * result plus, when something changes, the next doc. A write only lands on the revision `fn`
   * saw; on a conflict the doc is re-read and `fn` runs again (jittered backoff). A cached doc
   * saves the read in the common one-writer-per-key case; an answer that needs no write is only
   * trusted from a fresh read.
   */
  /**
   * One read-modify-write of a scope at a time per key in this process: concurrent ones queue
   * up behind it, and each starts from the document the previous one wrote (cached), so this
   * process's own callers never lose a compare-and-set to each other — only other processes'
   * writes cause conflicts (then: re-read, retry with backoff).
   */
  #mutate<T>(scope: string, fn: (doc: ScopeDoc | null) => Mutation<T>, fresh = false): Promise<T> {
    const previous = this.#queues.get(scope) ?? Promise.resolve();
    const run = previous.then(() => this.#mutateNow(scope, fn, fresh));
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#queues.set(scope, tail);
    void tail.then(() => {
      if (this.#queues.get(scope) === tail) this.#queues.delete(scope);
    });
    return run;
  }

  async #mutateNow<T>(
    scope: string,
    fn: (doc: ScopeDoc | null) => Mutation<T>,
    fresh: boolean,
  ): Promise<T> {
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      const cached = fresh || attempt > 0 ? undefined : this.#cache.get(scope);
      const snap: Snapshot = cached ?? (await this.#read(scope));
      const out = fn(snap.doc);
      if (!out.write) {
        if (cached) continue; // confirm against a fresh read
        return out.result;
      }
      const bytes = encoder.encode(JSON.stringify(out.write));
      try {
        const rev =
          snap.rev === 0
            ? await this.#kv.create(scope, bytes)
            : await this.#kv.update(scope, bytes, snap.rev);
        this.#stats.casWrites++;
        this.#remember(scope, out.write, rev);
        return out.result;
      } catch (err) {
        this.#cache.delete(scope);
        if (!isCasConflict(err)) throw unavailable(`cannot write ${scope}`, err);
        this.#stats.casConflicts++;
      }
      if (attempt + 1 >= this.#maxAttempts || Date.now() - started > this.#casDeadlineMs) {
        throw new ConflictError(`budget ledger: too much contention on ${scope}; retry`, {
          details: { scope, attempts: attempt + 1 },
        });
      }
      await sleep(backoffDelay(attempt));
    }
  }
}
