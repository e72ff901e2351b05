// A governed run in secure mode: every actor on its own least-privilege NATS user. It proves the
// allow lists of `createSecureConfig` are sufficient for the real flows (run start, task queue,
// authorize/settle, act → exec forwarding with a signed grant, KV state, traces, heartbeats,
// halt markers), and that none of those flows trips a permission violation.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  HaltReply,
  HaltRequest,
  RunGetRequest,
  RunRecord,
  RunStartRequest,
  Buckets,
  createGrantSigner,
  type TraceEvent,
} from '@reins/protocol';
import { startNatsServer, type NatsServer } from '@reins/testing';
import {
  Runtime,
  createLogger,
  createSecureConfig,
  listAgents,
  nkeyConnection,
  servingConnection,
  subscribeTraces,
  type SecurityEvent,
  type RuntimeOptions,
  type SecureConfig,
  type SecureRole,
} from '@reins/runtime';
import { createFileTools, createScriptedModel, researchScript, toolSpec } from '@reins/models';
import { readAudit, startSupervisor, type Supervisor } from '@reins/supervisor';
import { Kvm } from '@nats-io/kv';
import {
  PermissionViolationError,
  connect,
  type Msg,
  type NatsConnection,
} from '@nats-io/transport-node';
import { startExecutor } from '@reins/executor';
import { startPlanner } from '@reins/planner';

const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });
const PLANNER_ROLE = 'researcher';

