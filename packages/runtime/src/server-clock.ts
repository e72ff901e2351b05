import type { KV } from '@nats-io/kv';
import { ClosedConnectionError } from '@nats-io/transport-node';
import { ProtocolError, UnavailableError } from '@reins/protocol';

/** One measurement of the local clock against the NATS server's. */
interface ClockSample {
  /** Server clock minus local clock, in milliseconds. */
  offsetMs: number;
  /** Round trip of the probe write; the offset is right to within half of it (plus 1 ms). */
  roundTripMs: number;
}

/** Options of `ServerClock.start`. */
export interface ServerClockOptions {
  /**
   * Key the probe writes in the bucket (default `clock`). Nothing else may use it; clocks of
   * several processes may share it (each reads back its own write by revision).
   */
  key?: string;
  /** Probe writes per measurement; the one with the shortest round trip wins (default 5). */
  samples?: number;
  /** Failed probes after which a measurement gives up (default 3). */
  maxFailures?: number;
  /** Interval of the background measurements (default 30 s, jittered ±20 %); 0 turns them off. */
  refreshMs?: number;
  /**
   * A jump of the local clock (against the monotonic clock) larger than this since the last
   * measurement starts a new measurement at once (default 1000 ms; `Infinity` turns it off).
   */
  jumpMs?: number;
  /** The local clock being corrected (default `Date.now`). Tests inject a skewed one. */
  localNow?: () => number;
  /** Called when a background measurement fails; the last offset stays in use. */
  onError?: (err: unknown) => void;
  /** Aborts the first measurement (`start` rejects with the signal's reason). */
  signal?: AbortSignal;
}

const encoder = new TextEncoder();
/** A probe another process overwrote before it was read back. */
const OVERWRITTEN = Symbol('overwritten');
/** Overwritten probes a measurement retries before it gives up. */
const MAX_COLLISIONS = 50;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Longest background interval (a day; timers overflow past 2^31 ms). */
const MAX_REFRESH_MS = 86_400_000;
/** Least time between two measurements started by clock jumps (they may keep failing). */
const JUMP_RETRY_MS = 1_000;

function positiveInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) {
    throw new ProtocolError(`ServerClock: ${name} must be an integer >= ${min}`);
  }
  return v;
}

/**
 * The NATS server's clock as seen from this process: one clock every process on the server
 * agrees on, whatever the local clocks say. Use it for times other processes compare with their
 * own (budget ledger leases).
 *
 * It measures the offset between the local clock and the server's by writing a key in a
 * JetStream KV bucket and reading back the server's timestamp of that write (`created`): the
 * server stamped it between the local send and the acknowledgement, so offset = created − the
 * midpoint of the two, right to within half the round trip. A measurement keeps the fastest of
 * a few probes; it is repeated in the background (unref'd timers) and at once when the local
 * clock jumps (a step by NTP, a suspended VM). A failed background measurement keeps the last
 * offset and is reported to `onError`. The reference is the clock of the server that leads the
 * bucket's stream; the servers of a cluster are expected to keep their clocks synchronized.
 */
export class ServerClock implements AsyncDisposable {
  readonly #kv: KV;
  readonly #key: string;
  readonly #samples: number;
  readonly #maxFailures: number;
  readonly #refreshMs: number;
  readonly #jumpMs: number;
  readonly #localNow: () => number;
  readonly #onError: ((err: unknown) => void) | undefined;
  readonly #abort = new AbortController();
  #sample: ClockSample;
  /** Local and monotonic clock readings when the sample was taken, to detect local jumps. */
  #localAt = 0;
  #monoAt = 0;
  #lastJumpMeasure = -Infinity;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #stopped = false;

  private constructor(
    kv: KV,
    options: ServerClockOptions,
    config: { key: string; samples: number; maxFailures: number; refreshMs: number },
  ) {
    this.#kv = kv;
    this.#key = config.key;
    this.#samples = config.samples;
    this.#maxFailures = config.maxFailures;
    this.#refreshMs = config.refreshMs;
    this.#jumpMs = options.jumpMs ?? 1_000;
    this.#localNow = options.localNow ?? (() => Date.now());
    this.#onError = options.onError;
    this.#sample = { offsetMs: 0, roundTripMs: 0 };
  }

