import {
  NoRespondersError,
  TimeoutError as NatsTimeoutError,
  ClosedConnectionError,
  DrainingConnectionError,
  PermissionViolationError,
} from '@nats-io/transport-node';
import { JetStreamApiError } from '@nats-io/jetstream';
import {
  ReinsError,
  TimeoutError,
  UnavailableError,
  UnauthenticatedError,
  InternalError,
} from '@reins/protocol';

function chain(err: unknown): unknown[] {
  const out: unknown[] = [];
  let cur: unknown = err;
  for (let i = 0; i < 5 && cur !== undefined && cur !== null; i++) {
    out.push(cur);
    cur = cur instanceof Error ? cur.cause : undefined;
  }
  return out;
}

/**
 * Maps a NATS transport failure to a coded Reins error: no responders, closed connections and
 * JetStream API errors with status 503 ("JetStream system temporarily unavailable", while a
 * cluster elects leaders) are `UNAVAILABLE` (retryable), timeouts `TIMEOUT` (retryable),
 * permission violations `UNAUTHENTICATED`; anything else `INTERNAL`. Reins errors pass through
 * unchanged.
 */
export function mapTransportError(err: unknown, subject: string): ReinsError {
  if (err instanceof ReinsError) return err;
  const all = chain(err);
  if (all.some((e) => e instanceof NoRespondersError)) {
    return new UnavailableError(`no responders on ${subject}`, {
      cause: err,
      details: { subject, noResponders: true },
    });
  }
  if (all.some((e) => e instanceof NatsTimeoutError)) {
    return new TimeoutError(`request on ${subject} timed out`, {
      cause: err,
      details: { subject },
    });
  }
  if (all.some((e) => e instanceof JetStreamApiError && e.status === 503)) {
    return new UnavailableError(`JetStream is temporarily unavailable (${subject})`, {
      cause: err,
      details: { subject },
    });
  }
  if (all.some((e) => e instanceof ClosedConnectionError || e instanceof DrainingConnectionError)) {
    return new UnavailableError('NATS connection is closed', { cause: err, details: { subject } });
  }
  if (all.some((e) => e instanceof PermissionViolationError)) {
    return new UnauthenticatedError(`permission denied on ${subject}`, {
      cause: err,
      details: { subject },
    });
  }
  return new InternalError(`request on ${subject} failed`, { cause: err, details: { subject } });
}
