import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { pack } from 'msgpackr';
import {
  Messages,
  ProtocolError,
  PayloadTooLargeError,
  ReinsError,
  RunStartRequest,
  TraceEvent,
  decode,
  encode,
  messageName,
  createGrantSigner,
  hashArgs,
} from '@reins/protocol';
import type { z } from 'zod';

const { signer } = createGrantSigner();
const now = 1_700_000_000_000;
const grant = signer.sign({
  grantId: 'g1',
  runId: 'run1',
  agentId: 'a1',
  role: 'planner',
  kind: 'tool',
  tool: 'write_file',
  argsHash: hashArgs({ path: 'x' }),
  idempotencyKey: 'run1:s1:write_file',
  reserved: { inputTokens: 0, outputTokens: 0, usd: 0.01, steps: 1 },
  issuedAt: now,
  expiresAt: now + 60_000,
  issuer: signer.publicKey,
});
const wire = { code: 'BUDGET_EXCEEDED', message: 'over', retryable: false };
const scope = { kind: 'run' as const, runId: 'run1' };
const usage = { inputTokens: 10, outputTokens: 5, usd: 0.001, steps: 1 };

/** One valid example of every message: the round-trip table. */
const examples: { [K in keyof typeof Messages]: z.input<(typeof Messages)[K]> } = {
  'reins.RunStartRequest': { goal: 'write a report', budget: { usd: 0.5, steps: 20 } },
  'reins.RunRecord': {
    runId: 'run1',
    goal: 'g',
    role: 'planner',
    roles: ['planner', 'executor'],
    status: 'running',
    budget: { usd: 1 },
    createdAt: now,
    updatedAt: now,
  },
  'reins.RunGetRequest': { runId: 'run1' },
  'reins.RunListRequest': { status: 'running', limit: 10 },
  'reins.RunListReply': { runs: [] },
  'reins.Task': { runId: 'run1', role: 'planner', step: 3, enqueuedAt: now },
  'reins.AuthorizeRequest': {
    runId: 'run1',
    agentId: 'a1',
    role: 'planner',
    stepId: 's1',
    kind: 'llm',
    model: 'gpt-4o-mini',
    estimate: { inputTokens: 100, outputTokens: 50, usd: 0.0001 },
  },
  'reins.Decision': { decision: 'grant', grant, rule: 'budget.ok' },
  'reins.Grant': grant,
  'reins.SettleRequest': { grantId: 'g1', runId: 'run1', agentId: 'a1', actual: usage },
  'reins.SettleReply': { settled: true, duplicate: false },
  'reins.RunEndRequest': { runId: 'run1', agentId: 'p1', status: 'completed', answer: 'done' },
  'reins.BudgetReport': { runId: 'run1', cap: { usd: 1 }, committed: usage, reserved: usage },
  'reins.ActRequest': {
    runId: 'run1',
    agentId: 'a1',
    role: 'planner',
    stepId: 's1',
    tool: 'write_file',
    args: { path: 'x', nested: { list: [1, 'two', null, true] } },
    idempotencyKey: 'run1:s1:write_file',
  },
  'reins.ExecuteRequest': {
    grant,
    runId: 'run1',
    stepId: 's1',
    tool: 'write_file',
    args: { path: 'x' },
    idempotencyKey: 'run1:s1:write_file',
  },
  'reins.ToolResult': {
    ok: true,
    tool: 'write_file',
    idempotencyKey: 'k',
    output: { bytes: 3 },
    replayed: false,
    durationMs: 2,
  },
  'reins.HaltRequest': { scope, reason: 'runaway', deadlineMs: 1000 },
  'reins.HaltReply': { haltId: 'h1', acked: ['a1'], missing: [], aborted: 1, unknownOutcomes: [] },
  'reins.HaltMarker': { haltId: 'h1', scope, reason: 'x', createdAt: now },
  'reins.ControlMessage': { type: 'halt', scope: { kind: 'all' }, reason: 'x', id: 'h1' },
  'reins.ControlAck': {
    id: 'h1',
    agentId: 'a1',
    role: 'executor',
    type: 'halt',
    aborted: 2,
    stillRunning: 0,
  },
  'reins.Heartbeat': {
    agentId: 'a1',
    role: 'executor',
    status: 'running',
    inFlight: 0,
    runs: [],
    memory: { rss: 1, heapUsed: 1 },
    version: '0.1.0',
    ts: now,
    intervalMs: 1000,
    expiresAt: now + 3000,
  },
  'reins.TraceEvent': {
    runId: 'run1',
    role: 'planner',
    agentId: 'a1',
    event: 'step.start',
    seq: 1,
    ts: now,
    stepId: 's1',
    data: { step: 1 },
  },
  'reins.AuditEntry': {
    seq: 1,
    writer: 'sv1',
    ts: now,
    action: 'grant',
    actor: 'sv1',
    runId: 'run1',
    prevHash: '0'.repeat(64),
    hash: 'a'.repeat(64),
  },
  'reins.AuditBatch': {
    entries: [
      {
        seq: 1,
        writer: 'sv1',
        ts: now,
        action: 'admit',
        actor: 'sv1',
        runId: 'run1',
        prevHash: '0'.repeat(64),
        hash: 'a'.repeat(64),
      },
      {
        seq: 2,
        writer: 'sv1',
        ts: now,
        action: 'grant',
        actor: 'sv1',
        details: { grantId: 'g1' },
        prevHash: 'a'.repeat(64),
        hash: 'b'.repeat(64),
      },
    ],
    ...signer.signAuditHead({ writer: 'sv1', seq: 2, hash: 'b'.repeat(64) }),
  },
  'reins.AuditAnchor': {
    writer: 'sv1',
    seq: 2,
    hash: 'b'.repeat(64),
    ...signer.signAuditHead({ writer: 'sv1', seq: 2, hash: 'b'.repeat(64) }),
    ts: now,
    acceptedGap: {
      from: 1,
      to: 2,
      acceptedBy: 'ops',
      reason: 'restore',
      ts: now,
      headSeq: 0,
      headHash: '0'.repeat(64),
    },
  },
  'reins.ApprovalRequest': {
    approvalId: 'ap1',
    runId: 'run1',
    agentId: 'a1',
    role: 'planner',
    tool: 'pay',
    args: { amount: 5 },
    argsHash: hashArgs({ amount: 5 }),
    rule: 'approval.pay',
    createdAt: now,
    expiresAt: now + 1000,
  },
  'reins.ApprovalDecision': {
    approvalId: 'ap1',
    decision: 'approve',
    argsHash: hashArgs({ amount: 5 }),
    by: 'alice',
  },
  'reins.ApprovalRecord': {
    approvalId: 'ap1',
    runId: 'run1',
    agentId: 'a1',
    role: 'planner',
    tool: 'pay',
    args: { amount: 5 },
    argsHash: hashArgs({ amount: 5 }),
    rule: 'approval.pay',
    createdAt: now,
    expiresAt: now + 1000,
    idempotencyKey: 'run1.1.0',
    status: 'pending',
  },
  'reins.ApprovalListRequest': { status: 'pending' },
  'reins.ApprovalListReply': { approvals: [] },
  'reins.ErrorReply': { error: wire },
  'reins.Ack': { ok: true },
};

