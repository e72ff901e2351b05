import type { Command } from 'commander';
import { commandPath } from './usage-error.js';

/** Two or three examples per command, shown at the end of its `--help`. */
export const EXAMPLES: Record<string, readonly string[]> = {
  'reins up': [
    'reins up                                  # secure: one nkey user per role',
    'reins up --planners 2 --executors 2 --insecure',
    'reins up --policy policy.json --sandbox ./work',
  ],
  'reins run': [
    'reins run "Summarise docs/ into report.md" --follow',
    'reins run "Summarise docs/" --budget-usd 0.05 --max-steps 20 --follow',
    'reins run "Review the PR" --role reviewer --wait-for-planner --json',
  ],
  'reins ps': ['reins ps', 'reins ps --all --wide', 'reins ps -q'],
  'reins trace': [
    'reins trace run_7f3a                      # a run and the runs it delegated to',
    'reins trace all --from new                # every run, from now on',
    "reins trace '*.executor.>' --json         # a subject pattern, as JSON lines",
  ],
  'reins halt': [
    'reins halt --all --reason "runaway spend"',
    'reins halt --run run_7f3a --reason "wrong goal"',
    'reins halt --role executor --reason "tool outage" --json',
  ],
  'reins pause': [
    'reins pause --run run_7f3a --reason "checking its plan"',
    'reins pause --role planner --reason "model provider incident"',
  ],
  'reins resume': ['reins resume --all', 'reins resume --run run_7f3a --reason "plan checked"'],
  'reins budget': ['reins budget run_7f3a', 'reins budget run_7f3a --json'],
  'reins approvals': [
    'reins approvals',
    'reins approvals --run run_7f3a --status approved',
    'reins approvals -q                        # ids of pending approvals',
  ],
  'reins approve': [
    'reins approve ap_9c1e',
    'reins approve ap_9c1e --reason "invoice checked" --as alice',
  ],
  'reins deny': [
    'reins deny ap_9c1e --reason "not in the budget"',
    'reins deny ap_9c1e --reason "wrong account" --as alice --json',
  ],
  'reins runs': [
    'reins runs',
    'reins runs --status stopped --limit 10',
    "reins runs --format '{{runId}} {{status}}'",
  ],
  'reins audit': ['reins audit tail -n 50', 'reins audit export --entries --out audit.jsonl'],
  'reins audit tail': ['reins audit tail', 'reins audit tail -n 100 --writer supervisor-1 --json'],
  'reins audit verify': [
    'reins audit verify',
    'reins audit verify --trusted-issuers "$(cat trusted-keys.txt)"',
  ],
  'reins audit accept-gap': [
    'reins audit accept-gap --writer supervisor-1 --reason "disk lost; restored from backup"',
    'reins audit accept-gap --writer supervisor-2 --reason "stream purged by mistake" --as alice',
  ],
  'reins audit export': [
    'reins audit export --out anchors.jsonl',
    'reins audit export --entries --out audit-$(date +%F).jsonl',
  ],
  'reins sub': [
    "reins sub 'trace.>'                        # every trace event",
    "reins sub 'hb.planner.*' -n 1             # one planner heartbeat",
    "reins sub 'trace.run_7f3a.>' --json",
  ],
  'reins call': [
    'reins call reviewer \'{"runId":"run_7f3a","text":"some words"}\'',
    'reins call runs.list \'{"limit":5}\'',
  ],
  'reins doctor': ['reins doctor', 'reins doctor --nats nats://10.0.0.5:4222 --json'],
  'reins new': ['reins new actor reviewer', 'reins new actor fetcher --role web --no-install'],
  'reins new actor': [
    'reins new actor reviewer',
    'reins new actor fetcher --role web --dir services --no-install',
  ],
  'reins keys': ['reins keys init', 'reins keys init --rotate planner,executor'],
  'reins keys init': [
    'reins keys init',
    'reins keys init --dir /etc/reins/keys --planner-roles planner,reviewer',
    'reins keys init --keep-existing --prefix acme.v1',
  ],
  'reins keygen': [
    'reins keygen',
    'reins keygen --json > supervisor-key.json && chmod 600 supervisor-key.json',
  ],
  'reins completion': [
    'reins completion bash > ~/.local/share/bash-completion/completions/reins',
    'reins completion zsh > "${fpath[1]}/_reins"',
    'reins completion fish > ~/.config/fish/completions/reins.fish',
  ],
};

/** Every command below `cmd` (itself excluded), depth first. */
export function allCommands(cmd: Command): Command[] {
  return cmd.commands.flatMap((c) => [c, ...allCommands(c)]);
}

/**
 * Ends the `--help` of every command with its examples. A command without any is a bug: this
 * throws, so a new command cannot ship without them.
 */
export function addExamples(program: Command): void {
  for (const cmd of allCommands(program)) {
    const path = commandPath(cmd);
    const examples = EXAMPLES[path];
    if (!examples?.length) throw new Error(`no --help examples for ${path}`);
    cmd.addHelpText('after', `\nExamples:\n${examples.map((e) => `  ${e}`).join('\n')}`);
  }
}
