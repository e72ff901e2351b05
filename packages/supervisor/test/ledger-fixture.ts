import { afterAll, beforeAll } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { BudgetLedger } from '../src/index.js';

let seq = 0;
/** A unique id with `prefix` (runs, grants) for tests sharing one server. */
export const uid = (prefix: string) => `${prefix}${Date.now().toString(36)}${(seq++).toString(36)}`;

/** What `useLedgers` gives a suite once its `beforeAll` ran. */
export interface LedgerFixture {
  readonly nats: NatsServer;
  /** Ledger `i` (modulo the count), each on its own connection, all on the same buckets. */
  ledger(i: number): BudgetLedger;
  readonly ledgers: readonly BudgetLedger[];
}

/**
 * A nats-server and `count` ledgers on their own connections (as several supervisors would have),
 * started before the suite's tests and stopped after them. Generous CAS bounds: contention waits
 * rather than fails.
 */
export function useLedgers(count = 3): LedgerFixture {
  const conns: NatsConnection[] = [];
  const ledgers: BudgetLedger[] = [];
  let nats: NatsServer | undefined;
  beforeAll(async () => {
    nats = await startNatsServer();
    for (let i = 0; i < count; i++) {
      const nc = await connect({ servers: nats.url, noAsyncTraces: true });
      conns.push(nc);
      ledgers.push(await BudgetLedger.open(nc, { maxAttempts: 10_000, casDeadlineMs: 50_000 }));
    }
  });
  afterAll(async () => {
    for (const nc of conns) await nc.close();
    await nats?.stop();
  });
  return {
    get nats() {
      if (!nats) throw new Error('useLedgers: the suite has not started');
      return nats;
    },
    ledger: (i) => {
      const l = ledgers[i % ledgers.length];
      if (!l) throw new Error('useLedgers: the suite has not started');
      return l;
    },
    ledgers,
  };
}
