import { ExitCode, type CliError } from './errors.js';
import { createStyle } from './output.js';

/**
 * The stable code of an error as `--json` prints it: its own (`NOT_FOUND`, `NO_SUPERVISOR`, …),
 * else `USAGE` for bad usage or configuration and `ERROR` for anything else.
 */
export function errorCode(e: CliError): string {
  return e.code ?? (e.exitCode === ExitCode.usage ? 'USAGE' : 'ERROR');
}

/**
 * Writes an error on stderr: `reins: error: <message> [CODE]` and `  what to do: <hint>`, or with
 * `json` one JSON object `{"code","message","hint"}` on one line (`hint` is null when there is
 * none), so a script reading `--json` output never has to parse text.
 */
export function writeError(e: CliError, json: boolean): void {
  if (json) {
    process.stderr.write(
      `${JSON.stringify({ code: errorCode(e), message: e.message, hint: e.hint ?? null })}\n`,
    );
    return;
  }
  const s = createStyle(process.stderr);
  const code = e.code ? ` ${s.dim(`[${e.code}]`)}` : '';
  process.stderr.write(`${s.red('reins: error:')} ${e.message}${code}\n`);
  if (e.hint) process.stderr.write(`${s.dim('  what to do:')} ${e.hint}\n`);
}