describe('codec round trip', () => {
  for (const [name, schema] of Object.entries(Messages)) {
    it(`round-trips ${name}`, () => {
      const value = examples[name as keyof typeof Messages];
      const bytes = encode(schema as z.ZodType, value);
      expect(bytes).toBeInstanceOf(Uint8Array);
      expect(decode(schema as z.ZodType, bytes)).toEqual((schema as z.ZodType).parse(value));
      expect(messageName(schema as z.ZodType)).toBe(name);
    });
  }

  it('applies defaults and strips unknown keys', () => {
    const out = decode(RunStartRequest, pack({ goal: 'g', extra: 'dropped' }));
    expect(out).toEqual({ goal: 'g', role: 'planner', budget: {} });
  });
});

const expectBadRequest = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ReinsError);
    expect((err as ReinsError).code).toMatch(/^(BAD_REQUEST|PAYLOAD_TOO_LARGE)$/);
    return err as ReinsError;
  }
  throw new Error('expected a coded error');
};

describe('hostile input', () => {
  const trace = { runId: 'r', role: 'planner', agentId: 'a', event: 'step.start', seq: 1, ts: 1 };

  it('refuses __proto__ and constructor keys anywhere', () => {
    const raw = pack(JSON.parse('{"goal":"g","input":{"__proto__":{"polluted":true}}}'));
    expectBadRequest(() => decode(RunStartRequest, raw));
    expectBadRequest(() =>
      decode(RunStartRequest, pack({ goal: 'g', input: { constructor: { prototype: 1 } } })),
    );
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('refuses NaN and Infinity', () => {
    expectBadRequest(() => decode(TraceEvent, pack({ ...trace, seq: NaN })));
    expectBadRequest(() => decode(TraceEvent, pack({ ...trace, data: { x: Infinity } })));
    expectBadRequest(() =>
      decode(RunStartRequest, pack({ goal: 'g', budget: { usd: -Infinity } })),
    );
  });

  it('refuses huge strings and oversized payloads with PAYLOAD_TOO_LARGE', () => {
    const err = expectBadRequest(() =>
      decode(RunStartRequest, pack({ goal: 'x'.repeat(2 * 1024 * 1024) })),
    );
    expect(err).toBeInstanceOf(PayloadTooLargeError);
    expectBadRequest(() => decode(RunStartRequest, pack({ goal: 'x'.repeat(70_000) })));
    expect(() =>
      encode(RunStartRequest, { goal: 'x'.repeat(1000) }, { maxPayloadBytes: 100 }),
    ).toThrow(PayloadTooLargeError);
  });

  it('refuses deep nesting', () => {
    let deep: unknown = 1;
    for (let i = 0; i < 200; i++) deep = { a: deep };
    expectBadRequest(() => decode(RunStartRequest, pack({ goal: 'g', input: { deep } })));
  });

  it('refuses wrong types and extension types', () => {
    expectBadRequest(() => decode(RunStartRequest, pack({ goal: 42 })));
    expectBadRequest(() => decode(RunStartRequest, pack('just a string')));
    expectBadRequest(() =>
      decode(RunStartRequest, pack({ goal: 'g', input: { when: new Date() } })),
    );
    // an unknown msgpack extension type (fixext1, type 1) inside a map
    expectBadRequest(() =>
      decode(
        RunStartRequest,
        new Uint8Array([0x81, 0xa4, 0x67, 0x6f, 0x61, 0x6c, 0xd4, 0x01, 0x00]),
      ),
    );
    expectBadRequest(() => decode(RunStartRequest, new Uint8Array()));
  });

  it.each(['a.b', 'a*', '>', 'has space', 'ünïcode', 'x'.repeat(65), '', 'a\nb', 'reаd'])(
    'refuses the id %j in an id field',
    (bad) => {
      expectBadRequest(() => decode(TraceEvent, pack({ ...trace, runId: bad })));
    },
  );
});

describe('property tests', () => {
  it('random valid trace events round trip', () => {
    const id = fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/);
    fc.assert(
      fc.property(
        fc.record({
          runId: id,
          role: id,
          agentId: id,
          event: fc.constantFrom('step.start', 'tool.result', 'run.end'),
          seq: fc.nat(),
          ts: fc.nat(),
          data: fc.dictionary(
            fc
              .string({ maxLength: 20 })
              .filter((k) => !['__proto__', '__proto_', 'constructor', 'prototype'].includes(k)),
            fc.oneof(fc.string(), fc.integer(), fc.boolean(), fc.constant(null)),
          ),
        }),
        (event) => {
          expect(decode(TraceEvent, encode(TraceEvent, event))).toEqual(event);
        },
      ),
    );
  });

  it('random bytes produce only ProtocolError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
        for (const schema of Object.values(Messages)) {
          try {
            decode(schema as z.ZodType, bytes);
          } catch (err) {
            expect(err).toBeInstanceOf(ProtocolError);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('random msgpack values produce only ProtocolError or a valid message', () => {
    fc.assert(
      fc.property(fc.anything(), (value) => {
        let bytes: Uint8Array;
        try {
          bytes = pack(value);
        } catch {
          return;
        }
        try {
          decode(RunStartRequest, bytes);
        } catch (err) {
          expect(err).toBeInstanceOf(ProtocolError);
        }
      }),
      { numRuns: 300 },
    );
  });
});
