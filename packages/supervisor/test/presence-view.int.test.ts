import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Buckets,
  Heartbeat,
  HaltReply,
  HaltRequest,
  createGrantSigner,
  encode,
  scopeKey,
  type Scope,
} from '@reins/protocol';
import {
  Runtime,
  createLogger,
  decodePresence,
  defineActor,
  listAgents,
  type PresenceFilter,
} from '@reins/runtime';
import { Kvm, type KV } from '@nats-io/kv';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { PresenceView, startSupervisor, type Supervisor } from '../src/index.js';
import { presenceOf } from './presence-fixture.js';

const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });

/** A heartbeat as an agent writes it; `expiresIn` < 0 makes it lost. */
function beat(agentId: string, role: string, status = 'running', expiresIn = 60_000): Uint8Array {
  const now = Date.now();
  return encode(Heartbeat, {
    agentId,
    role,
    status: status as 'running',
    inFlight: 0,
    runs: [],
    memory: { rss: 1, heapUsed: 1 },
    version: 'x',
    ts: now,
    intervalMs: 1000,
    expiresAt: now + expiresIn,
  });
}

const FILTERS: PresenceFilter[] = [
  {},
  { includeLost: false },
  { includeStopped: true },
  { includeLost: true, includeStopped: true },
  { includeLost: false, includeStopped: false },
];

describe('PresenceView', () => {
  let nats: NatsServer;
  let rt: Runtime;
  let kv: KV;
  const views: PresenceView[] = [];

  beforeAll(async () => {
    nats = await startNatsServer();
    rt = await Runtime.connect({ servers: nats.url, logger: quiet() });
    kv = await new Kvm(rt.nc).open(Buckets.agents);
  });

  afterAll(async () => {
    for (const v of views) v.stop();
    await rt.close();
    await nats.stop();
  });

  const open = async (options: Parameters<typeof PresenceView.start>[1] = {}) => {
    const v = await PresenceView.start(rt, { logger: quiet(), ...options });
    views.push(v);
    return v;
  };

  it('answers as a listing does: lost after its expiry, stopped left out unless asked for', async () => {
    await kv.put('pv-run', beat('pv-run', 'pvrole'));
    await kv.put('pv-stop', beat('pv-stop', 'pvrole', 'stopped'));
    await kv.put('pv-lost', beat('pv-lost', 'pvrole', 'running', -1000));
    await kv.put('pv-gone', beat('pv-gone', 'pvrole'));
    await kv.delete('pv-gone');
    await kv.put('pv-junk', new TextEncoder().encode('not a heartbeat'));
    const view = await open();
    for (const filter of FILTERS) {
      const now = Date.now();
      const strip = (xs: { agentId: string; status: string }[]) =>
        xs.map((a) => `${a.agentId}:${a.status}`);
      expect(strip(await view.agents({ ...filter, now }))).toEqual(
        strip(await listAgents(rt, { ...filter, now })),
      );
    }
    const all = await view.agents({ includeStopped: true });
    expect(all.map((a) => `${a.agentId}:${a.status}`)).toEqual([
      'pv-lost:lost',
      'pv-run:running',
      'pv-stop:stopped',
    ]);
    expect(view.stats.watched).toBeGreaterThan(0);
    expect(view.stats.listed).toBe(0);
  });

  it('waits for its watch to deliver what was written before the question (the barrier)', async () => {
    // Every delivery held back 150 ms, as in a loaded process: without the barrier the view
    // would answer before it saw the agent that started a moment ago.
    const view = await open({ deliveryDelayMs: 150, catchUpMs: 5_000 });
    await view.agents(); // caught up once (initial values)
    await kv.put('pv-fresh', beat('pv-fresh', 'fresh'));
    const seen = await view.agents();
    expect(seen.map((a) => a.agentId)).toContain('pv-fresh');
    await kv.put('pv-fresh', beat('pv-fresh', 'fresh', 'stopped'));
    expect((await view.agents()).map((a) => a.agentId)).not.toContain('pv-fresh');
    await kv.delete('pv-fresh');
    expect((await view.agents({ includeStopped: true })).map((a) => a.agentId)).not.toContain(
      'pv-fresh',
    );
    expect(view.stats.listed).toBe(0);
  });

  it('lists instead when its watch does not catch up in time, or is down', async () => {
    const view = await open({ deliveryDelayMs: 400, catchUpMs: 50 });
    await kv.put('pv-slow', beat('pv-slow', 'slow'));
    expect((await view.agents()).map((a) => a.agentId)).toContain('pv-slow');
    expect(view.stats.listed).toBeGreaterThan(0);
    const down = await open();
    down.stop();
    await kv.put('pv-down', beat('pv-down', 'down'));
    expect((await down.agents()).map((a) => a.agentId)).toContain('pv-down');
    expect(down.stats).toMatchObject({ watched: 0, listed: 1 });
    await kv.delete('pv-slow');
    await kv.delete('pv-down');
  });

  it('REINS_PRESENCE_WATCH=off lists every time; another value is refused, naming it', async () => {
    process.env['REINS_PRESENCE_WATCH'] = 'off';
    try {
      const off = await open();
      await off.agents();
      expect(off.stats).toMatchObject({ watched: 0, listed: 1 });
      process.env['REINS_PRESENCE_WATCH'] = 'maybe';
      await expect(open()).rejects.toThrow(/REINS_PRESENCE_WATCH/);
    } finally {
      delete process.env['REINS_PRESENCE_WATCH'];
    }
  });
});