  /**
   * Measures the server clock on `kv` (a bucket this process may write; only `key` is written)
   * and starts the background measurements. Fails closed: rejects with an `UnavailableError`
   * when no probe succeeded (JetStream unreachable, no permission to write the bucket), so a
   * caller never runs on an unmeasured clock. Throws a `ProtocolError` for bad options.
   */
  static async start(kv: KV, options: ServerClockOptions = {}): Promise<ServerClock> {
    const key = options.key ?? 'clock';
    if (!/^[-/=\w]+(?:\.[-/=\w]+)*$/.test(key)) {
      throw new ProtocolError(`ServerClock: invalid key ${JSON.stringify(key.slice(0, 80))}`);
    }
    const refreshMs = options.refreshMs ?? 30_000;
    if (!(refreshMs === 0 || (refreshMs >= 10 && refreshMs <= MAX_REFRESH_MS))) {
      throw new ProtocolError(`ServerClock: refreshMs must be 0 or in 10..${MAX_REFRESH_MS}`);
    }
    if (options.jumpMs !== undefined && !(options.jumpMs > 0)) {
      throw new ProtocolError('ServerClock: jumpMs must be positive');
    }
    const clock = new ServerClock(kv, options, {
      key,
      samples: positiveInt('samples', options.samples ?? 5, 1),
      maxFailures: positiveInt('maxFailures', options.maxFailures ?? 3, 1),
      refreshMs,
    });
    clock.#adopt(await clock.#measure(options.signal));
    clock.#schedule();
    return clock;
  }

  /** The server's current time in epoch milliseconds (an integer): local clock + offset. */
  now(): number {
    const local = this.#localNow();
    this.#checkJump(local);
    return Math.round(local + this.#sample.offsetMs);
  }

  /** Server clock minus local clock, from the last successful measurement. */
  get offsetMs(): number {
    return this.#sample.offsetMs;
  }

  /** Round trip of the probe behind `offsetMs`; the offset is right to within half of it. */
  get roundTripMs(): number {
    return this.#sample.roundTripMs;
  }

  /** Ends the background measurements (waits for one in flight). `now()` keeps the last offset. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#abort.abort();
    await this.#running;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  #adopt(sample: ClockSample): void {
    this.#sample = sample;
    this.#localAt = this.#localNow();
    this.#monoAt = performance.now();
  }

  /** Starts a measurement now when the local clock moved unlike the monotonic one. */
  #checkJump(local: number): void {
    if (this.#stopped || this.#running || !Number.isFinite(this.#jumpMs)) return;
    const mono = performance.now();
    const drift = local - this.#localAt - (mono - this.#monoAt);
    if (Math.abs(drift) <= this.#jumpMs || mono - this.#lastJumpMeasure < JUMP_RETRY_MS) return;
    this.#lastJumpMeasure = mono;
    clearTimeout(this.#timer);
    this.#refresh();
  }

  #schedule(): void {
    if (this.#stopped || this.#refreshMs === 0) return;
    this.#timer = setTimeout(() => this.#refresh(), this.#refreshMs * (0.8 + 0.4 * Math.random()));
    this.#timer.unref();
  }

  #refresh(): void {
    if (this.#stopped || this.#running) return;
    this.#running = (async () => {
      try {
        this.#adopt(await this.#measure(this.#abort.signal));
      } catch (err) {
        if (this.#stopped) return;
        try {
          this.#onError?.(err);
        } catch {
          // A throwing callback must not end the loop.
        }
        // The connection is gone for good: nothing left to measure against.
        if (err instanceof UnavailableError && err.cause instanceof ClosedConnectionError) {
          this.#stopped = true;
        }
      } finally {
        this.#running = undefined;
      }
      this.#schedule();
    })();
  }

  /** A few probes; the fastest wins. Rejects when none succeeded. */
  async #measure(signal: AbortSignal | undefined): Promise<ClockSample> {
    let best: ClockSample | undefined;
    let ok = 0;
    let failures = 0;
    let collisions = 0;
    let lastErr: unknown;
    while (ok < this.#samples && failures < this.#maxFailures) {
      signal?.throwIfAborted();
      try {
        const sample = await this.#probe();
        if (sample === OVERWRITTEN) {
          // Not a failure: processes measuring at the same moment overwrite each other's probe.
          // A random pause breaks their lockstep.
          if (++collisions > MAX_COLLISIONS) break;
          await sleep(Math.random() * 10 * Math.min(collisions, 5));
          continue;
        }
        ok++;
        if (!best || sample.roundTripMs < best.roundTripMs) best = sample;
      } catch (err) {
        lastErr = err;
        failures++;
        if (err instanceof ClosedConnectionError) break;
      }
    }
    lastErr ??= new Error(`clock probes kept being overwritten (${collisions} times)`);
    if (!best) {
      throw new UnavailableError('cannot read the NATS server clock', {
        cause: lastErr,
        retryable: true,
      });
    }
    return best;
  }

  async #probe(): Promise<ClockSample | typeof OVERWRITTEN> {
    const sent = this.#localNow();
    const revision = await this.#kv.put(this.#key, encoder.encode(String(sent)));
    const acked = this.#localNow();
    const entry = await this.#kv.get(this.#key, { revision });
    // Null: another process wrote the key in between (history 1 dropped ours).
    if (!entry) return OVERWRITTEN;
    const created = entry.created.getTime();
    if (!Number.isFinite(created)) throw new Error('clock probe has no server timestamp');
    return { offsetMs: created - (sent + acked) / 2, roundTripMs: acked - sent };
  }
}
