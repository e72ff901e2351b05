import type { ReinsClient, RunHandle } from '@reins/client';
import type { BudgetReport, RunRecord, TraceEvent } from '@reins/protocol';
import { isRunEnded, type TraceSubscription } from '@reins/runtime';
import { explainBudgetStop } from '../budget-stop.js';
import { openClient, type CommonOptions } from '../connection.js';
import { CliError, ExitCode } from '../errors.js';
import {
  createStyle,
  formatDuration,
  formatUsd,
  outputWidth,
  printJson,
  println,
  truncate,
} from '../output.js';
import { TraceView } from '../trace-view.js';

/** Options of `reins run`. */
export interface RunOptions extends CommonOptions {
  role?: string;
  budgetUsd?: number;
  maxSteps?: number;
  follow?: boolean;
  /** Give up following after this many seconds (exit 1); the run goes on. */
  timeout?: number;
  /** Admit the run even when no live planner serves its role (`NO_PLANNER` otherwise). */
  waitForPlanner?: boolean;
  /** Whole trace lines, whatever the terminal width. */
  wide?: boolean;
}

/** Exit code of a finished run: 0 completed, 3 stopped or halted, 1 failed. */
export function exitCodeOf(status: string): ExitCode {
  if (status === 'completed') return ExitCode.ok;
  if (status === 'stopped' || status === 'halted' || status === 'paused') return ExitCode.stopped;
  return ExitCode.error;
}

/**
 * `reins run "<goal>"`: starts a run. Without `--follow` prints its id (or record with
 * `--json`) and exits 0. With `--follow` prints the live trace tree (or one JSON event per
 * line, then `{"run": …, "budget": …}`) and exits with the run's outcome: 0 completed,
 * 3 stopped/halted, 1 failed.
 */
export async function runCommand(
  goal: string,
  options: RunOptions,
  signal: AbortSignal,
): Promise<ExitCode> {
  if (!goal.trim()) throw new CliError('the goal is empty', { exitCode: ExitCode.usage });
  const client = await openClient(options);
  try {
    const handle = await client.runs.start(goal, {
      ...(options.role ? { role: options.role } : {}),
      ...(options.waitForPlanner ? { waitForPlanner: true } : {}),
      budget: {
        ...(options.budgetUsd !== undefined ? { usd: options.budgetUsd } : {}),
        ...(options.maxSteps !== undefined ? { steps: options.maxSteps } : {}),
      },
    });
    if (!options.follow) {
      const record = await handle.get();
      if (options.json) printJson(record);
      else if (record.status === 'halted') {
        // Admitted under a halt: it exists, but nothing of it runs until the halt is lifted.
        const s = createStyle();
        println(`${s.yellow('■ halted')} run ${s.bold(handle.id)}`);
        printHaltNote(record);
      } else {
        const s = createStyle();
        println(`${s.green('started')} run ${s.bold(handle.id)}`);
        println(s.dim(`  follow it:  reins trace ${handle.id}`));
        println(s.dim(`  halt it:    reins halt --run ${handle.id} --reason "…"`));
      }
      return ExitCode.ok;
    }
    return await follow(client, handle, options, signal);
  } finally {
    await client.close();
  }
}

