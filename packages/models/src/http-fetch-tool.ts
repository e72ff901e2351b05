import type { LookupAddress } from 'node:dns';
import { lookup as dnsLookup } from 'node:dns/promises';
import { request as httpRequest } from 'node:http';
import type { IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import type { LookupFunction } from 'node:net';
import { pipeline } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { z } from 'zod';
import { PolicyDeniedError, ProtocolError, UnavailableError } from '@reins/protocol';
import { createAddressPolicy } from './address-policy.js';
import { defineTool } from './tool.js';
import type { Tool } from './tool.js';

/** How `http_fetch` turns a host name into addresses: all of them, like `dns.lookup` with `all`. */
export type HttpFetchLookup = (hostname: string) => Promise<readonly LookupAddress[]>;

/** Options of `createHttpFetchTool`. */
export interface HttpFetchToolOptions {
  /**
   * Hosts that may be fetched: `example.com` (any port), `example.com:8443` (that port only) or
   * `*.example.com` (its subdomains). Anything else is refused before any connection.
   */
  allowHosts: readonly string[];
  /**
   * Allow destinations that resolve to loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7)
   * or CGNAT (100.64/10) addresses (default false: only public addresses are reached).
   * Link-local (169.254.169.254 cloud metadata), multicast and reserved addresses stay refused.
   */
  allowPrivateNetworks?: boolean;
  /**
   * IP addresses or CIDR blocks a destination may resolve to whatever their range, e.g.
   * `127.0.0.1`, `10.1.0.0/16`, `::1`. Matches IPv4-mapped IPv6 forms of IPv4 entries.
   */
  allowAddresses?: readonly string[];
  /**
   * Resolves a host name to its addresses (default `dns.lookup` with `all: true`). Called once per
   * request and per redirect; the connection goes only to the addresses it returned and that
   * passed the checks, so a second, different answer (DNS rebinding) is never used.
   */
  lookup?: HttpFetchLookup;
  /** Largest body read, in bytes; longer bodies are cut and flagged `truncated` (default 1 MiB). */
  maxBytes?: number;
  /** Redirects followed, each checked against the allowlist and the address rules (default 5). */
  maxRedirects?: number;
  /** Tool timeout in ms (default 30 s). */
  timeoutMs?: number;
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
  body: AsyncIterable<Buffer>,
  maxBytes: number,
): Promise<{ data: Buffer; truncated: boolean }> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    const room = maxBytes - size;
    if (chunk.byteLength > room) {
      chunks.push(chunk.subarray(0, room));
      size += room;
      return { data: Buffer.concat(chunks, size), truncated: true };
    }
    chunks.push(chunk);
    size += chunk.byteLength;
  }
  return { data: Buffer.concat(chunks, size), truncated: false };
}

/** The body as sent, decoded when the server compressed it although asked for `identity`. */
function decodedBody(response: IncomingMessage): AsyncIterable<Buffer> {
  const encoding = (response.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
  const decoder =
    encoding === 'gzip' || encoding === 'x-gzip'
      ? createGunzip()
      : encoding === 'deflate'
        ? createInflate()
        : encoding === 'br'
          ? createBrotliDecompress()
          : undefined;
  if (decoder === undefined) return response;
  // An error on either side destroys both, which ends the reader's loop with that error.
  pipeline(response, decoder, () => undefined);
  return decoder;
}

/** A `lookup` for the socket that answers only with the addresses already checked. */
function pinnedLookup(hostname: string, addresses: readonly LookupAddress[]): LookupFunction {
  return (name, options, callback) => {
    const family = options.family === 'IPv4' ? 4 : options.family === 'IPv6' ? 6 : options.family;
    const usable = addresses.filter((a) => !family || a.family === family);
    const first = usable[0];
    if (name !== hostname || first === undefined) {
      const err: NodeJS.ErrnoException = new Error(`no checked address for ${name}`);
      err.code = 'ENOTFOUND';
      callback(err, '', 0);
    } else if (options.all === true) {
      callback(null, usable);
    } else {
      callback(null, first.address, first.family);
    }
  };
}

function send(
  url: URL,
  hostname: string,
  addresses: readonly LookupAddress[],
  method: string,
  headers: Record<string, string>,
  signal: AbortSignal,
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const request = (url.protocol === 'https:' ? httpsRequest : httpRequest)({
      protocol: url.protocol,
      host: hostname,
      ...(url.port ? { port: Number(url.port) } : {}),
      path: `${url.pathname}${url.search}`,
      method,
      headers: { ...headers, host: url.host },
      lookup: pinnedLookup(hostname, addresses),
      // No pooled socket: one kept alive for another check's address must never be reused.
      agent: false,
      signal,
    });
    request.once('response', resolve);
    request.once('error', reject);
    request.end();
  });
}

