import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { z } from 'zod';
import { NotFoundError, ProtocolError } from '@reins/protocol';
import {
  compilePolicy,
  evaluatePolicy,
  loadPolicyFile,
  narrowPolicy,
  type PolicyDocument,
  type PolicyEffect,
  type PolicyInput,
} from '../src/index.js';

const doc = {
  version: 1,
  rules: [
    {
      id: 'read.allow',
      match: { tool: 'read_file' },
      effect: 'allow',
      args: [{ path: 'path', prefix: ['/workspace'] }],
    },
    {
      id: 'write.approve',
      match: { role: 'planner', tool: 'write_*' },
      effect: 'approve',
      args: [{ path: 'path', prefix: ['/workspace/out/'] }],
    },
    {
      id: 'pay.small',
      match: { tool: 'pay' },
      effect: 'allow',
      args: [{ path: 'amount', min: 0, max: 100 }],
    },
    {
      id: 'pay.large',
      match: { tool: 'pay' },
      effect: 'approve',
      args: [{ path: 'amount', min: 100.01, max: 10_000 }],
    },
    {
      id: 'http.allow',
      match: { tool: 'http_get' },
      effect: 'allow',
      args: [{ path: 'url', hosts: ['api.example.com', '*.docs.example.com'] }],
    },
    {
      id: 'http.evil',
      match: { tool: 'http_*' },
      effect: 'deny',
      args: [{ path: 'url', hosts: ['evil.example.com'] }],
    },
    {
      id: 'search.allow',
      match: { tool: 'search', agent: 'research-?' },
      effect: 'allow',
      args: [
        { path: 'engine', oneOf: ['web', 'news'] },
        { path: 'q', pattern: '[a-z ]{1,50}' },
      ],
    },
    { id: 'shell.deny', match: { tool: 'shell*' }, effect: 'deny' },
    { id: 'all.quarantine', match: { run: 'quarantine-*', tool: '*' }, effect: 'deny' },
    { id: 'shell_safe.allow', match: { tool: 'shell_safe' }, effect: 'allow' },
  ],
};

const policy = compilePolicy(doc, {
  argChecks: {
    pay: z.object({ amount: z.number(), currency: z.enum(['EUR', 'USD']) }),
    read_file: [
      {
        id: 'read.no-secrets',
        check: (a) => !String(a['path']).includes('secret') || 'secret files are off limits',
      },
    ],
  },
});

const base: Omit<PolicyInput, 'tool' | 'args'> = {
  role: 'planner',
  agentId: 'agent-1',
  runId: 'run-1',
};

type Case = [
  string,
  Partial<PolicyInput> & { tool: string; args: Record<string, unknown> },
  PolicyEffect,
  string,
];

