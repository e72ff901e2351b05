import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { AuthorizeRequest, Decision, createGrantSigner } from '@reins/protocol';
import { Runtime, createLogger, listAgents } from '@reins/runtime';
import { startSupervisor, type Supervisor } from '@reins/supervisor';
import { connect, type ReinsClient } from '@reins/client';
import { startNatsServer, type NatsServer } from '@reins/testing';

const fixture = fileURLToPath(new URL('./fixtures/many-actors.ts', import.meta.url));
const PROCESSES = 4;
const PER_PROCESS = 250;

describe('halt at scale: 1,000 agents in 4 processes', () => {
  let nats: NatsServer;
  let rt: Runtime;
  let sv: Supervisor;
  let client: ReinsClient;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    nats = await startNatsServer();
    rt = await Runtime.connect({ servers: nats.url, logger: createLogger({ level: 'silent' }) });
    sv = await startSupervisor(rt, { signer: createGrantSigner().signer });
    client = await connect({
      servers: nats.url,
      logger: createLogger({ level: 'silent' }),
      identity: 'ops',
    });
    await Promise.all(
      Array.from({ length: PROCESSES }, async (_, p) => {
        const child = spawn(process.execPath, [fixture, nats.url, String(p), String(PER_PROCESS)], {
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        children.push(child);
        await new Promise<void>((resolve, reject) => {
          child.stdout?.on('data', (d: Buffer) => d.toString().includes('READY') && resolve());
          child.once('exit', (code) => reject(new Error(`actor process exited with ${code}`)));
        });
      }),
    );
  }, 120_000);

  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await client.close();
    await sv.stop();
    await rt.close();
    await nats.stop();
  });

  it('halt all: every agent acks, tools in flight abort, no grant after the halt; resume lifts it', async () => {
    await expect
      .poll(async () => (await listAgents(rt)).filter((a) => a.role.startsWith('swarm')).length, {
        timeout: 60_000,
        interval: 500,
      })
      .toBe(PROCESSES * PER_PROCESS);
    // The swarm's actors are not planners of role `planner`: the run only names the work.
    const run = await client.runs.start('scale', { budget: { steps: 100 }, waitForPlanner: true });

    // One "tool" in flight per process.
    const aborted = rt.nc.subscribe('aborted.>', { max: PROCESSES });
    const inflight = Array.from({ length: PROCESSES }, (_, p) =>
      rt
        .request(
          `busy.p${p}-a7`,
          z.object({ runId: z.string() }),
          z.unknown(),
          { runId: run.id },
          { timeoutMs: 60_000 },
        )
        .catch((e: unknown) => e),
    );

    const reply = await client.halt({ kind: 'all' }, 'runaway swarm', { deadlineMs: 5000 });
    const swarmAcks = reply.acked.filter((id) => id.startsWith('p'));
    expect(new Set(swarmAcks).size).toBe(PROCESSES * PER_PROCESS);
    expect(reply.missing).toEqual([]);
    expect(reply.aborted).toBeGreaterThanOrEqual(PROCESSES);
    let seen = 0;
    for await (const _ of aborted) seen++;
    expect(seen).toBe(PROCESSES);
    for (const r of await Promise.all(inflight)) expect((r as Error).name).toBe('HaltedError');

    // Zero grants after the halt is acknowledged.
    const authorize = () =>
      rt.request(rt.subjects.authorize(run.id), AuthorizeRequest, Decision, {
        runId: run.id,
        agentId: 'p0-a1',
        role: 'swarm0',
        stepId: 's1',
        kind: 'llm',
        model: 'scripted',
        estimate: { inputTokens: 1, outputTokens: 1, usd: 0 },
      });
    const decisions = await Promise.all(Array.from({ length: 50 }, authorize));
    expect(decisions.every((d) => d.decision === 'deny' && d.error.code === 'HALTED')).toBe(true);

    await client.resume({ kind: 'all' }, 'all clear');
    await expect.poll(async () => (await authorize()).decision, { timeout: 10_000 }).toBe('grant');
  });
});
