import { ReinsError } from '@reins/protocol';

/** Exit codes of every `reins` command; scripts may rely on them. */
export const ExitCode = {
  /** Success. */
  ok: 0,
  /** Something failed: NATS or the supervisor unreachable, a run failed, a broken audit chain. */
  error: 1,
  /** Bad usage or configuration: unknown option, missing argument, invalid id or file. */
  usage: 2,
  /** A followed run stopped without an answer (budget, halt, breaker, step cap). */
  stopped: 3,
  /** Interrupted by Ctrl-C while waiting. */
  interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/**
 * An error meant for the person at the terminal: a message, an optional hint saying what to
 * do, the exit code the process ends with, and for errors scripts may branch on a stable
 * `code` (e.g. `KEYS_EXIST`), printed after the message.
 */
export class CliError extends Error {
  override readonly name = 'CliError';
  readonly exitCode: ExitCode;
  readonly hint: string | undefined;
  readonly code: string | undefined;

  constructor(
    message: string,
    options: { exitCode?: ExitCode; hint?: string; cause?: unknown; code?: string } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.exitCode = options.exitCode ?? ExitCode.error;
    this.hint = options.hint;
    this.code = options.code;
  }
}

/** A usage or configuration error (exit code 2). */
export function usageError(message: string, hint?: string): CliError {
  return new CliError(message, { exitCode: ExitCode.usage, ...(hint ? { hint } : {}) });
}

const START_SUPERVISOR =
  'start one with `reins up` (a local swarm) or `node services/supervisor/dist/main.js`';

/**
 * True when NATS refused a publish or subscribe somewhere in `err`'s cause chain (nats.js's
 * `PermissionViolationError`): in secure mode the user connected with may not do it.
 */
export function isPermissionError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e.name === 'PermissionViolationError') return true;
  }
  return false;
}

/** True for nats.js's `AuthorizationError` (no, unknown or wrong credentials). */
export function isAuthError(err: unknown): boolean {
  return err instanceof Error && err.name === 'AuthorizationError';
}

/** What to list when a run, agent, role or approval was not found (from the error's details). */
function notFoundHint(details: Record<string, unknown> | undefined): string {
  if (typeof details?.['approvalId'] === 'string')
    return 'list approvals with `reins approvals` (decided ones: --status approved|denied|expired)';
  const scope = details?.['scope'];
  const kind =
    typeof scope === 'object' && scope !== null && 'kind' in scope ? scope.kind : undefined;
  if (kind === 'agent') return 'list agents with `reins ps` (check the agent id)';
  if (kind === 'role')
    return 'list agents and the roles they serve with `reins ps`; to stop agents that have not started yet, halt --all';
  return 'list runs with `reins runs`';
}

/**
 * Turns any error into a `CliError` that says what to do: no responders on a supervisor
 * subject becomes "no supervisor answered on …", an unreachable NATS names the URL, refused
 * credentials or permissions (secure mode) say which seed to use, bad requests exit with 2.
 * Unknown errors keep their message (exit 1).
 */
export function explainError(err: unknown, context: { natsUrl: string }): CliError {
  if (err instanceof CliError) return err;
  if (isPermissionError(err)) {
    return new CliError(`NATS refused: ${(err as Error).message}`, {
      cause: err,
      code: 'NATS_PERMISSION',
      hint: 'in secure mode each nkey user may do only its role’s part (docs/secure-mode.md); the CLI connects as the client user (REINS_NKEY_SEED_FILE / --nkey-file)',
    });
  }
  if (err instanceof ReinsError) {
    const subject = typeof err.details?.['subject'] === 'string' ? err.details['subject'] : '';
    switch (err.code) {
      case 'UNAVAILABLE':
        if (err.message.startsWith('cannot connect to NATS') && isAuthError(err.cause)) {
          return new CliError(
            `NATS at ${context.natsUrl} refused the credentials: ${(err.cause as Error).message}`,
            {
              cause: err,
              code: 'NATS_AUTH',
              hint:
                'the server runs in secure mode (docs/secure-mode.md): connect with the client ' +
                'seed, e.g. REINS_NKEY_SEED_FILE=.reins/secure/client.nk or --nkey-file <file>',
            },
          );
        }
        if (err.message.startsWith('cannot connect to NATS')) {
          return new CliError(`cannot connect to NATS at ${context.natsUrl}`, {
            cause: err,
            code: 'NATS_UNREACHABLE',
            hint:
              'start a local swarm with `reins up`, or point --nats / NATS_URL at a running ' +
              'nats-server (with JetStream: `nats-server -js`)',
          });
        }
        if (err.message.startsWith('cannot create Reins streams')) {
          return new CliError(`JetStream is not available on ${context.natsUrl}`, {
            cause: err,
            code: 'NO_JETSTREAM',
            hint: 'restart nats-server with JetStream enabled: `nats-server -js`',
          });
        }
        if (subject) {
          return new CliError(`no supervisor answered on ${subject}`, {
            cause: err,
            code: 'NO_SUPERVISOR',
            hint: START_SUPERVISOR,
          });
        }
        return new CliError(err.message, {
          cause: err,
          code: 'UNAVAILABLE',
          hint: 'check `reins doctor`',
        });
      case 'TIMEOUT':
        return new CliError(
          subject ? `no answer on ${subject} in time` : `timed out: ${err.message}`,
          {
            cause: err,
            code: 'TIMEOUT',
            hint: 'the supervisor may be overloaded or stuck; check `reins ps` and its logs',
          },
        );
      case 'NOT_FOUND':
        return new CliError(err.message, {
          cause: err,
          code: 'NOT_FOUND',
          hint: notFoundHint(err.details),
        });
      case 'HALTED':
        return new CliError(`refused: ${err.message}`, {
          cause: err,
          code: 'HALTED',
          hint: 'a halt covers this; lift it with `reins resume` and the same scope (e.g. --all)',
        });
      case 'NO_PLANNER': {
        const served = Array.isArray(err.details?.['served'])
          ? (err.details['served'] as unknown[]).filter((r): r is string => typeof r === 'string')
          : [];
        const role = typeof err.details?.['role'] === 'string' ? err.details['role'] : 'ROLE';
        return new CliError(err.message, {
          cause: err,
          code: 'NO_PLANNER',
          hint:
            `${served.length ? `live agents serve roles ${served.join(', ')}` : 'no planner is running'}` +
            ` (see \`reins ps\`); start a planner for ${role} (\`reins up --role ${role}\`),` +
            ' or queue the run for one still to come with --wait-for-planner',
        });
      }
      case 'BAD_REQUEST':
        return new CliError(err.message, {
          cause: err,
          code: 'BAD_REQUEST',
          exitCode: ExitCode.usage,
        });
      default:
        return new CliError(err.message, { cause: err, code: err.code });
    }
  }
  if (err instanceof Error) return new CliError(err.message, { cause: err });
  return new CliError(String(err));
}
