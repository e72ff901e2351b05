import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { openBucket } from '@reins/runtime';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { PartitionLeases } from '../src/partition-leases.js';

// Partition ownership among supervisors, against a real KV bucket: every partition ends up
// served by exactly one live supervisor, and none is left behind by one that stopped serving it.

const P = 4;
const enc = new TextEncoder();

describe('partition leases', () => {
  let nats: NatsServer;
  let nc: NatsConnection;

  beforeAll(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url, noAsyncTraces: true });
  });

  afterAll(async () => {
    await nc.close();
    await nats.stop();
  });

  /** A lease manager whose served partitions are visible, as a supervisor's would be. */
  const manager = (kv: Awaited<ReturnType<typeof openBucket>>, agentId: string) => {
    const serving = new Set<number>();
    const leases = new PartitionLeases(
      kv,
      { agentId, partitions: P, leaseMs: 800, now: () => Date.now() },
      {
        acquired: (n) => {
          serving.add(n);
          return Promise.resolve();
        },
        lost: (n) => {
          serving.delete(n);
          return Promise.resolve();
        },
        warn: () => undefined,
      },
    );
    return { leases, serving };
  };

  /** Polls until every partition is served by exactly one of `ms`. */
  const balanced = async (ms: { serving: Set<number> }[], each: number) => {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const all = ms.flatMap((m) => [...m.serving]);
      const ok =
        new Set(all).size === P && all.length === P && ms.every((m) => m.serving.size === each);
      if (ok) return;
      if (Date.now() > deadline)
        throw new Error(`not balanced: ${ms.map((m) => [...m.serving].join(',')).join(' | ')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  it('a lone supervisor serves every partition; a second one gets its share; a stop hands them back', async () => {
    const kv = await openBucket(nc, 'test_partitions_a');
    const a = manager(kv, 'sv-a');
    await a.leases.start();
    expect(a.serving.size).toBe(P);
    const b = manager(kv, 'sv-b');
    await b.leases.start();
    await balanced([a, b], P / 2);
    await a.leases.stop();
    await balanced([b], P);
    await b.leases.stop();
  });

  it('leases that name a live supervisor which no longer serves them are freed for the others', async () => {
    const kv = await openBucket(nc, 'test_partitions_b');
    // What a process of `sv-a` left behind when it stopped serving without giving back (it
    // died, or could not renew its membership): every lease names it, and a new process with
    // the same id is live — so to everyone else those leases look held.
    for (let n = 0; n < P; n++)
      await kv.put(`lease.${n}`, enc.encode(JSON.stringify({ owner: 'sv-a' })));
    await kv.put('member.sv-a', enc.encode(JSON.stringify({ expiresAt: Date.now() + 60_000 })));
    const a = manager(kv, 'sv-a');
    const b = manager(kv, 'sv-b');
    await b.leases.start();
    expect(b.serving.size).toBe(0); // held, as far as sv-b can tell
    await a.leases.start();
    // sv-a takes its share of its old leases back and frees the rest; sv-b takes those.
    await balanced([a, b], P / 2);
    await a.leases.stop();
    await b.leases.stop();
  });
});
