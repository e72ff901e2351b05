import { afterEach, describe, expect, it, vi } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { pino } from 'pino';
import { createGrantSigner } from '@reins/protocol';
import { Runtime } from '@reins/runtime';
import { startNatsServer } from '@reins/testing';
import { BudgetLedger, startSupervisor } from '../src/index.js';

const SKEW = 10_000;
/** How far a server-clock reading may be from the real time (loopback: milliseconds). */
const TOLERANCE = 1_000;
const { signer } = createGrantSigner();

// K8: a reservation's lease used to end at the holder's clock + lease, so a supervisor whose
// clock was slow wrote leases other supervisors' reapers returned while the grant was live.
describe('supervisor clock', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('a supervisor on a machine 10 s slow writes ledger leases by the server clock, and warns', async () => {
    await using nats = await startNatsServer();
    const realNow = Date.now.bind(Date);
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    // This whole process (supervisor, NATS client, logger) now runs on a clock 10 s slow.
    vi.spyOn(Date, 'now').mockImplementation(() => realNow() - SKEW);
    await using rt = await Runtime.connect({ servers: nats.url, logger, heartbeatMs: 500 });
    await using sv = await startSupervisor(rt, {
      agentId: 'sv-slow',
      signer,
      policy: { rules: [] },
    });

    const lease = 5_000;
    const before = realNow();
    const r = await sv.ledger.reserve({
      grantId: 'g-slow-host',
      scopes: ['run.clock'],
      amount: { steps: 1 },
      leaseMs: lease,
    });
    const after = realNow();
    if (!r.ok || r.expiresAt === null) throw new Error(`refused: ${JSON.stringify(r)}`);
    // By the real (server) clock the lease ends `lease` from now, not 5 s ago.
    expect(r.expiresAt).toBeGreaterThanOrEqual(before + lease - TOLERANCE);
    expect(r.expiresAt).toBeLessThanOrEqual(after + lease + TOLERANCE);

    // Another supervisor's reaper, on a correct clock, does not return it now.
    const nc = await connect({ servers: nats.url });
    try {
      const other = await BudgetLedger.open(nc, { now: realNow });
      expect(await other.reap()).toEqual([]);
      expect((await other.get('run.clock')).reservations).toBe(1);
    } finally {
      await nc.close();
    }

    // The operator is told, with the measured offset.
    const warnings = lines.map((l) => JSON.parse(l) as { msg?: string; offsetMs?: number });
    const warning = warnings.find((w) => w.msg?.includes("this machine's clock is off"));
    expect(warning?.offsetMs).toBeGreaterThan(SKEW - TOLERANCE);
    expect(warning?.offsetMs).toBeLessThan(SKEW + TOLERANCE);
  });
});
