// Approvals across processes with several planners: a step whose tool call needs a human
// suspends its run (no retries, no second model call); each decision — approve, deny, or the
// approval's expiry — sends the run on at once, on whichever planner takes it.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ApprovalRecord, decode, type RunRecord } from '@reins/protocol';
import { startFakeOpenAI, type FakeOpenAI, type RecordedRequest } from '@reins/testing';
import { POLICY, startE2E, type E2E } from './support/e2e.js';

/** write_file needs a human; everything else as the e2e policy says. */
const APPROVAL_POLICY = {
  ...POLICY,
  rules: [
    { id: 'notes.write.human', match: { tool: 'write_file' }, effect: 'approve' },
    ...POLICY.rules,
  ],
};

/**
 * The model: on a goal "write note N" it first lists the sandbox (step 1, allowed), then asks to
 * write note-N.md (step 2, needs a human), then answers with what the write said (step 3). The
 * approval comes at a later step on purpose: a planner that ran step 1 remembers the run's state,
 * and must not trust that copy once another planner has worked on step 2. One request per step,
 * so the server's count is the number of model calls made.
 */
function noteWriter(req: RecordedRequest) {
  const messages = (req.body as { messages: { role: string; content?: string }[] }).messages;
  const goal = messages.find((m) => m.role === 'user')?.content ?? '';
  const n = /write note (\d+)/.exec(goal)?.[1] ?? '0';
  const tools = messages.filter((m) => m.role === 'tool');
  if (tools.length === 0) return { toolCalls: [{ name: 'list_files', arguments: { path: '.' } }] };
  if (tools.length === 1) {
    return {
      toolCalls: [
        { name: 'write_file', arguments: { path: `note-${n}.md`, content: `note ${n}` } },
      ],
    };
  }
  return { content: `done with note ${n}: ${tools.at(-1)?.content ?? ''}` };
}

