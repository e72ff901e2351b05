import { DeliverPolicy, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import { Streams, TraceEvent, decode, isId, type TraceSubjectParts } from '@reins/protocol';
import type { Runtime } from './runtime.js';
import { EventQueue } from './event-queue.js';
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
  /**
   * For a pattern naming one run (`{ runId: 'r1' }`, optionally narrowed by role, agent or
   * event): also deliver the events of the runs it delegated to, and theirs (default `true`).
   * `false`: that run's events only. Ignored for string patterns and wildcard run ids.
   */
  descendants?: boolean;
}

/** A live trace subscription: async-iterable, stoppable, disposable. */
export interface TraceSubscription extends AsyncIterable<TraceEvent>, AsyncDisposable {
  stop(): Promise<void>;
  /**
   * Resolves once the events stored when the subscription opened have been delivered (handed to
   * the callback, or queued for the iterator); for a run with its descendants, those of every
   * run of the tree found so far, each counted from when it joined. Use it to show a finished
   * run and exit. Never rejects; stays pending after `stop()` if not reached.
   */
  caughtUp(): Promise<void>;
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
  if (typeof pattern !== 'string' && isId(pattern.runId) && options.descendants !== false) {
    return subscribeRunTree(runtime, { ...pattern, runId: pattern.runId }, options);
  }
  return subscribeSubject(runtime, subject, options);
}

/** One consumer on one subject pattern: the subscription `subscribeTraces` documents. */
async function subscribeSubject(
  runtime: Runtime,
  subject: string,
  options: SubscribeTracesOptions,
): Promise<TraceSubscription> {
  const from = options.from ?? 'start';
  const callback = options.callback;
  let invalid = 0;
  /** Stream sequence of the last message delivered (0: none yet). */
  let lastSeq = 0;
  let stopped = false;
  // Iterator mode: events wait here until the iterator takes them.
  const queue = new EventQueue<TraceEvent>();

  const parse = (data: Uint8Array): TraceEvent | undefined => {
    try {
      return decode(TraceEvent, data, { name: 'trace event' });
    } catch {
      invalid++;
      return undefined;
    }
  };
  let markCaughtUp: () => void = () => undefined;
  const caughtUp = new Promise<void>((resolve) => (markCaughtUp = resolve));
  const deliver = (m: JsMsg): void => {
    // A consumer made again after a restart starts after `lastSeq`; never deliver twice.
    if (stopped || m.seq <= lastSeq) return;
    lastSeq = m.seq;
    const ev = parse(m.data);
    if (ev) {
      if (callback) {
        callback(ev, { streamSeq: m.seq, subject: m.subject });
      } else {
        queue.push(ev);
      }
    }
    if (m.info.pending === 0) markCaughtUp();
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
    // Nothing stored to replay from where it starts: caught up at once.
    if ((await consumer.info(true)).num_pending === 0) markCaughtUp();
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
      queue.close();
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
    caughtUp: () => caughtUp,
    [Symbol.asyncDispose]: stop,
    async *[Symbol.asyncIterator]() {
      if (callback) throw new Error('this subscription delivers to its callback');
      yield* queue;
    },
  };
}

/**
 * Most runs one subscription follows with their descendants: each is a consumer, and this bounds
 * what a flood of (hostile) `delegate.start` events can make a subscriber open.
 */
const MAX_TREE_RUNS = 256;

/**
 * A run's events and its descendants': one consumer per run of the tree. A child joins when a
 * `delegate.start` event of a run already in the tree names it (`data.childRunId`), so its
 * events come after the event that created it; each run's events keep their stream order, and
 * the per-actor `seq` orders the events of one source. With a start point other than `start`,
 * children delegated before it are found from the stored `delegate.start` events, and every
 * child is read from the same point in time (`new` becomes the moment of subscribing).
 */
