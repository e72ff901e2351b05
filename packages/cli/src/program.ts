import { Command, InvalidArgumentError } from 'commander';
import type { CommonOptions } from './connection.js';
import { ExitCode } from './errors.js';
import { SHELLS, completionScript } from './completion.js';
import { addExamples } from './help-examples.js';
import {
  approvalsCommand,
  decideCommand,
  type ApprovalsOptions,
  type DecideOptions,
} from './commands/approvals.js';
import {
  auditAcceptGapCommand,
  auditExportCommand,
  auditTailCommand,
  auditVerifyCommand,
  type AuditAcceptGapOptions,
  type AuditExportOptions,
  type AuditTailOptions,
  type AuditVerifyOptions,
} from './commands/audit.js';
import { budgetCommand } from './commands/budget.js';
import { callCommand, type CallOptions } from './commands/call.js';
import { controlCommand, type ControlAction, type ControlOptions } from './commands/control.js';
import { doctorCommand } from './commands/doctor.js';
import { keygenCommand } from './commands/keygen.js';
import { keysInitCommand, type KeysInitOptions } from './commands/keys.js';
import { DEFAULT_KEY_DIR } from './key-dir.js';
import { newActorCommand, type NewActorOptions } from './commands/new-actor.js';
import { psCommand, type PsOptions } from './commands/ps.js';
import { runCommand, type RunOptions } from './commands/run.js';
import { runsCommand, type RunsOptions } from './commands/runs.js';
import { subCommand, type SubOptions } from './commands/sub.js';
import { traceCommand, type TraceOptions } from './commands/trace.js';
import { upCommand, type UpOptions } from './commands/up.js';

/** The CLI's version (of `@reins/cli`). */
export const CLI_VERSION = '0.1.0';

/** What commands need from the process around them. */
export interface ProgramContext {
  /** Aborted on the first Ctrl-C / SIGTERM. */
  signal: AbortSignal;
  /** Receives the exit code of the command that ran. */
  setExitCode(code: ExitCode): void;
}

const int =
  (name: string, min: number, max = Number.MAX_SAFE_INTEGER) =>
  (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}.`);
    }
    return n;
  };

const positive =
  (name: string) =>
  (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n <= 0) {
      throw new InvalidArgumentError(`${name} must be a positive number.`);
    }
    return n;
  };

function common(cmd: Command, options: { credentials?: boolean } = {}): Command {
  cmd
    .option('--nats <url>', 'NATS server URL (default: $NATS_URL or nats://127.0.0.1:4222)')
    .option('--json', 'machine-readable JSON output');
  if (options.credentials ?? true) {
    cmd.option(
      '--nkey-file <file>',
      "nkey seed file to connect with in secure mode (default: $REINS_NKEY_SEED_FILE or $REINS_NKEY_SEED, else the project's .reins/secure/client.nk)",
    );
  }
  return cmd;
}

function scoped(cmd: Command, action: ControlAction): Command {
  return common(cmd)
    .option('--all', `${action} every agent and run`)
    .option('--run <runId>', `${action} one run`)
    .option('--agent <agentId>', `${action} one agent`)
    .option('--role <role>', `${action} every agent of a role`)
    .option(
      '--reason <text>',
      action === 'resume'
        ? 'why (recorded in the audit log)'
        : 'why (required; recorded in the audit log)',
    );
}

/**
 * Builds the `reins` command tree (commander). Usage errors throw a `CommanderError` (the
 * caller prints it as a usage error and exits with 2); each command reports its exit code through `context.setExitCode`.
 */
export function createProgram(context: ProgramContext): Command {
  const signal = context.signal;
  const setExitCode = (code: ExitCode) => context.setExitCode(code);
  const program = new Command('reins')
    .description(
      'Run and govern Reins agent swarms: a local swarm, runs, live traces, halts, budgets, audit.',
    )
    .version(CLI_VERSION, '-V, --version')
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureHelp({ showGlobalOptions: true })
    .addHelpText(
      'after',
      `
Exit codes: 0 ok · 1 error · 2 bad usage or configuration · 3 run stopped (budget, halt, breaker)