describe('halts from presence in memory', () => {
  let nats: NatsServer;
  let svRt: Runtime;
  let agentsRt: Runtime;
  let client: Runtime;
  let sv: Supervisor;
  let kv: KV;

  beforeAll(async () => {
    nats = await startNatsServer();
    svRt = await Runtime.connect({ servers: nats.url, logger: quiet() });
    sv = await startSupervisor(svRt, { agentId: 'sv-pv', signer: createGrantSigner().signer });
    agentsRt = await Runtime.connect({ servers: nats.url, logger: quiet(), heartbeatMs: 500 });
    client = await Runtime.connect({
      servers: nats.url,
      logger: quiet(),
      ensureInfrastructure: false,
    });
    kv = await new Kvm(client.nc).open(Buckets.agents);
  });

  afterAll(async () => {
    await sv.stop();
    await client.close();
    await agentsRt.close();
    await svRt.close();
    await nats.stop();
  });

  const ctl = (type: 'halt' | 'resume', scope: Scope, deadlineMs = 500) =>
    client.request(
      type === 'halt' ? client.subjects.ctlHalt : client.subjects.ctlResume,
      HaltRequest,
      HaltReply,
      {
        scope,
        reason: 'test',
        deadlineMs,
      },
    );

  it('a halt expects an agent that came into presence a moment before it, and fences it when it does not ack', async () => {
    await agentsRt.start(defineActor({ role: 'pvworker', agentId: 'pv-w1' }));
    await presenceOf(client, ['pv-w1']);
    // Present (heartbeat stored) a moment before the halt, but deaf to control messages.
    await kv.put('pv-deaf', beat('pv-deaf', 'pvworker'));
    const reply = await ctl('halt', { kind: 'all' });
    expect(reply.acked).toContain('pv-w1');
    expect(reply.missing).toEqual(['pv-deaf']);
    const fence = await kv.get('pv-deaf');
    expect(fence).not.toBeNull();
    const halts = await new Kvm(client.nc).open(Buckets.halts);
    expect((await halts.get(scopeKey({ kind: 'agent', agentId: 'pv-deaf' })))?.operation).toBe(
      'PUT',
    );
    await ctl('resume', { kind: 'all' });
    await ctl('resume', { kind: 'agent', agentId: 'pv-deaf' });
    await kv.delete('pv-deaf');
  });

  it('does not expect acks from an agent that stopped or is lost; halting a lost agent by name fences it', async () => {
    const actor = await agentsRt.start(defineActor({ role: 'pvstop', agentId: 'pv-stopped' }));
    await presenceOf(client, ['pv-stopped']);
    await actor.stop();
    await expect
      .poll(async () => {
        const e = await kv.get('pv-stopped');
        return e ? decodePresence(e.value)?.status : undefined;
      })
      .toBe('stopped');
    await kv.put('pv-lost', beat('pv-lost', 'pvlost', 'running', -1000));
    const reply = await ctl('halt', { kind: 'all' });
    expect(reply.missing).toEqual([]);
    expect(reply.acked).not.toContain('pv-stopped');
    await ctl('resume', { kind: 'all' });
    // A lost agent is still known: halting it by name is accepted, and fences it should it come back.
    const named = await ctl('halt', { kind: 'agent', agentId: 'pv-lost' });
    expect(named.missing).toEqual([]);
    const halts = await new Kvm(client.nc).open(Buckets.halts);
    expect((await halts.get(scopeKey({ kind: 'agent', agentId: 'pv-lost' })))?.operation).toBe(
      'PUT',
    );
    // A role only a stopped agent served is still known, as with a listing.
    await ctl('halt', { kind: 'role', role: 'pvstop' });
    await expect(ctl('halt', { kind: 'role', role: 'pv-nobody' })).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    await ctl('resume', { kind: 'role', role: 'pvstop' });
    await ctl('resume', { kind: 'agent', agentId: 'pv-lost' });
    await kv.delete('pv-lost');
  });
});
