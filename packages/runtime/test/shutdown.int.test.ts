import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { z } from 'zod';
import { startNatsServer } from '@reins/testing';
import { defineActor } from '@reins/runtime';
import { testRuntime } from './helpers.js';

const fixture = fileURLToPath(new URL('./fixtures/sigterm-actor.ts', import.meta.url));

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

function runChild(url: string, mode: string) {
  const child = spawn(process.execPath, [fixture, url, mode], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('READY')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`child exited early with ${code}`)));
  });
  children.push(child);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, ready, exited };
}

describe('shutdown on SIGTERM', () => {
  it('drains in-flight work and exits 0', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const { child, ready, exited } = runChild(nats.url, 'cooperative');
    await ready;
    const started = rt.nc.subscribe('slow.started', { max: 1 });
    // 150 ms of work: inside the 300 ms drain deadline
    const inflight = rt.request(
      'slow.work',
      z.object({ ms: z.number() }),
      z.unknown(),
      { ms: 150 },
      { timeoutMs: 10_000 },
    );
    for await (const _ of started) break;
    child.kill('SIGTERM');
    await expect(inflight).resolves.toEqual({ ok: true });
    expect(await exited).toBe(0);
  });

  it('abandons a handler that ignores its signal at the deadline and still exits', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const { child, ready, exited } = runChild(nats.url, 'stubborn');
    await ready;
    const started = rt.nc.subscribe('slow.started', { max: 1 });
    void rt
      .request(
        'slow.work',
        z.object({ ms: z.number() }),
        z.unknown(),
        { ms: 0 },
        { timeoutMs: 10_000 },
      )
      .catch(() => undefined);
    for await (const _ of started) break;
    child.kill('SIGTERM');
    // exit code 1 says work was abandoned; the point is that it exits well before the 60 s handler ends
    expect(await exited).toBe(1);
  });
});

describe('stop() and background work', () => {
  it('waits for work an actor left running after answering (a result still being stored)', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    const actor = await rt.start(defineActor({ role: 'bg' }));
    let stored = false;
    // Finishes well after a stop that did not wait for it would have returned.
    actor.background(
      new Promise<void>((r) => setTimeout(r, 300)).then(() => {
        stored = true;
      }),
    );
    await actor.stop();
    expect(stored).toBe(true);
    // A failed background write does not fail the stop.
    const other = await rt.start(defineActor({ role: 'bg2' }));
    other.background(Promise.reject(new Error('write failed')));
    await expect(other.stop()).resolves.toMatchObject({ abandoned: 0 });
  });
});
