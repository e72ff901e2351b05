import { openClient, type CommonOptions } from '../connection.js';
import { ExitCode } from '../errors.js';
import { createStyle, formatTable, formatUsd, printJson, println, progressBar } from '../output.js';
import { resolveId } from '../id-prefix.js';
import { requireId } from './ids.js';

/**
 * `reins budget <runId>`: caps, committed spend and open reservations of a run, per
 * dimension, with a bar for each capped one (JSON: the supervisor's budget report).
 */
export async function budgetCommand(given: string, options: CommonOptions): Promise<ExitCode> {
  requireId(given, 'run id');
  await using client = await openClient(options);
  const runId = await resolveId(client, 'run', given);
  const report = await client.runs.handle(runId).budget();
  if (options.json) {
    printJson(report);
    return ExitCode.ok;
  }
  const s = createStyle();
  const { cap, committed, reserved } = report;
  const row = (
    name: string,
    used: number,
    held: number,
    max: number | undefined,
    fmt: (n: number) => string,
  ) => [
    name,
    fmt(used),
    fmt(held),
    max === undefined ? s.dim('unlimited') : fmt(max),
    max === undefined
      ? ''
      : `${progressBar(max > 0 ? (used + held) / max : 1, 20)} ${Math.round(max > 0 ? ((used + held) / max) * 100 : 100)}%`,
  ];
  const n = (x: number) => String(x);
  println(`${s.bold('budget of run')} ${runId}`);
  println(
    formatTable(
      ['DIMENSION', 'COMMITTED', 'RESERVED', 'CAP', 'USED'],
      [
        row('usd', committed.usd, reserved.usd, cap.usd, formatUsd),
        row('steps', committed.steps, reserved.steps, cap.steps, n),
        row('input tokens', committed.inputTokens, reserved.inputTokens, cap.inputTokens, n),
        row('output tokens', committed.outputTokens, reserved.outputTokens, cap.outputTokens, n),
        row(
          'tokens',
          committed.inputTokens + committed.outputTokens,
          reserved.inputTokens + reserved.outputTokens,
          cap.tokens,
          n,
        ),
      ],
      s,
    ),
  );
  return ExitCode.ok;
}
