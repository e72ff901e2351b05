import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { ReinsError, type AuditEntry } from '@reins/protocol';
import {
  acceptAuditGap,
  readAudit,
  readAuditAnchors,
  readAuditMessages,
  trustedIssuersFromEnv,
  verifyAudit,
} from '@reins/supervisor';
import type { ReinsClient } from '@reins/client';
import { cliIdentity, openClient, type CommonOptions } from '../connection.js';
import { CliError, ExitCode, isPermissionError } from '../errors.js';
import { createStyle, fitCell, outputWidth, printJson, println, truncate } from '../output.js';

/** Options of `reins audit tail`. */
export interface AuditTailOptions extends CommonOptions {
  lines?: number;
  writer?: string;
  /** Whole lines, whatever the terminal width. */
  wide?: boolean;
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
  if (last.length === 0 && options.writer) {
    // An unknown writer is a typo, not an empty log: name the writers there are.
    const writers = new Set<string>();
    try {
      for await (const e of entries(client, undefined)) writers.add(e.writer);
    } catch (err) {
      throw auditReadError(err);
    }
    // Supervisors by name; run partitions' chains (`part-<n>`) as one range.
    const partitions = [...writers]
      .map((w) => /^part-(\d+)$/.exec(w)?.[1])
      .filter((n): n is string => n !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
    const named = [...writers].filter((w) => !/^part-\d+$/.test(w)).sort();
    if (partitions.length)
      named.push(
        partitions.length === 1
          ? `part-${partitions[0]}`
          : `part-${partitions[0]}…part-${partitions.at(-1)} (${partitions.length} run partitions)`,
      );
    throw new CliError(
      `no audit entries from writer ${options.writer}${
        writers.size ? ` (writers: ${named.join(', ')})` : ': the audit log is empty'
      }`,
      {
        code: 'NOT_FOUND',
        hint: "a writer is a supervisor id, or a run partition's chain part-<n>; `reins audit tail` shows every writer",
      },
    );
  }
  if (options.json) {
    for (const e of last) printJson(e);
    return ExitCode.ok;
  }
  const s = createStyle();
  if (last.length === 0) println('the audit log is empty');
  const width = outputWidth(options.wide);
  for (const e of last) {
    const details = Object.keys(e.details).length
      ? s.dim(options.wide ? JSON.stringify(e.details) : truncate(JSON.stringify(e.details), 100))
      : '';
    const line =
      `${s.dim(new Date(e.ts).toISOString())} ${s.byKey(e.writer, `${e.writer}#${e.seq}`)} ${s.bold(e.action.padEnd(10))} ${truncate(e.actor, 40)}${
        e.runId ? ` run=${e.runId}` : ''
      }${e.rule ? ` rule=${e.rule}` : ''} ${details}`.trimEnd();
    println(Number.isFinite(width) ? fitCell(line, width) : line);
  }
  return ExitCode.ok;
}

/** Options of `reins audit verify`. */
export interface AuditVerifyOptions extends CommonOptions {
  /** Comma-separated public keys of trusted supervisors (adds to `REINS_TRUSTED_ISSUERS`). */
  trustedIssuers?: string;
}

function trustedKeys(flag: string | undefined): string[] {
  try {
    const fromEnv = trustedIssuersFromEnv(process.env);
    const fromFlag =
      flag === undefined ? [] : trustedIssuersFromEnv({ REINS_TRUSTED_ISSUERS: flag });
    return [...new Set([...fromEnv, ...fromFlag])];
  } catch (cause) {
    throw new CliError(
      (cause as Error).message.replace(
        'REINS_TRUSTED_ISSUERS',
        flag === undefined ? 'REINS_TRUSTED_ISSUERS' : '--trusted-issuers / REINS_TRUSTED_ISSUERS',
      ),
      {
        exitCode: ExitCode.usage,
        cause,
        hint: 'give the public keys (A…, 56 characters) of the supervisors, comma-separated',
      },
    );
  }
}

/**
 * `reins audit verify [--trusted-issuers KEYS]`: checks every writer's chain — batches signed
 * by a trusted supervisor key (`--trusted-issuers` and `REINS_TRUSTED_ISSUERS`; without any,
 * by one key per writer, and it says the keys were not checked against a trust list), hashes
 * and links intact, and each chain reaching its anchor. Exit 0 when intact (accepted gaps are
 * listed); exit 1 naming the first problem (`truncated at <writer>#<seq>`, or `broken at …`)
 * otherwise. JSON: the verification result.
 */
export async function auditVerifyCommand(options: AuditVerifyOptions): Promise<ExitCode> {
  const trustedIssuers = trustedKeys(options.trustedIssuers);
  await using client = await openClient(options);
  let result;
  try {
    result = await verifyAudit(client.runtime.nc, {
      prefix: client.runtime.subjects.prefix,
      trustedIssuers,
    });
  } catch (err) {
    throw auditReadError(err);
  }
  if (options.json) {
    printJson(result);
    return result.ok ? ExitCode.ok : ExitCode.error;
  }
  const s = createStyle();
  const keysNote = result.trustList
    ? `signatures checked against ${trustedIssuers.length} trusted key(s)`
    : 'signatures NOT checked against a trust list (each writer only signed consistently); pass --trusted-issuers or set REINS_TRUSTED_ISSUERS';
  if (result.ok) {
    const heads = Object.entries(result.heads);
    println(
      `${s.green('✓')} audit chain intact: ${result.count} entries from ${heads.length} writer(s)`,
    );
    for (const [w, h] of heads)
      println(s.dim(`  ${w}  seq ${h.seq}  head ${h.hash.slice(0, 16)}…`));
    for (const g of result.gaps) {
      println(
        `${s.yellow('!')} accepted gap ${g.writer}#${g.from}–${g.to} (accepted by ${g.acceptedBy}${g.reason ? `: ${g.reason}` : ''}${g.recorded ? '' : '; not yet recorded in the chain'})`,
      );
    }
    println(s.dim(`  ${keysNote}`));
    return ExitCode.ok;
  }
  if (result.kind === 'truncated') {
    println(`${s.red('✗')} audit chain ${s.bold(result.reason)}`);
    println(
      s.dim(
        `  entries were removed from the stream; a supervisor refuses this chain until \`reins audit accept-gap --writer ${result.writer}\``,
      ),
    );
  } else {
    println(
      `${s.red('✗')} audit chain broken at ${s.bold(`${result.writer}#${result.seq}`)} (${result.kind}): ${result.reason}`,
    );
    println(s.dim(`  ${result.count} entries read; entries from there on cannot be trusted`));
  }
  println(s.dim(`  ${keysNote}`));
  return ExitCode.error;
}

/** Options of `reins audit accept-gap`. */
export interface AuditAcceptGapOptions extends CommonOptions {
  writer: string;
  reason?: string;
}

/**
 * `reins audit accept-gap --writer ID [--reason TEXT] [--as NAME]`: accepts that entries are
 * missing between a writer's chain and its anchor, so that supervisor starts again; it records
 * the gap as its next entry. Exit 1 when there is no anchor or no gap.
 */
export async function auditAcceptGapCommand(options: AuditAcceptGapOptions): Promise<ExitCode> {
  await using client = await openClient(options);
  const acceptedBy = cliIdentity(options.as);
  let gap;
  try {
    gap = await acceptAuditGap(client.runtime.nc, {
      writer: options.writer,
      acceptedBy,
      prefix: client.runtime.subjects.prefix,
      ...(options.reason !== undefined ? { reason: options.reason } : {}),
    });
  } catch (err) {
    if (err instanceof ReinsError && err.code !== 'UNAVAILABLE') {
      throw new CliError(err.message, { cause: err, code: err.code });
    }
    if (isPermissionError(err)) {
      throw new CliError('the NATS user of this command may not write the audit anchors', {
        cause: err,
        code: 'NATS_PERMISSION',
        hint: "in secure mode only the supervisor's user does: run with its seed, e.g. --nkey-file .reins/secure/supervisor.nk",
      });
    }
    throw auditReadError(err);
  }
  if (options.json) {
    printJson({ writer: options.writer, ...gap });
    return ExitCode.ok;
  }
  const s = createStyle();
  println(
    `${s.green('✓')} accepted gap ${s.bold(`${options.writer}#${gap.from}–${gap.to}`)} (by ${acceptedBy}); start supervisor ${options.writer} again: its first entry records the gap`,
  );
  return ExitCode.ok;
}

/** Options of `reins audit export`. */
export interface AuditExportOptions extends CommonOptions {
  /** Also every stored message (batches with their signatures). */
  entries?: boolean;
  /** Write to this file instead of stdout. */
  out?: string;
}

/**
 * `reins audit export [--entries] [--out FILE]`: JSON lines, for a copy kept outside NATS:
 * every anchor value the bucket keeps (`{"type":"anchor",…}`), and with `--entries` every
 * stored audit message (`{"type":"batch",…}`, signatures included).
 */
export async function auditExportCommand(options: AuditExportOptions): Promise<ExitCode> {
  await using client = await openClient(options);
  const out =
    options.out === undefined ? process.stdout : createWriteStream(options.out, { mode: 0o600 });
  const write = async (value: unknown) => {
    if (!out.write(`${JSON.stringify(value)}\n`)) await once(out, 'drain');
  };
  try {
    for (const a of await readAuditAnchors(client.runtime.nc, { history: true })) {
      await write({ type: 'anchor', ...a });
    }
    if (options.entries) {
      for await (const m of readAuditMessages(client.runtime.nc, {
        prefix: client.runtime.subjects.prefix,
      })) {
        await write({ type: 'batch', ...m });
      }
    }
  } catch (err) {
    throw auditReadError(err);
  } finally {
    if (out !== process.stdout) {
      out.end();
      await once(out, 'close');
    }
  }
  return ExitCode.ok;
}