const cases: Case[] = [
  [
    'read inside workspace',
    { tool: 'read_file', args: { path: '/workspace/a.txt' } },
    'allow',
    'read.allow',
  ],
  [
    'read the workspace root',
    { tool: 'read_file', args: { path: '/workspace' } },
    'allow',
    'read.allow',
  ],
  [
    'read with ./ and //',
    { tool: 'read_file', args: { path: '/workspace/./x//y' } },
    'allow',
    'read.allow',
  ],
  [
    'read outside workspace',
    { tool: 'read_file', args: { path: '/etc/passwd' } },
    'deny',
    'read.allow',
  ],
  [
    'read a sibling with the same prefix',
    { tool: 'read_file', args: { path: '/workspace2/x' } },
    'deny',
    'read.allow',
  ],
  [
    'read escaping with ../',
    { tool: 'read_file', args: { path: '/workspace/../etc/passwd' } },
    'deny',
    'read.allow',
  ],
  [
    'read with a relative ../',
    { tool: 'read_file', args: { path: '../workspace/a' } },
    'deny',
    'read.allow',
  ],
  [
    'read with a backslash',
    { tool: 'read_file', args: { path: '/workspace/..\\..\\etc' } },
    'deny',
    'read.allow',
  ],
  ['read without a path', { tool: 'read_file', args: {} }, 'deny', 'read.allow'],
  [
    'read a path that is not a string',
    { tool: 'read_file', args: { path: ['/workspace/a'] } },
    'deny',
    'read.allow',
  ],
  [
    'read a secret (programmatic check)',
    { tool: 'read_file', args: { path: '/workspace/secret.env' } },
    'deny',
    'read.no-secrets',
  ],
  [
    'homoglyph tool (Cyrillic а; see the wildcard test for why the rule alone does not tell)',
    { tool: 'reаd_file', args: { path: '/workspace/a' } },
    'deny',
    'default.deny',
  ],
  ['unknown tool', { tool: 'delete_everything', args: {} }, 'deny', 'default.deny'],
  ['empty tool name', { tool: '', args: {} }, 'deny', 'default.deny'],
  [
    'write glob needs approval',
    { tool: 'write_file', args: { path: '/workspace/out/r.md' } },
    'approve',
    'write.approve',
  ],
  [
    'write glob, wrong role',
    { role: 'executor', tool: 'write_file', args: { path: '/workspace/out/r.md' } },
    'deny',
    'default.deny',
  ],
  [
    'write outside out/',
    { tool: 'write_file', args: { path: '/workspace/in/r.md' } },
    'deny',
    'write.approve',
  ],
  ['small payment', { tool: 'pay', args: { amount: 100, currency: 'EUR' } }, 'allow', 'pay.small'],
  [
    'large payment needs approval',
    { tool: 'pay', args: { amount: 101, currency: 'EUR' } },
    'approve',
    'pay.large',
  ],
  ['huge payment', { tool: 'pay', args: { amount: 10_001, currency: 'EUR' } }, 'deny', 'pay.small'],
  ['negative payment', { tool: 'pay', args: { amount: -5, currency: 'EUR' } }, 'deny', 'pay.small'],
  [
    'amount as a string',
    { tool: 'pay', args: { amount: '50', currency: 'EUR' } },
    'deny',
    'pay.small',
  ],
  [
    'payment fails the zod check',
    { tool: 'pay', args: { amount: 5, currency: 'BTC' } },
    'deny',
    'args.pay',
  ],
  [
    'listed host',
    { tool: 'http_get', args: { url: 'https://api.example.com/v1?q=1' } },
    'allow',
    'http.allow',
  ],
  [
    'listed subdomain',
    { tool: 'http_get', args: { url: 'https://a.docs.example.com/x' } },
    'allow',
    'http.allow',
  ],
  [
    'bare domain of a *. pattern',
    { tool: 'http_get', args: { url: 'https://docs.example.com/x' } },
    'deny',
    'http.allow',
  ],
  [
    'host not listed',
    { tool: 'http_get', args: { url: 'https://example.org/' } },
    'deny',
    'http.allow',
  ],
  [
    'userinfo trick',
    { tool: 'http_get', args: { url: 'https://api.example.com@example.org/' } },
    'deny',
    'http.allow',
  ],
  [
    'lookalike suffix',
    { tool: 'http_get', args: { url: 'https://api.example.com.evil.org/' } },
    'deny',
    'http.allow',
  ],
  [
    'IDN homoglyph host',
    { tool: 'http_get', args: { url: 'https://аpi.example.com/' } },
    'deny',
    'http.allow',
  ],
  ['not http', { tool: 'http_get', args: { url: 'file:///etc/passwd' } }, 'deny', 'http.evil'],
  ['unparsable url', { tool: 'http_get', args: { url: 'not a url' } }, 'deny', 'http.evil'],
  [
    'denied host',
    { tool: 'http_post', args: { url: 'https://evil.example.com/' } },
    'deny',
    'http.evil',
  ],
  // A deny rule fails closed on a hostile argument. Nothing else allows these tools, so were the
  // deny rule to stop applying they would still be denied (by default): the rule is the test.
  [
    'deny rule, scheme other than http',
    { tool: 'http_post', args: { url: 'file:///etc/passwd' } },
    'deny',
    'http.evil',
  ],
  ['deny rule, url missing', { tool: 'http_post', args: {} }, 'deny', 'http.evil'],
  [
    'deny rule, url not a string',
    { tool: 'http_post', args: { url: ['https://evil.example.com/'] } },
    'deny',
    'http.evil',
  ],
  [
    'deny condition not met, nothing allows',
    { tool: 'http_post', args: { url: 'https://api.example.com/' } },
    'deny',
    'default.deny',
  ],
  [
    'oneOf and pattern pass',
    { agentId: 'research-1', tool: 'search', args: { engine: 'web', q: 'nats kv' } },
    'allow',
    'search.allow',
  ],
  [
    'agent glob ? is one char',
    { agentId: 'research-12', tool: 'search', args: { engine: 'web', q: 'x' } },
    'deny',
    'default.deny',
  ],
  [
    'oneOf fails',
    { agentId: 'research-1', tool: 'search', args: { engine: 'dark', q: 'x' } },
    'deny',
    'search.allow',
  ],
  [
    'pattern is anchored',
    { agentId: 'research-1', tool: 'search', args: { engine: 'web', q: 'ok; rm -rf /' } },
    'deny',
    'search.allow',
  ],
  ['deny beats allow', { tool: 'shell_safe', args: {} }, 'deny', 'shell.deny'],
  [
    'run glob deny beats everything',
    { runId: 'quarantine-7', tool: 'read_file', args: { path: '/workspace/a' } },
    'deny',
    'all.quarantine',
  ],
  [
    'invalid agent id',
    { agentId: 'agent 1', tool: 'read_file', args: { path: '/workspace/a' } },
    'deny',
    'default.deny',
  ],
];

