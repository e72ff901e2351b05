import type { HaltReply, Scope } from '@reins/protocol';
import { openClient, type CommonOptions } from '../connection.js';
import { resolveId } from '../id-prefix.js';
import { ExitCode, usageError } from '../errors.js';
import { createStyle, printJson, println } from '../output.js';
import { requireId } from './ids.js';

/** Options of `reins halt`, `reins pause` and `reins resume`. */
export interface ControlOptions extends CommonOptions {
  all?: boolean;
  run?: string;
  agent?: string;
  role?: string;
  reason?: string;
  /** How long the supervisor collects acks (ms). */
  deadlineMs?: number;
}

/** The control actions the CLI sends. */
export type ControlAction = 'halt' | 'pause' | 'resume';

/**
 * The scope named by exactly one of `--all`, `--run`, `--agent`, `--role`. Throws a usage
 * error when none or several are given, or an id is invalid.
 */
export function scopeFromOptions(o: ControlOptions): Scope {
  const given = [
    o.all ? 'all' : undefined,
    o.run !== undefined ? 'run' : undefined,
    o.agent !== undefined ? 'agent' : undefined,
    o.role !== undefined ? 'role' : undefined,
  ].filter((x) => x !== undefined);
  if (given.length !== 1) {
    throw usageError(
      given.length === 0
        ? 'say what to target: --all, --run ID, --agent ID or --role ROLE'
        : `give one target, not ${given.map((g) => `--${g}`).join(' and ')}`,
    );
  }
  if (o.all) return { kind: 'all' };
  if (o.run !== undefined) return { kind: 'run', runId: requireId(o.run, 'run id') };
  if (o.agent !== undefined) return { kind: 'agent', agentId: requireId(o.agent, 'agent id') };
  return { kind: 'role', role: requireId(o.role ?? '', 'role') };
}

/** `run r1`, `agent a1`, `role executor`, `everything`. */
export function describeScope(scope: Scope): string {
  switch (scope.kind) {
    case 'all':
      return 'everything';
    case 'run':
      return `run ${scope.runId}`;
    case 'agent':
      return `agent ${scope.agentId}`;
    case 'role':
      return `role ${scope.role}`;
  }
}

const PAST: Record<ControlAction, string> = { halt: 'halted', pause: 'paused', resume: 'resumed' };

/**
 * `reins halt|pause|resume <scope> --reason "…"`: asks the supervisor, which writes (or
 * clears) the marker, broadcasts and collects acks; prints who acked and who is missing
 * (fenced). JSON: the supervisor's reply plus the scope. A reason is required for halt and
 * pause (it goes into the audit log).
 */
export async function controlCommand(
  action: ControlAction,
  options: ControlOptions,
): Promise<ExitCode> {
  const given = scopeFromOptions(options);
  const reason = options.reason?.trim();
  if (action !== 'resume' && !reason) {
    throw usageError(
      `--reason is required for ${action} (it is recorded in the audit log)`,
      `e.g. reins ${action} --all --reason "runaway spend"`,
    );
  }
  await using client = await openClient(options);
  // Runs and agents may be named by a unique prefix of their id (`--run 7f3a`).
  const scope: Scope =
    given.kind === 'run'
      ? { kind: 'run', runId: await resolveId(client, 'run', given.runId) }
      : given.kind === 'agent'
        ? { kind: 'agent', agentId: await resolveId(client, 'agent', given.agentId) }
        : given;
  const deadline = options.deadlineMs !== undefined ? { deadlineMs: options.deadlineMs } : {};
  let reply: HaltReply;
  if (action === 'halt') reply = await client.halt(scope, reason ?? '', deadline);
  else if (action === 'pause') reply = await client.pause(scope, reason ?? '');
  else reply = await client.resume(scope, reason || 'resumed from the reins CLI');
  if (options.json) {
    printJson({ action, scope, ...reply });
    return ExitCode.ok;
  }
  const s = createStyle();
  if (action === 'resume' && reply.lifted === false) {
    // Not an error: resuming is idempotent, and a script may resume what another already did.
    println(`${describeScope(scope)} was not halted or paused: nothing to lift`);
    return ExitCode.ok;
  }
  println(`${s.bold(PAST[action])} ${describeScope(scope)}${reason ? s.dim(` — ${reason}`) : ''}`);
  const ackedLabel = `acked (${reply.acked.length})`;
  const missingLabel = `missing (${reply.missing.length})`;
  const width = Math.max(ackedLabel.length, missingLabel.length) + 2;
  println(
    `  ${s.green(ackedLabel.padEnd(width))}${reply.acked.length ? reply.acked.join(', ') : s.dim('none')}`,
  );
  if (action === 'halt' || reply.missing.length) {
    println(
      `  ${reply.missing.length ? s.red(missingLabel.padEnd(width)) : missingLabel.padEnd(width)}${
        reply.missing.length
          ? `${reply.missing.join(', ')} ${s.dim('— fenced: their grants are refused')}`
          : s.dim('none')
      }`,
    );
  }
  if (reply.aborted) println(`  aborted ${reply.aborted} unit(s) of in-flight work`);
  for (const u of reply.unknownOutcomes) {
    println(
      s.yellow(
        `  outcome unknown: ${u.tool} in run ${u.runId} (idempotency key ${u.idempotencyKey})`,
      ),
    );
  }
  if (action === 'halt') {
    const flag =
      scope.kind === 'all'
        ? '--all'
        : scope.kind === 'run'
          ? `--run ${scope.runId}`
          : scope.kind === 'agent'
            ? `--agent ${scope.agentId}`
            : `--role ${scope.role}`;
    println(s.dim(`  undo with: reins resume ${flag}`));
  }
  return ExitCode.ok;
}
