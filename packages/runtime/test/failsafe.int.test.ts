import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { z } from 'zod';
import { startNatsServer } from '@reins/testing';
import {
  broadcastControl,
  defineActor,
  listAgents,
  type Runtime,
  type SecurityEvent,
} from '@reins/runtime';
import {
  Heartbeat,
  createGrantSigner,
  signHeartbeat,
  type UnavailableError,
} from '@reins/protocol';
import { testRuntime } from './helpers.js';

const Job = z.object({ runId: z.string() });
const fixture = fileURLToPath(new URL('./fixtures/sigterm-actor.ts', import.meta.url));
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

let beatSeq = 0;
/** Publishes a supervisor heartbeat for `agentId`, passed through `shape` (sign, tamper…). */
function beatAs(rt: Runtime, agentId: string, shape: (hb: Heartbeat) => Heartbeat): void {
  const now = Date.now();
  const hb: Heartbeat = {
    agentId,
    role: 'supervisor',
    status: 'running',
    inFlight: 0,
    runs: [],
    memory: { rss: 0, heapUsed: 0 },
    version: 'test',
    ts: now,
    intervalMs: 50,
    expiresAt: now + 150,
    seq: ++beatSeq,
  };
  rt.publish(rt.subjects.heartbeat('supervisor', agentId), Heartbeat, shape(hb));
}

/** Whether the worker takes a job now. */
const jobAnswer = (rt: Runtime) =>
  rt.request('w.job', Job, z.unknown(), { runId: 'r' }).then(
    () => 'ok',
    () => 'refused',
  );

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
    // Garbage on a supervisor's heartbeat subject is not a supervisor.
    const refused: SecurityEvent[] = [];
    rt.onSecurityEvent((e) => refused.push(e));
    rt.nc.publish(rt.subjects.heartbeat('supervisor', 'sv1'), new Uint8Array([0xc1, 0x00]));
    await expect.poll(() => refused.map((e) => e.family)).toEqual(['malformed']);
    await expect(rt.request('w.job', Job, z.unknown(), { runId: 'r' })).rejects.toMatchObject({
      code: 'UNAVAILABLE',
    });
    // A supervisor appears (its heartbeats): work is taken again.
    const beat = setInterval(() => beatAs(rt, 'sv1', (hb) => hb), 50);
    try {
      await expect.poll(() => jobAnswer(rt), { timeout: 5000, interval: 50 }).toBe('ok');
    } finally {
      clearInterval(beat);
    }
  });

  it('dead-man switch with trusted supervisor keys: only a heartbeat signed by a trusted key counts', async () => {
    await using nats = await startNatsServer();
    const trusted = createGrantSigner().signer;
    const other = createGrantSigner().signer;
    await using rt = await testRuntime(nats.url, {
      supervisorDeadManMs: 400,
      heartbeatMs: 100,
      trustedSupervisors: [trusted.publicKey],
    });
    await rt.start(
      defineActor({
        role: 'worker',
        requireSupervisor: true,
        setup: (a) => void a.handle('w.job', Job, () => undefined),
      }),
    );
    await expect.poll(() => jobAnswer(rt), { timeout: 5000, interval: 50 }).toBe('refused');
    const refused: SecurityEvent[] = [];
    rt.onSecurityEvent((e) => refused.push(e));

    // Unsigned, signed by another key, a signature over other content, a recorded old beat,
    // and a beat on another supervisor's subject: none lifts the switch.
    const now = Date.now();
    beatAs(rt, 'sv1', (hb) => hb);
    beatAs(rt, 'sv1', (hb) => signHeartbeat(other, hb));
    beatAs(rt, 'sv1', (hb) => ({ ...signHeartbeat(trusted, hb), seq: 99 }));
    beatAs(rt, 'sv1', (hb) => signHeartbeat(trusted, { ...hb, ts: now - 60_000 }));
    beatAs(rt, 'sv2', (hb) => signHeartbeat(trusted, { ...hb, agentId: 'sv1' }));
    await expect
      .poll(() => refused.map((e) => e.family).sort())
      .toEqual(['bad_signature', 'misattributed', 'stale', 'unsigned', 'untrusted_issuer']);
    expect(await jobAnswer(rt)).toBe('refused');

    // The trusted supervisor's own signed heartbeats do.
    const beat = setInterval(() => beatAs(rt, 'sv1', (hb) => signHeartbeat(trusted, hb)), 50);
    try {
      await expect.poll(() => jobAnswer(rt), { timeout: 5000, interval: 50 }).toBe('ok');
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
