// Helpers shared by the chaos scenarios (test/chaos/*.chaos.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { Buckets, decode, type AuditEntry, type RunRecord, type TraceEvent } from '@reins/protocol';
import { syncAlwaysConfig } from '@reins/runtime';
import { natsServerVersion } from '@reins/testing';
import { DOCS, startE2E, waitFor, type E2E } from '../support/e2e.js';
import {
  IdempotencyRecord,
  idempotencyKvKey,
  readAudit,
  verifyAudit,
  type RunHandle,
} from '../support/packages.js';

// Trace work as it starts too (`model.call`, `tool.start`; off by default): chaos scenarios time their kills and checks on work in flight.
// Set before any runtime connects; spawned processes inherit it.
process.env['REINS_TRACE_IN_FLIGHT'] = '1';

export const GOAL = 'Read every document in docs/ and write a report to report.md';

/** Every audit entry, in stream order. */
export async function auditEntries(nc: NatsConnection): Promise<AuditEntry[]> {
  const entries: AuditEntry[] = [];
  for await (const entry of readAudit(nc)) entries.push(entry);
  return entries;
}

/** The stored idempotency record of an idempotency key, read straight from KV. */
export async function idempotencyRecord(
  nc: NatsConnection,
  key: string,
): Promise<IdempotencyRecord | undefined> {
  const kv = await new Kvm(nc).open(Buckets.idem);
  const entry = await kv.get(idempotencyKvKey(key));
  return entry?.operation === 'PUT' ? decode(IdempotencyRecord, entry.value) : undefined;
}

const str = (v: unknown) => (typeof v === 'string' ? v : undefined);

/**
 * The grant invariants of one run, from the audit log and the trace:
 * - no grant id is issued twice (by one supervisor or two);
 * - model-call grants that were used (a `model.call` traced with them) are one per step;
 * - a tool action (idempotency key) ran at most once (one `tool.start`); every extra grant for
 *   the same key is a retry the executor answered from its stored result (`replayed`).
 * Returns the grant entries for further checks.
 */
export function expectNoDoubleGrant(
  entries: readonly AuditEntry[],
  events: readonly TraceEvent[],
  runId: string,
  options: { stepRetries?: boolean } = {},
): { llm: AuditEntry[]; tool: AuditEntry[] } {
  const grants = entries.filter((a) => a.action === 'grant' && a.runId === runId);
  const ids = grants.map((a) => str(a.details['grantId']));
  expect(new Set(ids).size, 'grant ids are unique').toBe(ids.length);
  const llm = grants.filter((a) => a.details['kind'] === 'llm');
  const tool = grants.filter((a) => a.details['kind'] === 'tool');

  const issued = new Set(llm.map((a) => str(a.details['grantId'])));
  const calls = events.filter((e) => e.event === 'model.call');
  const usedPerStep = new Map<string, number>();
  for (const c of calls) {
    expect(
      issued.has(str(c.data['grantId'])),
      `model.call grant ${String(c.data['grantId'])} is audited`,
    ).toBe(true);
    usedPerStep.set(c.stepId ?? '', (usedPerStep.get(c.stepId ?? '') ?? 0) + 1);
  }
  // With `stepRetries` (JetStream itself was unavailable, so a step's state could not be saved)
  // a retried step calls its model again under a new grant: allowed, each one is reserved.
  if (!options.stepRetries) {
    for (const [step, n] of usedPerStep)
      expect(n, `model-call grants used by step ${step}`).toBe(1);
  }

  const perKey = new Map<string, number>();
  for (const g of tool) {
    const key = str(g.details['idempotencyKey']) ?? '';
    perKey.set(key, (perKey.get(key) ?? 0) + 1);
  }
  for (const [key, n] of perKey) {
    const starts = events.filter(
      (e) => e.event === 'tool.start' && e.data['idempotencyKey'] === key,
    ).length;
    // Answered without running the tool: a stored result, or an unknown outcome recorded for a
    // non-idempotent attempt whose executor died.
    const answered = events.filter(
      (e) =>
        e.event === 'tool.end' &&
        e.data['idempotencyKey'] === key &&
        (e.data['replayed'] === true ||
          (e.data['outcome'] === 'unknown' && e.data['durationMs'] === 0)),
    ).length;
    expect(starts, `executions of ${key}`).toBeLessThanOrEqual(1);
    // With `stepRetries` a retried action's grant may also go unanswered: its executor refused
    // it (idempotency ledger unavailable while a stream elects a leader: fail closed) or the
    // forward was lost with the node. It still ran at most once (above).
    if (!options.stepRetries) {
      expect(n - 1, `extra grants of ${key} are answered without running`).toBeLessThanOrEqual(
        answered,
      );
    }
  }
  return { llm, tool };
}

