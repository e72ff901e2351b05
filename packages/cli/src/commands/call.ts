import { ReinsError, isId } from '@reins/protocol';
import { openClient, type CommonOptions } from '../connection.js';
import { CliError, ExitCode, usageError } from '../errors.js';
import { printJson, println } from '../output.js';
import { AnyPayload } from '../wire-schema.js';

/** Options of `reins call`. */
export interface CallOptions extends CommonOptions {
  /** Seconds to wait for the reply. */
  timeout?: number;
}

/**
 * Where `reins call` sends: a role (`reviewer`) is served on `<prefix>.actor.<role>`, as
 * `reins new actor` makes it; a subject with dots is taken as it is, below the prefix unless it
 * starts with it (`runs.list` → `reins.v1.runs.list`).
 */
export function callSubject(target: string, prefix: string): string {
  const role = isId(target) ? target : undefined;
  if (role !== undefined) return `${prefix}.actor.${role}`;
  const full = target.startsWith(`${prefix}.`) ? target : `${prefix}.${target}`;
  if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/.test(full)) {
    throw usageError(
      `invalid call target ${JSON.stringify(target.slice(0, 80))}`,
      'give a role (served on <prefix>.actor.<role>) or a subject without wildcards (e.g. runs.list)',
    );
  }
  return full;
}

/**
 * `reins call <subject|role> '<json>'`: one request to any actor, encoded with the Reins codec
 * (size and hostile-input checks) and the reply decoded the same way: printed as JSON. An error
 * reply (BAD_REQUEST when the actor's schema refused the request, …) is the command's error.
 */
export async function callCommand(
  target: string,
  body: string | undefined,
  options: CallOptions,
): Promise<ExitCode> {
  let payload: unknown = {};
  if (body !== undefined) {
    try {
      payload = JSON.parse(body);
    } catch (err) {
      throw usageError(
        `the request is not JSON: ${(err as Error).message}`,
        `quote it for the shell: reins call ${target} '{"key":"value"}'`,
      );
    }
  }
  await using client = await openClient(options);
  const subject = callSubject(target, client.runtime.subjects.prefix);
  const reply = await client.runtime
    .request(subject, AnyPayload, AnyPayload, payload, {
      timeoutMs: (options.timeout ?? 5) * 1000,
    })
    .catch((err: unknown) => {
      if (err instanceof ReinsError && err.code === 'UNAVAILABLE') {
        throw new CliError(`nothing answers on ${subject}`, {
          cause: err,
          code: 'NO_RESPONDERS',
          hint: "`reins ps` lists the agents and the roles they serve; `reins sub '>'` shows the subjects in use",
        });
      }
      if (err instanceof ReinsError && err.code === 'TIMEOUT') {
        throw new CliError(`no reply on ${subject} within ${options.timeout ?? 5}s`, {
          cause: err,
          code: 'TIMEOUT',
          hint: 'the actor may be busy or stuck: check `reins ps`, or wait longer with --timeout',
        });
      }
      throw err;
    });
  if (options.json) printJson(reply);
  else println(JSON.stringify(reply, null, 2));
  return ExitCode.ok;
}
