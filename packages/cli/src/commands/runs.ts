import { RunStatus } from '@reins/protocol';
import { openClient, type CommonOptions } from '../connection.js';
import { ExitCode, usageError } from '../errors.js';
import {
  createStyle,
  formatDuration,
  formatTable,
  formatUsd,
  outputWidth,
  println,
  truncate,
} from '../output.js';
import { shortIds } from '../id-prefix.js';
import { printList, type ListOptions } from '../list-output.js';
import { paintStatus } from './ps.js';

/** Options of `reins runs`. */
export interface RunsOptions extends CommonOptions, ListOptions {
  status?: string;
  limit?: number;
}

/**
 * `reins runs`: recent runs, newest first, optionally of one status (JSON: the run records).
 * An unknown `--status` is a usage error naming the valid ones.
 */
export async function runsCommand(options: RunsOptions): Promise<ExitCode> {
  let status: RunStatus | undefined;
  if (options.status !== undefined) {
    const parsed = RunStatus.safeParse(options.status);
    if (!parsed.success)
      throw usageError(
        `unknown status ${JSON.stringify(options.status)}`,
        `one of: ${RunStatus.options.join(', ')}`,
      );
    status = parsed.data;
  }
  await using client = await openClient(options);
  const listed = await client.runs.list({
    ...(status ? { status } : {}),
    ...(options.limit !== undefined ? { limit: options.limit } : {}),
  });
  // runs.list returns stored records; runs.get adds the ledger's spend (`used`).
  const runs = (await Promise.all(listed.map((r) => client.runs.get(r.runId).catch(() => r)))).sort(
    (a, b) => b.createdAt - a.createdAt,
  );
  if (printList(runs, options, (r) => r.runId)) return ExitCode.ok;
  const s = createStyle();
  if (runs.length === 0) {
    println(status ? `no ${status} runs` : 'no runs yet — start one with `reins run "<goal>"`');
    return ExitCode.ok;
  }
  const now = Date.now();
  const short = shortIds(
    runs.map((r) => r.runId),
    'run',
  );
  println(
    formatTable(
      ['RUN', 'STATUS', 'ROLE', 'STEPS', 'SPENT', 'AGE', 'GOAL'],
      runs.map((r) => [
        options.wide ? r.runId : (short.get(r.runId) ?? r.runId),
        paintStatus(r.status, s) + (r.stopReason ? s.dim(` ${r.stopReason}`) : ''),
        r.role,
        `${r.used.steps}${r.budget.steps !== undefined ? `/${r.budget.steps}` : ''}`,
        `${formatUsd(r.used.usd)}${r.budget.usd !== undefined ? `/${formatUsd(r.budget.usd)}` : ''}`,
        formatDuration(now - r.createdAt),
        options.wide ? r.goal.replace(/\s+/g, ' ') : truncate(r.goal, 50),
      ]),
      s,
      { width: outputWidth(options.wide), shrink: [6, 2] },
    ),
  );
  return ExitCode.ok;
}
