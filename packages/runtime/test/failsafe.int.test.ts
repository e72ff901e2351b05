import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { z } from 'zod';
import { startNatsServer } from '@reins/testing';
import { broadcastControl, defineActor, listAgents } from '@reins/runtime';
import type { UnavailableError } from '@reins/protocol';
import { testRuntime } from './helpers.js';

const Job = z.object({ runId: z.string() });
const fixture = fileURLToPath(new URL('./fixtures/sigterm-actor.ts', import.meta.url));
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

describe('fail-safes', () => {
  it('dead-man switch: without supervisor heartbeats an actor that needs one takes no work, and resumes when one is heard', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url, { supervisorDeadManMs: 400, heartbeatMs: 100 });
    const actor = await rt.start(
      defineActor({
        role: 'worker',
        requireSupervisor: true,
        setup: (a) => void a.handle('w.job', Job, () => undefined),
      }),
    );
    // Within the grace period it works.
    await expect(rt.request('w.job', Job, z.unknown(), { runId: 'r' })).resolves.toEqual({
      ok: true,
    });
    // No supervisor: refused, fail closed, and its heartbeat says degraded.
    await expect
      .poll(
        () =>
          rt.request('w.job', Job, z.unknown(), { runId: 'r' }).then(
            () => 'ok',
            (e: unknown) => (e as UnavailableError).details?.['reason'],
          ),
        { timeout: 5000, interval: 50 },
      )
      .toBe('supervisor_lost');
    await expect
      .poll(async () => (await listAgents(rt)).find((a) => a.agentId === actor.agentId)?.degraded, {
        timeout: 5000,
      })
      .toBe(true);
    // A supervisor appears (its heartbeats): work is taken again.
    const beat = setInterval(() => rt.nc.publish(rt.subjects.heartbeat('supervisor', 'sv1')), 50);
    try {
      await expect
        .poll(
          () =>
            rt.request('w.job', Job, z.unknown(), { runId: 'r' }).then(
              () => 'ok',
              () => 'refused',
            ),
          { timeout: 5000, interval: 50 },
        )
        .toBe('ok');
    } finally {
      clearInterval(beat);
    }
  });

  it('halt watchdog: a process whose halted work ignores its abort signal exits', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const child = spawn(process.execPath, [fixture, nats.url, 'stubborn'], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, REINS_HALT_WATCHDOG_MS: '300' },
    });
    children.push(child);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    await new Promise<void>((resolve) =>
      child.stdout.on('data', (d: Buffer) => d.toString().includes('READY') && resolve()),
    );
    const started = rt.nc.subscribe('slow.started', { max: 1 });
    void rt
      .request(
        'slow.work',
        z.object({ ms: z.number() }),
        z.unknown(),
        { ms: 0 },
        { timeoutMs: 20_000 },
      )
      .catch(() => undefined);
    for await (const _ of started) break;
    const acks = await broadcastControl(
      rt,
      { type: 'halt', scope: { kind: 'role', role: 'slow' }, reason: 'stop', deadlineMs: 200 },
      { expectAcks: 1 },
    );
    expect(acks[0]).toMatchObject({ aborted: 1, stillRunning: 1 });
    expect(await exited).toBe(70);
  });
});