async function swarm(fake: FakeOpenAI, planners: number, supervisorEnv: Record<string, string>) {
  const e = await startE2E();
  const dir = await mkdtemp(join(tmpdir(), 'reins-approvals-'));
  const policyFile = join(dir, 'policy.json');
  await writeFile(policyFile, JSON.stringify(APPROVAL_POLICY));
  e.startSupervisor('sv-1', { REINS_POLICY_FILE: policyFile, ...supervisorEnv });
  await e.waitForAgents(1, 'supervisor');
  for (let i = 1; i <= 2; i++) e.startExecutor(`exec-${i}`);
  for (let i = 1; i <= planners; i++) {
    e.startPlanner(`planner-${i}`, {
      OPENAI_BASE_URL: fake.url,
      OPENAI_API_KEY: 'test',
      REINS_MODEL: 'fake-model',
      REINS_TOOLS: 'files',
    });
  }
  await e.waitForAgents(1 + 2 + planners);
  return {
    e,
    async [Symbol.asyncDispose]() {
      await e[Symbol.asyncDispose]();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Calls `decide` with each approval request as the supervisor publishes it. */
async function onApprovalRequests(e: E2E, decide: (a: ApprovalRecord) => void) {
  const rt = e.client.runtime;
  const sub = rt.nc.subscribe(`${rt.subjects.prefix}.approvals.>`, {
    callback: (_err, m) => {
      try {
        const a = decode(ApprovalRecord, m.data, { name: 'approval' });
        if (a.status === 'pending') decide(a);
      } catch {
        // not an approval record
      }
    },
  });
  await rt.nc.flush();
  return sub;
}

describe('approvals with several planners', () => {
  it('3 planners, 8 runs: 6 approved and 2 denied as they appear all end, with one model call per step', async () => {
    await using fake = await startFakeOpenAI({ respond: noteWriter });
    await using s = await swarm(fake, 3, {});
    const { e } = s;
    const decided: string[] = [];
    const denied = new Set([2, 5]);
    const sub = await onApprovalRequests(e, (a) => {
      const n = Number(/note-(\d+)\.md/.exec(JSON.stringify(a.args))?.[1]);
      decided.push(a.approvalId);
      // A human takes a few seconds (the scenario, not a wait for an event): long enough for a
      // planner that retried instead of suspending to come back to the step several times.
      setTimeout(() => {
        const decision = denied.has(n)
          ? e.client.approvals.deny(a.approvalId, `note ${n} is not wanted`)
          : e.client.approvals.approve(a.approvalId, { reason: 'fine' });
        void decision.catch(() => undefined);
      }, 4000);
    });
    const runs = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        e.client.runs.start(`write note ${i + 1}`, { role: 'researcher', budget: { steps: 10 } }),
      ),
    );
    const records: RunRecord[] = await Promise.all(runs.map((r) => e.result(r, 60_000)));
    sub.unsubscribe();

    expect(new Set(decided).size).toBe(8);
    for (const [i, rec] of records.entries()) {
      const n = i + 1;
      expect(rec.status, `run ${n}: ${JSON.stringify(rec.error)}`).toBe('completed');
      expect(rec.used.steps).toBe(3);
      if (denied.has(n)) {
        expect(rec.answer).toContain('APPROVAL_DENIED');
        await expect(readFile(join(e.sandbox, `note-${n}.md`), 'utf8')).rejects.toThrow();
      } else {
        expect(await readFile(join(e.sandbox, `note-${n}.md`), 'utf8')).toBe(`note ${n}`);
      }
    }
    // Exactly one model call per committed step: 8 runs × 3 steps, nothing made twice.
    const calls = fake.requests.filter((r) => r.path.endsWith('/chat/completions'));
    expect(calls.length).toBe(24);
  }, 120_000);

  it('a pending approval keeps its run waiting past any retry budget; its expiry ends the wait as a denial', async () => {
    await using fake = await startFakeOpenAI({ respond: noteWriter });
    // Approvals expire after 5 s; with retries the planner used to give up on them instead.
    await using s = await swarm(fake, 2, { REINS_APPROVAL_TIMEOUT_MS: '5000' });
    const { e } = s;
    const run = await e.client.runs.start('write note 9', {
      role: 'researcher',
      budget: { steps: 10 },
    });
    await using trace = await e.trace(run.id);
    // The step stops at the approval: the run is suspended, not retrying.
    const waiting = await trace.waitFor(
      (ev) => ev.event === 'tool.waiting',
      'tool.waiting',
      30_000,
    );
    expect(waiting.data).toMatchObject({ tool: 'write_file' });
    const expired = trace.waitFor(
      (ev) => ev.event === 'approval.decision' && ev.data['status'] === 'expired',
      'the approval expiring',
      30_000,
    );
    expect(['waiting_approval', 'completed', 'running']).toContain((await run.get()).status);
    await expired;
    // No model call was made while it waited: two before (list, write), one after the expiry.
    const rec = await e.result(run, 30_000);
    expect(rec.status).toBe('completed');
    expect(rec.answer).toContain('APPROVAL_TIMEOUT');
    const [approval] = await e.client.approvals.list({ runId: run.id });
    expect(approval?.status).toBe('expired');
    expect(fake.requests.length).toBe(3);
    // Waiting was visible while it lasted.
    expect(trace.events.map((ev) => ev.event)).toContain('approval.request');
  }, 120_000);

  it('a waiting run says so in its record', async () => {
    await using fake = await startFakeOpenAI({ respond: noteWriter });
    await using s = await swarm(fake, 1, {});
    const { e } = s;
    const run = await e.client.runs.start('write note 10', {
      role: 'researcher',
      budget: { steps: 10 },
    });
    await using trace = await e.trace(run.id);
    await trace.waitFor((ev) => ev.event === 'tool.waiting', 'tool.waiting', 30_000);
    // Set before the planner heard the refusal that made it wait.
    expect((await run.get()).status).toBe('waiting_approval');
    const [approval] = await e.client.approvals.list({ runId: run.id });
    await e.client.approvals.approve(approval!.approvalId);
    const rec = await e.result(run, 30_000);
    expect(rec.status).toBe('completed');
    expect(fake.requests.length).toBe(3);
  }, 120_000);
});
