import {
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  APIUserAbortError,
  OpenAIError,
} from 'openai';
import { ReinsError } from '@reins/protocol';
import {
  AbortedError,
  ModelError,
  RateLimitedError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
} from '@reins/protocol';

/** Milliseconds a `retry-after-ms` / `retry-after` (seconds or HTTP date) header asks for. */
export function retryAfterMs(headers: Headers | undefined, now = Date.now()): number | undefined {
  const ms = headers?.get('retry-after-ms');
  if (ms != null && ms.trim() !== '' && Number.isFinite(Number(ms))) return Math.max(0, Number(ms));
  const after = headers?.get('retry-after');
  if (after == null || after.trim() === '') return undefined;
  const seconds = Number(after);
  if (Number.isFinite(seconds)) return Math.max(0, Math.round(seconds * 1000));
  const date = Date.parse(after);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

type HttpError = APIError<number | undefined, Headers | undefined>;

function fromStatus(err: HttpError, model: string): ReinsError {
  const status = err.status ?? 0;
  const details: Record<string, unknown> = { model, status };
  if (err.code != null) details['providerCode'] = err.code;
  if (err.requestID != null) details['requestId'] = err.requestID;
  if (status === 429) {
    const after = retryAfterMs(err.headers);
    if (after !== undefined) details['retryAfterMs'] = after;
    return new RateLimitedError(`model ${model} rate-limited: ${err.message}`, {
      cause: err,
      details,
    });
  }
  if (status === 401 || status === 403) {
    return new UnauthenticatedError(
      `model provider refused the credentials for ${model} (${status}): ${err.message}; check OPENAI_API_KEY / apiKey`,
      { cause: err, details },
    );
  }
  if (status === 408 || status === 409 || status >= 500) {
    return new ModelError(`model provider failed for ${model} (${status}): ${err.message}`, {
      cause: err,
      details,
      retryable: true,
    });
  }
  if (
    status === 400 &&
    (err.code === 'context_length_exceeded' || /context length|maximum context/i.test(err.message))
  ) {
    details['reason'] = 'context_length_exceeded';
    return new ModelError(`request too long for ${model}'s context window: ${err.message}`, {
      cause: err,
      details,
    });
  }
  return new ModelError(
    `model provider rejected the request for ${model} (${status}): ${err.message}`,
    { cause: err, details },
  );
}

/**
 * Turns whatever the OpenAI SDK threw into a coded Reins error: 429 → `RateLimitedError`
 * (retryable, `details.retryAfterMs`), 401/403 → `UnauthenticatedError`, 5xx → `ModelError`
 * (retryable), connection failures → `UnavailableError`, timeouts → `TimeoutError`, aborts →
 * `AbortedError`, other 4xx (incl. context length) → `ModelError` (not retryable), malformed JSON
 * → `ModelError` (retryable: a garbled body is usually a proxy hiccup).
 */
export function mapOpenAIError(err: unknown, model: string, signal?: AbortSignal): ReinsError {
  if (err instanceof ReinsError) return err;
  const details = { model };
  if (err instanceof APIUserAbortError || signal?.aborted === true) {
    return new AbortedError(`model call to ${model} aborted`, { cause: err, details });
  }
  if (err instanceof APIConnectionTimeoutError) {
    return new TimeoutError(`model call to ${model} timed out`, { cause: err, details });
  }
  if (err instanceof APIConnectionError) {
    return new UnavailableError(`cannot reach the model endpoint for ${model}: ${err.message}`, {
      cause: err,
      details,
    });
  }
  if (err instanceof APIError) return fromStatus(err as HttpError, model);
  if (err instanceof SyntaxError) {
    return new ModelError(`model provider returned malformed JSON for ${model}: ${err.message}`, {
      cause: err,
      details: { ...details, reason: 'malformed_response' },
      retryable: true,
    });
  }
  if (err instanceof OpenAIError) {
    return new ModelError(`OpenAI client error for ${model}: ${err.message}`, {
      cause: err,
      details,
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new ModelError(`model call to ${model} failed: ${message}`, { cause: err, details });
}
