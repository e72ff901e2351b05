import { describe, expect, it } from 'vitest';
import { JetStreamApiError } from '@nats-io/jetstream';
import { TimeoutError as NatsTimeoutError } from '@nats-io/transport-node';
import { ConflictError, ReinsError, isErrorCode } from '@reins/protocol';
import { mapTransportError, retryTransport } from '@reins/runtime';

// What nats-server answers while a JetStream cluster elects leaders after losing a node.
const unavailable503 = () =>
  new JetStreamApiError({
    code: 503,
    err_code: 10008,
    description: 'JetStream system temporarily unavailable',
  });

describe('mapTransportError', () => {
  it('codes JetStream "temporarily unavailable" (503) as retryable UNAVAILABLE', () => {
    const err = mapTransportError(unavailable503(), '$JS.API.CONSUMER.CREATE.S');
    expect(err).toMatchObject({ code: 'UNAVAILABLE', retryable: true });
    expect(err.cause).toBeInstanceOf(JetStreamApiError);
  });

  it('codes other JetStream API errors as INTERNAL, not retryable', () => {
    const notFound = new JetStreamApiError({
      code: 404,
      err_code: 10059,
      description: 'stream not found',
    });
    expect(mapTransportError(notFound, 'x')).toMatchObject({ code: 'INTERNAL', retryable: false });
  });
});

describe('retryTransport', () => {
  it('retries NATS timeouts until the call succeeds, reporting each coded failure', async () => {
    let calls = 0;
    const retried: string[] = [];
    const result = await retryTransport(
      'consumer create',
      () => {
        calls++;
        if (calls === 1) return Promise.reject(new NatsTimeoutError());
        if (calls === 2) return Promise.reject(unavailable503());
        return Promise.resolve('opened');
      },
      { timeoutMs: 60_000, onRetry: (err) => retried.push(err.code) },
    );
    expect(result).toBe('opened');
    expect(calls).toBe(3);
    expect(retried).toEqual(['TIMEOUT', 'UNAVAILABLE']);
  });

  it('gives up at the deadline with a retryable coded error, never the raw NATS error', async () => {
    let calls = 0;
    const failure = retryTransport(
      'consumer create',
      () => {
        calls++;
        return Promise.reject(new NatsTimeoutError());
      },
      { timeoutMs: 0 },
    );
    await expect(failure).rejects.toBeInstanceOf(ReinsError);
    await expect(failure).rejects.toMatchObject({ code: 'TIMEOUT', retryable: true });
    expect(calls).toBe(1);
  });

  it('throws a failure that is not transient at once', async () => {
    let calls = 0;
    const bug = retryTransport(
      'listing',
      () => {
        calls++;
        return Promise.reject(new TypeError('bad'));
      },
      { timeoutMs: 60_000 },
    );
    await expect(bug).rejects.toMatchObject({ code: 'INTERNAL', retryable: false });
    expect(calls).toBe(1);
  });

  it('retries a retryable Reins error and passes it through unchanged at the deadline', async () => {
    const conflict = new ConflictError('busy');
    await expect(
      retryTransport('write', () => Promise.reject(conflict), { timeoutMs: 0 }),
    ).rejects.toBe(conflict);
  });

  it('stops retrying when its signal aborts', async () => {
    const controller = new AbortController();
    let calls = 0;
    const attempt = retryTransport(
      'consumer create',
      () => {
        calls++;
        // The second failure aborts: no third attempt is made.
        if (calls === 2) controller.abort(new Error('caller gave up'));
        return Promise.reject(new NatsTimeoutError());
      },
      { timeoutMs: 600_000, signal: controller.signal },
    );
    const err: unknown = await attempt.catch((e: unknown) => e);
    expect(isErrorCode(err, 'ABORTED')).toBe(true);
    expect(calls).toBe(2);
  });
});
