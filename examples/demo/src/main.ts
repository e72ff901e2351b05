// The Reins demo: a governed swarm on an embedded nats-server.
//   supervisor ─ the control plane (policy.json, budgets, signed grants, audit)
//   lead planner ─ delegates the goal to the researcher role as a child run (budget carved out)
//   researcher planner ─ lists, reads and summarises docs/ into report.md through the executors
//   executor ×2 ─ run file tools inside a sandbox directory, exactly once per idempotency key
// Offline by default (deterministic scripted model); set OPENAI_API_KEY / OPENAI_BASE_URL (and
// REINS_MODEL) to think with a real model instead.
import { cp, mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type RunHandle } from '@reins/client';
import { createGrantSigner, type TraceEvent } from '@reins/protocol';
import { INSECURE_WARNING } from '@reins/runtime';
import { startNatsServer, startSwarm } from '@reins/testing';

const here = fileURLToPath(new URL('..', import.meta.url));
const color = process.stdout.isTTY && !process.env['NO_COLOR'];
const paint = (code: number, s: string) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
const dim = (s: string) => paint(2, s);
const bold = (s: string) => paint(1, s);

const external = process.env['NATS_URL'];
const nats = external ? undefined : await startNatsServer();
const url = external ?? nats?.url ?? '';
console.log(bold('Reins demo'));
console.log(
  `${dim('nats-server')}  ${url}${nats ? dim(' (embedded, JetStream, temp store)') : ''}`,
);
// The demo runs without NATS credentials (`reins up` is the secure way to start a swarm).
console.log(paint(33, `warning: ${INSECURE_WARNING}`));

// A sandbox for the executors, seeded with the example's documents.
const sandbox = await mkdtemp(join(tmpdir(), 'reins-demo-'));
await cp(join(here, 'docs'), join(sandbox, 'docs'), { recursive: true });
console.log(`${dim('sandbox')}      ${sandbox}`);

const { seed, signer } = createGrantSigner();
const offline = !process.env['OPENAI_API_KEY'] && !process.env['OPENAI_BASE_URL'];
console.log(
  `${dim('model')}        ${offline ? 'scripted (offline, deterministic; priced like a small hosted model)' : `OpenAI-compatible ${process.env['REINS_MODEL'] ?? ''}`}`,
);
// REINS_INSECURE=1: the warning above is printed once, not by every service.
const common = { NATS_URL: url, REINS_INSECURE: '1' };
const plannerEnv = {
  ...common,
  REINS_TRUSTED_ISSUERS: signer.publicKey,
  REINS_TOOLS: 'files,calculator,scratchpad',
  REINS_SCRIPTED_PRICE: '0.15,0.6',
  REINS_MAX_OUTPUT_TOKENS: '1000',
};
const swarm = startSwarm(
  [
    {
      name: 'supervisor',
      service: 'supervisor',
      env: {
        ...common,
        REINS_SUPERVISOR_SEED: seed,
        REINS_POLICY_FILE: join(here, 'policy.json'),
        REINS_AGENT_ID: 'sv-demo',
      },
    },
    ...[1, 2].map((i) => ({
      name: `executor-${i}`,
      service: 'executor' as const,
      env: {
        ...common,
        REINS_TRUSTED_ISSUERS: signer.publicKey,
        REINS_SANDBOX_DIR: sandbox,
        REINS_AGENT_ID: `exec-${i}`,
      },
    })),
    {
      name: 'lead',
      service: 'planner',
      env: {
        ...plannerEnv,
        REINS_ROLE: 'lead',
        REINS_SCRIPT: 'delegate:researcher',
        REINS_DELEGATE_TO: 'researcher',
        REINS_AGENT_ID: 'lead-1',
      },
    },
    {
      name: 'researcher',
      service: 'planner',
      env: {
        ...plannerEnv,
        REINS_ROLE: 'researcher',
        REINS_SCRIPT: 'research',
        REINS_AGENT_ID: 'researcher-1',
      },
    },
  ],
  {
    onLog: (name, line) => console.log(dim(`  [${name}] ${line.slice(0, 300)}`)),
    onExit: (name, code) => console.log(paint(31, `  [${name}] exited with ${code}`)),
  },
);

