import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { ProtocolError, UnavailableError } from '@reins/protocol';
import { ServerClock, openBucket } from '@reins/runtime';
import { startNatsServer, type NatsServer } from '@reins/testing';

// The test server runs on this machine, so its clock is `Date.now()`: a clock read through a
// local clock skewed by 10 s must land within 1 s of it (a loopback round trip is milliseconds).
const SKEW = 10_000;
const TOLERANCE = 1_000;

describe('ServerClock', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let kv: KV;

  beforeAll(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    kv = await openBucket(nc, 'clock_test', { replicas: 1 });
  });

  afterAll(async () => {
    await nc.close();
    await nats.stop();
  });

  const off = (clock: ServerClock) => Math.abs(clock.now() - Date.now());

  it('reads the server time through a local clock 10 s slow or 10 s fast', async () => {
    for (const skew of [-SKEW, SKEW]) {
      await using clock = await ServerClock.start(kv, {
        localNow: () => Date.now() + skew,
        refreshMs: 0,
      });
      expect(off(clock)).toBeLessThan(TOLERANCE);
      expect(Math.abs(clock.offsetMs + skew)).toBeLessThan(TOLERANCE);
      expect(clock.roundTripMs).toBeGreaterThanOrEqual(0);
      expect(Number.isInteger(clock.now())).toBe(true);
    }
  });

  it('two processes whose clocks disagree by 20 s agree on the time (sharing the probe key)', async () => {
    const [slow, fast] = await Promise.all([
      ServerClock.start(kv, { localNow: () => Date.now() - SKEW, samples: 20 }),
      ServerClock.start(kv, { localNow: () => Date.now() + SKEW, samples: 20 }),
    ]);
    try {
      expect(Math.abs(slow.now() - fast.now())).toBeLessThan(TOLERANCE);
      expect(off(slow)).toBeLessThan(TOLERANCE);
    } finally {
      await slow.stop();
      await fast.stop();
    }
  });

  it('measures again at once when the local clock jumps (an NTP step)', async () => {
    let skew = 0;
    await using clock = await ServerClock.start(kv, {
      localNow: () => Date.now() + skew,
      refreshMs: 0, // only the jump can start a new measurement
    });
    expect(off(clock)).toBeLessThan(TOLERANCE);
    skew = -SKEW;
    // The reading that sees the step still carries the old offset; it starts a measurement.
    await expect.poll(() => off(clock), { timeout: 10_000 }).toBeLessThan(TOLERANCE);
    expect(Math.abs(clock.offsetMs - SKEW)).toBeLessThan(TOLERANCE);
  });

  it('measures again in the background', async () => {
    let skew = 0;
    const errors: unknown[] = [];
    await using clock = await ServerClock.start(kv, {
      localNow: () => Date.now() + skew,
      refreshMs: 50,
      jumpMs: Infinity, // only the background measurement can catch up
      onError: (err) => errors.push(err),
    });
    skew = SKEW;
    await expect.poll(() => off(clock), { timeout: 10_000 }).toBeLessThan(TOLERANCE);
    expect(Math.abs(clock.offsetMs + SKEW)).toBeLessThan(TOLERANCE);
    expect(errors).toEqual([]);
  });

  it('keeps the last offset and reports the error when a background measurement fails', async () => {
    const gone = await openBucket(nc, 'clock_gone', { replicas: 1 });
    const errors: unknown[] = [];
    await using clock = await ServerClock.start(gone, {
      localNow: () => Date.now() - SKEW,
      refreshMs: 50,
      onError: (err) => errors.push(err),
    });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete('KV_clock_gone');
    await expect.poll(() => errors.length, { timeout: 10_000 }).toBeGreaterThan(0);
    expect(errors[0]).toBeInstanceOf(UnavailableError);
    expect(off(clock)).toBeLessThan(TOLERANCE);
    expect(Math.abs(clock.offsetMs - SKEW)).toBeLessThan(TOLERANCE);
  });

  it('fails closed: start rejects when the server clock cannot be read', async () => {
    // Bound to a bucket that does not exist: every probe write is refused.
    const missing = await new Kvm(nc).open('clock_missing');
    const err: unknown = await ServerClock.start(missing).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err).toMatchObject({ code: 'UNAVAILABLE', retryable: true });
  });

  it('start rejects with the reason of an aborted signal', async () => {
    const reason = new Error('shutting down');
    await expect(ServerClock.start(kv, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
  });

  it('refuses bad options', async () => {
    const bad = [
      { samples: 0 },
      { samples: 1.5 },
      { maxFailures: 0 },
      { refreshMs: 5 },
      { refreshMs: -1 },
      { refreshMs: Number.NaN },
      { refreshMs: 1e12 },
      { jumpMs: 0 },
      { key: '.clock' },
      { key: 'clock.' },
      { key: 'a b' },
      { key: 'x'.repeat(10) + '*' },
      { key: '' },
    ];
    for (const options of bad) {
      await expect(ServerClock.start(kv, options), JSON.stringify(options)).rejects.toBeInstanceOf(
        ProtocolError,
      );
    }
  });
});
