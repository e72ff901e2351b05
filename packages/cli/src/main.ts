#!/usr/bin/env node
// The `reins` command. Exit codes: 0 ok, 1 error, 2 usage/configuration, 3 run stopped.
import { CommanderError, type Command } from 'commander';
import { natsUrl } from './connection.js';
import { writeError } from './error-output.js';
import { ExitCode, explainError } from './errors.js';
import { createProgram } from './program.js';
import { commandOf, fromCommanderError } from './usage-error.js';

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

const args = process.argv.slice(2);
const endOfOptions = args.indexOf('--');
// `--json` asks for JSON errors too, even when the command line does not parse.
const json = (endOfOptions < 0 ? args : args.slice(0, endOfOptions)).includes('--json');
// Usage errors are printed below like every other error; help and --version stay commander's.
const quiet = (cmd: Command): void => {
  cmd.configureOutput({ outputError: () => undefined });
  cmd.commands.forEach(quiet);
};
quiet(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    if (err.exitCode === 0) exitCode = ExitCode.ok;
    else if (err.code === 'commander.help')
      exitCode = ExitCode.usage; // `reins audit`: its help
    else {
      writeError(fromCommanderError(err, commandOf(program, args)), json);
      exitCode = ExitCode.usage;
    }
  } else {
    const nats = program.commands
      .flatMap((c) => [c, ...c.commands])
      .map((c) => c.opts<{ nats?: string }>().nats)
      .find((u) => u !== undefined);
    const e = explainError(err, { natsUrl: natsUrl(nats !== undefined ? { nats } : {}) });
    writeError(e, json);
    if (process.env['REINS_DEBUG'] && err instanceof Error)
      process.stderr.write(`${err.stack ?? ''}\n`);
    exitCode = e.exitCode;
  }
}
process.exitCode = exitCode;
// Open handles (a NATS reconnect timer, a child's pipe) must not keep a finished command alive.
setTimeout(() => process.exit(exitCode), 200).unref();
