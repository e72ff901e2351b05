import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startNatsServer, type NatsServer } from '@reins/testing';
import { reins, reinsUp, spawnReins, type UpProcess } from './cli-process.js';

const count = (text: string, needle: string) => text.split(needle).length - 1;

describe('reins up says what is wrong, once, before anything starts', () => {
  it('a bad policy: named once, and no "stopping the swarm" for a swarm that never started', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'reins-policy-'));
    try {
      const policy = join(dir, 'policy.json');
      await writeFile(policy, JSON.stringify({ version: 1, rules: [{ id: 'x' }] }));
      const r = await reins(['up', '--insecure', '--policy', policy]);
      expect(r.code).toBe(2);
      expect(count(r.stderr, policy)).toBe(1);
      expect(r.stderr).toContain('docs/policy.md');
      expect(r.stderr).not.toContain('stopping the swarm');
      expect(r.stderr).not.toContain('stopped after');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a busy --port is named in one line, not in the nats-server log', async () => {
    await using nats = await startNatsServer();
    const r = await reins(['up', '--insecure', '--port', String(nats.port)]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`port ${nats.port} is already in use`);
    expect(r.stderr).toContain('[PORT_IN_USE]');
    expect(r.stderr).not.toContain('[INF]');
  });

  it('NATS_URL on a closed port: points at that server, not at `reins up`', async () => {
    const url = `nats://127.0.0.1:${await freePort()}`;
    const r = await reins(['up', '--insecure'], { NATS_URL: url });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot connect to NATS at ${url}`);
    expect(r.stderr).not.toContain('start a local swarm with `reins up`');
    expect(r.stderr).toContain('unset NATS_URL');
  });

  it('keygen --help lists only the options keygen uses', async () => {
    const r = await reins(['keygen', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('--json');
    expect(r.stdout).not.toContain('--nats');
    expect(r.stdout).not.toContain('--nkey-file');
  });
});

describe('reins up output, and what the commands print against it', () => {
  let nats: NatsServer;
  let up: UpProcess;
  let env: Record<string, string>;

  beforeAll(async () => {
    nats = await startNatsServer();
    env = { NATS_URL: nats.url };
    up = reinsUp(['--insecure', '--log-level', 'info', '--planners', '2', '--executors', '2'], env);
    await up.ready;
  });

  afterAll(async () => {
    await up?.stop();
    await nats?.stop();
  });

  it('--json log lines carry a service’s JSON log as a record, not as a string', () => {
    const logs = up.lines
      .map((l) => JSON.parse(l) as { type: string; line?: string; record?: { msg?: string } })
      .filter((l) => l.type === 'log');
    expect(logs.some((l) => typeof l.record?.msg === 'string')).toBe(true);
    expect(logs.filter((l) => l.line?.startsWith('{'))).toEqual([]);
  });

  it('gives each process its own colour', async () => {
    const p = spawnReins(
      ['up', '--insecure', '--log-level', 'info', '--planners', '2', '--executors', '2'],
      { ...env, FORCE_COLOR: '1' },
    );
    await p.waitForStdout('swarm ready');
    p.child.kill('SIGTERM');
    const r = await p.done;
    expect(r.code).toBe(0);
    const colour = new Map<string, string>();
    // eslint-disable-next-line no-control-regex
    for (const m of r.stdout.matchAll(/\x1b\[(\d+)m\[([a-z0-9-]+)\]/g)) {
      colour.set(m[2] ?? '', m[1] ?? '');
    }
    expect([...colour.keys()]).toEqual(
      expect.arrayContaining([
        'supervisor-1',
        'planner-1',
        'planner-2',
        'executor-1',
        'executor-2',
      ]),
    );
    expect(new Set(colour.values()).size).toBe(colour.size);
  });

  it('halt lines up its acked and missing columns', async () => {
    const r = await reins(['halt', '--all', '--reason', 'columns'], env);
    expect(r.code).toBe(0);
    const acked = /^ {2}acked \(\d+\) +/m.exec(r.stdout)?.[0];
    const missing = /^ {2}missing \(\d+\) +/m.exec(r.stdout)?.[0];
    expect(acked?.length).toBe(missing?.length);
    expect((await reins(['resume', '--all'], env)).code).toBe(0);
  });

  it('audit tail fits the terminal width; --wide keeps lines whole', async () => {
    const narrow = await reins(['audit', 'tail', '-n', '5'], { ...env, COLUMNS: '60' });
    expect(narrow.code).toBe(0);
    const shown = narrow.stdout.split('\n').filter(Boolean);
    expect(shown.length).toBeGreaterThan(0);
    for (const l of shown) expect(l.length).toBeLessThanOrEqual(60);
    const wide = await reins(['audit', 'tail', '-n', '5', '--wide'], { ...env, COLUMNS: '60' });
    expect(wide.stdout.split('\n').some((l) => l.length > 60)).toBe(true);
  });

  it('audit tail --writer <unknown> names the writers there are (NOT_FOUND)', async () => {
    const r = await reins(['audit', 'tail', '--writer', 'nobody'], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('no audit entries from writer nobody (writers: supervisor-1');
    // Run partitions' chains as one range, not 32 names.
    expect(r.stderr).toMatch(/part-0…part-31 \(32 run partitions\)\)/);
    expect(r.stderr).toContain('[NOT_FOUND]');
    expect(r.stderr).not.toContain('empty');
  });
});
