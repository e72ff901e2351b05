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
  subscribeTraces,
  type RuntimeOptions,
  type SecureConfig,
  type SecureRole,
} from '@reins/runtime';
import { createFileTools, createScriptedModel, researchScript, toolSpec } from '@reins/models';
import { startSupervisor, type Supervisor } from '@reins/supervisor';
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
      connection: nkeyConnection(secure.users[role].seed),
      // Only the supervisor manages streams and buckets in secure mode.
      ensureInfrastructure: role === 'supervisor',
      ...options,
    });
    runtimes.set(role, rt);
    void (async () => {
      for await (const s of rt.nc.status()) {
        if (s.type === 'error') violations.push(`${role}: ${s.error.message}`);
      }
    })();
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
    // Acks travel on the supervisor's inbox: allow_responses lets each actor answer once.
    expect(halted.acked).toEqual(expect.arrayContaining(actors));
    expect(halted.missing).toEqual([]);
    await client.request(client.subjects.ctlResume, HaltRequest, HaltReply, {
      scope: { kind: 'all' },
      reason: 'drill over',
    });
    expect(violations).toEqual([]);
  });
});
