import type { AuditEntry } from '@reins/protocol';
import { readAudit, verifyAudit } from '@reins/supervisor';
import type { ReinsClient } from '@reins/client';
import { openClient, type CommonOptions } from '../connection.js';
import { CliError, ExitCode, isPermissionError } from '../errors.js';
import { createStyle, printJson, println, truncate } from '../output.js';

/** Options of `reins audit tail`. */
export interface AuditTailOptions extends CommonOptions {
  lines?: number;
  writer?: string;
}

function auditReadError(cause: unknown): CliError {
  if (isPermissionError(cause)) {
    return new CliError(
      'the NATS user of this command may not read the audit stream (REINS_AUDIT)',
      {
        cause,
        code: 'NATS_PERMISSION',
        hint: "in secure mode only the supervisor's user reads it: run with its seed, e.g. --nkey-file .reins/secure/supervisor.nk",
      },
    );
  }
  return new CliError('cannot read the audit stream (REINS_AUDIT)', {
    cause,
    hint: 'a supervisor creates it on start: run `reins up` or check `reins doctor`',
  });
}

async function* entries(
  client: ReinsClient,
  writer: string | undefined,
): AsyncGenerator<AuditEntry> {
  yield* readAudit(client.runtime.nc, {
    prefix: client.runtime.subjects.prefix,
    ...(writer ? { writer } : {}),
  });
}

/**
 * `reins audit tail [-n N]`: the last N audit entries (every writer, stream order), one line
 * each: time, writer#seq, action, actor, run, rule. JSON: one entry per line.
 */
export async function auditTailCommand(options: AuditTailOptions): Promise<ExitCode> {
  const n = options.lines ?? 20;
  await using client = await openClient(options);
  const last: AuditEntry[] = [];
  try {
    for await (const e of entries(client, options.writer)) {
      last.push(e);
      if (last.length > n) last.shift();
    }
  } catch (err) {
    throw auditReadError(err);
  }
  if (options.json) {
    for (const e of last) printJson(e);
    return ExitCode.ok;
  }
  const s = createStyle();
  if (last.length === 0) println('the audit log is empty');
  for (const e of last) {
    const details = Object.keys(e.details).length
      ? s.dim(truncate(JSON.stringify(e.details), 100))
      : '';
    println(
      `${s.dim(new Date(e.ts).toISOString())} ${s.byKey(e.writer, `${e.writer}#${e.seq}`)} ${s.bold(e.action.padEnd(10))} ${truncate(e.actor, 40)}${
        e.runId ? ` run=${e.runId}` : ''
      }${e.rule ? ` rule=${e.rule}` : ''} ${details}`.trimEnd(),
    );
  }
  return ExitCode.ok;
}

/**
 * `reins audit verify`: checks every writer's hash chain. Exit 0 when intact; exit 1 naming
 * the first broken entry (writer, seq, reason) otherwise. JSON: the verification result.
 */
export async function auditVerifyCommand(options: CommonOptions): Promise<ExitCode> {
  await using client = await openClient(options);
  let result;
  try {
    result = await verifyAudit(entries(client, undefined));
  } catch (err) {
    throw auditReadError(err);
  }
  if (options.json) {
    printJson(result);
    return result.ok ? ExitCode.ok : ExitCode.error;
  }
  const s = createStyle();
  if (result.ok) {
    const heads = Object.entries(result.heads);
    println(
      `${s.green('✓')} audit chain intact: ${result.count} entries from ${heads.length} writer(s)`,
    );
    for (const [w, h] of heads)
      println(s.dim(`  ${w}  seq ${h.seq}  head ${h.hash.slice(0, 16)}…`));
    return ExitCode.ok;
  }
  println(
    `${s.red('✗')} audit chain broken at ${s.bold(`${result.writer}#${result.seq}`)}: ${result.reason}`,
  );
  println(
    s.dim(`  ${result.count} entries verified before it; entries from there on cannot be trusted`),
  );
  return ExitCode.error;
}