describe('evaluatePolicy', () => {
  it.each(cases)('%s', (_name, input, effect, rule) => {
    const d = evaluatePolicy(policy, { ...base, ...input });
    expect({ effect: d.effect, rule: d.rule }).toEqual({ effect, rule });
    expect(d.reason.length).toBeGreaterThan(0);
  });

  it('accepts a plain document and denies everything when it is invalid', () => {
    const plain = {
      version: 1,
      rules: [{ id: 'x', match: { tool: 'ping' }, effect: 'allow' }],
    } as PolicyDocument;
    expect(evaluatePolicy(plain, { ...base, tool: 'ping', args: {} })).toMatchObject({
      effect: 'allow',
      rule: 'x',
    });
    const bad = {
      rules: [{ id: 'x', match: { tool: 'pіng' }, effect: 'allow' }],
    } as unknown as PolicyDocument;
    const refused = evaluatePolicy(bad, { ...base, tool: 'ping', args: {} });
    expect(refused).toMatchObject({ effect: 'deny', rule: 'default.deny' });
    expect(refused.reason).toMatch(/^invalid policy: .*rules\.0\.match\.tool/);
  });

  it('denies a homoglyph tool name even where a wildcard would allow it', () => {
    const anything = compilePolicy({
      rules: [{ id: 'any', match: { tool: '*' }, effect: 'allow' }],
    });
    expect(evaluatePolicy(anything, { ...base, tool: 'read_file', args: {} })).toMatchObject({
      effect: 'allow',
      rule: 'any',
    });
    for (const tool of ['reаd_file', 'read_fіle', 'read file', 'read_file\u0000']) {
      const d = evaluatePolicy(anything, { ...base, tool, args: {} });
      expect(d, tool).toMatchObject({ effect: 'deny', rule: 'default.deny' });
      expect(d.reason, tool).toContain('tool names are ASCII');
    }
  });

  it('denies tools outside knownTools and when a predicate throws', () => {
    const p = compilePolicy(
      { rules: [{ id: 'any', match: { tool: '*' }, effect: 'allow' }] },
      {
        knownTools: ['ping'],
        argChecks: {
          ping: () => {
            throw new Error('boom');
          },
        },
      },
    );
    expect(evaluatePolicy(p, { ...base, tool: 'pong', args: {} })).toMatchObject({
      effect: 'deny',
      rule: 'default.deny',
    });
    expect(evaluatePolicy(p, { ...base, tool: 'ping', args: {} })).toMatchObject({
      effect: 'deny',
      rule: 'args.ping',
    });
  });
});

