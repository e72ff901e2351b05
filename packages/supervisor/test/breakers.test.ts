import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ProtocolError } from '@reins/protocol';
import {
  BreakerState,
  breakerConfig,
  checkDeadline,
  initBreakerState,
  recordAction,
  recordObservation,
  recordSpend,
  type BreakerResult,
} from '../src/index.js';

const T0 = 1_700_000_000_000;

describe('breakers', () => {
  it('step cap allows exactly N steps', () => {
    const config = breakerConfig({ maxSteps: 5, repeat: { k: 100 } });
    let state = initBreakerState(T0);
    for (let i = 1; i <= 5; i++) {
      const r = recordAction(state, { tool: 't', argsHash: `h${i}`, now: T0 + i }, config);
      expect(r.trip).toBeUndefined();
      state = r.state;
    }
    const r = recordAction(state, { tool: 't', argsHash: 'h6', now: T0 + 6 }, config);
    expect(r.trip?.breaker).toBe('steps');
  });

  it.each([2, 3, 5])('repeat breaker trips at exactly K=%i', (k) => {
    const config = breakerConfig({ repeat: { k, windowMs: 60_000 } });
    let state = initBreakerState(T0);
    for (let i = 1; i < k; i++) {
      // Interleave other actions: they must not reset or advance the count.
      const other = recordAction(
        state,
        { tool: 'other', argsHash: `o${i}`, now: T0 + i * 10 },
        config,
      );
      expect(other.trip).toBeUndefined();
      const r = recordAction(
        other.state,
        { tool: 'search', argsHash: 'same', now: T0 + i * 10 + 1 },
        config,
      );
      expect(r.trip).toBeUndefined(); // K-1 repeats are fine
      state = r.state;
    }
    const kth = recordAction(state, { tool: 'search', argsHash: 'same', now: T0 + 1000 }, config);
    expect(kth.trip?.breaker).toBe('repeat');
    // Same tool, other arguments: a different action.
    const diff = recordAction(state, { tool: 'search', argsHash: 'other', now: T0 + 1000 }, config);
    expect(diff.trip).toBeUndefined();
  });

  it('repeat window forgets old repeats', () => {
    const config = breakerConfig({ repeat: { k: 2, windowMs: 1000 } });
    const a = recordAction(initBreakerState(T0), { tool: 't', argsHash: 'h', now: T0 }, config);
    expect(
      recordAction(a.state, { tool: 't', argsHash: 'h', now: T0 + 1001 }, config).trip,
    ).toBeUndefined();
    expect(
      recordAction(a.state, { tool: 't', argsHash: 'h', now: T0 + 999 }, config).trip?.breaker,
    ).toBe('repeat');
  });

  it('no-progress trips after N stale observations and resets on a new one', () => {
    const config = breakerConfig({ noProgress: { steps: 3 } });
    let r: BreakerResult = recordObservation(initBreakerState(T0), { hash: 'a', now: T0 }, config);
    r = recordObservation(r.state, { hash: 'a', now: T0 });
    r = recordObservation(r.state, { hash: 'a', now: T0 }, config);
    expect(r.trip).toBeUndefined();
    const fresh = recordObservation(r.state, { hash: 'b', now: T0 }, config);
    expect(fresh.state.stale).toBe(0);
    expect(recordObservation(r.state, { hash: 'a', now: T0 }, config).trip?.breaker).toBe(
      'no_progress',
    );
  });

  it('velocity trips above the USD per minute threshold, not at it', () => {
    const config = breakerConfig({ velocity: { usdPerMinute: 1, windowMs: 60_000 } });
    // Spend reaching exactly $1.00 within a minute is at, not above, the limit — however it is
    // split (in floats, ten $0.10 sum below $1 and ten $0.07 and one $0.30 above it).
    for (const amounts of [Array<number>(10).fill(0.1), [...Array<number>(10).fill(0.07), 0.3]]) {
      let r: BreakerResult = { state: initBreakerState(T0) };
      for (const [i, usd] of amounts.entries()) {
        r = recordSpend(r.state, { usd, now: T0 + i * 1000 }, config);
        expect(r.trip, `${i}: ${usd}`).toBeUndefined();
      }
      // One micro-dollar more is above it.
      expect(recordSpend(r.state, { usd: 0.000001, now: T0 + 11_000 }, config).trip).toMatchObject({
        breaker: 'velocity',
      });
    }
    // The same spend spread over more than the window does not trip.
    let slow: BreakerResult = { state: initBreakerState(T0) };
    for (let i = 0; i < 30; i++) {
      slow = recordSpend(slow.state, { usd: 0.5, now: T0 + i * 31_000 }, config);
      expect(slow.trip).toBeUndefined();
    }
  });

  it('wall time trips past the deadline and trips stay', () => {
    const config = breakerConfig({ wallMs: 1000 });
    const s = initBreakerState(T0);
    expect(checkDeadline(s, T0 + 1000, config).trip).toBeUndefined();
    const t = checkDeadline(s, T0 + 1001, config);
    expect(t.trip?.breaker).toBe('wall_time');
    const after = recordAction(t.state, { tool: 'x', argsHash: 'y', now: T0 + 2 }, config);
    expect(after.trip?.breaker).toBe('wall_time');
    expect(
      recordAction(s, { tool: 'x', argsHash: 'y', now: T0 + 5000 }, config).trip?.breaker,
    ).toBe('wall_time');
  });

  it('refuses a bad config', () => {
    expect(() => breakerConfig({ maxSteps: 0 })).toThrow(ProtocolError);
    expect(() => breakerConfig({ repeat: { k: -1 } })).toThrow(ProtocolError);
    expect(() => breakerConfig({ bogus: 1 } as never)).toThrow(ProtocolError);
  });

  it('keeps state bounded and JSON round-trippable over long random runs', () => {
    const config = breakerConfig({
      maxSteps: 1_000_000,
      repeat: { k: 1000, windowMs: 10_000 },
      noProgress: { steps: 100_000 },
      velocity: { usdPerMinute: 1e9, windowMs: 60_000 },
      maxObservations: 50,
      maxActionKeys: 20,
    });
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            kind: fc.nat(2),
            key: fc.nat(200),
            dt: fc.nat(5000),
            usd: fc.double({ min: 0, max: 1, noNaN: true }),
          }),
          { maxLength: 400 },
        ),
        (ops) => {
          let state = initBreakerState(T0);
          let now = T0;
          for (const o of ops) {
            now += o.dt;
            const r =
              o.kind === 0
                ? recordAction(state, { tool: 't', argsHash: `h${o.key}`, now }, config)
                : o.kind === 1
                  ? recordObservation(state, { hash: `o${o.key}`, now }, config)
                  : recordSpend(state, { usd: o.usd, now }, config);
            expect(r.trip).toBeUndefined();
            state = r.state;
          }
          expect(Object.keys(state.actions).length).toBeLessThanOrEqual(20);
          expect(state.seen.length).toBeLessThanOrEqual(50);
          expect(state.spend.length).toBeLessThanOrEqual(61);
          expect(BreakerState.parse(JSON.parse(JSON.stringify(state)))).toEqual(state);
        },
      ),
      { numRuns: 100 },
    );
  });
});

