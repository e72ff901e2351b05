import { openClient, type CommonOptions } from '../connection.js';
import { ExitCode, usageError } from '../errors.js';
import { createStyle, printJson, println } from '../output.js';
import { decodePayload } from '../wire-schema.js';

/** Options of `reins sub`. */
export interface SubOptions extends CommonOptions {
  /** Stop after this many messages. */
  count?: number;
}

const SUBJECT_PATTERN = /^([A-Za-z0-9_$-]+|\*|>)(\.([A-Za-z0-9_$-]+|\*|>))*$/;

/**
 * The subject pattern `reins sub` listens on: as given when it starts with the prefix or `$`,
 * else below the prefix (`trace.>` → `reins.v1.trace.>`); `>` alone is everything below it.
 */
export function subPattern(pattern: string, prefix: string): string {
  const full =
    pattern.startsWith(`${prefix}.`) || pattern.startsWith('$') || pattern.startsWith('_INBOX')
      ? pattern
      : `${prefix}.${pattern}`;
  if (!SUBJECT_PATTERN.test(full) || /(^|\.)>\./.test(full)) {
    throw usageError(
      `invalid subject pattern ${JSON.stringify(pattern.slice(0, 80))}`,
      'tokens of letters, digits, _ and -, with * for one token and > for the rest (e.g. `hb.>`, `trace.*.*.*.tool.call`)',
    );
  }
  return full;
}

/**
 * `reins sub <pattern>`: prints every message on matching subjects, decoded with the Reins codec
 * and checked against the schema its `Reins-Schema` header names — one line per message
 * (`subject  schema  json`), or one JSON object per line with `--json`. Runs until Ctrl-C
 * (exit 130) or `--count` messages.
 */
export async function subCommand(
  pattern: string,
  options: SubOptions,
  signal: AbortSignal,
): Promise<ExitCode> {
  await using client = await openClient(options);
  const subject = subPattern(pattern, client.runtime.subjects.prefix);
  const s = createStyle();
  let seen = 0;
  let finish: (code: ExitCode) => void = () => undefined;
  const done = new Promise<ExitCode>((resolve) => (finish = resolve));
  const sub = client.runtime.nc.subscribe(subject, {
    callback: (err, m) => {
      if (err) return;
      const decoded = decodePayload(m.data, m.headers);
      if (options.json) {
        printJson({ subject: m.subject, ...decoded, ...(m.reply ? { reply: m.reply } : {}) });
      } else {
        const body =
          decoded.error !== undefined
            ? s.red(`✗ ${decoded.error}`)
            : typeof decoded.data === 'string'
              ? decoded.data
              : JSON.stringify(decoded.data);
        println(`${s.bold(m.subject)} ${s.dim(decoded.schema ?? '-')} ${body}`);
      }
      seen++;
      if (options.count !== undefined && seen >= options.count) finish(ExitCode.ok);
    },
  });
  // The subscription is registered with the server before saying so.
  await client.runtime.nc.flush();
  if (!options.json) process.stderr.write(s.dim(`listening on ${subject}… (Ctrl-C to stop)\n`));
  const onAbort = () => finish(ExitCode.interrupted);
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    return await done;
  } finally {
    signal.removeEventListener('abort', onAbort);
    sub.unsubscribe();
  }
}
