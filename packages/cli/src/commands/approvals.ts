import type { ApprovalRecord } from '@reins/protocol';
import type { ReinsClient } from '@reins/client';
import { cliIdentity, openClient, type CommonOptions } from '../connection.js';
import { CliError, ExitCode, usageError } from '../errors.js';
import {
  createStyle,
  formatDuration,
  formatTable,
  outputWidth,
  printJson,
  println,
  truncate,
  type Style,
} from '../output.js';
import { resolveId, shortIds } from '../id-prefix.js';
import { printList, type ListOptions } from '../list-output.js';
import { requireId } from './ids.js';

/** The statuses an approval can have. */
export const APPROVAL_STATUSES = ['pending', 'approved', 'denied', 'expired'] as const;
export type ApprovalStatus = (typeof APPROVAL_STATUSES)[number];

/** Options of `reins approvals`. */
export interface ApprovalsOptions extends CommonOptions, ListOptions {
  run?: string;
  status?: string;
  limit?: number;
}

/** Options of `reins approve` and `reins deny`. */
export interface DecideOptions extends CommonOptions {
  reason?: string;
}

/** `in 9m58s`, `expired 3.0s ago`: when a pending approval runs out. */
export function describeExpiry(rec: ApprovalRecord, now = Date.now()): string {
  if (rec.status !== 'pending') return '-';
  const left = rec.expiresAt - now;
  return left > 0 ? `in ${formatDuration(left)}` : `expired ${formatDuration(-left)} ago`;
}

/** The arguments of a tool call on one line, cut to `max` characters. */
export function formatArgs(args: unknown, max = 60): string {
  return truncate(JSON.stringify(args) ?? '', max);
}

function paintApproval(rec: ApprovalRecord, s: Style, now: number): string {
  if (rec.status === 'pending') {
    return now > rec.expiresAt ? s.red('pending (expired)') : s.yellow('pending');
  }
  if (rec.status === 'approved') return s.green('approved');
  return s.red(rec.status);
}

/**
 * `reins approvals [--run ID] [--status S]`: approvals of tool calls a policy marks `approve`,
 * newest first, with tool, arguments, rule and expiry (JSON: the approval records, one array).
 */
export async function approvalsCommand(options: ApprovalsOptions): Promise<ExitCode> {
  let status: ApprovalStatus | undefined;
  if (options.status !== undefined) {
    status = APPROVAL_STATUSES.find((x) => x === options.status);
    if (!status)
      throw usageError(
        `unknown approval status ${JSON.stringify(options.status)}`,
        `one of: ${APPROVAL_STATUSES.join(', ')}`,
      );
  }
  const given = options.run !== undefined ? requireId(options.run, 'run id') : undefined;
  await using client = await openClient(options);
  const runId = given !== undefined ? await resolveId(client, 'run', given) : undefined;
  const approvals = (
    await client.approvals.list({
      ...(runId ? { runId } : {}),
      ...(status ? { status } : {}),
      ...(options.limit !== undefined ? { limit: options.limit } : {}),
    })
  ).sort((a, b) => b.createdAt - a.createdAt);
  if (printList(approvals, options, (a) => a.approvalId)) return ExitCode.ok;
  const s = createStyle();
  if (approvals.length === 0) {
    const what = [status, 'approvals', runId ? `for run ${runId}` : ''].filter(Boolean).join(' ');
    println(`no ${what}`);
    return ExitCode.ok;
  }
  const now = Date.now();
  const shortApproval = shortIds(
    approvals.map((a) => a.approvalId),
    'approval',
  );
  const shortRun = shortIds(
    approvals.map((a) => a.runId),
    'run',
  );
  const id = (map: Map<string, string>, full: string) =>
    options.wide ? full : (map.get(full) ?? full);
  println(
    formatTable(
      ['APPROVAL', 'STATUS', 'RUN', 'TOOL', 'ARGS', 'RULE', 'EXPIRES', 'DECIDED'],
      approvals.map((a) => [
        id(shortApproval, a.approvalId),
        paintApproval(a, s, now),
        id(shortRun, a.runId),
        a.tool,
        options.wide ? (JSON.stringify(a.args) ?? '') : formatArgs(a.args, 40),
        a.rule,
        describeExpiry(a, now),
        a.decidedBy
          ? `${a.decidedBy}${a.reason ? s.dim(` — ${truncate(a.reason, 30)}`) : ''}`
          : '-',
      ]),
      s,
      { width: outputWidth(options.wide), shrink: [7, 4, 5] },
    ),
  );
  const pending = approvals.filter((a) => a.status === 'pending' && a.expiresAt >= now);
  if (pending[0]) {
    println(
      s.dim(
        `\ndecide with: reins approve ${id(shortApproval, pending[0].approvalId)}  ·  reins deny ${id(shortApproval, pending[0].approvalId)} --reason "…"`,
      ),
    );
  }
  return ExitCode.ok;
}