/** A completed research run: one run.end, the report mentions every document. */
export async function expectReport(e: E2E, events: readonly TraceEvent[]): Promise<void> {
  const ends = events.filter((ev) => ev.event === 'run.end');
  expect(ends).toHaveLength(1);
  expect(ends[0]?.data['status']).toBe('completed');
  const report = await readFile(join(e.sandbox, 'report.md'), 'utf8');
  for (const name of Object.keys(DOCS)) expect(report).toContain(`docs/${name}`);
}

/**
 * The run's end record. Requests sent while a server is down or just back time out (not only
 * `UNAVAILABLE`, which `e.result` rides out): ask again until the deadline.
 */
export function resultAcrossOutage(e: E2E, run: RunHandle, timeoutMs = 90_000): Promise<RunRecord> {
  return waitFor(async () => e.result(run, 5_000), `run ${run.id} to end`, {
    timeoutMs,
    intervalMs: 100,
    diagnostics: () => e.diagnostics(),
  });
}

/** A run's budget as `reins budget` shows it: cap, committed, reserved (from its partition's owner). */
export function budgetOf(e: E2E, runId: string) {
  return e.client.runs.handle(runId).budget();
}

/** Waits until every open reservation of a run is gone (settled or reaped). */
export async function waitForNoReservations(e: E2E, runId: string): Promise<void> {
  await waitFor(
    async () => Object.values((await budgetOf(e, runId)).reserved).every((v) => v === 0),
    `no open reservations on run ${runId}`,
    { timeoutMs: 30_000, intervalMs: 200, diagnostics: () => e.diagnostics() },
  );
}

/**
 * The supervisor that owned a partition's chain when it wrote entry `seq`: the actor of the
 * last `partition.acquire` before it.
 */
export function ownerAt(entries: readonly AuditEntry[], writer: string, seq: number): string {
  const acquire = entries
    .filter((a) => a.writer === writer && a.action === 'partition.acquire' && a.seq < seq)
    .at(-1);
  return acquire?.actor ?? writer;
}

const chaosExecutorMain = fileURLToPath(new URL('./fixtures/chaos-executor.ts', import.meta.url));

/** Processes of the chaos executor (test/chaos/fixtures/chaos-executor.ts), killable by name. */
export interface ChaosExecutors extends AsyncDisposable {
  start(name: string): void;
  kill(name: string): Promise<void>;
  logs(): string;
}

