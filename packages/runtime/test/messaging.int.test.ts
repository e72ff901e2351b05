import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startNatsServer } from '@reins/testing';
import { defineActor, type SecurityEvent } from '@reins/runtime';
import {
  Buckets,
  BudgetExceededError,
  InternalError,
  PayloadTooLargeError,
  ProtocolError,
  TimeoutError,
  UnavailableError,
  AbortedError,
} from '@reins/protocol';
import { pack, unpack } from 'msgpackr';
import { Kvm } from '@nats-io/kv';
import { testRuntime } from './helpers.js';

const Add = z.object({ a: z.number(), b: z.number() });
const Sum = z.object({ sum: z.number() });

describe('typed messaging', () => {
  it('answers typed requests; garbage and throwing handlers get coded errors and the next request works', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    await rt.start(
      defineActor({
        role: 'calc',
        setup(actor) {
          actor.handle(
            'calc.add',
            Add,
            (req) => {
              if (req.a === 13) throw new Error('unlucky: internal detail');
              if (req.a < 0) throw new BudgetExceededError('negative budget');
              return { sum: req.a + req.b };
            },
            // Below the server's max_payload, so an oversized request still reaches the handler.
            { reply: Sum, queue: 'calc', maxPayloadBytes: 64 * 1024 },
          );
        },
      }),
    );

    expect(await rt.request('calc.add', Add, Sum, { a: 1, b: 2 })).toEqual({ sum: 3 });

    // garbage bytes
    const garbage = await rt.nc.request('calc.add', new Uint8Array([0xc1, 0xff, 0x00]), {
      timeout: 2000,
    });
    expect(garbage.headers?.get('Reins-Error')).toBe('1');
    await expect(rt.request('calc.add', z.unknown(), Sum, 'not an object')).rejects.toBeInstanceOf(
      ProtocolError,
    );
    // hostile: __proto__ key
    const hostile = await rt.nc.request(
      'calc.add',
      pack(JSON.parse('{"a":1,"b":2,"__proto__":{"x":1}}')),
      { timeout: 2000 },
    );
    expect(hostile.headers?.get('Reins-Error')).toBe('1');
    // oversized
    await expect(
      rt.request('calc.add', z.unknown(), Sum, { a: 'x'.repeat(1_100_000) }),
    ).rejects.toBeInstanceOf(PayloadTooLargeError);
    // sent raw (no client-side check): the handler refuses it with a coded error
    const big = await rt.nc.request('calc.add', pack({ a: 'x'.repeat(100_000), b: 1 }), {
      timeout: 5000,
    });
    expect(big.headers?.get('Reins-Error')).toBe('1');
    expect(unpack(big.data)).toMatchObject({ error: { code: 'PAYLOAD_TOO_LARGE' } });

    // handler throws: generic error is hidden, coded error is rebuilt as its class
    const internal = await rt
      .request('calc.add', Add, Sum, { a: 13, b: 0 })
      .catch((e: unknown) => e);
    expect(internal).toBeInstanceOf(InternalError);
    expect((internal as Error).message).not.toContain('unlucky');
    await expect(rt.request('calc.add', Add, Sum, { a: -1, b: 0 })).rejects.toBeInstanceOf(
      BudgetExceededError,
    );

    // still serving
    expect(await rt.request('calc.add', Add, Sum, { a: 20, b: 22 })).toEqual({ sum: 42 });
  });

  it('maps transport failures to coded errors', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    await expect(rt.request('nobody.home', Add, Sum, { a: 1, b: 1 })).rejects.toBeInstanceOf(
      UnavailableError,
    );
    rt.nc.subscribe('black.hole', { callback: () => undefined });
    await expect(
      rt.request('black.hole', Add, Sum, { a: 1, b: 1 }, { timeoutMs: 200 }),
    ).rejects.toBeInstanceOf(TimeoutError);
    const ac = new AbortController();
    const p = rt.request(
      'black.hole',
      Add,
      Sum,
      { a: 1, b: 1 },
      { timeoutMs: 10_000, signal: ac.signal },
    );
    ac.abort();
    await expect(p).rejects.toBeInstanceOf(AbortedError);
  });

  it('refuses to start when NATS is unreachable (fail closed)', async () => {
    const nats = await startNatsServer();
    const url = nats.url;
    await nats.stop();
    await expect(
      testRuntime(url, { connection: { maxReconnectAttempts: 0, timeout: 500 } }),
    ).rejects.toBeInstanceOf(UnavailableError);
  });

  it('keeps serving across a nats-server restart and never answers a request twice', async () => {
    await using nats = await startNatsServer();
    await using server = await testRuntime(nats.url);
    await using client = await testRuntime(nats.url, { ensureInfrastructure: false });
    let calls = 0;
    await server.start(
      defineActor({
        role: 'echo',
        setup(actor) {
          actor.handle(
            'echo.add',
            Add,
            (req) => {
              calls++;
              return { sum: req.a + req.b };
            },
            { reply: Sum },
          );
        },
      }),
    );
    let answered = 0;
    const counts = new Map<number, number>();
    for (let i = 0; i < 20; i++) {
      expect(await client.request('echo.add', Add, Sum, { a: i, b: 0 })).toEqual({ sum: i });
      answered++;
    }
    await nats.restart();
    // After the restart the actor serves again (retry until reconnected).
    await expect
      .poll(
        async () =>
          client.request('echo.add', Add, Sum, { a: 1, b: 1 }, { timeoutMs: 500 }).then(
            (r) => r.sum,
            () => -1,
          ),
        { timeout: 20_000, interval: 100 },
      )
      .toBe(2);
    // Count replies per request on a raw inbox: exactly one each.
    const inbox = client.nc.subscribe('_INBOX.count.>', {
      callback: (_e, m) => {
        const n = Number(m.subject.split('.').pop());
        counts.set(n, (counts.get(n) ?? 0) + 1);
      },
    });
    const { encode } = await import('@reins/protocol');
    for (let i = 0; i < 50; i++)
      client.nc.publish('echo.add', encode(Add, { a: i, b: 1 }), { reply: `_INBOX.count.${i}` });
    await expect.poll(() => counts.size, { timeout: 10_000 }).toBe(50);
    await client.nc.flush();
    await server.nc.flush();
    await client.request('echo.add', Add, Sum, { a: 0, b: 0 }); // a round trip after the burst
    expect([...counts.values()].every((c) => c === 1)).toBe(true);
    inbox.unsubscribe();
    expect(answered).toBe(20);
    expect(calls).toBeGreaterThanOrEqual(71);
  });

  it('answers only inbox reply subjects: a request naming a halt marker or another actor as its reply runs nothing and writes nothing', async () => {
    await using nats = await startNatsServer();
    await using rt = await testRuntime(nats.url);
    let calls = 0;
    await rt.start(
      defineActor({
        role: 'calc',
        setup(actor) {
          actor.handle(
            'calc.add',
            Add,
            (req) => {
              calls++;
              return { sum: req.a + req.b };
            },
            { reply: Sum, queue: 'calc' },
          );
        },
      }),
    );
    const refused: SecurityEvent[] = [];
    rt.onSecurityEvent((e) => refused.push(e));
    const seen: string[] = [];
    const watch = rt.nc.subscribe('reins.v1.>', { callback: (_e, m) => void seen.push(m.subject) });
    await rt.nc.flush();
    const kvm = new Kvm(rt.nc);
    const halts = await kvm.open(Buckets.halts);

    const body = pack({ a: 1, b: 2 });
    const replies = ['$KV.reins_halts.all', 'reins.v1.audit.sv1', 'reins.v1.ctl.bcast.all'];
    for (const reply of replies) rt.nc.publish('calc.add', body, { reply });
    // The same kind of attempt again is refused as well, and reported once.
    rt.nc.publish('calc.add', body, { reply: '$KV.reins_halts.all' });
    await expect.poll(() => refused.length).toBe(3);
    expect(refused.map((e) => e.family)).toEqual([
      '$KV.reins_halts.all',
      'reins.v1.audit',
      'reins.v1.ctl',
    ]);
    expect(refused[0]).toMatchObject({ kind: 'reply_refused', subject: 'calc.add', role: 'calc' });

    // A good request after them is answered: everything before it on this connection was handled.
    expect(await rt.request('calc.add', Add, Sum, { a: 2, b: 3 })).toEqual({ sum: 5 });
    expect(calls).toBe(1);
    expect(await halts.get('all')).toBeNull();
    expect(seen).toEqual([]);
    watch.unsubscribe();
  });
});