async function follow(
  client: ReinsClient,
  handle: RunHandle,
  options: RunOptions,
  signal: AbortSignal,
): Promise<ExitCode> {
  const style = createStyle();
  const json = options.json === true;
  const started = Date.now();
  const view = new TraceView({
    style,
    live: !!process.stdout.isTTY && !json,
    write: (t) => process.stdout.write(t),
    width: outputWidth(options.wide),
    budget: {
      ...(options.budgetUsd !== undefined ? { usd: options.budgetUsd } : {}),
      ...(options.maxSteps !== undefined ? { steps: options.maxSteps } : {}),
    },
  });
  let sub: TraceSubscription | undefined;
  let rootEnded = false;
  let onRootEnd: (() => void) | undefined;
  const rootEnd = new Promise<void>((resolve) => (onRootEnd = resolve));
  let wake: (() => void) | undefined;
  const poke = () => {
    wake?.();
  };
  const onEvent = (e: TraceEvent) => {
    if (json) printJson(e);
    else view.add(e);
    if (e.event === 'run.end' && e.runId === handle.id) {
      rootEnded = true;
      onRootEnd?.();
    }
    if (e.event === 'run.end' || e.event === 'step.end') poke();
  };
  signal.addEventListener('abort', poke);
  const deadline = options.timeout ? started + options.timeout * 1000 : Infinity;
  let record: RunRecord;
  try {
    // The run's events with those of the runs it delegates to (each after its delegate.start).
    sub = await handle.events({ from: 'start', callback: onEvent });
    // Trace events wake the loop; the record is the truth (a halted run emits no run.end).
    for (;;) {
      record = await handle.get();
      if (isRunEnded(record.status) || record.status === 'halted') break;
      if (signal.aborted) {
        view.clearStatus();
        process.stderr.write(
          `\nstopped following run ${handle.id}; it goes on. Follow again: reins trace ${handle.id} · halt: reins halt --run ${handle.id} --reason "…"\n`,
        );
        return ExitCode.interrupted;
      }
      if (Date.now() > deadline) {
        view.clearStatus();
        throw new CliError(`run ${handle.id} did not end within ${options.timeout}s (it goes on)`, {
          hint: `follow it with \`reins trace ${handle.id}\` or halt it with \`reins halt --run ${handle.id}\``,
        });
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1000);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
    // The supervisor writes the record and emits run.end together; let the event arrive.
    if (isRunEnded(record.status) && !rootEnded) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([rootEnd, new Promise((r) => (timer = setTimeout(r, 2000)))]);
      clearTimeout(timer);
    }
  } finally {
    signal.removeEventListener('abort', poke);
    await sub?.stop();
  }
  const budget = await handle.budget().catch(() => undefined);
  if (json) {
    printJson({ run: record, ...(budget ? { budget } : {}) });
  } else {
    view.clearStatus();
    printSummary(record, budget, view, started);
  }
  return exitCodeOf(record.status);
}

function printSummary(
  record: RunRecord,
  budget: BudgetReport | undefined,
  view: TraceView,
  started: number,
): void {
  const s = createStyle();
  const usd = budget?.committed.usd ?? view.usd;
  const steps = budget?.committed.steps ?? view.steps;
  const cap = budget?.cap ?? record.budget;
  const spent = `${steps}${cap.steps !== undefined ? `/${cap.steps}` : ''} steps · ${formatUsd(usd)}${
    cap.usd !== undefined ? ` of ${formatUsd(cap.usd)}` : ''
  }`;
  // The record's end is the supervisor's clock: never show a negative (`-`) duration.
  const took = formatDuration(Math.max(0, (record.endedAt ?? Date.now()) - started));
  println();
  if (record.status === 'completed') {
    println(`${s.green('✓ completed')} in ${took} · ${spent}`);
    if (record.answer) println(`${s.bold('answer')} ${truncate(record.answer, 2000)}`);
  } else if (record.status === 'halted') {
    println(`${s.yellow('■ halted')} after ${took} · ${spent}`);
    printHaltNote(record);
  } else {
    const mark = record.status === 'stopped' ? s.yellow('■ stopped') : s.red('✗ failed');
    const why = explainBudgetStop(record) ?? record.error?.message;
    println(
      `${mark}${record.stopReason ? ` ${record.stopReason}` : ''} after ${took} · ${spent}${
        why ? `\n  ${why}` : ''
      }`,
    );
  }
}

/**
 * What holds a halted run, and how to lift it: a run admitted under a halt of everything or
 * of its role names that halt (`record.error`, `HALTED`); any other is halted on its own.
 */
function printHaltNote(record: RunRecord): void {
  const s = createStyle();
  const scope = record.error?.code === 'HALTED' ? record.error.details?.['scope'] : undefined;
  const kind =
    typeof scope === 'object' && scope !== null && 'kind' in scope ? scope.kind : undefined;
  if (record.error?.code === 'HALTED') println(`  ${record.error.message}`);
  const resume =
    kind === 'all'
      ? 'reins resume --all'
      : kind === 'role'
        ? `reins resume --role ${record.role}`
        : `reins resume --run ${record.runId}`;
  println(s.dim(`  resume it with: ${resume}`));
}
