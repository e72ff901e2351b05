import { ID_PATTERN, type TraceEvent, type TraceSubjectParts } from '@reins/protocol';
import type { RunRecord } from '@reins/protocol';
import { isRunEnded, type TraceStart, type TraceSubscription } from '@reins/runtime';
import { natsUrl, openClient, type CommonOptions } from '../connection.js';
import { CliError, ExitCode, usageError } from '../errors.js';
import { createStyle, outputWidth, printJson } from '../output.js';
import { resolveId } from '../id-prefix.js';
import { jetStreamProblem } from '../jetstream.js';
import { TraceView } from '../trace-view.js';
import { exitCodeOf } from './run.js';

/** Options of `reins trace`. */
export interface TraceOptions extends CommonOptions {
  from?: string;
  /** Keep watching after the run ends (a run id only). */
  watch?: boolean;
  /** Whole lines, whatever the terminal width. */
  wide?: boolean;
}

const PATTERN_TOKEN = /^([A-Za-z0-9_-]{1,64}|\*|>)$/;

/**
 * Parses what `reins trace` was given: a run id, `all` / `*` / `>` for every run, or a
 * subject pattern below `<prefix>.trace.` (`*.executor.>`, `r1.*.*.tool.result`, or the full
 * subject). Throws a usage error for anything that is not one of those.
 */
export function parseTraceTarget(
  target: string,
  prefix: string,
): { runId: string } | { pattern: TraceSubjectParts | string } {
  if (ID_PATTERN.test(target) && target !== 'all') return { runId: target };
  if (target === 'all' || target === '*' || target === '>') return { pattern: {} };
  const base = `${prefix}.trace.`;
  const rest = target.startsWith(base) ? target.slice(base.length) : target;
  const tokens = rest.split('.');
  const ok =
    tokens.every((t) => PATTERN_TOKEN.test(t)) &&
    tokens.slice(0, -1).every((t) => t !== '>') &&
    tokens.length <= 8;
  if (!ok) {
    throw usageError(
      `invalid trace target ${JSON.stringify(target.slice(0, 80))}`,
      'give a run id, `all`, or a pattern of <runId>.<role>.<agentId>.<event> tokens with * and > (e.g. `*.executor.>`)',
    );
  }
  return { pattern: `${base}${rest}` };
}

function parseFrom(from: string | undefined): TraceStart {
  if (from === undefined || from === 'start') return 'start';
  if (from === 'new') return 'new';
  throw usageError(`--from must be start or new, not ${JSON.stringify(from)}`);
}

/**
 * `reins trace <runId|pattern>`: prints trace events live as a tree (or one JSON event per
 * line with `--json`), stored ones first unless `--from new`. A run id shows the run's whole
 * tree: the runs it delegated to, and theirs, each under the call that made it. It exits when
 * the run ends and the tree's stored events are shown (0 completed, 3 stopped, 1 failed) unless
 * `--watch`; patterns run until Ctrl-C.
 */
export async function traceCommand(
  target: string,
  options: TraceOptions,
  signal: AbortSignal,
): Promise<ExitCode> {
  const from = parseFrom(options.from);
  const client = await openClient(options);
  const given = parseTraceTarget(target, client.runtime.subjects.prefix);
  // A run id may be given by a unique prefix (`reins trace 7f3a`).
  const parsed = 'runId' in given ? { runId: await resolveId(client, 'run', given.runId) } : given;
  const style = createStyle();
  let view: TraceView | undefined;
  let sub: TraceSubscription | undefined;
  let finish: ((code: ExitCode) => void) | undefined;
  const done = new Promise<ExitCode>((resolve) => (finish = resolve));
  const onEvent = (e: TraceEvent) => {
    if (options.json) printJson(e);
    else view?.add(e);
    // The run's own end; its delegated runs come with the subscription (each after the
    // `delegate.start` that made it).
    if ('runId' in parsed && e.event === 'run.end' && e.runId === parsed.runId && !options.watch) {
      const status = typeof e.data['status'] === 'string' ? e.data['status'] : 'failed';
      const code = exitCodeOf(status);
      // A finished run is read back from the stream: show the rest of its tree first.
      void subscribed.then((s) => s?.caughtUp()).then(() => finish?.(code));
    }
  };
  let subscribedNow: (s: TraceSubscription | undefined) => void = () => undefined;
  const subscribed = new Promise<TraceSubscription | undefined>((r) => (subscribedNow = r));
  const onAbort = () => finish?.(ExitCode.interrupted);
  signal.addEventListener('abort', onAbort);
  try {
    // Without JetStream a subscription would retry for half a minute before failing.
    const problem = await jetStreamProblem(client);
    if (problem !== undefined) {
      throw new CliError(`JetStream is not available on ${natsUrl(options)}: ${problem}`, {
        code: 'NO_JETSTREAM',
        hint: 'traces are kept in a JetStream stream: restart nats-server with `nats-server -js` (or let `reins up` start one)',
      });
    }
    let record: RunRecord | undefined;
    if ('runId' in parsed) {
      // A typo in a run id would otherwise wait forever in silence.
      record = await client.runs.get(parsed.runId).catch((err: unknown) => {
        if (err instanceof Error && 'code' in err && err.code === 'NOT_FOUND') {
          throw new CliError(`no run ${parsed.runId}`, {
            code: 'NOT_FOUND',
            hint: 'list runs with `reins runs`, or pass a pattern such as `all`',
          });
        }
        return undefined; // No supervisor: still show whatever the stream holds.
      });
    }
    // From now on only: start the counters where the run stands (its caps, what it spent).
    const budget =
      record !== undefined && from === 'new'
        ? await client.runs
            .handle(record.runId)
            .budget()
            .catch(() => undefined)
        : undefined;
    view = new TraceView({
      style,
      live: !!process.stdout.isTTY && !options.json,
      write: (t) => process.stdout.write(t),
      showRun: !('runId' in parsed),
      width: outputWidth(options.wide),
      ...(record ? { budget: record.budget } : {}),
      ...(budget ? { spentUsd: budget.committed.usd } : {}),
    });
    try {
      sub = await client.traces.subscribe(
        'runId' in parsed ? { runId: parsed.runId } : parsed.pattern,
        {
          from,
          callback: onEvent,
        },
      );
      subscribedNow(sub);
      if (!options.json && (from === 'new' || !('runId' in parsed))) {
        // Nothing may come for a while: say that it is listening, and how to stop.
        process.stderr.write(
          style.dim(
            `watching ${'runId' in parsed ? `run ${parsed.runId}` : target} for ${from === 'new' ? 'new ' : ''}trace events… (Ctrl-C to stop)\n`,
          ),
        );
      }
    } catch (cause) {
      subscribedNow(undefined);
      throw new CliError('cannot read the trace stream (REINS_TRACE)', {
        cause,
        hint: 'a supervisor creates it on start: run `reins up`, or check `reins doctor`',
      });
    }
    if ('runId' in parsed && from === 'new' && !options.watch && record !== undefined) {
      // Read again now that the subscription is open: a run that ends from here on is seen live.
      const now = await client.runs.get(parsed.runId).catch(() => record);
      if (now && isRunEnded(now.status)) {
        process.stderr.write(
          `run ${parsed.runId} already ended (${now.status}): nothing new will come; its stored trace: reins trace ${parsed.runId}\n`,
        );
        return exitCodeOf(now.status);
      }
    }
    return await done;
  } finally {
    signal.removeEventListener('abort', onAbort);
    view?.clearStatus();
    await sub?.stop();
    await client.close();
  }
}
