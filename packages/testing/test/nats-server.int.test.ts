import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { startNatsServer, startNatsCluster } from '@reins/testing';

function alive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('startNatsServer', () => {
  it('serves pub/sub, a JetStream stream and a KV bucket with CAS', async () => {
    await using nats = await startNatsServer();
    expect(nats.url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
    const nc = await connect({ servers: nats.url });
    try {
      const sub = nc.subscribe('hello', { max: 1 });
      nc.publish('hello', 'world');
      for await (const m of sub) expect(m.string()).toBe('world');

      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: 'S', subjects: ['s.>'] });
      const js = jetstream(nc);
      const ack = await js.publish('s.one', 'x', { msgID: 'm1' });
      const dup = await js.publish('s.one', 'x', { msgID: 'm1' });
      expect(dup.duplicate).toBe(true);
      expect((await jsm.streams.info('S')).state.messages).toBe(1);
      expect(ack.seq).toBe(1);

      const kv = await new Kvm(nc).create('bucket');
      const rev = await kv.create('k', 'v1');
      await kv.update('k', 'v2', rev);
      await expect(kv.update('k', 'v3', rev)).rejects.toThrow();
      expect((await kv.get('k'))?.string()).toBe('v2');
    } finally {
      await nc.close();
    }
  });

  it('exposes the HTTP monitoring endpoint only when asked', async () => {
    await using plain = await startNatsServer();
    expect(plain.monitorUrl).toBeUndefined();
    await using nats = await startNatsServer({ monitoring: true });
    expect(nats.monitorUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const nc = await connect({ servers: nats.url });
    try {
      nc.publish('counted', 'x');
      await nc.flush();
    } finally {
      await nc.close();
    }
    const varz = (await (await fetch(`${nats.monitorUrl}/varz`)).json()) as { in_msgs: number };
    expect(varz.in_msgs).toBeGreaterThanOrEqual(1);
    const jsz = (await (await fetch(`${nats.monitorUrl}/jsz`)).json()) as { config?: unknown };
    expect(jsz.config).toBeDefined();
  });

  it('leaves no process and no temp dir after dispose', async () => {
    let pid: number | undefined;
    let dir: string;
    {
      await using nats = await startNatsServer();
      pid = nats.pid;
      dir = nats.storeDir;
      expect(alive(pid)).toBe(true);
      expect(existsSync(dir)).toBe(true);
    }
    expect(alive(pid)).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('keeps JetStream data across restart and after a kill', async () => {
    await using nats = await startNatsServer();
    let nc = await connect({ servers: nats.url });
    const kv = await new Kvm(nc).create('keep', { history: 1 });
    await kv.put('answer', '42');
    await nc.close();

    await nats.restart();
    nc = await connect({ servers: nats.url });
    expect((await (await new Kvm(nc).open('keep')).get('answer'))?.string()).toBe('42');
    await nc.close();

    await nats.kill();
    expect(nats.pid).toBeUndefined();
    await nats.restart();
    nc = await connect({ servers: nats.url });
    expect((await (await new Kvm(nc).open('keep')).get('answer'))?.string()).toBe('42');
    await nc.close();
  });

  it('says how to install nats-server when it cannot find it', async () => {
    const saved = process.env['NATS_SERVER_BIN'];
    process.env['NATS_SERVER_BIN'] = '/nonexistent/nats-server';
    try {
      await expect(startNatsServer()).rejects.toThrow(/NATS_SERVER_BIN/);
    } finally {
      if (saved === undefined) delete process.env['NATS_SERVER_BIN'];
      else process.env['NATS_SERVER_BIN'] = saved;
    }
  });
});

describe('startNatsCluster', () => {
  it('runs a 3-node JetStream cluster that keeps a replicated stream through a node loss', async () => {
    await using cluster = await startNatsCluster({ size: 3 });
    expect(cluster.urls).toHaveLength(3);
    const nc = await connect({ servers: cluster.urls });
    try {
      const jsm = await jetstreamManager(nc);
      await expect
        .poll(
          async () =>
            jsm.streams.add({ name: 'R', subjects: ['r.>'], num_replicas: 3 }).then(
              () => true,
              () => false,
            ),
          { timeout: 20_000 },
        )
        .toBe(true);
      const js = jetstream(nc);
      await js.publish('r.1', 'a');
      await cluster.kill(2);
      expect(cluster.nodes[2]?.pid).toBeUndefined();
      await expect
        .poll(
          async () =>
            js.publish('r.2', 'b').then(
              () => true,
              () => false,
            ),
          { timeout: 20_000 },
        )
        .toBe(true);
      await expect
        .poll(async () => (await jsm.streams.info('R')).state.messages, { timeout: 20_000 })
        .toBe(2);
    } finally {
      await nc.close();
    }
  });
});
