import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import type { KV, KvWatchEntry } from '@nats-io/kv';
import { Buckets, ProtocolError, type Heartbeat } from '@reins/protocol';
import {
  bucketKeys,
  decodePresence,
  listAgents,
  presenceOf,
  type AgentPresence,
  type Logger,
  type PresenceFilter,
  type Runtime,
} from '@reins/runtime';

/** Options of `PresenceView.start`. */
export interface PresenceViewOptions {
  /**
   * Keep presence in memory (default: `REINS_PRESENCE_WATCH`, `on` unless set to `off`). Off,
   * every question is a listing, as before the view: an operator's way back, and the bench's
   * baseline.
   */
  watch?: boolean;
  /**
   * How long a question waits for the watch to catch up with the bucket before it is answered
   * by a listing instead (default 500 ms).
   */
  catchUpMs?: number;
  /** Deadline of a fallback listing (default 5 s; see `listAgents`). */
  listTimeoutMs?: number;
  /** Delay before a watch that ended is started again (default 1 s). */
  restartMs?: number;
  /**
   * For tests only: hold every watch delivery back this long, as a loaded process would, so
   * that the catch-up barrier has something to wait for.
   */
  deliveryDelayMs?: number;
}

/**
 * A presence key as last seen (by the watch or a listing), with the stream sequence of that
 * value (`value: null`: deleted — kept, as the bucket keeps its delete marker, so that a listing
 * neither reads it again nor brings it back). Decoded on the first question that needs it.
 */
interface Entry {
  rev: number;
  value: Uint8Array | null;
  /** Decoded heartbeat (`null`: unreadable, skipped as a listing skips it). */
  hb?: Heartbeat | null;
}

/** `REINS_PRESENCE_WATCH`: `on` (default) or `off`; anything else stops the process naming it. */
function watchFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env['REINS_PRESENCE_WATCH'];
  if (v === undefined || v === '' || v === 'on') return true;
  if (v === 'off') return false;
  throw new ProtocolError(
    `invalid configuration:\n  REINS_PRESENCE_WATCH: expected on or off, got ${v}`,
    {
      details: { variables: ['REINS_PRESENCE_WATCH'] },
    },
  );
}

/** A question waiting for the watch to deliver sequence `seq`. */
interface Waiter {
  seq: number;
  resolve: (caughtUp: boolean) => void;
}

/** How the view answered so far (for tests and diagnostics). */
export interface PresenceViewStats {
  /** Questions answered from memory after the barrier. */
  watched: number;
  /** Questions answered by a listing (watch down, not ready or not caught up in time). */
  listed: number;
  /** Listings of the bucket's keys merged into the view (at start, after skipped writes). */
  relisted: number;
}

/**
 * The agents in presence (KV `reins_agents`), kept in memory, so a halt or resume does not list
 * ~1,000 keys (one stream info and one KV read per agent) each time. Answers with the same rules
 * as `listAgents` (`presenceOf`: lost once the heartbeat expired, stopped left out unless asked
 * for).
 *
 * How it stays complete: the watch starts right after the stream's last sequence L read before
 * it (`resumeFromRevision`, one filter: nats-server 2.9 takes no more), so it delivers every
 * presence write after L in order; the keys as they were up to L come from one listing, merged
 * by sequence. Consecutive writes have consecutive sequences (every message of the stream is a
 * presence write), so a delivery that skips some (messages superseded before the watch got to
 * them: it lagged) is noticed, and the view is listed again before it answers.
 *
 * As correct as a listing: before answering, a question reads the sequence of the bucket's last
 * message (one read on the stream leader) and waits until the view has it — a barrier, so every
 * presence write acknowledged before the question (an agent that started a moment ago) is in the
 * answer. Fail safe: while the watch is down (not started, ended and not restarted yet) or when
 * the view does not catch up (still listing, lagging) within `catchUpMs`, the question is
 * answered by `listAgents`; a watch that did not catch up is started afresh.
 */
export class PresenceView {
  readonly #runtime: Runtime;
  readonly #jsm: JetStreamManager;
  readonly #kv: KV;
  readonly #logger: Logger;
  readonly #catchUpMs: number;
  readonly #listTimeoutMs: number;
  readonly #restartMs: number;
  readonly #delayMs: number;
  readonly #entries = new Map<string, Entry>();
  /** The view holds every presence write up to this stream sequence (once `#ready`). */
  #delivered = 0;
  /** The sequence the watch delivers next, when it skips none. */
  #next = 0;
  /** True once a listing was merged since the watch started or skipped writes. */
  #ready = false;
  /** The epoch of the listing in flight, if any; `#again`: another was asked for meanwhile. */
  #listingEpoch: number | undefined;
  #again = false;
  #watching = false;
  #stopped = false;
  /** A watch is being created. */
  #starting = false;
  #epoch = 0;
  #stopWatch: (() => void) | undefined;
  #restartTimer: NodeJS.Timeout | undefined;
  /** Questions waiting for the watch to reach a sequence. */
  #waiters: Waiter[] = [];
  readonly stats: PresenceViewStats = { watched: 0, listed: 0, relisted: 0 };

