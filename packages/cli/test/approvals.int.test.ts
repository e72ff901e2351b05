// `reins approvals`, `reins approve`, `reins deny` against a real supervisor whose policy sends
// `pay` to a human. Pending approvals are made the way a planner makes them: `sv.act`.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ActRequest,
  ApprovalPendingError,
  RunRecord,
  RunStartRequest,
  ToolResult,
  createGrantSigner,
} from '@reins/protocol';
import { Runtime, createLogger } from '@reins/runtime';
import { startSupervisor, type Supervisor } from '@reins/supervisor';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { reins } from './cli-process.js';

interface Approval {
  approvalId: string;
  runId: string;
  tool: string;
  args: Record<string, unknown>;
  rule: string;
  status: string;
  decidedBy?: string;
  reason?: string;
}

describe('reins approvals / approve / deny', () => {
  let nats: NatsServer;
  let runtime: Runtime;
  let supervisor: Supervisor;
  let env: Record<string, string>;
  let runId = '';
  const ids: Record<'big' | 'small', string> = { big: '', small: '' };

  beforeAll(async () => {
    nats = await startNatsServer();
    runtime = await Runtime.connect({
      servers: nats.url,
      logger: createLogger({ level: 'silent' }),
    });
    supervisor = await startSupervisor(runtime, {
      agentId: 'sv-approvals',
      signer: createGrantSigner().signer,
      policy: {
        rules: [{ id: 'pay.needs-human', match: { tool: 'pay' }, effect: 'approve' }],
      },
    });
    env = { NATS_URL: nats.url };
    const run = await runtime.request(runtime.subjects.runsStart, RunStartRequest, RunRecord, {
      goal: 'pay the invoices',
      budget: { steps: 10 },
      // No planner here: the test plays its part.
      waitForPlanner: true,
    });
    runId = run.runId;
    // What a planner does: ask to act; the supervisor parks the call for a human.
    const act = async (amount: number, key: string): Promise<string> => {
      const err = await runtime
        .request(runtime.subjects.act(runId), ActRequest, ToolResult, {
          runId,
          agentId: 'planner-1',
          role: 'planner',
          stepId: 's1',
          tool: 'pay',
          args: { amount, to: 'ACME' },
          idempotencyKey: key,
        })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApprovalPendingError);
      return (err as ApprovalPendingError).details?.['approvalId'] as string;
    };
    ids.big = await act(500, `${runId}.1.0`);
    ids.small = await act(7, `${runId}.1.1`);
  });

  afterAll(async () => {
    await supervisor.stop();
    await runtime.close();
    await nats.stop();
  });

  it('lists pending approvals with tool, arguments, rule and expiry', async () => {
    const json = await reins(['approvals', '--run', runId, '--json'], env);
    expect(json.code).toBe(0);
    const list = JSON.parse(json.stdout) as Approval[];
    expect(list.map((a) => a.approvalId).sort()).toEqual([ids.big, ids.small].sort());
    expect(list.find((a) => a.approvalId === ids.big)).toMatchObject({
      runId,
      tool: 'pay',
      args: { amount: 500, to: 'ACME' },
      rule: 'pay.needs-human',
      status: 'pending',
    });

    const text = await reins(['approvals', '--status', 'pending'], env);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/APPROVAL\s+STATUS\s+RUN\s+TOOL\s+ARGS\s+RULE\s+EXPIRES\s+DECIDED/);
    expect(text.stdout).toContain('{"amount":500,"to":"ACME"}');
    expect(text.stdout).toContain('pay.needs-human');
    expect(text.stdout).toMatch(/in 9m\d+s/);
    expect(text.stdout).toContain('decide with: reins approve');

    const none = await reins(['approvals', '--status', 'denied'], env);
    expect(none.stdout.trim()).toBe('no denied approvals');
  });

  it('approve records who decided (--as) and shows the action', async () => {
    const r = await reins(
      ['approve', ids.big, '--reason', 'invoice checked', '--as', 'alice'],
      env,
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`approved ${ids.big} as alice`);
    expect(r.stdout).toContain('tool     pay {"amount":500,"to":"ACME"}');
    expect(r.stdout).toContain('rule     pay.needs-human');
    expect(r.stdout).toContain('reason   invoice checked');

    const listed = JSON.parse(
      (await reins(['approvals', '--status', 'approved', '--json'], env)).stdout,
    ) as Approval[];
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({
      approvalId: ids.big,
      status: 'approved',
      decidedBy: 'alice',
      reason: 'invoice checked',
    });
  });

  it('deny needs a reason (exit 2) and takes the identity from REINS_IDENTITY', async () => {
    const noReason = await reins(['deny', ids.small], env);
    expect(noReason.code).toBe(2);
    expect(noReason.stderr).toContain('--reason is required for deny');

    const r = await reins(['deny', ids.small, '--reason', 'too small to bother', '--json'], {
      ...env,
      REINS_IDENTITY: 'bob',
    });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      approvalId: ids.small,
      status: 'denied',
      decidedBy: 'bob',
      reason: 'too small to bother',
    });
  });

  it('refuses decided, unknown and malformed approvals with what to do', async () => {
    const twice = await reins(['approve', ids.small], env);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toContain(`approval ${ids.small} is already denied (by bob)`);

    const unknown = await reins(['approve', 'apr_nope'], env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no approval apr_nope');
    expect(unknown.stderr).toContain('reins approvals --status pending');

    const badId = await reins(['deny', 'not an id', '--reason', 'x'], env);
    expect(badId.code).toBe(2);
    expect(badId.stderr).toContain('invalid approval id');

    const badStatus = await reins(['approvals', '--status', 'maybe'], env);
    expect(badStatus.code).toBe(2);
    expect(badStatus.stderr).toContain('pending, approved, denied, expired');
  });
});
