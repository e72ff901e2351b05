import { once } from 'node:events';
import { createServer } from 'node:http';
import type { IncomingHttpHeaders, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHttpFetchTool, runTool } from '@reins/models';
import type { HttpFetchLookup } from '@reins/models';
import { addressRange, createAddressPolicy } from '../src/address-policy.js';

const ctx = { runId: 'run1', stepId: 'step1', idempotencyKey: 'run1:k1' };

interface Hit {
  url: string;
  headers: IncomingHttpHeaders;
}

/** A loopback HTTP server recording every request it sees. */
async function startServer(
  host: string,
  port: number,
  handle: (url: string, res: ServerResponse) => void,
): Promise<{ server: Server; hits: Hit[]; port: number }> {
  const hits: Hit[] = [];
  const server = createServer((req, res) => {
    hits.push({ url: req.url ?? '', headers: req.headers });
    handle(req.url ?? '', res);
  });
  server.listen(port, host);
  await once(server, 'listening');
  return { server, hits, port: (server.address() as AddressInfo).port };
}

async function stop(server: Server): Promise<void> {
  server.close();
  server.closeAllConnections();
  await once(server, 'close');
}

const answer =
  (...addresses: string[]): HttpFetchLookup =>
  () =>
    Promise.resolve(
      addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })),
    );

