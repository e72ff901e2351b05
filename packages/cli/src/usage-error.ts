import type { Command, CommanderError } from 'commander';
import { usageError, type CliError } from './errors.js';

/** The command a command line names (`reins audit tail …` → the `tail` command under `audit`). */
export function commandOf(program: Command, args: readonly string[]): Command {
  let cmd = program;
  for (const arg of args) {
    if (arg === '--') break;
    if (arg.startsWith('-')) continue;
    const sub = cmd.commands.find((c) => c.name() === arg || c.aliases().includes(arg));
    if (!sub) break;
    cmd = sub;
  }
  return cmd;
}

/** `reins audit tail`: the full name of a command. */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/**
 * A commander usage error (unknown option, missing argument, bad value) as the CLI's own
 * `CliError` (exit 2): commander's first line is the message, its suggestion (`Did you mean …?`)
 * and the command's `--help` the hint.
 */
export function fromCommanderError(err: CommanderError, cmd: Command): CliError {
  const [first = err.message, ...rest] = err.message.split('\n');
  const message = first.replace(/^error: /, '');
  const said = rest
    .join(' ')
    .replace(/^\((.*)\)$/, '$1')
    .trim();
  const suggestion = said ? `${said.charAt(0).toLowerCase()}${said.slice(1)} —` : '';
  const help = commandPath(cmd);
  return usageError(
    message,
    `${suggestion ? `${suggestion} ` : ''}see \`${help} --help\`${help === 'reins' ? '' : ' (every command: `reins --help`)'}`,
  );
}