Quick start:
  reins up                                   # nats-server + supervisor + planner + executor, one nkey user per role (keys in .reins/secure)
  reins up --insecure                        # the same without credentials (local experiments only)
  export NATS_URL=<the URL it prints>        # in another terminal
  reins run "Read every document in docs/ and write a report to report.md" --follow
  reins ps · reins runs · reins halt --all --reason "…" · reins doctor`,
    );

  common(program.command('up'), { credentials: false })
    .description(
      'start a local swarm: nats-server (unless NATS_URL is set), a supervisor, planners and executors',
    )
    .option(
      '--secure',
      'secure mode (the default): nats-server with one nkey user per role, each service on its own seed (keys generated when missing)',
    )
    .option(
      '--insecure',
      'no credentials: any connection may publish anything (local experiments only; prints a warning)',
    )
    .option(
      '--keys <dir>',
      `key directory of secure mode (default: the project's ${DEFAULT_KEY_DIR}, or $REINS_HOME/secure)`,
    )
    .option('--planners <n>', 'planner processes (at least 1)', int('--planners', 1, 64), 1)
    .option('--executors <n>', 'executor processes', int('--executors', 0, 64), 1)
    .option('--role <role>', 'role the planners serve', 'planner')
    .option(
      '--sandbox <dir>',
      "root of the executors' file tools (default: a fresh temp dir with sample docs/)",
    )
    .option(
      '--policy <file>',
      'JSON tool policy (default: read/list files, write *.md, calculator, scratchpad)',
    )
    .option(
      '--port <port>',
      'port of the nats-server it starts (default: a free one)',
      int('--port', 1, 65535),
    )
    .option('--log-level <level>', 'REINS_LOG_LEVEL of the services', 'info')
    .option(
      '--ready-timeout <seconds>',
      'give up when the swarm is not up by then',
      positive('--ready-timeout'),
      30,
    )
    .action(async (opts: UpOptions) => setExitCode(await upCommand(opts, signal)));

  common(program.command('run'))
    .description('start a run; with --follow, show its live trace and exit with its outcome')
    .argument('<goal>', 'what the run should achieve')
    .option('--role <role>', 'planner role that takes the run', 'planner')
    .option(
      '--budget-usd <usd>',
      'USD cap of the run (delegated child runs included)',
      positive('--budget-usd'),
    )
    .option('--max-steps <n>', 'step cap of the run', int('--max-steps', 1))
    .option(
      '--wait-for-planner',
      'admit the run even when no live planner serves its role (it waits for one); without it such a run is refused (NO_PLANNER)',
    )
    .option('-f, --follow', 'print the live trace tree and wait for the end')
    .option('--wide', 'with --follow: whole lines, whatever the terminal width')
    .option(
      '--timeout <seconds>',
      'stop following after this long (exit 1; the run goes on)',
      positive('--timeout'),
    )
    .action(async (goal: string, opts: RunOptions) =>
      setExitCode(await runCommand(goal, opts, signal)),
    );

  common(program.command('ps'))
    .description('agents: role, status, heartbeat age, in-flight work, runs')
    .option('-a, --all', 'include agents that stopped')
    .option('-q, --quiet', 'only the ids (agentId), one a line')
    .option(
      '--format <format>',
      "json, jsonl, or a template such as '{{agentId}}\\t{{status}}' (the fields of --json)",
    )
    .option('--wide', 'whole ids and cells, whatever the terminal width')
    .action(async (opts: PsOptions) => setExitCode(await psCommand(opts)));

  common(program.command('trace'))
    .description(
      'live trace tree of a run (or of a pattern: all, *.executor.>, <run>.*.*.tool.result)',
    )
    .argument('<target>', 'run id, `all`, or a subject pattern below <prefix>.trace.')
    .option('--from <where>', 'start: stored events first; new: only from now on', 'start')
    .option('-w, --watch', 'keep watching after the run ends')
    .option('--wide', 'whole lines, whatever the terminal width')
    .action(async (target: string, opts: TraceOptions) =>
      setExitCode(await traceCommand(target, opts, signal)),
    );

  for (const action of ['halt', 'pause', 'resume'] as const) {
    scoped(program.command(action), action)
      .description(
        action === 'halt'
          ? 'halt agents or runs now: in-flight work is aborted, grants refused; prints who acked and who is missing'
          : action === 'pause'
            ? 'pause agents or runs (no new steps; in-flight work finishes)'
            : 'resume halted or paused agents or runs',
      )
      .option(
        '--deadline-ms <ms>',
        'how long the supervisor waits for acks',
        int('--deadline-ms', 1, 600_000),
      )
      .action(async (opts: ControlOptions) => setExitCode(await controlCommand(action, opts)));
  }

  common(program.command('budget'))
    .description('caps, spend and open reservations of a run')
    .argument('<runId>')
    .action(async (runId: string, opts: CommonOptions) =>
      setExitCode(await budgetCommand(runId, opts)),
    );

  common(program.command('approvals'))
    .description('tool calls waiting for a human (policy effect `approve`), and past decisions')
    .option('--run <runId>', 'only approvals of one run')
    .option(
      '--status <status>',
      'only approvals in this status (pending, approved, denied, expired)',
    )
    .option('--limit <n>', 'how many', int('--limit', 1, 1000), 100)
    .option('-q, --quiet', 'only the ids (approvalId), one a line')
    .option(
      '--format <format>',
      "json, jsonl, or a template such as '{{approvalId}}\\t{{status}}' (the fields of --json)",
    )
    .option('--wide', 'whole ids and cells, whatever the terminal width')
    .action(async (opts: ApprovalsOptions) => setExitCode(await approvalsCommand(opts)));

  common(program.command('approve'))
    .description('approve a pending tool call; it runs once when the planner retries it')
    .argument('<approvalId>', 'id shown by `reins approvals`')
    .option('--reason <text>', 'why (recorded in the audit log)')
    .option('--as <name>', 'who decides (default: $REINS_IDENTITY, else the OS user)')
    .action(async (approvalId: string, opts: DecideOptions) =>
      setExitCode(await decideCommand('approve', approvalId, opts)),
    );

  common(program.command('deny'))
    .description('deny a pending tool call; the planner gets APPROVAL_DENIED')
    .argument('<approvalId>', 'id shown by `reins approvals`')
    .option('--reason <text>', 'why (required; recorded in the audit log)')
    .option('--as <name>', 'who decides (default: $REINS_IDENTITY, else the OS user)')
    .action(async (approvalId: string, opts: DecideOptions) =>
      setExitCode(await decideCommand('deny', approvalId, opts)),
    );

  common(program.command('runs'))
    .description('recent runs, newest first')
    .option(
      '--status <status>',
      'only runs in this status (queued, running, waiting_approval, paused, halted, completed, stopped, failed)',
    )
    .option('--limit <n>', 'how many', int('--limit', 1, 1000), 50)
    .option('-q, --quiet', 'only the ids (runId), one a line')
    .option(
      '--format <format>',
      "json, jsonl, or a template such as '{{runId}}\\t{{status}}' (the fields of --json)",
    )
    .option('--wide', 'whole ids and cells, whatever the terminal width')
    .action(async (opts: RunsOptions) => setExitCode(await runsCommand(opts)));

  const audit = program.command('audit').description('the hash-chained audit log');
  common(audit.command('tail'))
    .description('the last entries of the audit log')
    .option('-n, --lines <n>', 'how many entries', int('--lines', 1, 100_000), 20)
    .option('--writer <id>', 'only one supervisor instance')
    .option('--wide', 'whole lines, whatever the terminal width')
    .action(async (opts: AuditTailOptions) => setExitCode(await auditTailCommand(opts)));
  common(audit.command('verify'))
    .description(
      'verify signatures, hash chains and anchors; exit 1 naming the first bad entry or the truncation',
    )
    .option(
      '--trusted-issuers <keys>',
      'comma-separated public keys of trusted supervisors (adds to $REINS_TRUSTED_ISSUERS)',
    )
    .action(async (opts: AuditVerifyOptions) => setExitCode(await auditVerifyCommand(opts)));
  common(audit.command('accept-gap'))
    .description(
      "accept that a supervisor's chain lost entries after its anchor, so that supervisor starts again",
    )
    .requiredOption('--writer <id>', 'the supervisor id (audit writer) whose chain is truncated')
    .option('--reason <text>', 'why (recorded in the anchor and the chain)')
    .option('--as <name>', 'who accepts (default: $REINS_IDENTITY, else the OS user)')
    .action(async (opts: AuditAcceptGapOptions) => setExitCode(await auditAcceptGapCommand(opts)));
  common(audit.command('export'))
    .description('write the anchors (and with --entries every audit message) as JSON lines')
    .option('--entries', 'also every stored audit message, signatures included')
    .option('--out <file>', 'write to this file (mode 600) instead of stdout')
    .action(async (opts: AuditExportOptions) => setExitCode(await auditExportCommand(opts)));

  common(program.command('sub'))
    .description(
      'print the messages on NATS subjects, decoded and checked against their Reins schema',
    )
    .argument(
      '<pattern>',
      'subject pattern below the prefix (hb.>, trace.*.*.*.tool.call) or a full one',
    )
    .option('-n, --count <n>', 'stop after this many messages', int('--count', 1))
    .action(async (pattern: string, opts: SubOptions) =>
      setExitCode(await subCommand(pattern, opts, signal)),
    );

  common(program.command('call'))
    .description(
      'send one request to any actor (a role, or a subject) with the Reins codec and print the reply',
    )
    .argument('<target>', 'a role (served on <prefix>.actor.<role>) or a subject (runs.list)')
    .argument('[json]', 'the request as JSON (default {})')
    .option('--timeout <seconds>', 'how long to wait for the reply', positive('--timeout'), 5)
    .action(async (target: string, body: string | undefined, opts: CallOptions) =>
      setExitCode(await callCommand(target, body, opts)),
    );

  common(program.command('doctor'))
    .description(
      'check Node, nats-server, NATS, JetStream, the supervisor, agents and the signing key',
    )
    .action(async (opts: CommonOptions) => setExitCode(await doctorCommand(opts)));

  const scaffold = program
    .command('new')
    .description('scaffold code in a pnpm workspace (run from inside it)');
  scaffold
    .command('actor')
    .description(
      'add a workspace package with a working actor, a runnable service and a passing test against nats-server',
    )
    .argument('<name>', 'package name: lower-case letters, digits and dashes (e.g. reviewer)')
    .option('--role <role>', 'role the actor serves (default: the name)')
    .option('--dir <dir>', 'workspace folder to create it in', 'packages')
    .option('--no-install', 'skip `pnpm install` (run it yourself later)')
    .option('--json', 'machine-readable JSON output')
    .action(async (name: string, opts: NewActorOptions) =>
      setExitCode(await newActorCommand(name, opts)),
    );

  const keys = program
    .command('keys')
    .description('secure-mode NATS credentials: one nkey user per role (docs/secure-mode.md)');
  keys
    .command('init')
    .description(
      'write one nkey seed per role (0600), the nats-server authorization block and an example nats.conf; print the env each service needs',
    )
    .option(
      '--dir <dir>',
      `key directory (default: the project's ${DEFAULT_KEY_DIR}, or $REINS_HOME/secure)`,
    )
    .option(
      '--prefix <prefix>',
      'subject prefix (default: the recorded one, $REINS_PREFIX or reins.v1)',
    )
    .option(
      '--planner-roles <roles>',
      'comma-separated roles the planner user may serve (default: any)',
    )
    .option(
      '--executor-roles <roles>',
      'comma-separated roles the executor user may serve (default: any)',
    )
    .option(
      '--keep-existing',
      'keep existing seeds, generate only missing ones, rewrite the server config',
    )
    .option(
      '--rotate <roles>',
      'replace the seeds of these roles (comma-separated), keep the others',
    )
    .option('--force', 'replace every existing seed')
    .option('--json', 'machine-readable JSON output')
    .action(async (opts: KeysInitOptions) => setExitCode(await keysInitCommand(opts)));

  program
    .command('keygen')
    .description('create a supervisor signing seed and print its public key')
    .option('--json', 'machine-readable JSON output')
    .action((opts: CommonOptions) => setExitCode(keygenCommand(opts)));

  program
    .command('completion')
    .description('print a shell completion script (commands and options, from their definitions)')
    .argument('<shell>', SHELLS.join(', '))
    .action((shell: string) => {
      process.stdout.write(completionScript(program, shell));
      setExitCode(ExitCode.ok);
    });

  addExamples(program);
  return program;
}
