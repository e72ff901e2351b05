import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startNatsServer, type NatsServer } from '@reins/testing';
import { jsonLines, reins, reinsUp, type UpInfo, type UpProcess } from './cli-process.js';

const DEMO_POLICY = fileURLToPath(new URL('../../../examples/demo/policy.json', import.meta.url));
const GOAL = 'Read every document in docs/ and write a report to report.md';

interface RunLine {
  run?: { runId: string; status: string; stopReason?: string };
  budget?: { cap: { usd?: number; steps?: number }; committed: { usd: number; steps: number } };
  event?: string;
  runId?: string;
  data?: Record<string, unknown>;
}

describe('reins without a swarm', () => {
  it('exits 2 with a helpful message on bad usage', async () => {
    const missing = await reins(['run']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("missing required argument 'goal'");
    expect(missing.stderr).toContain('reins --help');

    const noScope = await reins(['halt', '--reason', 'x']);
    expect(noScope.code).toBe(2);
    expect(noScope.stderr).toContain('--all, --run ID, --agent ID or --role ROLE');

    const twoScopes = await reins(['halt', '--all', '--run', 'r1', '--reason', 'x']);
    expect(twoScopes.code).toBe(2);
    expect(twoScopes.stderr).toContain('give one target');

    const noReason = await reins(['halt', '--all']);
    expect(noReason.code).toBe(2);
    expect(noReason.stderr).toContain('--reason is required');

    const badNumber = await reins(['run', 'goal', '--max-steps', 'ten']);
    expect(badNumber.code).toBe(2);
    expect(badNumber.stderr).toContain('--max-steps must be a whole number');

    const badId = await reins(['budget', 'not an id!']);
    expect(badId.code).toBe(2);
    expect(badId.stderr).toContain('invalid run id');

    const badStatus = await reins(['runs', '--status', 'bogus']);
    expect(badStatus.code).toBe(2);
    expect(badStatus.stderr).toContain('completed');

    const noPlanners = await reins(['up', '--insecure', '--planners', '0']);
    expect(noPlanners.code).toBe(2);
    expect(noPlanners.stderr).toContain('--planners must be a whole number from 1 to 64');

    const unknown = await reins(['halts']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('halt');
  });

  it('doctor names the unreachable NATS and how to fix it (exit 1)', async () => {
    const url = `nats://127.0.0.1:${await freePort()}`;
    const text = await reins(['doctor', '--nats', url]);
    expect(text.code).toBe(1);
    expect(text.stdout).toMatch(/✓ node\s+Node \d+/);
    expect(text.stdout).toContain(`✗ nats         cannot connect to NATS at ${url}`);
    expect(text.stdout).toContain('fix: start a local swarm with `reins up`');

    const json = await reins(['doctor', '--json', '--nats', url]);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout) as {
      ok: boolean;
      checks: { name: string; status: string }[];
    };
    expect(report.ok).toBe(false);
    expect(report.checks.find((c) => c.name === 'nats')?.status).toBe('fail');
  });

  it('reins up refuses a NATS it has no keys for unless --insecure says so (KEYS_MISSING, exit 2)', async () => {
    await using nats = await startNatsServer();
    const home = await mkdtemp(join(tmpdir(), 'reins-empty-home-'));
    try {
      const r = await reins(['up', '--nats', nats.url], { REINS_HOME: home });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('[KEYS_MISSING]');
      expect(r.stderr).toContain('reins up --insecure');
      const both = await reins(['up', '--secure', '--insecure']);
      expect(both.code).toBe(2);
      expect(both.stderr).toContain('not both');
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it('says when NATS has no supervisor, and how to start one', async () => {
    await using nats = await startNatsServer();
    const r = await reins(['runs', '--nats', nats.url]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('no supervisor answered on reins.v1.runs.list');
    expect(r.stderr).toContain('reins up');

    const doctor = await reins(['doctor', '--json'], { NATS_URL: nats.url });
    const report = JSON.parse(doctor.stdout) as { checks: { name: string; status: string }[] };
    expect(report.checks.find((c) => c.name === 'jetstream')?.status).toBe('ok');
    expect(report.checks.find((c) => c.name === 'supervisor')?.status).toBe('fail');
    expect(doctor.code).toBe(1);
  });
});

describe('reins up on an existing NATS, and the commands against it', () => {
  let nats: NatsServer;
  let sandbox: string;
  let up: UpProcess;
  let info: UpInfo;
  let env: Record<string, string>;
  let runId = '';

  beforeAll(async () => {
    nats = await startNatsServer();
    sandbox = await mkdtemp(join(tmpdir(), 'reins-cli-sandbox-'));
    await mkdir(join(sandbox, 'docs'));
    await writeFile(
      join(sandbox, 'docs', 'alpha.md'),
      '# Alpha\n\nThe first document has some words.\n',
    );
    await writeFile(
      join(sandbox, 'docs', 'beta.md'),
      '# Beta\n\nThe second document is a little longer than the first.\n',
    );
    const policy = join(sandbox, '..', `${sandbox.split('/').pop() ?? 'x'}-policy.json`);
    await copyFile(DEMO_POLICY, policy);
    env = { NATS_URL: nats.url };
    up = reinsUp(
      ['--insecure', '--sandbox', sandbox, '--policy', policy, '--log-level', 'warn'],
      env,
    );
    info = await up.ready;
  });

  afterAll(async () => {
    await up.stop();
    await nats.stop();
    await rm(sandbox, { recursive: true, force: true });
  });

  it('starts only the services (NATS_URL set) and prints the URL to use', () => {
    expect(info.natsUrl).toBe(nats.url);
    expect(info.agents).toHaveLength(3);
    expect(info.publicKey).toMatch(/^A[A-Z2-7]{55}$/);
  });

  it('ps --json lists the agents with role and status', async () => {
    const r = await reins(['ps', '--json'], env);
    expect(r.code).toBe(0);
    const agents = JSON.parse(r.stdout) as {
      agentId: string;
      role: string;
      status: string;
      ageMs: number;
    }[];
    expect(agents.map((a) => a.agentId).sort()).toEqual([...info.agents].sort());
    expect(agents.map((a) => a.role).sort()).toEqual(['executor', 'planner', 'supervisor']);
    expect(agents.every((a) => a.status === 'running')).toBe(true);
    const text = await reins(['ps'], env);
    expect(text.stdout).toMatch(/AGENT\s+ROLE\s+STATUS\s+HEARTBEAT/);
  });

  it('run --follow --json completes a research run within its budget (exit 0)', async () => {
    const r = await reins(
      ['run', GOAL, '--follow', '--json', '--budget-usd', '0.05', '--max-steps', '20'],
      env,
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = jsonLines(r.stdout) as RunLine[];
    const last = lines.at(-1);
    expect(last?.run?.status).toBe('completed');
    runId = last?.run?.runId ?? '';
    const events = lines.slice(0, -1).map((l) => l.event);
    expect(events[0]).toBe('run.start');
    expect(events).toContain('tool.call');
    expect(events).toContain('run.end');
    expect(last?.budget?.committed.steps).toBeGreaterThan(0);
    expect(last?.budget?.committed.steps).toBeLessThanOrEqual(20);
    expect(last?.budget?.committed.usd).toBeLessThanOrEqual(0.05);
    const report = await readFile(join(sandbox, 'report.md'), 'utf8');
    expect(report).toContain('2 documents');
  });

  it('run --follow prints a tree with a budget bar and step counter', async () => {
    const r = await reins(
      ['run', GOAL, '--follow', '--budget-usd', '0.05', '--max-steps', '20'],
      env,
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('▶ run');
    expect(r.stdout).toMatch(/step 1 /);
    expect(r.stdout).toMatch(/tool list_files/);
    expect(r.stdout).toMatch(/\[[#.]{10}\] \$0\.\d{4}\/\$0\.0500 {2}step \d+\/20/);
    expect(r.stdout).toContain('✓ completed');
  });

  it('run --follow exits 3 when the budget stops the run', async () => {
    const r = await reins(['run', GOAL, '--follow', '--json', '--budget-usd', '0.0001'], env);
    expect(r.code).toBe(3);
    const last = jsonLines(r.stdout).at(-1) as RunLine;
    expect(last.run?.status).toBe('stopped');
    expect(last.run?.stopReason).toBe('BUDGET_EXCEEDED');
  });

  it('trace, budget and runs show the finished run', async () => {
    expect(runId).not.toBe('');
    const trace = await reins(['trace', runId, '--json'], env);
    expect(trace.code).toBe(0);
    const events = jsonLines(trace.stdout) as RunLine[];
    expect(events.every((e) => e.runId === runId)).toBe(true);
    expect(events.at(-1)?.event).toBe('run.end');

    const budget = await reins(['budget', runId, '--json'], env);
    expect(budget.code).toBe(0);
    const report = JSON.parse(budget.stdout) as NonNullable<RunLine['budget']>;
    expect(report.cap).toMatchObject({ usd: 0.05, steps: 20 });

    const runs = await reins(['runs', '--status', 'completed', '--json'], env);
    expect(runs.code).toBe(0);
    const listed = JSON.parse(runs.stdout) as { runId: string; status: string }[];
    expect(listed.map((x) => x.runId)).toContain(runId);
    expect(listed.every((x) => x.status === 'completed')).toBe(true);
  });

  it('halt reports who acked and who is missing; resume lifts it', async () => {
    const run = await reins(['halt', '--run', runId, '--reason', 'cli test', '--json'], env);
    expect(run.code).toBe(0);
    const runReply = JSON.parse(run.stdout) as {
      scope: unknown;
      acked: string[];
      missing: string[];
    };
    expect(runReply.scope).toEqual({ kind: 'run', runId });
    expect(runReply.missing).toEqual([]);

    const executor = info.agents.find((a) => a.startsWith('executor-')) ?? '';
    const halt = await reins(['halt', '--role', 'executor', '--reason', 'cli test'], env);
    expect(halt.code).toBe(0);
    expect(halt.stdout).toContain('halted role executor — cli test');
    expect(halt.stdout).toMatch(new RegExp(`acked \\(1\\)\\s+${executor}`));
    expect(halt.stdout).toContain('missing (0)');

    const resume = await reins(['resume', '--role', 'executor', '--json'], env);
    expect(resume.code).toBe(0);
    expect((JSON.parse(resume.stdout) as { acked: string[] }).acked).toContain(executor);
  });

  it('control commands for an unknown run, agent, role or approval fail with NOT_FOUND (exit 1) and a hint', async () => {
    const cases: [string[], string, string][] = [
      [['halt', '--run', 'run_doesnotexist', '--reason', 'typo'], 'run_doesnotexist', 'reins runs'],
      [['resume', '--run', 'run_doesnotexist'], 'run_doesnotexist', 'reins runs'],
      [
        ['pause', '--run', 'run_doesnotexist', '--reason', 'typo'],
        'run_doesnotexist',
        'reins runs',
      ],
      [['halt', '--agent', 'agent_nobody', '--reason', 'typo'], 'agent_nobody', 'reins ps'],
      [['resume', '--agent', 'agent_nobody'], 'agent_nobody', 'reins ps'],
      [['halt', '--role', 'exectuor', '--reason', 'typo'], 'exectuor', 'reins ps'],
      [['approve', 'ap_doesnotexist'], 'ap_doesnotexist', 'reins approvals'],
    ];
    for (const [args, id, hint] of cases) {
      const r = await reins(args, env);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toContain(id);
      expect(r.stderr, args.join(' ')).toContain('[NOT_FOUND]');
      expect(r.stderr, args.join(' ')).toContain(`what to do:`);
      expect(r.stderr, args.join(' ')).toContain(hint);
    }
    const json = await reins(['halt', '--run', 'run_doesnotexist', '--reason', 'x', '--json'], env);
    expect(json.code).toBe(1);
    // Nothing was halted: the typo left no marker behind, and nothing was audited as a halt.
    const tail = await reins(['audit', 'tail', '-n', '200', '--json'], env);
    const entries = jsonLines(tail.stdout) as { action: string; runId?: string }[];
    expect(entries.filter((e) => e.runId === 'run_doesnotexist')).toEqual([]);
  });

  it('run for a role no planner serves fails at once with NO_PLANNER (exit 1) and says what is served; --wait-for-planner queues it', async () => {
    const r = await reins(['run', 'anything', '--role', 'nobody', '--follow'], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('no live planner serves role nobody');
    expect(r.stderr).toContain('[NO_PLANNER]');
    expect(r.stderr).toContain('live agents serve roles executor, planner');
    expect(r.stderr).toContain('reins ps');
    expect(r.stderr).toContain('--wait-for-planner');
    const queued = await reins(
      ['run', 'anything', '--role', 'nobody', '--wait-for-planner', '--json'],
      env,
    );
    expect(queued.code).toBe(0);
    expect(JSON.parse(queued.stdout)).toMatchObject({ status: 'queued', role: 'nobody' });
  });

  it('resume says when the scope was not halted (exit 0), and lifts it when it was', async () => {
    // The previous test left `runId` halted.
    const lifted = await reins(['resume', '--run', runId, '--json'], env);
    expect(lifted.code).toBe(0);
    expect((JSON.parse(lifted.stdout) as { lifted?: boolean }).lifted).toBe(true);

    const again = await reins(['resume', '--run', runId], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(`run ${runId} was not halted or paused: nothing to lift`);
    const json = await reins(['resume', '--role', 'executor', '--json'], env);
    expect(json.code).toBe(0);
    expect((JSON.parse(json.stdout) as { lifted?: boolean }).lifted).toBe(false);
  });

  it('halt --all stops the whole swarm and lists every ack; resume --all brings it back', async () => {
    const halt = await reins(['halt', '--all', '--reason', 'stop everything', '--json'], env);
    expect(halt.code).toBe(0);
    const reply = JSON.parse(halt.stdout) as { acked: string[]; missing: string[] };
    // Every agent but the supervisor (which issues halts and is never halted by them) acks.
    const expected = info.agents.filter((a) => !a.startsWith('supervisor')).sort();
    expect([...reply.acked].sort()).toEqual(expected);
    expect(reply.missing).toEqual([]);
    // Nothing new starts while halted: a run is admitted as halted, and following it says so
    // at once (exit 3), naming the halt, instead of waiting for a swarm that does not move.
    const held = await reins(
      [
        'run',
        'Summarise docs/ into report.md',
        '--max-steps',
        '20',
        '--follow',
        '--timeout',
        '30',
        '--json',
      ],
      env,
    );
    expect(held.code).toBe(3);
    const heldLines = jsonLines(held.stdout) as RunLine[];
    expect(heldLines.slice(0, -1).map((e) => e.event)).toEqual(['run.start']);
    const heldRun = heldLines.at(-1)?.run as
      | { runId: string; status: string; error?: { code: string; details?: { reason?: string } } }
      | undefined;
    expect(heldRun?.status).toBe('halted');
    expect(heldRun?.error).toMatchObject({
      code: 'HALTED',
      details: { reason: 'stop everything' },
    });
    const heldRunId = heldRun?.runId ?? '';
    const text = await reins(['run', 'Summarise docs/ into report.md', '--follow'], env);
    expect(text.code).toBe(3);
    expect(text.stdout).toContain('■ halted');
    expect(text.stdout).toContain('a halt of everything (stop everything)');
    expect(text.stdout).toContain('reins resume --all');
    const resume = await reins(['resume', '--all', '--json'], env);
    expect(resume.code).toBe(0);
    // The halt was all that held it: resumed, the same run goes on to completion.
    const resumed = await reins(['trace', heldRunId, '--json'], env);
    expect(resumed.code).toBe(0);
    expect(jsonLines(resumed.stdout).at(-1)).toMatchObject({ event: 'run.end', runId: heldRunId });
    const again = await reins(
      ['run', 'Summarise docs/ into report.md', '--max-steps', '20', '--follow', '--json'],
      env,
    );
    expect(again.code).toBe(0);
  });

  it('audit verify exits 0 on the intact chain; audit tail shows the halts', async () => {
    const verify = await reins(['audit', 'verify'], env);
    expect(verify.code).toBe(0);
    expect(verify.stdout).toMatch(/✓ audit chain intact: \d+ entries from \d+ writer/);

    const tail = await reins(['audit', 'tail', '-n', '50', '--json'], env);
    expect(tail.code).toBe(0);
    const entries = jsonLines(tail.stdout) as { action: string; seq: number }[];
    expect(entries.length).toBeGreaterThan(0);
    expect(entries.length).toBeLessThanOrEqual(50);
    expect(entries.map((e) => e.action)).toContain('halt');
  });

  it('doctor passes against the swarm', async () => {
    const r = await reins(['doctor', '--json'], env);
    const report = JSON.parse(r.stdout) as {
      ok: boolean;
      checks: { name: string; status: string }[];
    };
    expect(report.checks.find((c) => c.name === 'supervisor')?.status).toBe('ok');
    expect(report.checks.find((c) => c.name === 'agents')?.status).toBe('ok');
    expect(report.ok).toBe(true);
    expect(r.code).toBe(0);
  });
});

describe('reins up with its own nats-server', () => {
  it('starts nats-server and the swarm, and stops everything on SIGTERM (exit 0)', async () => {
    const up = reinsUp(['--executors', '2']);
    try {
      const info = await up.ready;
      expect(info.natsUrl).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
      expect(info.agents).toEqual(['supervisor-1', 'planner-1', 'executor-1', 'executor-2']);
      const ps = await reins(['ps', '--json', '--nats', info.natsUrl]);
      expect((JSON.parse(ps.stdout) as unknown[]).length).toBe(4);

      expect(await up.stop()).toBe(0);
      // nats-server went with it.
      const after = await reins(['doctor', '--json', '--nats', info.natsUrl]);
      const report = JSON.parse(after.stdout) as { checks: { name: string; status: string }[] };
      expect(report.checks.find((c) => c.name === 'nats')?.status).toBe('fail');
    } finally {
      await up.stop();
    }
  });
});
