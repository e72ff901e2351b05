// Clock skew, at the library level (the services have no clock injection): grant expiry as an
// executor with a skewed clock sees it, and ledger leases written by a holder whose clock is off.
import { describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { createGrantSigner, verifyGrant, type GrantBody } from '@reins/protocol';
import { BudgetLedger } from '@reins/supervisor';
import { startNatsServer } from '@reins/testing';

const T0 = 1_750_000_000_000;
const SKEW = 5_000;

describe('chaos: clock skew', () => {
  const { signer } = createGrantSigner();
  const body = (issuedAt: number, ttlMs: number): GrantBody => ({
    grantId: 'g-skew',
    runId: 'run-skew',
    agentId: 'planner-a',
    role: 'researcher',
    kind: 'tool',
    stepId: 's1',
    tool: 'read_file',
    argsHash: 'a'.repeat(64),
    idempotencyKey: 'run-skew.1.0',
    reserved: { steps: 0, inputTokens: 0, outputTokens: 0, usd: 0 },
    issuedAt,
    expiresAt: issuedAt + ttlMs,
    issuer: signer.publicKey,
  });
  const check = (grantAt: number, ttlMs: number, now: number, clockSkewMs?: number) => {
    try {
      verifyGrant(signer.sign(body(grantAt, ttlMs)), {
        trustedIssuers: [signer.publicKey],
        now,
        ...(clockSkewMs !== undefined ? { clockSkewMs } : {}),
      });
      return 'ok';
    } catch (err) {
      return String((err as { details?: { reason?: string } }).details?.reason);
    }
  };

  it('grants: an executor clock ±5 s off accepts a live grant and refuses an expired one', () => {
    // Executor 5 s slow: the grant looks issued 5 s in the future, within the default tolerance.
    expect(check(T0, 60_000, T0 - SKEW)).toBe('ok');
    expect(check(T0, 60_000, T0 - SKEW - 1)).toBe('not_yet_valid');
    expect(check(T0, 60_000, T0 - SKEW - 1, SKEW + 1)).toBe('ok');
    expect(check(T0, 60_000, T0 - 1, 0)).toBe('not_yet_valid');
    // Executor 5 s fast: the grant expires 5 s early by the supervisor's clock, never late.
    expect(check(T0, 60_000, T0 + SKEW)).toBe('ok');
    expect(check(T0, 60_000, T0 + 60_000 - 1)).toBe('ok');
    expect(check(T0, 60_000, T0 + 60_000)).toBe('expired');
    expect(check(T0, 4_000, T0 + SKEW)).toBe('expired');
    // Expiry is never stretched by the skew tolerance (it only applies to issuedAt).
    expect(check(T0, 60_000, T0 + 60_000, 30_000)).toBe('expired');
  });

  it('leases: a reservation whose holder clock is 10 s off expires by the reaper clock, once', async () => {
    await using nats = await startNatsServer();
    const nc = await connect({ servers: nats.url });
    try {
      const real = Date.now();
      const fast = await BudgetLedger.open(nc, { now: () => real + 10_000 });
      const slow = await BudgetLedger.open(nc, { now: () => real - 10_000 });
      const reaper = await BudgetLedger.open(nc, { now: () => real });
      const other = await BudgetLedger.open(nc, { now: () => real + 3_000 });
      await reaper.setCap('run.skew', { steps: 4 });
      const lease = 20_000;
      const reserve = (l: BudgetLedger, grantId: string) =>
        l.reserve({ grantId, scopes: ['run.skew'], amount: { steps: 1 }, leaseMs: lease });
      const f = await reserve(fast, 'g-fast');
      const s = await reserve(slow, 'g-slow');
      expect(f).toMatchObject({ ok: true, expiresAt: real + 10_000 + lease });
      expect(s).toMatchObject({ ok: true, expiresAt: real - 10_000 + lease });
      // The cap holds whatever the clocks: 2 held + 2 more fit, a 5th does not.
      await reserve(reaper, 'g-3');
      await reserve(reaper, 'g-4');
      expect(await reserve(other, 'g-5')).toMatchObject({ ok: false, dimension: 'steps' });
      await reaper.settle('g-3', { steps: 1 });
      await reaper.settle('g-4', { steps: 1 });

      // Before either expiry (by the reaper's clock) nothing is reaped.
      expect(await reaper.reap(real - 10_000 + lease - 1)).toEqual([]);
      // The slow holder's lease ends 10 s early, exactly at its expiresAt on the reaper's clock.
      const first = await Promise.all([
        reaper.reap(real - 10_000 + lease),
        other.reap(real - 10_000 + lease),
      ]);
      const reapedSlow = first.flat().map((r) => r.grantId);
      expect(reapedSlow).toEqual(['g-slow']);
      // The fast holder's lease runs 10 s longer, and then is reaped once, by whichever reaper.
      expect(await reaper.reap(real + 10_000 + lease - 1)).toEqual([]);
      const second = await Promise.all([
        reaper.reap(real + 10_000 + lease),
        other.reap(real + 10_000 + lease),
        fast.reap(real + 10_000 + lease),
      ]);
      expect(second.flat().map((r) => r.grantId)).toEqual(['g-fast']);
      expect(await reaper.reap(real + 10 * lease)).toEqual([]);

      // A late settle of a reaped reservation commits its spend once; a repeat is a duplicate.
      expect(await slow.settle('g-slow', { steps: 1 })).toMatchObject({
        settled: true,
        duplicate: false,
        reaped: true,
      });
      expect(await fast.settle('g-slow', { steps: 1 })).toMatchObject({ duplicate: true });
      const scope = await reaper.get('run.skew');
      expect(scope.reservations).toBe(0);
      expect(scope.reserved.steps).toBe(0);
      expect(scope.committed.steps).toBe(3);
    } finally {
      await nc.close();
    }
  });
});