async function subscribeRunTree(
  runtime: Runtime,
  pattern: TraceSubjectParts & { runId: string },
  options: SubscribeTracesOptions,
): Promise<TraceSubscription> {
  const { callback, signal } = options;
  const from = options.from ?? 'start';
  const childFrom: TraceStart = from === 'new' ? { time: new Date() } : from;
  // Tokens before the run id in a trace subject (`reins.v1.trace.` → 3).
  const skip = runtime.subjects.prefix.split('.').length + 1;
  const any = (want: string | undefined, got: string | undefined) =>
    want === undefined || want === '*' || want === '>' || want === got;
  /** The pattern's role, agent and event filters, applied to each run of the tree. */
  const wanted = (subject: string): boolean => {
    const [, role, agentId, ...event] = subject.split('.').slice(skip);
    return (
      any(pattern.role, role) &&
      any(pattern.agentId, agentId) &&
      any(pattern.event, event.join('.'))
    );
  };
  let stopped = false;
  const queue = new EventQueue<TraceEvent>();
  const members = new Map<string, Promise<TraceSubscription | undefined>>();
  const opened: TraceSubscription[] = [];

  const deliver = (ev: TraceEvent, meta: { streamSeq: number; subject: string }): void => {
    if (stopped) return;
    if (ev.event === 'delegate.start' && isId(ev.data['childRunId'])) {
      join(ev.data['childRunId'], false);
    }
    if (!wanted(meta.subject)) return;
    if (callback) {
      callback(ev, meta);
    } else {
      queue.push(ev);
    }
  };
  const open = async (runId: string, start: TraceStart): Promise<TraceSubscription> => {
    const sub = await subscribeSubject(runtime, runtime.subjects.trace({ runId }), {
      from: start,
      callback: deliver,
      // Gives up opening on abort (each run's subscription also stops with it).
      ...(signal ? { signal } : {}),
      ...(options.openTimeoutMs !== undefined ? { openTimeoutMs: options.openTimeoutMs } : {}),
    });
    if (stopped) await sub.stop();
    else opened.push(sub);
    return sub;
  };
  /** Adds a run to the tree (once); `stored`: also add the children it delegated before. */
  const join = (runId: string, stored: boolean): void => {
    if (stopped || members.has(runId) || members.size >= MAX_TREE_RUNS) return;
    const joining = (async () => {
      try {
        if (stored) for (const child of await storedChildren(runtime, runId)) join(child, true);
        return await open(runId, childFrom);
      } catch (err) {
        runtime.logger.warn({ err, runId }, 'cannot follow the trace of a delegated run');
        return undefined;
      }
    })();
    members.set(runId, joining);
  };

  // In the tree before it opens: an event naming the root as a child must not open it twice.
  const root = open(pattern.runId, from);
  members.set(pattern.runId, root);
  await root;
  if (from !== 'start') {
    try {
      for (const child of await storedChildren(runtime, pattern.runId)) join(child, true);
    } catch (err) {
      runtime.logger.warn({ err, runId: pattern.runId }, 'cannot list the runs it delegated to');
    }
  }

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      stopped = true;
      signal?.removeEventListener('abort', onAbort);
      queue.close();
      await Promise.all(opened.map((s) => s.stop()));
    })());
  const onAbort = () => void stop();
  if (signal?.aborted) await stop();
  else signal?.addEventListener('abort', onAbort, { once: true });

  return {
    get invalid() {
      return opened.reduce((n, s) => n + s.invalid, 0);
    },
    stop,
    async caughtUp() {
      // Runs join while others replay: wait until a round adds none.
      for (;;) {
        const size = members.size;
        await Promise.all([...members.values()].map(async (m) => (await m)?.caughtUp()));
        if (members.size === size) return;
      }
    },
    [Symbol.asyncDispose]: stop,
    async *[Symbol.asyncIterator]() {
      if (callback) throw new Error('this subscription delivers to its callback');
      yield* queue;
    },
  };
}

/** Children a run delegated to, from its stored `delegate.start` events. */
async function storedChildren(runtime: Runtime, runId: string): Promise<string[]> {
  const consumer = await runtime.js.consumers.get(Streams.trace, {
    filter_subjects: runtime.subjects.trace({ runId, event: 'delegate.start' }),
    deliver_policy: DeliverPolicy.All,
  });
  const children = new Set<string>();
  let left = (await consumer.info(true)).num_pending;
  while (left > 0) {
    const batch = await consumer.fetch({ max_messages: Math.min(left, 256), expires: 5_000 });
    let got = 0;
    for await (const m of batch) {
      got++;
      left = m.info.pending;
      try {
        const child = decode(TraceEvent, m.data, { name: 'trace event' }).data['childRunId'];
        if (isId(child)) children.add(child);
      } catch {
        // not a valid event: skipped, as subscriptions skip it
      }
    }
    if (got === 0) break;
  }
  return [...children];
}
