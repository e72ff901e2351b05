import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  calculator,
  createHttpFetchTool,
  createScratchpad,
  evaluateArithmetic,
  runTool,
} from '@reins/models';

const ctx = { runId: 'run1', stepId: 'step1', idempotencyKey: 'run1:k1' };

describe('calculator', () => {
  it('evaluates arithmetic', async () => {
    expect(evaluateArithmetic('1 + 2 * 3')).toBe(7);
    expect(evaluateArithmetic('(1 + 2) * 3')).toBe(9);
    expect(evaluateArithmetic('-2 ^ 2')).toBe(-4);
    expect(evaluateArithmetic('2 ** 3 ** 2')).toBe(512);
    expect(evaluateArithmetic('10 % 4 + 1.5e1 / 3')).toBe(7);
    expect(evaluateArithmetic('max(1, sqrt(16), abs(-3)) + pi - pi')).toBe(4);
    await expect(runTool(calculator, { expression: '6*7' }, ctx)).resolves.toEqual({ result: 42 });
  });

  it('refuses anything that is not arithmetic', async () => {
    for (const expression of [
      'process.exit(1)',
      'require("fs")',
      'constructor',
      '1; 2',
      '2 +',
      '(1',
      'alert`1`',
      '1 / 0',
      'x = 1',
      '__proto__',
      '1e999',
      '('.repeat(200) + '1' + ')'.repeat(200),
    ]) {
      await expect(runTool(calculator, { expression }, ctx)).rejects.toMatchObject({
        code: 'BAD_REQUEST',
      });
    }
  });
});

describe('createScratchpad', () => {
  it('keeps notes per run', async () => {
    const pad = createScratchpad();
    await runTool(pad.write, { key: 'plan', value: 'read docs' }, ctx);
    await expect(runTool(pad.read, { key: 'plan' }, ctx)).resolves.toEqual({
      key: 'plan',
      value: 'read docs',
      keys: ['plan'],
    });
    await expect(runTool(pad.read, { key: 'plan' }, { ...ctx, runId: 'run2' })).resolves.toEqual({
      key: 'plan',
      value: null,
      keys: [],
    });
    pad.clear('run1');
    await expect(runTool(pad.read, {}, ctx)).resolves.toEqual({ key: null, value: null, keys: [] });
    await expect(runTool(pad.write, { key: 'bad key!', value: 'x' }, ctx)).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
  });
});

describe('createHttpFetchTool', () => {
  const server = createServer((req, res) => {
    hits.push(req.url ?? '');
    if (req.url === '/redirect-out') {
      res.writeHead(302, { location: 'http://localhost:1/evil' }).end();
    } else if (req.url === '/big') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('y'.repeat(5000));
    } else {
      res
        .writeHead(200, { 'content-type': 'text/plain' })
        .end(`hello ${String(req.headers['idempotency-key'])}`);
    }
  });
  const hits: string[] = [];
  let base = '';
  beforeAll(async () => {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.close();
    server.closeAllConnections();
    await once(server, 'close');
  });

  it('fetches from an allowed host', async () => {
    const tool = createHttpFetchTool({ allowHosts: ['127.0.0.1'] });
    await expect(runTool(tool, { url: `${base}/doc` }, ctx)).resolves.toEqual({
      url: `${base}/doc`,
      status: 200,
      contentType: 'text/plain',
      body: 'hello run1:k1',
      bytes: 13,
      truncated: false,
    });
  });

  it('refuses hosts off the list before connecting', async () => {
    const before = hits.length;
    const tool = createHttpFetchTool({ allowHosts: ['example.com'] });
    const port = new URL(base).port;
    for (const url of [
      `${base}/doc`,
      `http://localhost:${port}/doc`,
      `http://user:pw@example.com/`,
      'file:///etc/passwd',
    ]) {
      await expect(runTool(tool, { url }, ctx)).rejects.toMatchObject({ code: 'POLICY_DENIED' });
    }
    const portBound = createHttpFetchTool({ allowHosts: ['127.0.0.1:1'] });
    await expect(runTool(portBound, { url: `${base}/doc` }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    expect(hits.length).toBe(before);
  });

  it('checks redirects against the list and caps the body', async () => {
    const tool = createHttpFetchTool({ allowHosts: ['127.0.0.1'], maxBytes: 100 });
    await expect(runTool(tool, { url: `${base}/redirect-out` }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    await expect(runTool(tool, { url: `${base}/big` }, ctx)).resolves.toMatchObject({
      bytes: 100,
      truncated: true,
    });
  });

  it('respects the caller signal', async () => {
    const tool = createHttpFetchTool({ allowHosts: ['127.0.0.1'] });
    const controller = new AbortController();
    controller.abort();
    await expect(
      runTool(tool, { url: `${base}/doc` }, { ...ctx, signal: controller.signal }),
    ).rejects.toMatchObject({
      code: 'ABORTED',
    });
  });
});
