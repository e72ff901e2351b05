#!/usr/bin/env node
// The `reins` command. Exit codes: 0 ok, 1 error, 2 usage/configuration, 3 run stopped.
import { CommanderError } from 'commander';
import { natsUrl } from './connection.js';
import { ExitCode, explainError } from './errors.js';
import { createStyle } from './output.js';
import { createProgram } from './program.js';

const controller = new AbortController();
let exitCode: ExitCode = ExitCode.ok;
const onSignal = () => {
  if (controller.signal.aborted) return;
  controller.abort();
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

// `reins trace all --json | head`: a closed pipe ends the command quietly.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(exitCode);
  throw err;
});

const program = createProgram({
  signal: controller.signal,
  setExitCode: (code) => (exitCode = code),
});

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // commander has printed the message (and help); only the code is left to choose.
    exitCode = err.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
  } else {
    const nats = program.commands
      .flatMap((c) => [c, ...c.commands])
      .map((c) => c.opts<{ nats?: string }>().nats)
      .find((u) => u !== undefined);
    const e = explainError(err, { natsUrl: natsUrl(nats !== undefined ? { nats } : {}) });
    const s = createStyle(process.stderr);
    const code = e.code ? ` ${s.dim(`[${e.code}]`)}` : '';
    process.stderr.write(`${s.red('reins: error:')} ${e.message}${code}\n`);
    if (e.hint) process.stderr.write(`${s.dim('  what to do:')} ${e.hint}\n`);
    if (process.env['REINS_DEBUG'] && err instanceof Error)
      process.stderr.write(`${err.stack ?? ''}\n`);
    exitCode = e.exitCode;
  }
}
process.exitCode = exitCode;
// Open handles (a NATS reconnect timer, a child's pipe) must not keep a finished command alive.
setTimeout(() => process.exit(exitCode), 200).unref();
