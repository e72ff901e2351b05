import { DeliverPolicy, type ConsumerMessages } from '@nats-io/jetstream';
import { Streams, TraceEvent, decode, type TraceSubjectParts } from '@reins/protocol';
import type { Runtime } from './runtime.js';

/** Where a trace subscription starts. */
export type TraceStart = 'start' | 'new' | { seq: number } | { time: Date };

/** Options of `subscribeTraces`. */
export interface SubscribeTracesOptions {
  /** `start` (default): every stored event first; `new`: only events from now on. */
  from?: TraceStart;
  /** Called for each event, in stream order. Without it, iterate the subscription. */
  callback?: (event: TraceEvent, meta: { streamSeq: number; subject: string }) => void;
}

/** A live trace subscription: async-iterable, stoppable, disposable. */
export interface TraceSubscription extends AsyncIterable<TraceEvent>, AsyncDisposable {
  stop(): Promise<void>;
  /** Events skipped because they did not validate (hostile or foreign publishers). */
  readonly invalid: number;
}

/**
 * Subscribes to trace events matching a pattern (`{ runId: 'r1' }`, `{ role: 'executor' }`, or a
 * raw subject with wildcards under the trace prefix), replaying stored ones first (`from:
 * 'start'`). Events arrive in stream order; invalid events are skipped and counted.
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
  const consumer = await runtime.js.consumers.get(Streams.trace, {
    filter_subjects: subject,
    ...(from === 'start'
      ? { deliver_policy: DeliverPolicy.All }
      : from === 'new'
        ? { deliver_policy: DeliverPolicy.New }
        : 'seq' in from
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from.seq }
          : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: from.time.toISOString() }),
  });
  let invalid = 0;
  const parse = (data: Uint8Array): TraceEvent | undefined => {
    try {
      return decode(TraceEvent, data, { name: 'trace event' });
    } catch {
      invalid++;
      return undefined;
    }
  };
  let messages: ConsumerMessages;
  const callback = options.callback;
  if (callback) {
    messages = await consumer.consume({
      callback: (m) => {
        const ev = parse(m.data);
        if (ev) callback(ev, { streamSeq: m.seq, subject: m.subject });
      },
    });
  } else {
    messages = await consumer.consume();
  }
  const stop = async () => {
    await messages.close().catch(() => undefined);
  };
  return {
    get invalid() {
      return invalid;
    },
    stop,
    [Symbol.asyncDispose]: stop,
    async *[Symbol.asyncIterator]() {
      if (callback) throw new Error('this subscription delivers to its callback');
      for await (const m of messages) {
        const ev = parse(m.data);
        if (ev) yield ev;
      }
    },
  };
}
