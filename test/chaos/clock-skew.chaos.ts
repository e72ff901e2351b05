// Clock skew, at the library level (the services have no clock injection; the supervisor's
// wiring of the server clock is tested in packages/supervisor/test/supervisor-clock.int.test.ts):
// grant expiry as an executor with a skewed clock sees it, and ledger leases written by a holder
// whose clock is off — on its own clock (the ledger's contract, K8 before its fix) and through
// the NATS server's clock, as supervisors write them now.
import { describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { Buckets, createGrantSigner, verifyGrant, type GrantBody } from '@reins/protocol';
import { ServerClock, openBucket } from '@reins/runtime';
import { BudgetLedger } from '@reins/supervisor';
import { startNatsServer } from '@reins/testing';

const T0 = 1_750_000_000_000;
const SKEW = 5_000;
/** How far a server-clock reading may be from the real time (loopback: milliseconds). */
const TOLERANCE = 1_000;

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

  it('leases on local clocks: a holder 10 s slow is reaped 10 s early, by the reaper clock, once', async () => {
    // The ledger's contract: expiresAt is the holder's `now` + lease, compared with the reaper's
    // `now`. With local clocks (supervisors before the K8 fix) a slow holder loses lease time.
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

      // A reaped reservation is charged in full; a late settle corrects it to its spend, once;
      // a repeat is a duplicate.
      expect(await slow.settle('g-slow', { steps: 1 })).toMatchObject({
        settled: true,
        duplicate: false,
        reaped: true,
      });
      expect(await fast.settle('g-slow', { steps: 1 })).toMatchObject({ duplicate: true });
      const scope = await reaper.get('run.skew');
      expect(scope.reservations).toBe(0);
      expect(scope.reserved.steps).toBe(0);
      // g-3, g-4 and g-slow as settled, and g-fast (never settled) charged in full.
      expect(scope.committed.steps).toBe(4);
    } finally {
      await nc.close();
    }
  });
  it('leases on the server clock: a supervisor 10 s slow writes leases no reaper returns early', async () => {
    await using nats = await startNatsServer();
    const nc = await connect({ servers: nats.url });
    try {
      // As the supervisor does: the probe key lives in the ledger's bucket.
      const bucket = await openBucket(nc, Buckets.budget, { replicas: 1 });
      const slowLocal = () => Date.now() - 10_000;
      await using slowClock = await ServerClock.start(bucket, { localNow: slowLocal });
      await using reaperClock = await ServerClock.start(bucket);
      const slow = await BudgetLedger.open(nc, { now: () => slowClock.now() });
      const reaper = await BudgetLedger.open(nc, { now: () => reaperClock.now() });
      // The same slow machine on its own clock, as supervisors were before the fix.
      const legacy = await BudgetLedger.open(nc, { now: slowLocal });
      await reaper.setCap('run.skew', { steps: 2 });
      // A lease shorter than the skew: the case K8 was about.
      const lease = 5_000;
      const reserve = (l: BudgetLedger, grantId: string) =>
        l.reserve({ grantId, scopes: ['run.skew'], amount: { steps: 1 }, leaseMs: lease });
      const before = Date.now();
      const s = await reserve(slow, 'g-server');
      const l = await reserve(legacy, 'g-local');
      const after = Date.now();
      if (!s.ok || !l.ok || s.expiresAt === null || l.expiresAt === null) {
        throw new Error(`reservations refused: ${JSON.stringify({ s, l })}`);
      }
      // Through the server clock the lease ends `lease` from now, whatever the local clock says;
      // on the local clock it ended 5 s ago.
      expect(s.expiresAt).toBeGreaterThanOrEqual(before + lease - TOLERANCE);
      expect(s.expiresAt).toBeLessThanOrEqual(after + lease + TOLERANCE);
      expect(l.expiresAt).toBeLessThanOrEqual(after - 10_000 + lease);
      // Both are held: the cap is full.
      expect(await reserve(reaper, 'g-3')).toMatchObject({ ok: false, dimension: 'steps' });

      // A reaper pass now (on the server clock) returns the local-clock lease at once — its
      // grant still live — and leaves the server-clock lease alone.
      expect((await reaper.reap()).map((r) => r.grantId)).toEqual(['g-local']);
      expect(await reaper.reap(s.expiresAt - 1)).toEqual([]);
      // At its end it is returned once, whichever reaper runs.
      const end = await Promise.all([reaper.reap(s.expiresAt), slow.reap(s.expiresAt)]);
      expect(end.flat().map((r) => r.grantId)).toEqual(['g-server']);

      // Settles commit once; the cap holds.
      expect(await slow.settle('g-server', { steps: 1 })).toMatchObject({
        settled: true,
        duplicate: false,
        reaped: true,
      });
      expect(await legacy.settle('g-local', { steps: 1 })).toMatchObject({ reaped: true });
      const scope = await reaper.get('run.skew');
      expect(scope.reservations).toBe(0);
      expect(scope.committed.steps).toBe(2);
    } finally {
      await nc.close();
    }
  });
});