/** Finds one approval by id, or says how to list them (exit 1). */
async function findApproval(client: ReinsClient, approvalId: string): Promise<ApprovalRecord> {
  const all = await client.approvals.list({ limit: 1000 });
  const found = all.find((a) => a.approvalId === approvalId);
  if (!found) {
    throw new CliError(`no approval ${approvalId}`, {
      code: 'NOT_FOUND',
      hint: 'list pending approvals with `reins approvals --status pending`',
    });
  }
  return found;
}

/**
 * `reins approve <id> [--reason …]` and `reins deny <id> --reason …`: decides a pending
 * approval as `--as` / `REINS_IDENTITY` / the OS user. The decision binds to the exact
 * arguments shown by `reins approvals` (their hash). An approval that is already decided or
 * expired is an error (exit 1) naming its status. JSON: the updated approval record.
 */
export async function decideCommand(
  decision: 'approve' | 'deny',
  approvalId: string,
  options: DecideOptions,
): Promise<ExitCode> {
  requireId(approvalId, 'approval id');
  const reason = options.reason?.trim();
  if (decision === 'deny' && !reason) {
    throw usageError(
      '--reason is required for deny (it is recorded in the audit log)',
      `e.g. reins deny ${approvalId} --reason "amount too large"`,
    );
  }
  await using client = await openClient(options);
  approvalId = await resolveId(client, 'approval', approvalId);
  const current = await findApproval(client, approvalId);
  const now = Date.now();
  if (current.status !== 'pending' || now > current.expiresAt) {
    const status = current.status === 'pending' ? 'expired' : current.status;
    throw new CliError(
      `approval ${approvalId} is already ${status}${current.decidedBy ? ` (by ${current.decidedBy})` : ''}`,
      {
        hint:
          status === 'expired'
            ? 'the run was told no; the planner may ask again, which creates a new approval'
            : 'see `reins approvals --run ' + current.runId + '`',
      },
    );
  }
  const updated =
    decision === 'approve'
      ? await client.approvals.approve(approvalId, {
          argsHash: current.argsHash,
          ...(reason ? { reason } : {}),
        })
      : await client.approvals.deny(approvalId, reason ?? '');
  // Expired between the look-up and the decision: the supervisor recorded `expired` instead.
  const code = updated.status === 'expired' ? ExitCode.error : ExitCode.ok;
  if (options.json) {
    printJson(updated);
    return code;
  }
  const s = createStyle();
  const verb =
    updated.status === 'approved'
      ? s.green('approved')
      : updated.status === 'denied'
        ? s.red('denied')
        : s.yellow(updated.status);
  println(`${s.bold(verb)} ${approvalId} ${s.dim(`as ${cliIdentity(options.as)}`)}`);
  println(`  tool     ${updated.tool} ${formatArgs(updated.args, 200)}`);
  println(
    `  run      ${updated.runId} ${s.dim(`(agent ${updated.agentId}, role ${updated.role})`)}`,
  );
  println(`  rule     ${updated.rule}`);
  if (updated.reason) println(`  reason   ${updated.reason}`);
  if (updated.status === 'approved') {
    println(s.dim('  the planner retries the call with the same arguments and it runs once'));
  }
  return code;
}