const client = await connect({ servers: url, identity: 'demo' });
try {
  // Wait for the swarm: 5 agents heartbeating.
  const deadline = Date.now() + 30_000;
  while ((await client.agents.list()).filter((a) => a.status === 'running').length < 5) {
    if (Date.now() > deadline) throw new Error('the swarm did not come up within 30 s');
    await new Promise((r) => setTimeout(r, 200));
  }
  console.log(
    `${dim('agents')}       ${(await client.agents.list()).map((a) => `${a.role}:${a.agentId}`).join('  ')}\n`,
  );

  const started = Date.now();
  const printEvent = (e: TraceEvent) => {
    const t = ((e.ts - started) / 1000).toFixed(3).padStart(7);
    const who = `${e.role}`.padEnd(10);
    const d = e.data;
    const detail =
      e.event === 'tool.call'
        ? `${String(d['tool'])} ${JSON.stringify(d['args']).slice(0, 80)}`
        : e.event === 'tool.result'
          ? `${String(d['tool'])} ${d['ok'] ? 'ok' : `error ${JSON.stringify(d['error'])}`}`
          : e.event === 'model.result'
            ? `${JSON.stringify(d['usage'])} $${Number(d['usd'] ?? 0).toFixed(6)} → ${(d['toolCalls'] as string[] | undefined)?.join(', ') || 'answer'}`
            : e.event === 'run.start'
              ? JSON.stringify(d['budget'])
              : e.event === 'run.end'
                ? `${String(d['status'])}${typeof d['stopReason'] === 'string' ? ` (${d['stopReason']})` : ''}`
                : e.event === 'delegate.start'
                  ? `child run ${String(d['childRunId'])} → ${String(d['role'])}`
                  : '';
    const indent = e.event.startsWith('step.') || e.event.startsWith('run.') ? '' : '  ';
    console.log(
      `${dim(t + 's')} ${dim(e.runId.slice(-8))} ${who} ${indent}${bold(e.event.padEnd(13))} ${e.stepId ?? ''} ${detail}`,
    );
  };
  /** Prints a run's events (its children's included) until its own `run.end` is printed. */
  const follow = async (handle: RunHandle) => {
    let ended!: () => void;
    const end = new Promise<void>((r) => (ended = r));
    const sub = await handle.events({
      callback: (e) => {
        printEvent(e);
        if (e.event === 'run.end' && e.runId === handle.id) ended();
      },
    });
    return {
      done: async () => {
        // The trace may trail the run record by a moment; never wait on it for long.
        await Promise.race([end, new Promise((r) => setTimeout(r, 5_000).unref())]);
        await sub.stop();
      },
    };
  };

  // 1. A run that does real work.
  console.log(bold('Run 1: summarise the documents into report.md (budget $0.05, 20 steps)'));
  const run = await client.runs.start(
    'Read every document in docs/ and write a report to report.md',
    { role: 'lead', budget: { usd: 0.05, steps: 20 } },
  );
  // The run's events include the child runs it delegates to (the researcher's steps).
  const events = await follow(run);
  const result = await run.result({ timeoutMs: 120_000 });
  await events.done();
  const budget = await run.budget();
  console.log(`\n${bold('answer')}  ${result.answer ?? '(none)'}`);
  console.log(
    `${bold('status')}  ${result.status}${result.stopReason ? ` (${result.stopReason})` : ''}`,
  );
  console.log(
    `${bold('budget')}  spent $${budget.committed.usd.toFixed(6)} of $${String(budget.cap.usd)}, ${budget.committed.steps} of ${String(budget.cap.steps)} steps (child run's share included), ${budget.committed.inputTokens + budget.committed.outputTokens} tokens`,
  );
  console.log(
    `\n${bold('report.md')}\n${await readFile(join(sandbox, 'report.md'), 'utf8').catch(() => '(missing)')}`,
  );

  // 2. A run stopped by its budget.
  console.log(bold('Run 2: the same goal with a budget of $0.0008'));
  const poor = await client.runs.start(
    'Read every document in docs/ and write a report to report.md',
    { role: 'researcher', budget: { usd: 0.0008, steps: 20 } },
  );
  const poorEvents = await follow(poor);
  const stopped = await poor.result({ timeoutMs: 60_000 });
  await poorEvents.done();
  const poorBudget = await poor.budget();
  console.log(
    `\n${bold('status')}  ${stopped.status} (${stopped.stopReason ?? 'no reason'}): ${stopped.error?.message ?? ''}`,
  );
  console.log(
    `${bold('budget')}  spent $${poorBudget.committed.usd.toFixed(6)} of $${String(poorBudget.cap.usd)}; reserved now $${poorBudget.reserved.usd.toFixed(6)} — no call ran past the cap`,
  );
  await new Promise((r) => setTimeout(r, 200)); // let the last trace lines print
} finally {
  await client.close();
  await swarm.stop();
  await nats?.stop();
}