describe('compilePolicy / loadPolicyFile', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'reins-policy-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses bad documents with the failing field', () => {
    const bad: unknown[] = [
      { rules: [{ id: 'a', match: { tool: 'reаd_file' }, effect: 'allow' }] },
      { rules: [{ id: 'a', match: { tool: 'a.b' }, effect: 'allow' }] },
      { rules: [{ id: 'a', match: { tool: '{a,b}' }, effect: 'allow' }] },
      { rules: [{ id: 'a', match: { tool: 'x' }, effect: 'permit' }] },
      { rules: [{ id: 'a', match: { tool: 'x' }, effect: 'allow', args: [{ path: 'p' }] }] },
      {
        rules: [
          { id: 'a', match: { tool: 'x' }, effect: 'allow', args: [{ path: 'p', pattern: '(' }] },
        ],
      },
      {
        rules: [
          {
            id: 'a',
            match: { tool: 'x' },
            effect: 'allow',
            args: [{ path: '__proto__.x', max: 1 }],
          },
        ],
      },
      {
        rules: [
          { id: 'a', match: { tool: 'x' }, effect: 'allow' },
          { id: 'a', match: { tool: 'y' }, effect: 'allow' },
        ],
      },
      { rules: [{ id: 'default.allow', match: { tool: 'x' }, effect: 'allow' }] },
      { rules: [], extra: true },
      { default: 'inherit', rules: [] },
    ];
    for (const d of bad) expect(() => compilePolicy(d)).toThrow(ProtocolError);
    expect(() =>
      compilePolicy({ rules: [{ id: 'a', match: { tool: 'reаd_file' }, effect: 'allow' }] }),
    ).toThrow(/rules\.0\.match\.tool/);
  });

  it('loads a file and names the path on failure', async () => {
    const good = join(dir, 'good.json');
    await writeFile(good, JSON.stringify(doc));
    const p = await loadPolicyFile(good);
    expect(evaluatePolicy(p, { ...base, tool: 'shell', args: {} }).rule).toBe('shell.deny');

    const missing = join(dir, 'missing.json');
    await expect(loadPolicyFile(missing)).rejects.toThrow(NotFoundError);
    await expect(loadPolicyFile(missing)).rejects.toThrow(missing);
    const notJson = join(dir, 'bad.json');
    await writeFile(notJson, '{ rules: [');
    await expect(loadPolicyFile(notJson)).rejects.toThrow(new RegExp(`${notJson}.*not valid JSON`));
    const invalid = join(dir, 'invalid.json');
    await writeFile(invalid, JSON.stringify({ rules: [{ id: 'x', match: {}, effect: 'allow' }] }));
    await expect(loadPolicyFile(invalid)).rejects.toThrow(
      new RegExp(`${invalid}.*rules\\.0\\.match\\.tool`),
    );
  });
});