describe('breaker state size', () => {
  it('stays small over a long run with the default bounds (it is written at every action)', () => {
    const config = breakerConfig({ maxSteps: 1_000_000, noProgress: { steps: 100_000 } });
    const hex = (i: number) => createHash('sha256').update(String(i)).digest('hex');
    let state = initBreakerState(T0);
    for (let i = 0; i < 5_000; i++) {
      const now = T0 + i * 10;
      let r = recordAction(
        state,
        { tool: 'read_file', argsHash: hex(i), now, idempotencyKey: `run_${hex(7)}.${i}.0` },
        config,
      );
      expect(r.trip).toBeUndefined();
      r = recordObservation(r.state, { hash: hex(i * 7), now }, config);
      expect(r.trip).toBeUndefined();
      state = r.state;
    }
    expect(state.steps).toBe(5_000);
    expect(JSON.stringify(state).length).toBeLessThan(16_000);
    // The most recent actions are the ones remembered: a repeat of the last one is detected.
    let r = recordAction(
      state,
      { tool: 'read_file', argsHash: hex(4_999), now: T0 + 50_000 },
      config,
    );
    r = recordAction(
      r.state,
      { tool: 'read_file', argsHash: hex(4_999), now: T0 + 50_001 },
      config,
    );
    expect(r.trip?.breaker).toBe('repeat');
  });
});

describe('repeat breaker and retries', () => {
  it('a retry of the same action (same idempotency key) counts once', () => {
    const config = breakerConfig({ repeat: { k: 2, windowMs: 60_000 } });
    let state = initBreakerState(0);
    for (let i = 0; i < 5; i++) {
      const r = recordAction(
        state,
        { tool: 'echo', argsHash: 'h', now: i, idempotencyKey: 'run.1.0' },
        config,
      );
      expect(r.trip).toBeUndefined();
      state = r.state;
    }
    expect(state.steps).toBe(1);
    // A new action with the same arguments is a repeat.
    expect(
      recordAction(
        state,
        { tool: 'echo', argsHash: 'h', now: 9, idempotencyKey: 'run.2.0' },
        config,
      ).trip?.breaker,
    ).toBe('repeat');
  });
});
