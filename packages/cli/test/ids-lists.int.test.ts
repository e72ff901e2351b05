import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { jsonLines, reins, reinsUp, spawnReins, type UpProcess } from './cli-process.js';

const GOAL = 'Read every document in docs/ and write a report to report.md';

/** Writing a file waits for a human: each run leaves a pending approval behind. */
const HOLDING_POLICY = {
  version: 1,
  rules: [
    { id: 'files.read', match: { tool: 'read_file' }, effect: 'allow' },
    { id: 'files.list', match: { tool: 'list_files' }, effect: 'allow' },
    { id: 'files.write.held', match: { tool: 'write_file' }, effect: 'approve' },
  ],
};

const lines = (s: string) => s.split('\n').filter((l) => l.trim());

describe('ids by unique prefix, short ids in tables, -q, --format, terminal width and --wide', () => {
  let nats: NatsServer;
  let up: UpProcess;
  let dir: string;
  let env: Record<string, string>;
  let runs: string[] = [];

  beforeAll(async () => {
    nats = await startNatsServer();
    dir = await mkdtemp(join(tmpdir(), 'reins-ids-'));
    await writeFile(join(dir, 'policy.json'), JSON.stringify(HOLDING_POLICY));
    env = { NATS_URL: nats.url, COLUMNS: '80' };
    up = reinsUp(['--insecure', '--log-level', 'warn', '--policy', join(dir, 'policy.json')], env);
    await up.ready;
    for (let i = 0; i < 2; i++) {
      const r = await reins(['run', GOAL, '--max-steps', '20', '--json'], env);
      expect(r.code).toBe(0);
    }
    const listed = await reins(['runs', '--json'], env);
    runs = (JSON.parse(listed.stdout) as { runId: string }[]).map((r) => r.runId);
    expect(runs).toHaveLength(2);
  });

  afterAll(async () => {
    await up?.stop();
    await nats?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs: short unique ids, fits 80 columns; --wide shows whole ids and goals', async () => {
    const table = await reins(['runs'], env);
    expect(table.code).toBe(0);
    const rows = lines(table.stdout).slice(1);
    expect(rows).toHaveLength(2);
    for (const l of lines(table.stdout)) expect(l.length).toBeLessThanOrEqual(80);
    const shown = rows.map((r) => r.split(' ')[0] ?? '');
    shown.forEach((id, i) => {
      expect(id.length).toBeLessThan(runs[i]!.length);
      expect(runs[i]!.startsWith(id)).toBe(true);
    });
    expect(new Set(shown).size).toBe(2);

    const wide = await reins(['runs', '--wide'], env);
    for (const id of runs) expect(wide.stdout).toContain(id);
    expect(wide.stdout).toContain(GOAL);
  });

  it('-q prints ids only; --format prints json, jsonl or a template', async () => {
    const q = await reins(['runs', '-q'], env);
    expect(lines(q.stdout)).toEqual(runs);
    const jsonl = await reins(['runs', '--format', 'jsonl'], env);
    expect((jsonLines(jsonl.stdout) as { runId: string }[]).map((r) => r.runId)).toEqual(runs);
    const json = await reins(['runs', '--format', 'json'], env);
    expect((JSON.parse(json.stdout) as unknown[]).length).toBe(2);
    const template = await reins(
      ['runs', '--format', '{{.runId}}\\t{{status}} {{budget.steps}}'],
      env,
    );
    const records = JSON.parse(json.stdout) as { runId: string; status: string }[];
    expect(lines(template.stdout)).toEqual(records.map((r) => `${r.runId}\t${r.status} 20`));
    const ps = await reins(['ps', '-q'], env);
    expect(lines(ps.stdout).sort()).toEqual([...(await up.ready).agents].sort());
    const approvals = await reins(['approvals', '-q'], env);
    expect(lines(approvals.stdout)).toHaveLength(2);

    const both = await reins(['runs', '-q', '--format', 'json'], env);
    expect(both.code).toBe(2);
    const bad = await reins(['runs', '--format', 'table'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--format must be json, jsonl or a template');
  });

  it('commands take a unique prefix of a run or approval id; an ambiguous one says so', async () => {
    const [first = '', second = ''] = runs;
    let n = 5;
    while (second.startsWith(first.slice(0, n))) n++;
    const prefix = first.slice(0, n);
    const budget = await reins(['budget', prefix], env);
    expect(budget.code).toBe(0);
    expect(budget.stdout).toContain(`budget of run ${first}`);
    // Without the `run_` either, as docker takes the first characters of an id.
    const bare = await reins(['budget', prefix.slice(4), '--json'], env);
    expect(bare.code).toBe(0);

    const ambiguous = await reins(['budget', 'run_'], env);
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stderr).toContain('run id prefix run_ is ambiguous: 2 runs start with it');

    const pause = await reins(['pause', '--run', prefix, '--reason', 'prefix', '--json'], env);
    expect(pause.code).toBe(0);
    expect((JSON.parse(pause.stdout) as { scope: unknown }).scope).toEqual({
      kind: 'run',
      runId: first,
    });
    expect((await reins(['resume', '--run', prefix], env)).code).toBe(0);

    const [approval = ''] = lines((await reins(['approvals', '-q', '--run', prefix], env)).stdout);
    expect(approval).toMatch(/^ap_/);
    const approve = await reins(['approve', approval.slice(0, 12), '--json'], env);
    expect(approve.code).toBe(0);
    expect(JSON.parse(approve.stdout)).toMatchObject({ approvalId: approval, status: 'approved' });
  });

  it('trace lines fit the terminal width; --wide keeps them whole', async () => {
    const [, second = ''] = runs;
    const shown = async (args: string[]) => {
      // The run waits for its approval: trace shows it up to there and keeps watching.
      const p = spawnReins(['trace', second, ...args], { ...env, COLUMNS: '50' });
      await p.waitForStdout('waiting for approval');
      p.child.kill('SIGINT');
      return (await p.done).stdout;
    };
    const narrow = await shown([]);
    for (const l of narrow.split('\n')) expect(l.length).toBeLessThanOrEqual(50);
    expect(narrow).toContain('…');
    const wide = await shown(['--wide']);
    expect(wide.split('\n').some((l) => l.length > 50)).toBe(true);
  });
});
