import { z } from 'zod';
import { PolicyDeniedError, ProtocolError, UnavailableError } from '@reins/protocol';
import { defineTool } from './tool.js';
import type { Tool } from './tool.js';

/** Options of `createHttpFetchTool`. */
export interface HttpFetchToolOptions {
  /**
   * Hosts that may be fetched: `example.com` (any port), `example.com:8443` (that port only) or
   * `*.example.com` (its subdomains). Anything else is refused before any connection.
   */
  allowHosts: readonly string[];
  /** Largest body read, in bytes; longer bodies are cut and flagged `truncated` (default 1 MiB). */
  maxBytes?: number;
  /** Redirects followed, each checked against the allowlist (default 5). */
  maxRedirects?: number;
  /** Tool timeout in ms (default 30 s). */
  timeoutMs?: number;
  /** A custom fetch (tests, proxies). */
  fetch?: typeof fetch;
}

const Input = z.object({
  url: z.string().min(1).max(4096).describe('absolute http(s) URL on an allowed host'),
  method: z.enum(['GET', 'HEAD']).default('GET'),
});
const Output = z.object({
  url: z.string(),
  status: z.number().int(),
  contentType: z.string().nullable(),
  body: z.string(),
  bytes: z.number().int().nonnegative(),
  truncated: z.boolean(),
});

function hostAllowed(url: URL, allow: readonly string[]): boolean {
  const host = url.hostname.toLowerCase().replace(/^\[|\]$/g, '');
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  return allow.some((raw) => {
    const entry = raw.trim().toLowerCase();
    const m = /^(\*\.)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(entry);
    if (!m?.[2]) return false;
    const name = m[2].replace(/^\[|\]$/g, '');
    if (m[3] !== undefined && m[3] !== port) return false;
    return m[1] !== undefined ? host.endsWith(`.${name}`) : host === name;
  });
}

async function readCapped(
  body: ReadableStream<Uint8Array> | null,
  maxBytes: number,
): Promise<{ data: Buffer; truncated: boolean }> {
  if (body === null) return { data: Buffer.alloc(0), truncated: false };
  const reader = body.getReader();
  const chunks: Buffer[] = [];
  let size = 0;
  let truncated = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const room = maxBytes - size;
      if (value.byteLength > room) {
        chunks.push(Buffer.from(value.subarray(0, room)));
        size += room;
        truncated = true;
        break;
      }
      chunks.push(Buffer.from(value));
      size += value.byteLength;
    }
  } finally {
    if (truncated) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
  return { data: Buffer.concat(chunks, size), truncated };
}

/**
 * `http_fetch`: GET/HEAD a URL on an allowlisted host and return the text body (size-capped).
 * A URL that is not http(s), carries credentials, or names a host off the list is refused with
 * `PolicyDeniedError` before any connection; every redirect is checked the same way. Network
 * failures are `UnavailableError`. The allowlist matches names, not resolved addresses.
 */
export function createHttpFetchTool(
  options: HttpFetchToolOptions,
): Tool<typeof Input, typeof Output> {
  const allow = [...options.allowHosts];
  const maxBytes = options.maxBytes ?? 1_048_576;
  const maxRedirects = options.maxRedirects ?? 5;
  const doFetch = options.fetch ?? fetch;

  const check = (raw: string): URL => {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new ProtocolError(`not an absolute URL: ${JSON.stringify(raw.slice(0, 200))}`);
    }
    const shown = `${url.protocol}//${url.host}`;
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new PolicyDeniedError(`http_fetch refused ${shown}: only http and https are allowed`, {
        details: { rule: 'http-allowlist', url: shown },
      });
    }
    if (url.username !== '' || url.password !== '') {
      throw new PolicyDeniedError(
        `http_fetch refused ${shown}: URLs with credentials are not allowed`,
        {
          details: { rule: 'http-allowlist', url: shown },
        },
      );
    }
    if (!hostAllowed(url, allow)) {
      throw new PolicyDeniedError(
        `http_fetch refused host ${JSON.stringify(url.host)}: not on the allowlist (${allow.join(', ') || 'empty'})`,
        { details: { rule: 'http-allowlist', host: url.host } },
      );
    }
    return url;
  };

  return defineTool({
    name: 'http_fetch',
    description: `Fetch a URL with GET or HEAD and return its text body. Allowed hosts: ${allow.join(', ') || '(none)'}.`,
    input: Input,
    output: Output,
    effect: 'external',
    idempotent: true,
    timeoutMs: options.timeoutMs ?? 30_000,
    async run({ url: raw, method }, { signal, idempotencyKey }) {
      let url = check(raw);
      for (let hop = 0; ; hop += 1) {
        let response: Response;
        try {
          response = await doFetch(url, {
            method,
            signal,
            redirect: 'manual',
            headers: {
              'idempotency-key': idempotencyKey,
              accept: 'text/*, application/json;q=0.9, */*;q=0.5',
            },
          });
        } catch (err) {
          signal.throwIfAborted();
          throw new UnavailableError(
            `http_fetch cannot reach ${url.host}: ${(err as Error).message}`,
            {
              cause: err,
              details: { host: url.host },
            },
          );
        }
        const location = response.headers.get('location');
        if (response.status >= 300 && response.status < 400 && location !== null) {
          await response.body?.cancel().catch(() => undefined);
          if (hop >= maxRedirects) {
            throw new UnavailableError(`http_fetch gave up after ${maxRedirects} redirects`, {
              retryable: false,
            });
          }
          url = check(new URL(location, url).toString());
          continue;
        }
        const { data, truncated } = await readCapped(response.body, maxBytes);
        return {
          url: url.toString(),
          status: response.status,
          contentType: response.headers.get('content-type'),
          body: data.toString('utf8'),
          bytes: data.length,
          truncated,
        };
      }
    },
  });
}
