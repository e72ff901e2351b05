import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import {
  PermissionViolationError,
  connect,
  type Msg,
  type NatsConnection,
} from '@nats-io/transport-node';
import { Buckets } from '@reins/protocol';
import { startNatsServer, type NatsServer } from '@reins/testing';
import {
  createSecureConfig,
  loadNkeySeed,
  nkeyConnection,
  type Runtime,
  type SecureConfig,
  type SecureRole,
} from '@reins/runtime';
import { testRuntime } from './helpers.js';

/** The next permission violation the server reports on `nc` (nats.js surfaces it as a status). */
async function nextViolation(nc: NatsConnection): Promise<PermissionViolationError> {
  for await (const s of nc.status()) {
    if (s.type === 'error' && s.error instanceof PermissionViolationError) return s.error;
  }
  throw new Error('connection closed before a permission violation');
}

describe('secure mode: per-role NATS users', () => {
  let secure: SecureConfig;
  let nats: NatsServer;
  let store: string;
  let sv: Runtime;
  /** What a supervisor-user subscriber on every Reins subject received, in order. */
  const seenBySupervisor: string[] = [];
  let sentinel: Promise<void>;
  const open: NatsConnection[] = [];

  const connectAs = async (role: SecureRole) => {
    const nc = await connect({
      servers: nats.url,
      reconnect: false,
      ...nkeyConnection(secure.users[role].seed),
    });
    open.push(nc);
    return nc;
  };

  beforeAll(async () => {
    secure = createSecureConfig({ roles: { planner: ['researcher'] }, anonymousProbe: true });
    store = await mkdtemp(join(tmpdir(), 'reins-secure-'));
    nats = await startNatsServer({
      jetstream: false,
      storeDir: store,
      args: ['-js', '-sd', store],
      config: secure.serverConfig,
    });
    // The supervisor user creates the streams and buckets; nobody else may.
    sv = await testRuntime(nats.url, { nkeySeed: secure.users.supervisor.seed });
    let seen!: () => void;
    sentinel = new Promise<void>((r) => (seen = r));
    sv.nc.subscribe(`${sv.subjects.prefix}.>`, {
      callback: (_err: Error | null, m: Msg) => {
        seenBySupervisor.push(m.subject);
        if (m.subject === sv.subjects.settle('r1')) seen();
      },
    });
    await sv.nc.flush();
  });

  afterAll(async () => {
    for (const nc of open) await nc.close();
    await sv.close();
    await nats.stop();
    await rm(store, { recursive: true, force: true });
  });

  it('generates one distinct nkey user per role', () => {
    const keys = Object.values(secure.users).map((u) => u.publicKey);
    expect(new Set(keys).size).toBe(4);
    for (const u of Object.values(secure.users)) {
      expect(u.seed).toMatch(/^SU[A-Z2-7]+$/);
      expect(u.publicKey).toMatch(/^U[A-Z2-7]{55}$/);
      expect(secure.serverConfig).toContain(u.publicKey);
      // Seeds are credentials: they never go into the server config.
      expect(secure.serverConfig).not.toContain(u.seed);
    }
    expect(() => createSecureConfig({ roles: { planner: ['bad role'] } })).toThrow(/role/);
    expect(() => createSecureConfig({ seeds: { client: 'SAnotaseed' } })).toThrow(/seed/);
  });

  it('refuses connections without credentials beyond the probe user', async () => {
    const anon = await connect({ servers: nats.url, reconnect: false });
    open.push(anon);
    const violation = nextViolation(anon);
    anon.publish(sv.subjects.runsStart);
    expect((await violation).subject).toBe(sv.subjects.runsStart);
  });

  it('gives a planner a permissions violation on ctl subjects, and the supervisor never sees them', async () => {
    const planner = await connectAs('planner');
    for (const subject of [sv.subjects.ctlHalt, sv.subjects.ctlBcast({ kind: 'all' })]) {
      const violation = nextViolation(planner);
      planner.publish(subject);
      const err = await violation;
      expect(err).toBeInstanceOf(PermissionViolationError);
      expect(err).toMatchObject({ operation: 'publish', subject });
    }
    // A request on a denied subject does not reach a responder either: it rejects.
    await expect(
      planner.request(sv.subjects.ctlHalt, undefined, { timeout: 1000 }),
    ).rejects.toThrow();
    // The planner may settle: messages of one connection arrive in order, so once the settle is
    // in, nothing published before it is still on its way.
    planner.publish(sv.subjects.settle('r1'));
    await sentinel;
    expect(seenBySupervisor).toEqual([sv.subjects.settle('r1')]);
  });

  it('refuses ledger, halt and approval writes from a planner', async () => {
    const planner = await connectAs('planner');
    const kvm = new Kvm(planner);
    for (const bucket of [Buckets.budget, Buckets.halts, Buckets.approvals]) {
      const kv = await kvm.open(bucket, { bindOnly: true });
      const violation = nextViolation(planner);
      await expect(kv.put('all', new Uint8Array([1]), { timeout: 1000 })).rejects.toThrow();
      expect((await violation).subject).toBe(`$KV.${bucket}.all`);
    }
  });

  it('keeps an executor off exec subjects and out of the budget ledger', async () => {
    const executor = await connectAs('executor');
    const exec = nextViolation(executor);
    executor.publish(sv.subjects.exec('read_file'));
    expect(await exec).toMatchObject({
      operation: 'publish',
      subject: `${sv.subjects.prefix}.exec.read_file`,
    });

    const kv = await new Kvm(executor).open(Buckets.budget, { bindOnly: true });
    const violation = nextViolation(executor);
    await expect(kv.put('run.r1', new Uint8Array([1]), { timeout: 1000 })).rejects.toThrow();
    expect((await violation).subject).toBe(`$KV.${Buckets.budget}.run.r1`);
    // Nothing was written: the supervisor reads the ledger bucket and finds no such key.
    const ledger = await new Kvm(sv.nc).open(Buckets.budget);
    expect(await ledger.get('run.r1')).toBeNull();

    for (const subject of [
      sv.subjects.authorize('r1'),
      sv.subjects.act('r1'),
      sv.subjects.ctlHalt,
    ]) {
      const v = nextViolation(executor);
      executor.publish(subject);
      expect((await v).subject).toBe(subject);
    }
  });

  it("keeps a client off grants and exec, and every role out of another's inbox", async () => {
    const client = await connectAs('client');
    for (const subject of [sv.subjects.authorize('r1'), sv.subjects.exec('write_file')]) {
      const v = nextViolation(client);
      client.publish(subject);
      expect((await v).subject).toBe(subject);
    }
    // Grants travel in replies: reading all inboxes (or the supervisor's) is refused.
    const v = nextViolation(client);
    const sub = client.subscribe('_INBOX.>');
    expect(await v).toMatchObject({ operation: 'subscription', subject: '_INBOX.>' });
    await expect(sub.closed).resolves.toBeInstanceOf(PermissionViolationError);
  });

  it('lets no role publish heartbeats or traces under another role', async () => {
    const p = sv.subjects.prefix;
    const attempts: [SecureRole, string][] = [
      ['planner', `${p}.hb.supervisor.sv1`],
      ['planner', `${p}.hb.executor.ex1`],
      ['planner', `${p}.trace.r1.supervisor.sv1.run.end`],
      ['planner', `${p}.trace.r1.executor.ex1.tool.result`],
      ['executor', `${p}.hb.supervisor.sv1`],
      ['executor', `${p}.hb.researcher.p1`],
      ['executor', `${p}.trace.r1.supervisor.sv1.run.end`],
      ['executor', `${p}.trace.r1.researcher.p1.step.end`],
      ['client', `${p}.hb.supervisor.sv1`],
      ['client', `${p}.trace.r1.supervisor.sv1.run.end`],
    ];
    for (const [role, subject] of attempts) {
      const nc = await connectAs(role);
      const v = nextViolation(nc);
      nc.publish(subject);
      expect(await v, `${role} → ${subject}`).toMatchObject({ operation: 'publish', subject });
    }
    // Under their own roles they may.
    const planner = await connectAs('planner');
    planner.publish(`${p}.hb.researcher.p1`);
    planner.publish(`${p}.trace.r1.researcher.p1.step.end`);
    await planner.flush();
  });

  it('by default (no roles given) a planner may use any role but supervisor, client and executor', async () => {
    const open: NatsConnection[] = [];
    const defaults = createSecureConfig({ anonymousProbe: true });
    const dir = await mkdtemp(join(tmpdir(), 'reins-secure-default-'));
    await using server = await startNatsServer({
      jetstream: false,
      storeDir: dir,
      args: ['-js', '-sd', dir],
      config: defaults.serverConfig,
    });
    try {
      const as = async (role: SecureRole) => {
        const nc = await connect({
          servers: server.url,
          reconnect: false,
          ...nkeyConnection(defaults.users[role].seed),
        });
        open.push(nc);
        return nc;
      };
      const planner = await as('planner');
      for (const subject of [
        'reins.v1.hb.supervisor.sv1',
        'reins.v1.hb.executor.ex1',
        'reins.v1.hb.client.c1',
        'reins.v1.trace.r1.supervisor.sv1.run.end',
      ]) {
        const v = nextViolation(planner);
        planner.publish(subject);
        expect(await v, subject).toMatchObject({ subject });
      }
      const executor = await as('executor');
      const v = nextViolation(executor);
      executor.publish('reins.v1.hb.lead.l1');
      expect(await v).toMatchObject({ subject: 'reins.v1.hb.lead.l1' });
      expect(() => createSecureConfig({ roles: { planner: ['supervisor'] } })).toThrow(/may not/);
      expect(() => createSecureConfig({ roles: { planner: ['a'], executor: ['a'] } })).toThrow(
        /both/,
      );
    } finally {
      for (const nc of open) await nc.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('loads a seed from a value or a file, and rejects a bad one', async () => {
    expect(await loadNkeySeed({})).toBeUndefined();
    const seed = secure.users.executor.seed;
    expect(await loadNkeySeed({ seed: `${seed}\n` })).toBe(seed);
    const file = join(store, 'executor.nk');
    await writeFile(file, `${seed}\n`, { mode: 0o600 });
    expect(await loadNkeySeed({ file })).toBe(seed);
    await expect(loadNkeySeed({ seed, file })).rejects.toThrow(/not both/);
    await expect(loadNkeySeed({ seed: 'SUnope' })).rejects.toThrow(/seed/);
    await expect(loadNkeySeed({ file: join(store, 'missing') })).rejects.toThrow(/cannot read/);
  });
});
