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
 * do, and the exit code the process ends with.
 */
export class CliError extends Error {
  override readonly name = 'CliError';
  readonly exitCode: ExitCode;
  readonly hint: string | undefined;

  constructor(
    message: string,
    options: { exitCode?: ExitCode; hint?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.exitCode = options.exitCode ?? ExitCode.error;
    this.hint = options.hint;
  }
}

/** A usage or configuration error (exit code 2). */
export function usageError(message: string, hint?: string): CliError {
  return new CliError(message, { exitCode: ExitCode.usage, ...(hint ? { hint } : {}) });
}

const START_SUPERVISOR =
  'start one with `reins up` (a local swarm) or `node services/supervisor/dist/main.js`';

/**
 * Turns any error into a `CliError` that says what to do: no responders on a supervisor
 * subject becomes "no supervisor answered on …", an unreachable NATS names the URL, bad
 * requests exit with 2. Unknown errors keep their message (exit 1).
 */
export function explainError(err: unknown, context: { natsUrl: string }): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof ReinsError) {
    const subject = typeof err.details?.['subject'] === 'string' ? err.details['subject'] : '';
    switch (err.code) {
      case 'UNAVAILABLE':
        if (err.message.startsWith('cannot connect to NATS')) {
          return new CliError(`cannot connect to NATS at ${context.natsUrl}`, {
            cause: err,
            hint:
              'start a local swarm with `reins up`, or point --nats / NATS_URL at a running ' +
              'nats-server (with JetStream: `nats-server -js`)',
          });
        }
        if (err.message.startsWith('cannot create Reins streams')) {
          return new CliError(`JetStream is not available on ${context.natsUrl}`, {
            cause: err,
            hint: 'restart nats-server with JetStream enabled: `nats-server -js`',
          });
        }
        if (subject) {
          return new CliError(`no supervisor answered on ${subject}`, {
            cause: err,
            hint: START_SUPERVISOR,
          });
        }
        return new CliError(err.message, { cause: err, hint: 'check `reins doctor`' });
      case 'TIMEOUT':
        return new CliError(
          subject ? `no answer on ${subject} in time` : `timed out: ${err.message}`,
          {
            cause: err,
            hint: 'the supervisor may be overloaded or stuck; check `reins ps` and its logs',
          },
        );
      case 'NOT_FOUND':
        return new CliError(err.message, {
          cause: err,
          hint: 'list runs with `reins runs`',
        });
      case 'HALTED':
        return new CliError(`refused: ${err.message}`, {
          cause: err,
          hint: 'a halt covers this; lift it with `reins resume` and the same scope (e.g. --all)',
        });
      case 'BAD_REQUEST':
        return new CliError(err.message, { cause: err, exitCode: ExitCode.usage });
      default:
        return new CliError(`${err.code}: ${err.message}`, { cause: err });
    }
  }
  if (err instanceof Error) return new CliError(err.message, { cause: err });
  return new CliError(String(err));
}