  private constructor(
    runtime: Runtime,
    jsm: JetStreamManager,
    kv: KV,
    logger: Logger,
    options: PresenceViewOptions,
  ) {
    this.#runtime = runtime;
    this.#jsm = jsm;
    this.#kv = kv;
    this.#logger = logger;
    this.#catchUpMs = options.catchUpMs ?? 500;
    this.#listTimeoutMs = options.listTimeoutMs ?? 5_000;
    this.#restartMs = options.restartMs ?? 1_000;
    this.#delayMs = options.deliveryDelayMs ?? 0;
  }

  /**
   * Opens the view over `runtime`'s presence bucket and starts its watch. A watch that cannot
   * be started is retried in the background; until then questions are answered by listings.
   */
  static async start(
    runtime: Runtime,
    options: PresenceViewOptions & { logger?: Logger } = {},
  ): Promise<PresenceView> {
    const jsm = await jetstreamManager(runtime.nc, { checkAPI: false });
    const kv = await runtime.agentsBucket();
    const view = new PresenceView(runtime, jsm, kv, options.logger ?? runtime.logger, options);
    if (options.watch ?? watchFromEnv()) await view.#watch();
    else view.#stopped = true;
    return view;
  }

  /** The agents in presence, as `listAgents(runtime, filter)` would list them now. */
  async agents(filter: PresenceFilter = {}): Promise<AgentPresence[]> {
    const caughtUp = await this.#caughtUp();
    if (caughtUp) {
      this.stats.watched++;
      const beats: Heartbeat[] = [];
      if (caughtUp === 'empty') return [];
      for (const e of this.#entries.values()) {
        if (e.value === null) continue;
        if (e.hb === undefined) e.hb = decodePresence(e.value) ?? null;
        if (e.hb) beats.push(e.hb);
      }
      return presenceOf(beats, filter);
    }
    this.stats.listed++;
    return listAgents(this.#runtime, { ...filter, timeoutMs: this.#listTimeoutMs });
  }

  /** Stops the watch; later questions are answered by listings. Idempotent. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#restartTimer);
    const stop = this.#stopWatch;
    this.#unwatch();
    stop?.();
  }

  /**
   * The barrier: true once the view holds the bucket's last sequence as of now (`empty`: the
   * bucket holds nothing); false when the watch is down or the view does not get there within
   * `catchUpMs`.
   */
  async #caughtUp(): Promise<boolean | 'empty'> {
    if (!this.#watching) return false;
    const epoch = this.#epoch;
    let last: number;
    try {
      const msg = await this.#jsm.streams.getMessage(`KV_${Buckets.agents}`, {
        last_by_subj: `$KV.${Buckets.agents}.>`,
      });
      last = msg?.seq ?? 0;
    } catch (err) {
      this.#logger.debug({ err }, 'presence view: cannot read the last presence sequence');
      return false;
    }
    if (this.#epoch !== epoch || !this.#watching) return false;
    // An empty bucket: nothing to wait for, and nobody is present.
    if (last === 0) return 'empty';
    if (this.#ready && this.#delivered >= last) return true;
    const caughtUp = await new Promise<boolean>((resolve) => {
      const waiter = { seq: last, resolve };
      this.#waiters.push(waiter);
      setTimeout(() => {
        const i = this.#waiters.indexOf(waiter);
        if (i < 0) return;
        this.#waiters.splice(i, 1);
        resolve(false);
        // A watch this far behind has probably stalled (its consumer lost with a server node,
        // say): start it afresh (and list the bucket again).
        this.#renew(epoch);
      }, this.#catchUpMs).unref();
    });
    return caughtUp && this.#epoch === epoch;
  }

  #renew(epoch: number): void {
    if (this.#stopped || this.#epoch !== epoch || !this.#watching) return;
    this.#logger.warn(
      { catchUpMs: this.#catchUpMs },
      'presence view: the presence watch did not catch up in time; starting it again',
    );
    const stop = this.#stopWatch;
    this.#unwatch();
    stop?.();
    void this.#watch();
  }

  async #watch(): Promise<void> {
    if (this.#stopped || this.#watching || this.#starting) return;
    clearTimeout(this.#restartTimer);
    this.#starting = true;
    let w: Awaited<ReturnType<KV['watch']>>;
    let from: number;
    try {
      const info = await this.#jsm.streams.info(`KV_${Buckets.agents}`);
      from = info.state.last_seq + 1;
      w = await this.#kv.watch({ key: '>', resumeFromRevision: from });
    } catch (err) {
      this.#logger.warn({ err }, 'presence view: cannot watch presence; halts list agents');
      this.#restart();
      return;
    } finally {
      this.#starting = false;
    }
    if (this.#stopped) {
      w.stop();
      return;
    }
    this.#unwatch();
    this.#watching = true;
    const epoch = this.#epoch;
    this.#stopWatch = () => w.stop();
    this.#next = from;
    this.#delivered = from - 1;
    this.#requestList(epoch);
    void (async () => {
      try {
        for await (const e of w) {
          if (this.#delayMs > 0) await new Promise((r) => setTimeout(r, this.#delayMs));
          if (this.#epoch !== epoch) break;
          this.#apply(e, epoch);
        }
      } finally {
        if (this.#epoch === epoch) {
          this.#unwatch();
          this.#logger.warn('presence view: the presence watch ended; halts list agents');
          this.#restart();
        }
      }
    })().catch(() => undefined);
  }

  #apply(e: KvWatchEntry, epoch: number): void {
    if (e.revision > this.#next) {
      // Writes superseded before the watch got to them: one of them may have been the first
      // heartbeat of an agent, which only a listing can tell now.
      this.#logger.debug(
        { expected: this.#next, got: e.revision },
        'presence view: the watch skipped writes; listing presence again',
      );
      this.#requestList(epoch);
    }
    this.#next = Math.max(this.#next, e.revision + 1);
    this.#merge(e.key, e.revision, e.operation === 'PUT' ? e.value : null);
    if (e.revision > this.#delivered) this.#delivered = e.revision;
    this.#wake();
  }

  /** Keeps `value` for `key` unless a newer sequence of it is known. */
  #merge(key: string, rev: number, value: Uint8Array | null): void {
    const had = this.#entries.get(key);
    if (had && had.rev >= rev) return;
    this.#entries.set(key, { rev, value });
  }

  /**
   * Asks for the bucket's keys to be listed (one stream info) and the ones the view does not
   * know read and merged: the keys as they were before the watch started, or a key whose only
   * write the watch skipped. The view is not ready until a listing asked for after the last
   * skip is merged (questions wait, then list themselves). One listing runs at a time; asks
   * meanwhile make one more. A listing that fails is tried again.
   */
  #requestList(epoch: number): void {
    this.#ready = false;
    if (this.#listingEpoch === epoch) {
      this.#again = true;
      return;
    }
    this.#listingEpoch = epoch;
    this.#again = false;
    void this.#list(epoch);
  }

  async #list(epoch: number): Promise<void> {
    let ok = false;
    try {
      const keys = await bucketKeys(this.#runtime.nc, Buckets.agents);
      if (this.#epoch !== epoch) return;
      const got = await Promise.all(
        keys.filter((k) => !this.#entries.has(k)).map((k) => this.#kv.get(k)),
      );
      if (this.#epoch !== epoch) return;
      for (const e of got) {
        if (e) this.#merge(e.key, e.revision, e.operation === 'PUT' ? e.value : null);
      }
      this.stats.relisted++;
      ok = true;
    } catch (err) {
      if (this.#epoch !== epoch) return;
      this.#logger.warn({ err }, 'presence view: cannot list presence; trying again');
    } finally {
      if (this.#epoch === epoch) {
        this.#listingEpoch = undefined;
        if (!ok) {
          setTimeout(() => {
            if (this.#epoch === epoch) this.#requestList(epoch);
          }, this.#restartMs).unref();
        } else if (this.#again) this.#requestList(epoch);
        else {
          this.#ready = true;
          this.#wake();
        }
      }
    }
  }

  /** Answers the questions the view now holds the sequence of. */
  #wake(): void {
    if (this.#waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const waiter of this.#waiters) {
      if (this.#ready && waiter.seq <= this.#delivered) waiter.resolve(true);
      else still.push(waiter);
    }
    this.#waiters = still;
  }

  #restart(): void {
    if (this.#stopped) return;
    clearTimeout(this.#restartTimer);
    this.#restartTimer = setTimeout(() => void this.#watch(), this.#restartMs);
    this.#restartTimer.unref();
  }

  #unwatch(): void {
    this.#epoch++;
    this.#watching = false;
    this.#ready = false;
    this.#delivered = 0;
    this.#next = 0;
    this.#listingEpoch = undefined;
    this.#again = false;
    this.#stopWatch = undefined;
    this.#entries.clear();
    for (const waiter of this.#waiters) waiter.resolve(false);
    this.#waiters = [];
  }
}