describe('secure mode: a governed run with one restricted NATS user per role', () => {
  let nats: NatsServer;
  let store: string;
  let dir: string;
  let secure: SecureConfig;
  let sv: Supervisor;
  const runtimes = new Map<SecureRole, Runtime>();
  /** Permission violations each role's connection reported (should stay empty). */
  const violations: string[] = [];

  async function connectAs(role: SecureRole, options: RuntimeOptions = {}): Promise<Runtime> {
    const rt = await Runtime.connect({
      servers: nats.url,
      name: `reins-${role}`,
      logger: quiet(),
      heartbeatMs: 500,
      // Services connect twice (their own user and its serving user); a client only once.
      ...(role === 'client'
        ? { connection: nkeyConnection(secure.users[role].seed) }
        : { nkeySeed: secure.users[role].seed }),
      // Only the supervisor manages streams and buckets in secure mode.
      ensureInfrastructure: role === 'supervisor',
      ...options,
    });
    runtimes.set(role, rt);
    for (const nc of new Set([rt.nc, rt.serving])) {
      void (async () => {
        for await (const s of nc.status()) {
          if (s.type === 'error') violations.push(`${role}: ${s.error.message}`);
        }
      })();
    }
    return rt;
  }

  beforeAll(async () => {
    secure = createSecureConfig({
      roles: { planner: [PLANNER_ROLE], executor: ['executor'] },
      anonymousProbe: true,
    });
    store = await mkdtemp(join(tmpdir(), 'reins-secure-'));
    // Readiness probes connect without credentials (the probe user); JetStream is on via args.
    nats = await startNatsServer({
      jetstream: false,
      storeDir: store,
      args: ['-js', '-sd', store],
      config: secure.serverConfig,
    });
    dir = await mkdtemp(join(tmpdir(), 'reins-secure-sandbox-'));
    await mkdir(join(dir, 'docs'));
    await writeFile(join(dir, 'docs', 'a.md'), '# Alpha\n\nAlpha is the first document.\n');
    await writeFile(join(dir, 'docs', 'b.md'), '# Beta\n\nBeta comes second.\n');

    const { signer } = createGrantSigner();
    sv = await startSupervisor(await connectAs('supervisor'), {
      signer,
      policy: {
        version: 1,
        rules: [
          { id: 'files.read', match: { tool: 'read_file' }, effect: 'allow' },
          { id: 'files.list', match: { tool: 'list_files' }, effect: 'allow' },
          {
            id: 'files.write',
            match: { tool: 'write_file' },
            effect: 'allow',
            args: [{ path: 'path', prefix: ['report.md'] }],
          },
        ],
      },
    });
    const files = createFileTools({ root: dir });
    await startExecutor(await connectAs('executor'), {
      tools: files.tools,
      trustedIssuers: [signer.publicKey],
    });
    await startPlanner(await connectAs('planner'), {
      role: PLANNER_ROLE,
      agentId: 'researcher-1',
      concurrency: 1,
      model: createScriptedModel({
        respond: researchScript({ dir: 'docs', reportPath: 'report.md' }),
      }),
      tools: files.tools.map(toolSpec),
    });
    await connectAs('client');
  });

  afterAll(async () => {
    await sv.stop();
    for (const rt of [...runtimes.values()].reverse()) await rt.close();
    await nats.stop();
    await rm(store, { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
  });

  it('runs to a report with every actor on its own user, without a permission violation', async () => {
    const client = runtimes.get('client')!;
    const run = await client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
      goal: 'Summarise the docs into report.md',
      role: PLANNER_ROLE,
      budget: { steps: 10 },
    });
    const events: TraceEvent[] = [];
    await using _sub = await subscribeTraces(
      client,
      { runId: run.runId },
      { callback: (e) => events.push(e) },
    );
    const status = async () =>
      (
        await client.request(client.subjects.runsGet, RunGetRequest, RunRecord, {
          runId: run.runId,
        })
      ).status;
    await expect
      .poll(status, { timeout: 30_000, interval: 100 })
      .toSatisfy((s) => s === 'completed' || s === 'failed' || s === 'stopped');
    expect(await status(), violations.join('\n')).toBe('completed');
    const report = await readFile(join(dir, 'report.md'), 'utf8');
    expect(report).toContain('Alpha');
    expect(report).toContain('Beta');
    await expect
      .poll(() => events.some((e) => e.event === 'run.end'), { timeout: 5000 })
      .toBe(true);
    const roles = new Set(events.map((e) => e.role));
    for (const r of ['supervisor', PLANNER_ROLE, 'executor']) expect(roles, r).toContain(r);
    expect(violations).toEqual([]);
  });

  it('halts and resumes through the control plane: actors ack on their restricted users', async () => {
    const client = runtimes.get('client')!;
    const agents = await listAgents(client);
    expect(new Set(agents.map((a) => a.role))).toEqual(
      new Set(['supervisor', PLANNER_ROLE, 'executor']),
    );
    const actors = agents.filter((a) => a.role !== 'supervisor').map((a) => a.agentId);
    const halted = await client.request(client.subjects.ctlHalt, HaltRequest, HaltReply, {
      scope: { kind: 'all' },
      reason: 'secure-mode drill',
      deadlineMs: 2000,
    });
    // Acks travel on each actor's serving user, which may publish to the supervisor's inbox.
    expect(halted.acked).toEqual(expect.arrayContaining(actors));
    expect(halted.missing).toEqual([]);
    await client.request(client.subjects.ctlResume, HaltRequest, HaltReply, {
      scope: { kind: 'all' },
      reason: 'drill over',
    });
    expect(violations).toEqual([]);
  });

  /** Every key's revision in the buckets a redirected reply could write (the clock probe aside). */
  async function stateSnapshot(): Promise<Record<string, number>> {
    const kvm = new Kvm(runtimes.get('supervisor')!.nc);
    const out: Record<string, number> = {};
    for (const bucket of [
      Buckets.halts,
      Buckets.budget,
      Buckets.budgetGrants,
      Buckets.runs,
      Buckets.idem,
      Buckets.approvals,
    ]) {
      const kv = await kvm.open(bucket);
      const keys: string[] = [];
      for await (const k of await kv.keys()) keys.push(k);
      for (const k of keys) {
        if (bucket === Buckets.budget && k === 'clock') continue;
        const e = await kv.get(k);
        if (e) out[`${bucket}/${k}`] = e.revision;
      }
    }
    return out;
  }

  async function auditEntries() {
    const entries = [];
    for await (const e of readAudit(runtimes.get('supervisor')!.nc)) entries.push(e);
    return entries;
  }

  async function nextViolation(nc: NatsConnection): Promise<PermissionViolationError> {
    for await (const st of nc.status()) {
      if (st.type === 'error' && st.error instanceof PermissionViolationError) return st.error;
    }
    throw new Error('connection closed before a permission violation');
  }

  /** Reply subjects a confused deputy would write with its own credentials. */
  const protectedReplies = (runId: string, svId: string) => [
    `$KV.${Buckets.halts}.all`,
    `$KV.${Buckets.halts}.role.${PLANNER_ROLE}`,
    `$KV.${Buckets.budget}.run.${runId}`,
    `$KV.${Buckets.runs}.run.${runId}`,
    `$KV.${Buckets.idem}.k1`,
    `$KV.${Buckets.approvals}.ap_x`,
    `$JS.API.STREAM.DELETE.REINS_AUDIT`,
    `reins.v1.audit.${svId}`,
    `reins.v1.exec.write_file`,
    `reins.v1.ctl.bcast.all`,
    `reins.v1.hb.supervisor.${svId}`,
    `reins.v1.trace.${runId}.supervisor.${svId}.run.end`,
    `reins.v1.task.${PLANNER_ROLE}`,
  ];

  it('answers no request on a protected reply subject: every role tries, nothing changes, the control plane audits it', async () => {
    const svRuntime = runtimes.get('supervisor')!;
    const subjects = svRuntime.subjects;
    const replies = protectedReplies('run_victim', sv.actor.agentId);
    const before = await stateSnapshot();
    const auditBefore = (await auditEntries()).length;
    const execSeen: string[] = [];
    const execWatch = svRuntime.nc.subscribe(`${subjects.prefix}.exec.>`, {
      callback: (_e: Error | null, m: Msg) => void execSeen.push(m.subject),
    });
    await svRuntime.nc.flush();
    const refused: SecurityEvent[] = [];
    const stopListening = svRuntime.onSecurityEvent((e) => refused.push(e));

    // What each role's user may publish, served by the supervisor.
    const attacks: Record<'planner' | 'executor' | 'client', string[]> = {
      planner: [
        subjects.runsGet,
        subjects.authorize('run_victim'),
        subjects.settle('run_victim'),
        subjects.act('run_victim'),
      ],
      executor: [subjects.settle('run_victim')],
      client: [subjects.runsGet, subjects.ctlHalt, subjects.ctlResume, subjects.approvalsList],
    };
    const expected = new Set<string>();
    for (const [role, targets] of Object.entries(attacks)) {
      const nc = await connect({
        servers: nats.url,
        reconnect: false,
        ...nkeyConnection(secure.users[role as SecureRole].seed),
      });
      for (const subject of targets) {
        for (const reply of replies) {
          nc.publish(subject, new Uint8Array([0x80]), { reply });
          expected.add(`${subject}|${reply.split('.').slice(0, 3).join('.')}`);
        }
      }
      await nc.flush();
      await nc.close();
    }
    // The runtime refuses each (subject, reply family) once, before any handler runs.
    await expect
      .poll(() => new Set(refused.map((e) => `${e.subject}|${e.family}`)).size, {
        timeout: 10_000,
      })
      .toBe(expected.size);
    stopListening();
    execWatch.unsubscribe();

    expect(await stateSnapshot()).toEqual(before);
    expect(execSeen).toEqual([]);
    // Audited (appended after the refusal): one security entry per refused kind of attempt.
    await expect
      .poll(async () => (await auditEntries()).length - auditBefore, { timeout: 10_000 })
      .toBe(expected.size);
    const added = (await auditEntries()).slice(auditBefore);
    expect(added.map((e) => e.action)).toEqual(added.map(() => 'security'));
    expect(added[0]).toMatchObject({ rule: 'security.reply_refused' });
    expect(violations).toEqual([]);

    // A governed run still completes afterwards.
    const client = runtimes.get('client')!;
    const run = await client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
      goal: 'Summarise the docs into report.md again',
      role: PLANNER_ROLE,
      budget: { steps: 10 },
    });
    await expect
      .poll(
        async () =>
          (
            await client.request(client.subjects.runsGet, RunGetRequest, RunRecord, {
              runId: run.runId,
            })
          ).status,
        { timeout: 30_000, interval: 100 },
      )
      .toBe('completed');
  });

  it('refuses at the server too: a serving user cannot publish outside the inboxes, even to a reply it received', async () => {
    const svRuntime = runtimes.get('supervisor')!;
    const runId = 'run_x';
    const replies = protectedReplies(runId, sv.actor.agentId);
    const before = await stateSnapshot();
    for (const role of ['supervisor', 'planner', 'executor'] as const) {
      const serving = await connect({
        servers: nats.url,
        reconnect: false,
        ...servingConnection(secure.users[role].seed),
      });
      for (const subject of replies) {
        const violation = nextViolation(serving);
        serving.publish(subject, new Uint8Array([1]));
        expect(await violation, `${role} → ${subject}`).toMatchObject({
          operation: 'publish',
          subject,
        });
      }
      await serving.close();
    }

    // A responder without the runtime's check, on the supervisor's serving user, answering a
    // planner's request whose reply names the halt marker: the server refuses the answer.
    const raw = await connect({
      servers: nats.url,
      reconnect: false,
      ...servingConnection(secure.users.supervisor.seed),
    });
    const answered = nextViolation(raw);
    raw.subscribe(svRuntime.subjects.runsBudget, {
      callback: (_e: Error | null, m: Msg) => void m.respond(new Uint8Array([0xc1])),
    });
    await raw.flush();
    const planner = await connect({
      servers: nats.url,
      reconnect: false,
      ...nkeyConnection(secure.users.planner.seed),
    });
    planner.publish(svRuntime.subjects.runsBudget, new Uint8Array([0x80]), {
      reply: `$KV.${Buckets.halts}.all`,
    });
    expect(await answered).toMatchObject({ subject: `$KV.${Buckets.halts}.all` });
    await planner.close();
    await raw.close();
    expect(await stateSnapshot()).toEqual(before);
  });
});