function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted();
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => {
      signal.removeEventListener('abort', onAbort);
    });
  });
}

function errno(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : undefined;
}

const defaultLookup: HttpFetchLookup = (hostname) =>
  dnsLookup(hostname, { all: true, order: 'verbatim' });

/**
 * `http_fetch`: GET/HEAD a URL on an allowlisted host and return the text body (size-capped).
 * A URL that is not http(s), carries credentials, or names a host off the list is refused with
 * `PolicyDeniedError` before any connection. The host is then resolved once and every address
 * checked: loopback, private, CGNAT, link-local (cloud metadata), multicast and reserved
 * addresses are refused (`PolicyDeniedError`, `details.rule` `http-address`) unless
 * `allowPrivateNetworks` or `allowAddresses` allows them, and the connection is pinned to the
 * checked addresses (no DNS rebinding). Redirects are followed by hand, each hop checked the
 * same way. Network and DNS failures are `UnavailableError`.
 */
export function createHttpFetchTool(
  options: HttpFetchToolOptions,
): Tool<typeof Input, typeof Output> {
  const allow = [...options.allowHosts];
  const maxBytes = options.maxBytes ?? 1_048_576;
  const maxRedirects = options.maxRedirects ?? 5;
  const lookup = options.lookup ?? defaultLookup;
  const addressAllowed = createAddressPolicy({
    allowPrivateNetworks: options.allowPrivateNetworks,
    allowAddresses: options.allowAddresses,
  });

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

  /** Resolves the URL's host once and checks every address; returns those to connect to. */
  const resolveChecked = async (
    url: URL,
    hostname: string,
    signal: AbortSignal,
  ): Promise<readonly LookupAddress[]> => {
    const literal = isIP(hostname);
    let addresses: readonly LookupAddress[];
    if (literal !== 0) {
      addresses = [{ address: hostname, family: literal }];
    } else {
      try {
        addresses = await abortable(lookup(hostname), signal);
      } catch (err) {
        signal.throwIfAborted();
        throw new UnavailableError(
          `http_fetch cannot resolve ${hostname}: ${(err as Error).message}`,
          { cause: err, retryable: errno(err) !== 'ENOTFOUND', details: { host: url.host } },
        );
      }
      if (addresses.length === 0) {
        throw new UnavailableError(`http_fetch cannot resolve ${hostname}: no addresses`, {
          retryable: false,
          details: { host: url.host },
        });
      }
    }
    for (const { address } of addresses) {
      const verdict = isIP(address) === 0 ? null : addressAllowed(address);
      if (verdict?.allowed === true) continue;
      const range = verdict?.range ?? 'invalid';
      const where = literal !== 0 ? address : `${hostname} resolves to ${address}, which`;
      throw new PolicyDeniedError(
        `http_fetch refused ${url.host}: ${where} is not a public address (${range}); allow it with allowAddresses${
          range === 'loopback' || range === 'private' || range === 'shared (CGNAT)'
            ? ' or allowPrivateNetworks'
            : ''
        }`,
        { details: { rule: 'http-address', host: url.host, address, range } },
      );
    }
    return addresses;
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
        const hostname = url.hostname.replace(/^\[|\]$/g, '');
        const addresses = await resolveChecked(url, hostname, signal);
        const unavailable = (err: unknown): Error => {
          signal.throwIfAborted();
          return new UnavailableError(
            `http_fetch cannot reach ${url.host}: ${(err as Error).message}`,
            { cause: err, details: { host: url.host } },
          );
        };
        let response: IncomingMessage;
        try {
          response = await send(
            url,
            hostname,
            addresses,
            method,
            {
              'idempotency-key': idempotencyKey,
              accept: 'text/*, application/json;q=0.9, */*;q=0.5',
              'accept-encoding': 'identity',
            },
            signal,
          );
        } catch (err) {
          throw unavailable(err);
        }
        const status = response.statusCode ?? 0;
        const location = response.headers.location;
        if (status >= 300 && status < 400 && location !== undefined) {
          response.destroy();
          if (hop >= maxRedirects) {
            throw new UnavailableError(`http_fetch gave up after ${maxRedirects} redirects`, {
              retryable: false,
            });
          }
          url = check(new URL(location, url).toString());
          continue;
        }
        let body: { data: Buffer; truncated: boolean };
        try {
          body = await readCapped(decodedBody(response), maxBytes);
        } catch (err) {
          throw unavailable(err);
        } finally {
          response.destroy();
        }
        return {
          url: url.toString(),
          status,
          contentType: response.headers['content-type'] ?? null,
          body: body.data.toString('utf8'),
          bytes: body.data.length,
          truncated: body.truncated,
        };
      }
    },
  });
}
