import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { connect } from '@nats-io/transport-node';
import { ConflictError, ProtocolError, UnavailableError } from '@reins/protocol';
import { startNatsServer } from '@reins/testing';
import {
  BudgetLedger,
  budgetScopes,
  type ReapedReservation,
  type ReserveResult,
} from '../src/index.js';
import { uid, useLedgers } from './ledger-fixture.js';

const micros = (usd: number) => Math.round(usd * 1e6);

describe('BudgetLedger', () => {
  const { ledger } = useLedgers(3);

  it('admits exactly cap/amount of 200 concurrent reservations over 3 connections, settles to the cent', async () => {
    const runId = uid('race');
    const scope = `run.${runId}`;
    await ledger(0).setCap(scope, { usd: 1.0 });
    const scopes = budgetScopes({ runId });
    const grants = Array.from({ length: 200 }, (_, i) => `g${i}_${runId}`);
    const results = await Promise.all(
      grants.map((grantId, i) =>
        ledger(i).reserve({ grantId, scopes, amount: { usd: 0.1, steps: 1 }, leaseMs: 60_000 }),
      ),
    );
    const admitted = grants.filter((_, i) => results[i]!.ok);
    expect(admitted).toHaveLength(10);
    for (const r of results.filter((r) => !r.ok)) {
      expect(r).toMatchObject({ ok: false, scope, dimension: 'usd', cap: 1 });
    }
    const mid = await ledger(1).get(scope);
    expect(micros(mid.reserved.usd)).toBe(micros(1));
    expect(mid.committed.usd).toBe(0);

    let cents = 0;
    const settles = await Promise.all(
      admitted.map((grantId, i) => {
        const c = Math.floor(Math.random() * 11); // 0..10 cents, ≤ reserved
        cents += c;
        return ledger(i + 1).settle(grantId, { usd: c / 100, steps: 1 });
      }),
    );
    expect(settles.every((s) => s.settled && !s.duplicate && !s.overshoot)).toBe(true);
    const end = await ledger(2).get(scope);
    expect(micros(end.committed.usd)).toBe(cents * 10_000);
    expect(end.committed.steps).toBe(10);
    expect(end.reserved).toEqual({ usd: 0, tokens: 0, inputTokens: 0, outputTokens: 0, steps: 0 });
    expect(end.reservations).toBe(0);
    // The global scope saw the same traffic without a cap.
    const global = await ledger(0).get('global');
    expect(global.cap).toEqual({});
  });

  it('is all or nothing across scopes', async () => {
    const runId = uid('aon');
    const agentId = uid('agent');
    const scopes = budgetScopes({ runId, agentId, global: false });
    await ledger(0).setCap(`run.${runId}`, { usd: 10 });
    await ledger(0).setCap(`agent.${agentId}`, { usd: 0.05, tokens: 1000 });

    const denied = await ledger(1).reserve({
      grantId: uid('g'),
      scopes,
      amount: { usd: 0.1 },
      leaseMs: 60_000,
    });
    expect(denied).toEqual({
      ok: false,
      scope: `agent.${agentId}`,
      dimension: 'usd',
      cap: 0.05,
      wouldBe: 0.1,
      requested: 0.1,
      committed: 0,
      reserved: 0,
    });
    // `agent.` sorts before `run.`: make the later scope refuse too, so a rollback is needed.
    await ledger(0).setCap(`agent.${agentId}`, { usd: 5, tokens: 1000 });
    await ledger(0).setCap(`run.${runId}`, { usd: 0.05 });
    const denied2 = await ledger(2).reserve({
      grantId: uid('g'),
      scopes,
      amount: { usd: 0.1 },
      leaseMs: 60_000,
    });
    expect(denied2).toMatchObject({ ok: false, scope: `run.${runId}`, dimension: 'usd' });
    for (const s of scopes) {
      const r = await ledger(0).get(s);
      expect(r.reserved.usd).toBe(0);
      expect(r.reservations).toBe(0);
    }
    // Tokens are input + output.
    await ledger(0).setCap(`run.${runId}`, { usd: 10 });
    const tokens = await ledger(0).reserve({
      grantId: uid('g'),
      scopes,
      amount: { inputTokens: 800, outputTokens: 300 },
      leaseMs: 60_000,
    });
    expect(tokens).toMatchObject({ ok: false, dimension: 'tokens', cap: 1000, wouldBe: 1100 });
  });

  it('charges a reservation nobody settled in full once its lease ends (fail closed)', async () => {
    const runId = uid('leak');
    const scope = `run.${runId}`;
    await ledger(0).setCap(scope, { usd: 1 });
    const leaked = uid('g');
    expect(
      await ledger(0).reserve({
        grantId: leaked,
        scopes: [scope],
        amount: { usd: 1 },
        leaseMs: 300,
      }),
    ).toMatchObject({ ok: true });
    // While held, nothing else fits.
    expect(
      (
        await ledger(1).reserve({
          grantId: uid('g'),
          scopes: [scope],
          amount: { usd: 0.01 },
          leaseMs: 1000,
        })
      ).ok,
    ).toBe(false);

    const reaped: ReapedReservation[] = [];
    await using _reaper = ledger(2).startReaper(50, { onReaped: (r) => reaped.push(...r) });
    await expect
      .poll(async () => (await ledger(1).get(scope)).reserved.usd, {
        timeout: 15_000,
        interval: 50,
      })
      .toBe(0);
    expect(reaped).toContainEqual(expect.objectContaining({ scope, grantId: leaked }));
    // The holder may have made the call and crashed before settling: the budget counts it as
    // spent, so the cap still holds; nothing more fits.
    expect(micros((await ledger(1).get(scope)).committed.usd)).toBe(micros(1));
    expect(
      await ledger(1).reserve({
        grantId: uid('g'),
        scopes: [scope],
        amount: { usd: 0.01 },
        leaseMs: 60_000,
      }),
    ).toMatchObject({ ok: false, dimension: 'usd' });
    // A settle that still comes corrects the charge to what was really spent.
    expect(await ledger(0).settle(leaked, { usd: 0.25 })).toMatchObject({ reaped: true });
    expect(micros((await ledger(1).get(scope)).committed.usd)).toBe(micros(0.25));
    expect(
      await ledger(1).reserve({
        grantId: uid('g'),
        scopes: [scope],
        amount: { usd: 0.75 },
        leaseMs: 60_000,
      }),
    ).toMatchObject({ ok: true });
  });

  it('corrects the full charge of a reaped reservation to a late settle, once', async () => {
    const runId = uid('late');
    const scope = `run.${runId}`;
    await ledger(0).setCap(scope, { usd: 1 });
    const grantId = uid('g');
    await ledger(0).reserve({ grantId, scopes: [scope], amount: { usd: 0.5 }, leaseMs: 1_000 });
    const reaped = await ledger(1).reap(Date.now() + 2_000);
    expect(reaped.map((r) => r.grantId)).toContain(grantId);
    expect((await ledger(0).get(scope)).reserved.usd).toBe(0);
    expect(micros((await ledger(0).get(scope)).committed.usd)).toBe(micros(0.5));
    const s = await ledger(2).settle(grantId, { usd: 0.7 });
    expect(s).toEqual({ settled: true, duplicate: false, reaped: true, overshoot: { usd: 0.2 } });
    expect(await ledger(0).settle(grantId, { usd: 0.7 })).toMatchObject({ duplicate: true });
    expect(micros((await ledger(0).get(scope)).committed.usd)).toBe(micros(0.7));
  });

  it('counts a double settle once, also when both arrive at once on two ledgers', async () => {
    const runId = uid('dbl');
    const scopes = budgetScopes({ runId, agentId: uid('a') });
    const scope = `run.${runId}`;
    await ledger(0).setCap(scope, { usd: 1 });
    const g1 = uid('g');
    await ledger(0).reserve({ grantId: g1, scopes, amount: { usd: 0.3 }, leaseMs: 60_000 });
    expect(await ledger(0).settle(g1, { usd: 0.2 })).toMatchObject({
      settled: true,
      duplicate: false,
    });
    expect(await ledger(1).settle(g1, { usd: 0.2 })).toMatchObject({
      settled: true,
      duplicate: true,
    });

    const g2 = uid('g');
    await ledger(0).reserve({ grantId: g2, scopes, amount: { usd: 0.3 }, leaseMs: 60_000 });
    const both = await Promise.all([
      ledger(1).settle(g2, { usd: 0.1 }),
      ledger(2).settle(g2, { usd: 0.1 }),
    ]);
    expect(both.filter((s) => !s.duplicate)).toHaveLength(1);
    const r = await ledger(0).get(scope);
    expect(micros(r.committed.usd)).toBe(micros(0.3));
    expect(r.reserved.usd).toBe(0);
    expect(await ledger(0).settle(uid('unknown'), { usd: 1 })).toEqual({
      settled: false,
      duplicate: false,
      reaped: false,
    });
  });

  it('counts a settle once when the reserving ledger hears it late, after it fell out of the ring', async () => {
    // Ledger 0 reserves (and remembers the grant); ledger 1 settles it; many later settles
    // push it out of the scope's ring of settled ids. A duplicate settle then reaching ledger 0
    // must not count again from its remembered (stale) copy of the grant.
    const runId = uid('late');
    const scopes = budgetScopes({ runId });
    const scope = `run.${runId}`;
    await ledger(0).setCap(scope, { usd: 1000 });
    const g = uid('g');
    await ledger(0).reserve({ grantId: g, scopes, amount: { usd: 1 }, leaseMs: 60_000 });
    expect(await ledger(1).settle(g, { usd: 1 })).toMatchObject({ duplicate: false });
    for (let i = 0; i < 140; i++) {
      const other = `${g}_${i}`;
      await ledger(1).reserve({ grantId: other, scopes, amount: { usd: 0.01 }, leaseMs: 60_000 });
      await ledger(1).settle(other, { usd: 0.01 });
    }
    expect(await ledger(0).settle(g, { usd: 1 })).toMatchObject({
      settled: true,
      duplicate: true,
    });
    const r = await ledger(2).get(scope);
    expect(micros(r.committed.usd)).toBe(micros(1 + 140 * 0.01));
  });

  it('admits a reservation that fits only after a settle on another ledger (no stale cached refusal)', async () => {
    const runId = uid('stale');
    const scope = `run.${runId}`;
    const scopes = budgetScopes({ runId, global: false });
    const a = ledger(0);
    const b = ledger(1);
    await a.setCap(scope, { usd: 1 });
    const first = uid('g');
    expect(
      await a.reserve({ grantId: first, scopes, amount: { usd: 0.9 }, leaseMs: 60_000 }),
    ).toMatchObject({ ok: true });
    // Another supervisor settles it far below the reservation: $0.90 of room is back.
    expect(await b.settle(first, { usd: 0.1 })).toMatchObject({ settled: true, duplicate: false });
    // Ledger A last saw $0.90 reserved, where $0.50 more would not fit; the scope now holds
    // $0.10 committed, where it does.
    expect(
      await a.reserve({ grantId: uid('g'), scopes, amount: { usd: 0.5 }, leaseMs: 60_000 }),
    ).toMatchObject({ ok: true });
    const report = await b.get(scope);
    expect(micros(report.committed.usd)).toBe(micros(0.1));
    expect(micros(report.reserved.usd)).toBe(micros(0.5));
  });

  it('counts the compare-and-set writes that lost to another writer (stats)', async () => {
    const scope = `tenant.${uid('stats')}`;
    const a = ledger(0);
    const b = ledger(1);
    const a0 = a.stats;
    const b0 = b.stats;
    await a.setCap(scope, { usd: 1 }); // A now holds the scope's doc at this revision
    await b.setCap(scope, { usd: 2 }); // B writes after it: A's copy is stale
    // A writes on its stale copy, loses the compare-and-set once, re-reads and lands.
    expect(
      await a.reserve({
        grantId: uid('g'),
        scopes: [scope],
        amount: { usd: 0.5 },
        leaseMs: 60_000,
      }),
    ).toMatchObject({ ok: true });
    expect(a.stats.casConflicts - a0.casConflicts).toBe(1);
    expect(a.stats.casWrites - a0.casWrites).toBe(2);
    expect(b.stats.casConflicts - b0.casConflicts).toBe(0);
    expect(b.stats.casWrites - b0.casWrites).toBe(1);
  });

  it("queues one process's writes to a scope: 60 concurrent reservations, no compare-and-set lost, exactly the cap admitted", async () => {
    const scope = `tenant.${uid('queue')}`;
    const a = ledger(0);
    await a.setCap(scope, { steps: 40 });
    const before = a.stats;
    const results = await Promise.all(
      Array.from({ length: 60 }, () =>
        a.reserve({ grantId: uid('g'), scopes: [scope], amount: { steps: 1 }, leaseMs: 60_000 }),
      ),
    );
    expect(results.filter((r) => r.ok).length).toBe(40);
    expect(a.stats.casConflicts - before.casConflicts).toBe(0);
    expect((await a.get(scope)).reserved.steps).toBe(40);
  });

  it('treats a retried reserve as a no-op and a reused grant id as a conflict', async () => {
    const scope = `run.${uid('retry')}`;
    await ledger(0).setCap(scope, { usd: 1 });
    const grantId = uid('g');
    const req = { grantId, scopes: [scope], amount: { usd: 0.4 }, leaseMs: 60_000 };
    expect((await ledger(0).reserve(req)).ok).toBe(true);
    expect((await ledger(1).reserve(req)).ok).toBe(true);
    expect(micros((await ledger(0).get(scope)).reserved.usd)).toBe(micros(0.4));
    await expect(ledger(0).reserve({ ...req, amount: { usd: 0.1 } })).rejects.toBeInstanceOf(
      ConflictError,
    );
  });

  it('refuses bad input', async () => {
    const bad = [
      { grantId: 'g bad', scopes: ['global'], amount: {}, leaseMs: 1000 },
      { grantId: 'g1', scopes: ['run.a.b'], amount: {}, leaseMs: 1000 },
      { grantId: 'g1', scopes: ['runs.a'], amount: {}, leaseMs: 1000 },
      { grantId: 'g1', scopes: [], amount: {}, leaseMs: 1000 },
      { grantId: 'g1', scopes: ['global'], amount: { usd: -1 }, leaseMs: 1000 },
      { grantId: 'g1', scopes: ['global'], amount: { usd: Number.NaN }, leaseMs: 1000 },
      { grantId: 'g1', scopes: ['global'], amount: {}, leaseMs: 0 },
      { grantId: 'g1', scopes: ['global'], amount: {}, leaseMs: 1e12 },
    ];
    for (const req of bad)
      await expect(ledger(0).reserve(req)).rejects.toBeInstanceOf(ProtocolError);
    await expect(ledger(0).setCap('run.x', { usd: -5 })).rejects.toBeInstanceOf(ProtocolError);
    await expect(ledger(0).get('nope')).rejects.toBeInstanceOf(ProtocolError);
  });

  it('carves a child budget out of a parent and returns the unspent rest', async () => {
    const parent = `run.${uid('parent')}`;
    const child = `run.${uid('child')}`;
    await ledger(0).setCap(parent, { usd: 1, steps: 10 });
    await expect(ledger(0).carve(parent, child, { usd: 0.5 })).rejects.toBeInstanceOf(
      ProtocolError,
    );
    expect(await ledger(0).carve(parent, child, { usd: 2, steps: 5 })).toMatchObject({
      ok: false,
      scope: parent,
      dimension: 'usd',
    });
    expect((await ledger(0).get(child)).cap).toEqual({});
    expect(await ledger(0).carve(parent, child, { usd: 0.6, steps: 5 })).toMatchObject({
      ok: true,
    });
    expect(await ledger(1).carve(parent, child, { usd: 0.6, steps: 5 })).toMatchObject({
      ok: true,
    }); // retry
    expect(micros((await ledger(0).get(parent)).reserved.usd)).toBe(micros(0.6));
    // The parent cannot spend what the child holds; the child cannot exceed its carve.
    const reserve = (scope: string, usd: number) =>
      ledger(2).reserve({
        grantId: uid('g'),
        scopes: [scope],
        amount: { usd, steps: 1 },
        leaseMs: 60_000,
      });
    expect((await reserve(parent, 0.5)).ok).toBe(false);
    expect(await reserve(child, 0.7)).toMatchObject({ ok: false, scope: child, cap: 0.6 });
    const g = uid('g');
    await ledger(0).reserve({
      grantId: g,
      scopes: [child],
      amount: { usd: 0.2, steps: 1 },
      leaseMs: 60_000,
    });
    await ledger(0).settle(g, { usd: 0.15, steps: 1 });

    const rel = await ledger(1).releaseCarve(parent, child);
    expect(rel.released).toBe(true);
    expect(micros(rel.used.usd)).toBe(micros(0.15));
    expect(micros(rel.returned.usd)).toBe(micros(0.45));
    expect(rel.returned.steps).toBe(4);
    const p = await ledger(0).get(parent);
    expect(micros(p.committed.usd)).toBe(micros(0.15));
    expect(p.reserved.usd).toBe(0);
    expect((await ledger(2).releaseCarve(parent, child)).released).toBe(false);
    expect(micros((await ledger(0).get(parent)).committed.usd)).toBe(micros(0.15));
    expect(await reserve(child, 0.01)).toMatchObject({ ok: false, dimension: 'sealed' });
    expect((await reserve(parent, 0.85)).ok).toBe(true);
  });

  it('never breaks committed + reserved <= cap and matches a model (random sequences)', async () => {
    type Op =
      | { kind: 'reserve'; cents: number; both: boolean; ledger: number }
      | { kind: 'settle'; pick: number; fraction: number; ledger: number };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({
        kind: fc.constant('reserve' as const),
        cents: fc.integer({ min: 0, max: 60 }),
        both: fc.boolean(),
        ledger: fc.nat(2),
      }),
      fc.record({
        kind: fc.constant('settle' as const),
        pick: fc.nat(),
        fraction: fc.double({ min: 0, max: 1, noNaN: true }),
        ledger: fc.nat(2),
      }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 14 }), async (ops) => {
        const run = `run.${uid('p')}`;
        const agent = `agent.${uid('p')}`;
        const caps = { [run]: micros(1), [agent]: micros(0.5) };
        await ledger(0).setCap(run, { usd: 1 });
        await ledger(0).setCap(agent, { usd: 0.5 });
        const model = { [run]: { c: 0, r: 0 }, [agent]: { c: 0, r: 0 } };
        const open: { grantId: string; scopes: string[]; cents: number }[] = [];
        for (const o of ops) {
          if (o.kind === 'reserve') {
            const scopes = o.both ? [agent, run] : [run];
            const grantId = uid('g');
            const fitsModel = scopes.every(
              (s) => model[s]!.c + model[s]!.r + o.cents * 10_000 <= caps[s]! || o.cents === 0,
            );
            const r: ReserveResult = await ledger(o.ledger).reserve({
              grantId,
              scopes,
              amount: { usd: o.cents / 100 },
              leaseMs: 60_000,
            });
            expect(r.ok).toBe(fitsModel);
            if (r.ok) {
              for (const s of scopes) model[s]!.r += o.cents * 10_000;
              open.push({ grantId, scopes, cents: o.cents });
            }
          } else if (open.length > 0) {
            const [g] = open.splice(o.pick % open.length, 1);
            const actual = Math.floor(g!.cents * o.fraction);
            await ledger(o.ledger).settle(g!.grantId, { usd: actual / 100 });
            for (const s of g!.scopes) {
              model[s]!.r -= g!.cents * 10_000;
              model[s]!.c += actual * 10_000;
            }
          }
          for (const s of [run, agent]) {
            const rep = await ledger(o.ledger + 1).get(s);
            const c = micros(rep.committed.usd);
            const r = micros(rep.reserved.usd);
            expect(c + r).toBeLessThanOrEqual(caps[s]!);
            expect({ c, r }).toEqual(model[s]);
          }
        }
      }),
      { numRuns: 25 },
    );
  });
});

describe('BudgetLedger when NATS is down', () => {
  it('fails closed with a retryable UnavailableError', async () => {
    await using nats = await startNatsServer();
    const nc = await connect({ servers: nats.url, noAsyncTraces: true, maxReconnectAttempts: -1 });
    try {
      const ledger = await BudgetLedger.open(nc, { opTimeoutMs: 500 });
      await ledger.setCap('run.down', { usd: 1 });
      await nats.kill();
      const err: unknown = await ledger
        .reserve({ grantId: 'gdown', scopes: ['run.down'], amount: { usd: 0.1 }, leaseMs: 1000 })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as UnavailableError).retryable).toBe(true);
      await expect(ledger.get('run.down')).rejects.toBeInstanceOf(UnavailableError);
      await expect(ledger.settle('gdown', { usd: 0.1 })).rejects.toBeInstanceOf(UnavailableError);
    } finally {
      await nc.close();
    }
  });
});
