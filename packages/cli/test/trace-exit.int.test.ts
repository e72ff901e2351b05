import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { reins, reinsUp, spawnReins, type UpProcess } from './cli-process.js';

const GOAL = 'Read every document in docs/ and write a report to report.md';

/** The default policy, but writing a file waits for a human: runs hold still mid-way. */
const HOLDING_POLICY = {
  version: 1,
  rules: [
    { id: 'files.read', match: { tool: 'read_file' }, effect: 'allow' },
    { id: 'files.list', match: { tool: 'list_files' }, effect: 'allow' },
    { id: 'files.write.held', match: { tool: 'write_file' }, effect: 'approve' },
  ],
};

/** The lines of a log-mode trace that are its footer: budget bar and step counter. */
const footers = (stdout: string) =>
  stdout.split('\n').filter((l) => /^ {10}\S/.test(l) && /steps?\b/.test(l));

const count = (text: string, needle: string) => text.split(needle).length - 1;

describe('reins trace: when it ends, and what its footer counts', () => {
  let nats: NatsServer;
  let up: UpProcess;
  let dir: string;
  let env: Record<string, string>;
  const runs: string[] = [];

  beforeAll(async () => {
    nats = await startNatsServer();
    dir = await mkdtemp(join(tmpdir(), 'reins-trace-'));
    await writeFile(join(dir, 'policy.json'), JSON.stringify(HOLDING_POLICY));
    env = { NATS_URL: nats.url };
    up = reinsUp(['--insecure', '--log-level', 'warn', '--policy', join(dir, 'policy.json')], env);
    await up.ready;
    for (let i = 0; i < 2; i++) {
      const r = await reins(['run', GOAL, '--max-steps', '20', '--json'], env);
      expect(r.code).toBe(0);
      runs.push((JSON.parse(r.stdout) as { runId: string }).runId);
    }
  });

  afterAll(async () => {
    await up?.stop();
    await nats?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('trace all counts runs and steps in its footer, never one run’s cap; Ctrl-C exits 130', async () => {
    const p = spawnReins(['trace', 'all'], env);
    // Both runs hold at their write, waiting for a human.
    await p.waitFor((o) => count(o.stdout, 'waiting for approval') === 2);
    p.child.kill('SIGINT');
    const r = await p.done;
    expect(r.code).toBe(130);
    const last = footers(r.stdout).at(-1);
    expect(last).toMatch(/^ {10}2 runs {2}\$\d+\.\d+ spent {2}\d+ steps$/);
    expect(r.stdout).not.toMatch(/step \d+\/20/);
  });

  it('--from new counts the steps the run took before, and moves with the tree', async () => {
    const [runId = ''] = runs;
    const p = spawnReins(['trace', runId, '--from', 'new'], env);
    await p.waitFor((o) => o.stderr.includes(`watching run ${runId} for new trace events`));
    const list = await reins(['approvals', '--run', runId, '--json'], env);
    const [approval] = JSON.parse(list.stdout) as { approvalId: string }[];
    const ok = await reins(['approve', approval?.approvalId ?? '', '--reason', 'test'], env);
    expect(ok.code).toBe(0);
    const r = await p.done;
    expect(r.code).toBe(0);
    const shown = [...r.stdout.matchAll(/step (\d+) planner-/g)].map((m) => Number(m[1]));
    expect(shown.length).toBeGreaterThan(0);
    // Each footer line says the highest step the tree has shown so far, out of the run's cap.
    expect(footers(r.stdout).at(-1)).toMatch(new RegExp(`step ${Math.max(...shown)}/20$`));
  });

  it('on a terminal, the footer counts the step the tree just started', async () => {
    const [runId = ''] = runs;
    const p = spawnReins(['trace', runId], env, 60_000, { tty: { columns: 120 } });
    const r = await p.done;
    expect(r.code).toBe(0);
    // After each `step N` line the footer is drawn again, under it: it must say step N.
    const chunks = r.stdout.split('\n');
    let checked = 0;
    chunks.forEach((line, i) => {
      const step = /step (\d+) planner-/.exec(line)?.[1];
      if (step === undefined) return;
      const footer = (chunks[i + 1] ?? '').split('\r')[0] ?? '';
      expect(footer).toMatch(new RegExp(`step ${step}/20`));
      checked++;
    });
    expect(checked).toBeGreaterThan(1);
  });

  it('--from new on a run that already ended says so and exits with its outcome', async () => {
    const [runId = ''] = runs;
    const r = await reins(['trace', runId, '--from', 'new'], env, 20_000);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`run ${runId} already ended (completed)`);
    expect(r.stderr).toContain(`reins trace ${runId}`);
  });
});

describe('reins trace on a nats-server without JetStream', () => {
  it('says JetStream is missing and how to enable it (exit 1)', async () => {
    await using nats = await startNatsServer({ jetstream: false });
    const r = await reins(['trace', 'all', '--nats', nats.url], {}, 20_000);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`JetStream is not available on ${nats.url}`);
    expect(r.stderr).toContain('nats-server -js');
  });
});
