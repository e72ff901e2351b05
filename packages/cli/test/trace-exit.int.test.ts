import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { jsonLines, reins, reinsUp, spawnReins, type UpProcess } from './cli-process.js';

const GOAL = 'Read every document in docs/ and write a report to report.md';

describe('reins trace ends when there is nothing more to show', () => {
  let nats: NatsServer;
  let up: UpProcess;
  let env: Record<string, string>;
  let runId = '';

  beforeAll(async () => {
    nats = await startNatsServer();
    env = { NATS_URL: nats.url };
    up = reinsUp(['--insecure', '--log-level', 'warn'], env);
    await up.ready;
    const run = await reins(['run', GOAL, '--follow', '--json', '--max-steps', '20'], env);
    expect(run.code).toBe(0);
    runId = (jsonLines(run.stdout).at(-1) as { run: { runId: string } }).run.runId;
  });

  afterAll(async () => {
    await up?.stop();
    await nats?.stop();
  });

  it('--from new on a run that already ended says so and exits with its outcome', async () => {
    const r = await reins(['trace', runId, '--from', 'new'], env, 20_000);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`run ${runId} already ended (completed)`);
    expect(r.stderr).toContain(`reins trace ${runId}`);
  });

  it('Ctrl-C exits 130', async () => {
    const p = spawnReins(['trace', runId, '--watch'], env);
    await p.waitForStdout('run completed');
    p.child.kill('SIGINT');
    const r = await p.done;
    expect(r.code).toBe(130);
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
