import { DeliverPolicy, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import { Streams, TraceEvent, decode, type TraceSubjectParts } from '@reins/protocol';
import type { Runtime } from './runtime.js';
import { retryTransport } from './transport-retry.js';

/** Where a trace subscription starts. */
export type TraceStart = 'start' | 'new' | { seq: number } | { time: Date };

/** Options of `subscribeTraces`. */
export interface SubscribeTracesOptions {
  /** `start` (default): every stored event first; `new`: only events from now on. */
  from?: TraceStart;
  /** Called for each event, in stream order. Without it, iterate the subscription. */
  callback?: (event: TraceEvent, meta: { streamSeq: number; subject: string }) => void;
  /**
   * How long to keep trying to open the subscription while JetStream is briefly unavailable
   * (default 30 s): a cluster that lost a node elects stream leaders, and nats-server < 2.11 may
   * place the subscription's consumer on the lost node, which never answers. Then the call
   * fails with a retryable `TimeoutError` or `UnavailableError`.
   */
  openTimeoutMs?: number;
  /** Gives up opening (`AbortedError`), or stops the subscription once open. */
  signal?: AbortSignal;
}

/** A live trace subscription: async-iterable, stoppable, disposable. */
export interface TraceSubscription extends AsyncIterable<TraceEvent>, AsyncDisposable {
  stop(): Promise<void>;
  /** Events skipped because they did not validate (hostile or foreign publishers). */
  readonly invalid: number;
}

/**
 * Pull expiry of the trace consumer. It also paces the client's own recovery: idle heartbeats
 * are half of it, and a consumer that missed two of them is checked and pulled again.
 */
const PULL_EXPIRES_MS = 5_000;

/** Default of `openTimeoutMs`: several JetStream API timeouts (5 s each) and a leader election. */
const OPEN_TIMEOUT_MS = 30_000;

/**
 * Subscribes to trace events matching a pattern (`{ runId: 'r1' }`, `{ role: 'executor' }`, or a
 * raw subject with wildcards under the trace prefix), replaying stored ones first (`from:
 * 'start'`). Events arrive in stream order, each once; invalid events are skipped and counted.
 *
 * The subscription survives a NATS server restart: its ephemeral (ordered) consumer is gone
 * then, and the client library's own recreation can stall until heartbeats are missed, so after
 * a reconnect (or a reset of the consumer) a new consumer is made from the stream sequence after
 * the last event delivered.
 *
 * Opening rides out a JetStream briefly unavailable (see `openTimeoutMs`). Throws `RangeError`
 * for a pattern outside the trace prefix; otherwise a coded error: a retryable `TimeoutError` or
 * `UnavailableError` when JetStream stays unreachable, `AbortedError` when `signal` aborts.
 */
export async function subscribeTraces(
  runtime: Runtime,
  pattern: TraceSubjectParts | string,
  options: SubscribeTracesOptions = {},
): Promise<TraceSubscription> {
  const subject = typeof pattern === 'string' ? pattern : runtime.subjects.trace(pattern);
  if (!subject.startsWith(`${runtime.subjects.prefix}.trace.`)) {
    throw new RangeError(`trace pattern must be under ${runtime.subjects.prefix}.trace.`);
  }
  const from = options.from ?? 'start';
  const callback = options.callback;
  let invalid = 0;
  /** Stream sequence of the last message delivered (0: none yet). */
  let lastSeq = 0;
  let stopped = false;
  // Iterator mode: events wait here until the iterator takes them.
  const queue: TraceEvent[] = [];
  let wake: (() => void) | undefined;

  const parse = (data: Uint8Array): TraceEvent | undefined => {
    try {
      return decode(TraceEvent, data, { name: 'trace event' });
    } catch {
      invalid++;
      return undefined;
    }
  };
  const deliver = (m: JsMsg): void => {
    // A consumer made again after a restart starts after `lastSeq`; never deliver twice.
    if (stopped || m.seq <= lastSeq) return;
    lastSeq = m.seq;
    const ev = parse(m.data);
    if (!ev) return;
    if (callback) {
      callback(ev, { streamSeq: m.seq, subject: m.subject });
    } else {
      queue.push(ev);
      wake?.();
    }
  };
  const start = () =>
    lastSeq > 0
      ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: lastSeq + 1 }
      : from === 'start'
        ? { deliver_policy: DeliverPolicy.All }
        : from === 'new'
          ? { deliver_policy: DeliverPolicy.New }
          : 'seq' in from
            ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from.seq }
            : {
                deliver_policy: DeliverPolicy.StartTime,
                opt_start_time: from.time.toISOString(),
              };

  let messages: ConsumerMessages | undefined;
  let generation = 0;
  const open = async (): Promise<ConsumerMessages> => {
    const consumer = await runtime.js.consumers.get(Streams.trace, {
      filter_subjects: subject,
      ...start(),
    });
    const current = await consumer.consume({ expires: PULL_EXPIRES_MS, callback: deliver });
    const gen = generation;
    // The client library recreates an ordered consumer itself after a reset, and may then
    // stall; and it gives up (closes) after repeated failures. Make a fresh one instead.
    void (async () => {
      for await (const s of current.status()) {
        if (s.type === 'reset' && gen === generation) void reopen();
      }
    })().catch(() => undefined);
    void current.closed().then(
      () => gen === generation && void reopen(),
      () => gen === generation && void reopen(),
    );
    return current;
  };
  /** Replaces the consumer with one starting after the last event delivered. */
  const reopen = async (): Promise<void> => {
    const gen = ++generation;
    const previous = messages;
    messages = undefined;
    await previous?.close().catch(() => undefined);
    for (let attempt = 0; !stopped && gen === generation; attempt++) {
      try {
        const next = await open();
        if (stopped || gen !== generation) {
          await next.close().catch(() => undefined);
          return;
        }
        messages = next;
        return;
      } catch {
        // JetStream may still be recovering after the restart: try again shortly.
        await new Promise((r) => setTimeout(r, Math.min(2_000, 100 * 2 ** attempt)));
      }
    }
  };

  const signal = options.signal;
  // A consumer create that timed out is not retried by the client library: try again (a new
  // consumer, placed again) until the deadline. Each attempt is a fresh ephemeral consumer; one
  // created late on a server that comes back is removed by the server when inactive.
  messages = await retryTransport(`trace subscription ${subject}`, open, {
    timeoutMs: options.openTimeoutMs ?? OPEN_TIMEOUT_MS,
    signal,
    onRetry: (err, attempt) =>
      runtime.logger.debug({ err, subject, attempt }, 'trace subscription not opened; retrying'),
  });
  const status = runtime.nc.status();
  void (async () => {
    for await (const s of status) {
      if (stopped) break;
      if (s.type === 'disconnect') {
        // The server may be gone with the consumer: stop the old one before the library's own
        // reset runs on reconnect, then make a new one.
        generation++;
        const previous = messages;
        messages = undefined;
        await previous?.close().catch(() => undefined);
      } else if (s.type === 'reconnect') {
        void reopen();
      }
    }
  })().catch(() => undefined);

  // One stop, however many callers (an abort and `stop()`): each awaits the same close.
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      stopped = true;
      generation++;
      signal?.removeEventListener('abort', onAbort);
      // The status iterator of nats.js can be stopped (it is typed only as an AsyncIterable).
      (status as { stop?: () => void }).stop?.();
      wake?.();
      await messages?.close().catch(() => undefined);
      messages = undefined;
    })());
  const onAbort = () => void stop();
  if (signal?.aborted) await stop();
  else signal?.addEventListener('abort', onAbort, { once: true });
  return {
    get invalid() {
      return invalid;
    },
    stop,
    [Symbol.asyncDispose]: stop,
    async *[Symbol.asyncIterator]() {
      if (callback) throw new Error('this subscription delivers to its callback');
      for (;;) {
        const ev = queue.shift();
        if (ev) {
          yield ev;
          continue;
        }
        if (stopped) return;
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    },
  };
}
