import { describe, expect, it } from 'vitest';
import { uid, useLedgers } from './ledger-fixture.js';
import { budgetScopes, type ReapedReservation, type Reaper } from '../src/index.js';

/** Resolves with `p`, or rejects when it has not settled after `ms` (a hang guard, not a timing check). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, guard]);
  } finally {
    clearTimeout(timer);
  }
}

// Regression: several reapers on one bucket used to stall each other and the reservers (a pass
// listed keys with a live consumer and CAS-retried contended scopes for seconds), so a leaked
// reservation was not returned in time and `stop()` hung on the running pass.
describe('BudgetLedger reapers sharing a bucket', () => {
  const { ledger, ledgers } = useLedgers(3);

  it('return a leaked reservation under load, never reap twice, and stop promptly', async () => {
    const reaped: ReapedReservation[] = [];
    const errors: unknown[] = [];
    const reapers: Reaper[] = ledgers.map((l) =>
      l.startReaper(20, {
        onReaped: (r) => reaped.push(...r),
        onError: (err) => errors.push(err),
      }),
    );
    let reapersStopped = false;
    const stopReapers = async () => {
      if (reapersStopped) return;
      reapersStopped = true;
      await within(Promise.all(reapers.map((r) => r.stop())), 20_000, 'stopping the reapers');
    };
    try {
      // A reservation race on one capped scope (heavy CAS contention on `run.*` and `global`)…
      const raceRun = uid('race');
      await ledger(0).setCap(`run.${raceRun}`, { usd: 1 });
      const race = await Promise.all(
        Array.from({ length: 200 }, (_, i) =>
          ledger(i).reserve({
            grantId: uid('r'),
            scopes: budgetScopes({ runId: raceRun }),
            amount: { usd: 0.1 },
            leaseMs: 200,
          }),
        ),
      );
      expect(race.filter((r) => r.ok).length).toBeGreaterThanOrEqual(10);
      // …then a burst over many scopes (all share `global`); short leases, half never settled.
      const runs = Array.from({ length: 30 }, () => uid('burst'));
      const burst = await Promise.all(
        Array.from({ length: 300 }, async (_, i) => {
          const grantId = uid('g');
          const scopes = budgetScopes({ runId: runs[i % runs.length]!, agentId: `a${i % 7}` });
          const r = await ledger(i).reserve({
            grantId,
            scopes,
            amount: { usd: 0.01, steps: 1 },
            leaseMs: 200,
          });
          expect(r.ok).toBe(true);
          if (i % 2 === 0) await ledger(i + 1).settle(grantId, { usd: 0.01, steps: 1 });
          return grantId;
        }),
      );

      // Keep writing while the leaked reservation waits for its lease to end.
      let loading = true;
      const load = (async () => {
        for (let n = 0; loading; n++) {
          await Promise.all(
            Array.from({ length: 20 }, async (_, i) => {
              const grantId = uid('l');
              const scopes = budgetScopes({ runId: runs[(n + i) % runs.length]! });
              await ledger(n + i).reserve({ grantId, scopes, amount: { usd: 0.01 }, leaseMs: 100 });
              if (i % 2 === 0) await ledger(n + i + 2).settle(grantId, { usd: 0.01 });
            }),
          );
        }
      })();

      const scope = `run.${uid('leak')}`;
      await ledger(0).setCap(scope, { usd: 1 });
      const leaked = uid('g');
      expect(
        await ledger(1).reserve({
          grantId: leaked,
          scopes: [scope, 'global'],
          amount: { usd: 1 },
          leaseMs: 300,
        }),
      ).toMatchObject({ ok: true });
      try {
        await expect
          .poll(async () => (await ledger(2).get(scope)).reserved.usd, {
            timeout: 15_000,
            interval: 50,
          })
          .toBe(0);
      } finally {
        loading = false;
        await load;
      }
      expect(reaped).toContainEqual(expect.objectContaining({ scope, grantId: leaked }));

      // Everything unsettled is returned in the end, and each reservation exactly once.
      await expect
        .poll(async () => (await ledger(0).get('global')).reservations, {
          timeout: 15_000,
          interval: 50,
        })
        .toBe(0);
      await stopReapers();
      const seen = reaped.map((r) => `${r.scope} ${r.grantId}`);
      expect(new Set(seen).size).toBe(seen.length);
      for (const [i, grantId] of burst.entries()) {
        const hits = reaped.filter((r) => r.grantId === grantId && r.scope === 'global');
        // A settled grant may still have been reaped first (its settle came after the lease).
        if (i % 2 === 1) expect(hits).toHaveLength(1);
      }
      expect(errors).toEqual([]);
    } finally {
      await stopReapers();
    }
  });

  it('stop() ends a reaper whose pass is running', async () => {
    const reapers = ledgers.map((l) => l.startReaper(1));
    // A burst in flight keeps the passes busy.
    const busy = Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        ledger(i).reserve({
          grantId: uid('s'),
          scopes: budgetScopes({ runId: uid('stop') }),
          amount: { usd: 0.01 },
          leaseMs: 50,
        }),
      ),
    );
    await within(Promise.all(reapers.map((r) => r.stop())), 20_000, 'stopping the reapers');
    await busy;
  });
});
