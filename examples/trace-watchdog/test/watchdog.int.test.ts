// The watchdog against a real supervisor: an agent stuck in a loop keeps calling one tool
// (emitting `tool.call` traces as a planner does); the watchdog — the built binary, and the
// library in-process — halts its run, which aborts the agent's work through its AbortSignal.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { HaltedError, createGrantSigner } from '@reins/protocol';
import { Runtime, createLogger, defineActor } from '@reins/runtime';
import { connect, type ReinsClient } from '@reins/client';
import { startSupervisor, type Supervisor } from '@reins/supervisor';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { startWatchdog } from '../src/watchdog.js';

const MAIN = fileURLToPath(new URL('../dist/main.js', import.meta.url));
const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });

const Work = z.object({
  runId: z.string(),
  /** The tools to call, in a cycle, `calls` times in all (unless halted first). */
  tools: z.array(z.string()).min(1),
  calls: z.number().int().positive(),
});
const Done = z.object({ calls: z.number() });

describe('trace watchdog', () => {
  let nats: NatsServer;
  let runtime: Runtime;
  let supervisor: Supervisor;
  let client: ReinsClient;
  const subject = 'example.agent.work';

  beforeAll(async () => {
    nats = await startNatsServer();
    runtime = await Runtime.connect({ servers: nats.url, logger: quiet() });
    supervisor = await startSupervisor(runtime, { signer: createGrantSigner().signer });
    // A planner-like agent: traces a `tool.call` for every call it makes, 10 ms apart.
    await runtime.start(
      defineActor({
        role: 'planner',
        agentId: 'looping-agent',
        setup(actor) {
          actor.handle(
            subject,
            Work,
            async (req, ctx) => {
              for (let i = 0; i < req.calls; i++) {
                ctx.signal.throwIfAborted();
                const tool = req.tools[i % req.tools.length] ?? 'none';
                actor.trace(req.runId, 'tool.call', { tool, args: { i } });
                await delay(10, undefined, { signal: ctx.signal });
              }
              return { calls: req.calls };
            },
            { reply: Done },
          );
        },
      }),
    );
    client = await connect({ servers: nats.url, logger: quiet(), identity: 'test' });
  });

  afterAll(async () => {
    await client.close();
    await supervisor.stop();
    await runtime.close();
    await nats.stop();
  });

  const work = (runId: string, tools: string[], calls: number) =>
    client.runtime.request(subject, Work, Done, { runId, tools, calls }, { timeoutMs: 30_000 });

  it('the binary halts a run that calls one tool too often (--max-calls 5)', async () => {
    const child: ChildProcess = spawn(
      process.execPath,
      [MAIN, '--max-calls', '5', '--window', '60', '--nats', nats.url],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const next = async () => {
      const line = await lines.next();
      if (line.done) throw new Error(`watchdog exited: ${stderr}`);
      return JSON.parse(line.value) as Record<string, unknown>;
    };
    try {
      expect(await next()).toMatchObject({ type: 'watching', maxCalls: 5 });
      const run = await client.runs.start('loop forever', { budget: { steps: 100 } });

      // 5000 calls at 10 ms: nearly a minute, unless something stops it.
      const looping = work(run.id, ['web_search'], 5000).catch((e: unknown) => e);
      expect(await next()).toMatchObject({
        type: 'halted',
        runId: run.id,
        tool: 'web_search',
        calls: 6,
        acked: ['looping-agent'],
        missing: [],
      });
      expect(await looping).toBeInstanceOf(HaltedError);
      expect((await client.runs.get(run.id)).status).toBe('halted');
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('counts per run and tool: varied or sparse calls are left alone', async () => {
    await using watchdog = await startWatchdog(client, { maxCalls: 3, windowMs: 60_000 });
    const calm = await client.runs.start('varied tools', { budget: { steps: 100 } });
    const busy = await client.runs.start('same tool', { budget: { steps: 100 } });

    // Three tools, three calls each: never more than 3 of one tool.
    expect(await work(calm.id, ['read_file', 'list_files', 'calculator'], 9)).toEqual({ calls: 9 });
    const busyWork = work(busy.id, ['read_file'], 1000).catch((e: unknown) => e);
    const trip = await watchdog.tripped(busy.id);
    expect(trip).toMatchObject({ runId: busy.id, tool: 'read_file', calls: 4 });
    expect(trip.halt?.acked).toEqual(['looping-agent']);
    expect(await busyWork).toBeInstanceOf(HaltedError);

    // The busy run's trip came after every call of the calm run: the calm one never tripped.
    expect([...watchdog.trips.keys()]).toEqual([busy.id]);
    expect((await client.runs.get(calm.id)).status).not.toBe('halted');
  });
});
