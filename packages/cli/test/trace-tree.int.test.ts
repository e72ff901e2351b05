import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { connect, type ReinsClient } from '@reins/client';
import { startDelegation, type Delegation } from '../../../test/support/delegation.js';
import { jsonLines, reins } from './cli-process.js';

interface EventLine {
  runId: string;
  event: string;
  data: Record<string, unknown>;
}

describe('reins trace of a run that delegated', () => {
  let nats: NatsServer;
  let swarm: Delegation;
  let client: ReinsClient;
  let runId = '';

  beforeAll(async () => {
    nats = await startNatsServer();
    swarm = await startDelegation(nats.url);
    client = await connect({ servers: nats.url });
    const run = await client.runs.start('Find it', { role: 'lead', budget: { steps: 10 } });
    expect((await run.result({ timeoutMs: 30_000 })).status).toBe('completed');
    runId = run.id;
  });

  afterAll(async () => {
    await client?.close();
    await swarm?.stop();
    await nats?.stop();
  });

  it("shows the finished run's whole tree: the child's and grandchild's tool calls (exit 0)", async () => {
    const json = await reins(['trace', runId, '--json'], { NATS_URL: nats.url });
    expect(json.code).toBe(0);
    const events = jsonLines(json.stdout) as EventLine[];
    const runs = new Set(events.map((e) => e.runId));
    expect(runs.size).toBe(3);
    const notes = events.filter((e) => e.event === 'tool.call' && e.data['tool'] === 'note');
    expect(notes).toHaveLength(1);
    expect(notes[0]?.runId).not.toBe(runId);
    expect(events.filter((e) => e.event === 'run.end')).toHaveLength(3);

    const text = await reins(['trace', runId], { NATS_URL: nats.url });
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('delegate → mid');
    expect(text.stdout).toContain('delegate → researcher');
    expect(text.stdout).toMatch(/tool note .*found it/);
  });
});