describe('narrowPolicy', () => {
  const input = (tool: string, args: Record<string, unknown> = {}) => ({ ...base, tool, args });

  it('adds denies and approvals and restricts allows', () => {
    const narrowed = narrowPolicy(policy, {
      rules: [
        { id: 'run.no-http', match: { tool: 'http_get' }, effect: 'deny' },
        { id: 'run.approve-pay', match: { tool: 'pay' }, effect: 'approve' },
        {
          id: 'run.read-docs',
          match: { tool: 'read_file' },
          effect: 'allow',
          args: [{ path: 'path', prefix: ['/workspace/docs'] }],
        },
      ],
    });
    expect(
      evaluatePolicy(narrowed, input('http_get', { url: 'https://api.example.com/' })),
    ).toMatchObject({ effect: 'deny', rule: 'run.no-http' });
    expect(evaluatePolicy(narrowed, input('pay', { amount: 5, currency: 'EUR' }))).toMatchObject({
      effect: 'approve',
      rule: 'run.approve-pay',
    });
    expect(
      evaluatePolicy(narrowed, input('read_file', { path: '/workspace/docs/a' })),
    ).toMatchObject({ effect: 'allow', rule: 'read.allow' });
    expect(
      evaluatePolicy(narrowed, input('read_file', { path: '/workspace/src/a' })),
    ).toMatchObject({ effect: 'deny', rule: 'run.read-docs' });
    // Tools the overlay does not mention are left to the base.
    expect(
      evaluatePolicy(narrowed, input('write_file', { path: '/workspace/out/x' })),
    ).toMatchObject({ effect: 'approve', rule: 'write.approve' });
  });

  it('cannot allow what the base denies', () => {
    const widened = narrowPolicy(policy, {
      default: 'inherit',
      rules: [
        { id: 'run.shell', match: { tool: 'shell*' }, effect: 'allow' },
        { id: 'run.anything', match: { tool: '*' }, effect: 'allow' },
        { id: 'run.write', match: { tool: 'write_*' }, effect: 'allow' },
      ],
    });
    expect(evaluatePolicy(widened, input('shell_safe'))).toMatchObject({
      effect: 'deny',
      rule: 'shell.deny',
    });
    expect(evaluatePolicy(widened, input('delete_everything'))).toMatchObject({
      effect: 'deny',
      rule: 'default.deny',
    });
    expect(
      evaluatePolicy(widened, input('write_file', { path: '/workspace/out/x' })),
    ).toMatchObject({ effect: 'approve', rule: 'write.approve' });
    const homoglyph = evaluatePolicy(widened, input('reаd_file', { path: '/workspace/a' }));
    expect(homoglyph).toMatchObject({ effect: 'deny', rule: 'default.deny' });
    expect(homoglyph.reason).toContain('tool names are ASCII');
  });

  it('an allow-list overlay (default deny) denies what it does not list', () => {
    const only = narrowPolicy(policy, {
      default: 'deny',
      rules: [{ id: 'run.read', match: { tool: 'read_file' }, effect: 'allow' }],
    });
    expect(evaluatePolicy(only, input('read_file', { path: '/workspace/a' }))).toMatchObject({
      effect: 'allow',
      rule: 'read.allow',
    });
    expect(evaluatePolicy(only, input('pay', { amount: 1, currency: 'EUR' }))).toMatchObject({
      effect: 'deny',
      rule: 'default.deny',
    });
  });

  it('refuses an invalid overlay', () => {
    expect(() =>
      narrowPolicy(policy, { rules: [{ id: 'x', match: { tool: 'x' }, effect: 'grant' }] }),
    ).toThrow(ProtocolError);
    expect(() => narrowPolicy(policy, 'allow everything')).toThrow(ProtocolError);
  });

  it('never widens: the narrowed decision is at least as strict as the base (random overlays)', () => {
    const severity = { allow: 0, approve: 1, deny: 2 } as const;
    const tools = ['read_file', 'write_file', 'pay', 'http_get', 'shell', 'search', 'other'];
    const rule = fc.record({
      tool: fc.constantFrom('*', 'read_*', 'pay', 'shell', 'http_get', 'w?ite_file', 'other'),
      role: fc.option(fc.constantFrom('planner', 'executor', '*'), { nil: undefined }),
      effect: fc.constantFrom('allow', 'deny', 'approve'),
      max: fc.option(fc.integer({ min: -10, max: 20_000 }), { nil: undefined }),
    });
    const args = fc.record({
      path: fc.constantFrom('/workspace/a', '/workspace/out/b', '/etc/x', '/workspace/../x'),
      amount: fc.integer({ min: -10, max: 20_000 }),
      currency: fc.constantFrom('EUR', 'BTC'),
      url: fc.constantFrom('https://api.example.com/', 'https://evil.example.com/', 'x'),
    });
    fc.assert(
      fc.property(
        fc.array(rule, { maxLength: 6 }),
        fc.constantFrom<'deny' | 'inherit'>('deny', 'inherit'),
        fc.constantFrom(...tools),
        fc.constantFrom('planner', 'executor'),
        args,
        (rules, dflt, tool, role, a) => {
          const overlay = {
            default: dflt,
            rules: rules.map((r, i) => ({
              id: `o${i}`,
              match: r.role === undefined ? { tool: r.tool } : { tool: r.tool, role: r.role },
              effect: r.effect,
              args: r.max === undefined ? [] : [{ path: 'amount', max: r.max }],
            })),
          };
          const req = { ...base, role, tool, args: a };
          const b = evaluatePolicy(policy, req);
          const n = evaluatePolicy(narrowPolicy(policy, overlay), req);
          expect(severity[n.effect]).toBeGreaterThanOrEqual(severity[b.effect]);
        },
      ),
      { numRuns: 500 },
    );
  });
});