describe('createHttpFetchTool', () => {
  let main: Awaited<ReturnType<typeof startServer>>;
  let other: Awaited<ReturnType<typeof startServer>>;
  let base = '';
  let port = 0;
  beforeAll(async () => {
    main = await startServer('127.0.0.1', 0, (url, res) => {
      if (url === '/redirect-out') {
        res.writeHead(302, { location: 'http://localhost:1/evil' }).end();
      } else if (url === '/redirect-in') {
        res.writeHead(302, { location: '/doc' }).end();
      } else if (url.startsWith('/redirect-to?')) {
        res.writeHead(302, { location: decodeURIComponent(url.slice('/redirect-to?'.length)) });
        res.end();
      } else if (url === '/big') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('y'.repeat(5000));
      } else {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('hello from 127.0.0.1');
      }
    });
    port = main.port;
    base = `http://127.0.0.1:${port}`;
    // Stands in for a public server: same port, another loopback address.
    other = await startServer('127.0.0.2', port, (_url, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('hello from 127.0.0.2');
    });
  });
  afterAll(async () => {
    await stop(main.server);
    await stop(other.server);
  });

  it('fetches from an allowed host when its address is allowed', async () => {
    const tool = createHttpFetchTool({ allowHosts: ['127.0.0.1'], allowAddresses: ['127.0.0.1'] });
    await expect(runTool(tool, { url: `${base}/doc` }, ctx)).resolves.toEqual({
      url: `${base}/doc`,
      status: 200,
      contentType: 'text/plain',
      body: 'hello from 127.0.0.1',
      bytes: 20,
      truncated: false,
    });
    const hit = main.hits.at(-1);
    expect(hit?.headers['idempotency-key']).toBe('run1:k1');
    expect(hit?.headers.host).toBe(`127.0.0.1:${port}`);
    const privateOk = createHttpFetchTool({
      allowHosts: ['localhost'],
      allowPrivateNetworks: true,
    });
    await expect(
      runTool(privateOk, { url: `http://localhost:${port}/doc` }, ctx),
    ).resolves.toMatchObject({ status: 200, body: 'hello from 127.0.0.1' });
    const cidr = createHttpFetchTool({
      allowHosts: ['127.0.0.1'],
      allowAddresses: ['127.0.0.0/8'],
    });
    for (const url of [`http://127.1:${port}/doc`, `http://2130706433:${port}/doc`]) {
      await expect(runTool(cidr, { url }, ctx)).resolves.toMatchObject({ status: 200 });
    }
  });

  it('refuses loopback in every spelling by default, before connecting', async () => {
    const before = main.hits.length;
    const tool = createHttpFetchTool({
      allowHosts: ['localhost', '127.0.0.1', '[::1]', '[::ffff:7f00:1]', '0.0.0.0', '[::]'],
    });
    for (const url of [
      `http://localhost:${port}/doc`,
      `http://127.0.0.1:${port}/doc`,
      `http://[::1]:${port}/doc`,
      `http://127.1:${port}/doc`,
      `http://2130706433:${port}/doc`,
      `http://0x7f.0.0.1:${port}/doc`,
      `http://[::ffff:127.0.0.1]:${port}/doc`,
      `http://0.0.0.0:${port}/doc`,
      `http://[::]:${port}/doc`,
    ]) {
      const err: unknown = await runTool(tool, { url }, ctx).catch((e: unknown) => e);
      expect(err, url).toMatchObject({
        code: 'POLICY_DENIED',
        retryable: false,
        details: { rule: 'http-address' },
      });
      expect((err as Error).message, url).toMatch(/refused .*(127\.0\.0\.1|::1|0\.0\.0\.0|::)/);
    }
    const denied: unknown = await runTool(tool, { url: `${base}/doc` }, ctx).catch(
      (e: unknown) => e,
    );
    expect(denied).toMatchObject({
      details: { host: `127.0.0.1:${port}`, address: '127.0.0.1', range: 'loopback' },
    });
    expect((denied as Error).message).toContain('not a public address (loopback)');
    expect(main.hits.length).toBe(before);
  });

  it('refuses host names that resolve to non-public addresses', async () => {
    const cases: [HttpFetchLookup, string, string][] = [
      [answer('10.1.2.3'), '10.1.2.3', 'private'],
      [answer('172.20.0.1'), '172.20.0.1', 'private'],
      [answer('192.168.1.1'), '192.168.1.1', 'private'],
      [answer('100.64.0.1'), '100.64.0.1', 'shared (CGNAT)'],
      [answer('169.254.169.254'), '169.254.169.254', 'link-local'],
      [answer('fd00::1'), 'fd00::1', 'private'],
      [answer('fe80::1'), 'fe80::1', 'link-local'],
      [answer('::ffff:10.0.0.1'), '::ffff:10.0.0.1', 'private'],
      [answer('224.0.0.1'), '224.0.0.1', 'multicast'],
      [answer('255.255.255.255'), '255.255.255.255', 'reserved'],
      // One bad answer among good ones refuses the host: it is not reached at all.
      [answer('93.184.215.14', '127.0.0.1'), '127.0.0.1', 'loopback'],
    ];
    for (const [lookup, address, range] of cases) {
      const tool = createHttpFetchTool({ allowHosts: ['internal.test'], lookup });
      const err: unknown = await runTool(tool, { url: 'http://internal.test/x' }, ctx).catch(
        (e: unknown) => e,
      );
      expect(err, address).toMatchObject({
        code: 'POLICY_DENIED',
        details: { rule: 'http-address', host: 'internal.test', address, range },
      });
      expect((err as Error).message).toContain(`internal.test resolves to ${address}`);
    }
    // Cloud metadata stays refused even when private networks are allowed.
    const tool = createHttpFetchTool({
      allowHosts: ['internal.test'],
      allowPrivateNetworks: true,
      lookup: answer('169.254.169.254'),
    });
    await expect(runTool(tool, { url: 'http://internal.test/' }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
      details: { range: 'link-local' },
    });
  });

  it('connects only to the address it checked (no DNS rebinding)', async () => {
    let calls = 0;
    // First answer: an allowed address; any later answer: loopback, which is not allowed.
    const lookup: HttpFetchLookup = () => {
      calls += 1;
      return answer(calls === 1 ? '127.0.0.2' : '127.0.0.1')('rebind.test');
    };
    const mainBefore = main.hits.length;
    const otherBefore = other.hits.length;
    const tool = createHttpFetchTool({
      allowHosts: ['rebind.test'],
      allowAddresses: ['127.0.0.2'],
      lookup,
    });
    await expect(
      runTool(tool, { url: `http://rebind.test:${port}/doc` }, ctx),
    ).resolves.toMatchObject({ status: 200, body: 'hello from 127.0.0.2' });
    expect(calls).toBe(1);
    expect(main.hits.length).toBe(mainBefore);
    expect(other.hits.length).toBe(otherBefore + 1);
    expect(other.hits.at(-1)?.headers.host).toBe(`rebind.test:${port}`);
  });

  it('checks every redirect hop against the host list and the address rules', async () => {
    const tool = createHttpFetchTool({
      allowHosts: ['127.0.0.1', '127.0.0.2', 'localhost', '169.254.169.254', 'inside.test'],
      allowAddresses: ['127.0.0.1'],
      lookup: answer('10.0.0.5'),
    });
    // A hop inside the allowed address follows.
    await expect(runTool(tool, { url: `${base}/redirect-in` }, ctx)).resolves.toMatchObject({
      url: `${base}/doc`,
      status: 200,
    });
    const otherBefore = other.hits.length;
    for (const [target, address, range] of [
      [`http://127.0.0.2:${port}/doc`, '127.0.0.2', 'loopback'],
      ['http://169.254.169.254/latest/meta-data/', '169.254.169.254', 'link-local'],
      [`http://inside.test:${port}/doc`, '10.0.0.5', 'private'],
    ] as const) {
      await expect(
        runTool(tool, { url: `${base}/redirect-to?${encodeURIComponent(target)}` }, ctx),
      ).rejects.toMatchObject({
        code: 'POLICY_DENIED',
        details: { rule: 'http-address', address, range },
      });
    }
    expect(other.hits.length).toBe(otherBefore);
    // A hop off the host list is refused by the list.
    const listed = createHttpFetchTool({
      allowHosts: ['127.0.0.1'],
      allowAddresses: ['127.0.0.1'],
    });
    await expect(runTool(listed, { url: `${base}/redirect-out` }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
      details: { rule: 'http-allowlist' },
    });
    const capped = createHttpFetchTool({
      allowHosts: ['127.0.0.1'],
      allowAddresses: ['127.0.0.1'],
      maxRedirects: 0,
    });
    await expect(runTool(capped, { url: `${base}/redirect-in` }, ctx)).rejects.toMatchObject({
      code: 'UNAVAILABLE',
      retryable: false,
    });
  });

  it('refuses hosts off the list before connecting', async () => {
    const before = main.hits.length;
    const tool = createHttpFetchTool({
      allowHosts: ['example.com'],
      allowAddresses: ['127.0.0.1'],
    });
    for (const url of [
      `${base}/doc`,
      `http://localhost:${port}/doc`,
      `http://user:pw@example.com/`,
      'file:///etc/passwd',
    ]) {
      await expect(runTool(tool, { url }, ctx)).rejects.toMatchObject({ code: 'POLICY_DENIED' });
    }
    const portBound = createHttpFetchTool({
      allowHosts: ['127.0.0.1:1'],
      allowAddresses: ['127.0.0.1'],
    });
    await expect(runTool(portBound, { url: `${base}/doc` }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    expect(main.hits.length).toBe(before);
  });

  it('caps the body, and maps resolver failures to UNAVAILABLE', async () => {
    const tool = createHttpFetchTool({
      allowHosts: ['127.0.0.1'],
      allowAddresses: ['127.0.0.1'],
      maxBytes: 100,
    });
    await expect(runTool(tool, { url: `${base}/big` }, ctx)).resolves.toMatchObject({
      bytes: 100,
      truncated: true,
    });
    const noSuchHost = createHttpFetchTool({
      allowHosts: ['nowhere.test'],
      lookup: () =>
        Promise.reject(Object.assign(new Error('getaddrinfo ENOTFOUND'), { code: 'ENOTFOUND' })),
    });
    await expect(runTool(noSuchHost, { url: 'http://nowhere.test/' }, ctx)).rejects.toMatchObject({
      code: 'UNAVAILABLE',
      retryable: false,
    });
  });

  it('refuses a malformed allowAddresses entry', () => {
    for (const entry of ['localhost', '10.0.0.0/33', '10.0.0.0/8/1', '::1/129', '1.2.3.4/x']) {
      expect(() => createHttpFetchTool({ allowHosts: ['a'], allowAddresses: [entry] })).toThrow(
        expect.objectContaining({ code: 'BAD_REQUEST' }) as Error,
      );
    }
  });

  it('respects the caller signal', async () => {
    const tool = createHttpFetchTool({ allowHosts: ['127.0.0.1'], allowAddresses: ['127.0.0.1'] });
    const controller = new AbortController();
    controller.abort();
    await expect(
      runTool(tool, { url: `${base}/doc` }, { ...ctx, signal: controller.signal }),
    ).rejects.toMatchObject({
      code: 'ABORTED',
    });
    // A resolver that never answers is abandoned when the signal fires.
    const hanging = createHttpFetchTool({
      allowHosts: ['slow.test'],
      lookup: () => new Promise(() => undefined),
    });
    const slow = new AbortController();
    const pending = runTool(hanging, { url: 'http://slow.test/' }, { ...ctx, signal: slow.signal });
    slow.abort();
    await expect(pending).rejects.toMatchObject({ code: 'ABORTED' });
  });
});

describe('address ranges', () => {
  it('classifies public and non-public addresses', () => {
    const table: [string, string | null][] = [
      ['8.8.8.8', null],
      ['93.184.215.14', null],
      ['2606:4700::1111', null],
      ['::ffff:8.8.8.8', null],
      ['0.1.2.3', 'unspecified'],
      ['::', 'unspecified'],
      ['127.0.0.1', 'loopback'],
      ['127.255.255.254', 'loopback'],
      ['::1', 'loopback'],
      ['::ffff:127.0.0.1', 'loopback'],
      ['::ffff:7f00:1', 'loopback'],
      ['10.0.0.1', 'private'],
      ['172.16.0.1', 'private'],
      ['172.31.255.255', 'private'],
      ['172.32.0.1', null],
      ['192.168.0.1', 'private'],
      ['fc00::1', 'private'],
      ['fdff::1', 'private'],
      ['100.64.0.1', 'shared (CGNAT)'],
      ['100.127.255.255', 'shared (CGNAT)'],
      ['100.128.0.1', null],
      ['169.254.169.254', 'link-local'],
      ['fe80::1', 'link-local'],
      ['febf::1', 'link-local'],
      ['224.0.0.1', 'multicast'],
      ['ff02::1', 'multicast'],
      ['240.0.0.1', 'reserved'],
      ['255.255.255.255', 'reserved'],
      ['192.0.2.1', 'reserved'],
      ['64:ff9b::7f00:1', 'reserved'],
      ['2002:7f00:1::', 'reserved'],
      ['2001:db8::1', 'reserved'],
      ['::7f00:1', 'reserved'],
      ['4000::1', 'reserved'],
      ['not an ip', 'reserved'],
    ];
    for (const [address, range] of table) expect(addressRange(address), address).toBe(range);
  });

  it('allows listed addresses and, with allowPrivateNetworks, private ones only', () => {
    const listed = createAddressPolicy({
      allowAddresses: ['127.0.0.1', '10.0.0.0/8', '[fe80::1]'],
    });
    expect(listed('127.0.0.1')).toEqual({ allowed: true });
    expect(listed('::ffff:127.0.0.1')).toEqual({ allowed: true });
    expect(listed('127.0.0.2')).toEqual({ allowed: false, range: 'loopback' });
    expect(listed('10.9.8.7')).toEqual({ allowed: true });
    expect(listed('fe80::1')).toEqual({ allowed: true });
    expect(listed('8.8.8.8')).toEqual({ allowed: true });
    const open = createAddressPolicy({ allowPrivateNetworks: true });
    for (const a of ['127.0.0.1', '::1', '10.0.0.1', '192.168.1.1', '100.64.0.1', 'fd00::1']) {
      expect(open(a), a).toEqual({ allowed: true });
    }
    for (const a of ['169.254.169.254', 'fe80::1', '224.0.0.1', '0.0.0.0', '240.0.0.1']) {
      expect(open(a).allowed, a).toBe(false);
    }
  });
});