/** Spawns chaos executors on a deployment; `env` configures their slow / non-idempotent tools. */
export function chaosExecutors(e: E2E, env: Record<string, string>): ChaosExecutors {
  const procs = new Map<string, ChildProcess>();
  const logs: string[] = [];
  const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
  const exited = (c: ChildProcess) =>
    alive(c) ? new Promise<void>((r) => c.once('exit', () => r())) : Promise.resolve();
  const x: ChaosExecutors = {
    start(name) {
      const child = spawn(process.execPath, [chaosExecutorMain], {
        env: {
          ...process.env,
          REINS_LOG_LEVEL: process.env['REINS_LOG_LEVEL'] ?? 'warn',
          NATS_URL: e.natsUrl,
          REINS_TRUSTED_ISSUERS: e.signer.publicKey,
          REINS_SANDBOX_DIR: e.sandbox,
          REINS_AGENT_ID: name,
          ...env,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const keep = (d: Buffer) => {
        for (const line of d.toString().split('\n')) if (line.trim()) logs.push(`${name}: ${line}`);
        if (logs.length > 200) logs.splice(0, logs.length - 200);
      };
      child.stdout.on('data', keep);
      child.stderr.on('data', keep);
      procs.set(name, child);
    },
    async kill(name) {
      const c = procs.get(name);
      if (!c) throw new Error(`no chaos executor ${name}`);
      const done = exited(c);
      c.kill('SIGKILL');
      await done;
    },
    logs: () => logs.join('\n'),
    async [Symbol.asyncDispose]() {
      await Promise.all(
        [...procs.values()].map(async (c) => {
          const done = exited(c);
          c.kill('SIGKILL');
          await done;
        }),
      );
    },
  };
  return x;
}

/**
 * Scenario 3 (also the quick chaos test): nats-server with a file store is SIGKILLed mid-run and
 * restarted on the same store. Services reconnect, the run completes, and every acknowledged
 * audit entry and ledger commit from before the crash is still there. (A process crash keeps
 * what the server wrote to the OS; surviving a machine crash needs `sync_interval: always`,
 * which is set where the server has it — ≥ 2.10, not the 2.9.10 installed here: see
 * docs/reliability.md.)
 */
export async function natsRestartScenario(): Promise<void> {
  const sync = syncAlwaysConfig(natsServerVersion());
  await using e = await startE2E(sync ? { natsConfig: sync } : {});
  e.startSupervisor('sv-1');
  e.startExecutor('exec-1');
  e.startPlanner('planner-a', { REINS_SCRIPTED_LATENCY_MS: '1000' });
  await e.waitForAgents(3);

  const run = await e.client.runs.start(GOAL, { role: 'researcher', budget: { steps: 20 } });
  await using trace = await e.trace(run.id);
  const nc = e.client.runtime.nc;
  await trace.waitFor((ev) => ev.event === 'model.result' && ev.stepId === 's2', 'model.result s2');
  // What was acknowledged before the crash.
  const before = await budgetOf(e, run.id);
  const auditBefore = await auditEntries(nc);
  expect(before.committed.steps).toBeGreaterThanOrEqual(1);

  await e.nats.kill();
  await e.nats.restart();

  const record = await resultAcrossOutage(e, run);
  expect(record.status, e.diagnostics()).toBe('completed');
  await trace.waitFor((ev) => ev.event === 'run.end', 'run.end');
  await expectReport(e, trace.events);

  const auditAfter = await auditEntries(nc);
  expect(await verifyAudit(nc)).toMatchObject({ ok: true });
  const hashes = new Set(auditAfter.map((a) => a.hash));
  const lost = auditBefore.filter((a) => !hashes.has(a.hash));
  expect(lost, 'acknowledged audit entries lost in the crash').toEqual([]);
  const after = await budgetOf(e, run.id);
  for (const k of ['steps', 'inputTokens', 'outputTokens', 'usd'] as const) {
    expect(after.committed[k], `committed ${k} never decreases`).toBeGreaterThanOrEqual(
      before.committed[k],
    );
  }
  expect(after.committed.steps).toBeLessThanOrEqual(20);
}

/**
 * Scenario 1 (also the quick chaos test): two supervisors; the one that granted the model call
 * in flight is SIGKILLed. The run completes, no grant is doubled, the ledger stays within its
 * cap and every reservation is settled or reaped.
 */
export async function supervisorKillScenario(): Promise<void> {
  await using e = await startE2E();
  // Short leases so what the dead supervisor reserved comes back quickly.
  const sv = { REINS_LEASE_MS: '3000' };
  e.startSupervisor('sv-1', sv);
  e.startSupervisor('sv-2', sv);
  e.startExecutor('exec-1');
  e.startExecutor('exec-2');
  e.startPlanner('planner-a', { REINS_SCRIPTED_LATENCY_MS: '1000' });
  await e.waitForAgents(5);

  const run = await e.client.runs.start(GOAL, { role: 'researcher', budget: { steps: 20 } });
  await using trace = await e.trace(run.id);
  const nc = e.client.runtime.nc;
  const call = await trace.waitFor(
    (ev) => ev.event === 'model.call' && ev.stepId === 's2',
    'model.call s2',
  );
  // Kill the instance that granted (and reserved for) the model call now running: the owner
  // of the run's partition, whose chain holds the grant.
  const grantId = call.data['grantId'];
  const issuer = await waitFor(
    async () => {
      const entries = await auditEntries(nc);
      const grant = entries.find((a) => a.action === 'grant' && a.details['grantId'] === grantId);
      return grant && ownerAt(entries, grant.writer, grant.seq);
    },
    `audit entry of grant ${String(grantId)}`,
  );
  await e.swarm.kill(issuer, 'SIGKILL');

  const record = await e.result(run, 60_000);
  expect(record.status, e.diagnostics()).toBe('completed');
  await trace.waitFor((ev) => ev.event === 'run.end', 'run.end');
  await expectReport(e, trace.events);

  const entries = await auditEntries(nc);
  expect(await verifyAudit(nc)).toMatchObject({ ok: true });
  const { llm } = expectNoDoubleGrant(entries, trace.events, run.id);
  expect(llm.length).toBeGreaterThanOrEqual(4);

  await waitForNoReservations(e, run.id);
  const s = await budgetOf(e, run.id);
  expect(s.committed.steps).toBeLessThanOrEqual(20);
  // Every model call that ran was settled once (the killed issuer's by the survivor).
  const calls = trace.events.filter((ev) => ev.event === 'model.call').length;
  expect(s.committed.steps).toBe(calls);
}
