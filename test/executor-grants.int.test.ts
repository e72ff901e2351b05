import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import {
  Buckets,
  ExecuteRequest,
  ToolResult,
  createGrantSigner,
  hashArgs,
  newId,
  type GrantBody,
  type GrantSigner,
} from '@reins/protocol';
import { startE2E, type E2E } from './support/e2e.js';
import { idempotencyKvKey } from './support/packages.js';

// Trace work as it starts too (`model.call`, `tool.start`; off by default): these checks count the executions that started (`tool.start`), finished or not.
// Set before any runtime connects; spawned processes inherit it.
process.env['REINS_TRACE_IN_FLIGHT'] = '1';

const RUN = 'run-e2e-direct';

interface Call {
  path: string;
  content: string;
  key: string;
  stepId?: string;
}

/** Plays the supervisor: signs a write_file grant for exactly `call` (then `overrides`). */
function grantFor(signer: GrantSigner, call: Call, overrides: Partial<GrantBody> = {}) {
  const now = Date.now();
  return signer.sign({
    grantId: newId('g'),
    runId: RUN,
    agentId: 'planner-e2e',
    role: 'researcher',
    kind: 'tool',
    stepId: call.stepId ?? 's1',
    tool: 'write_file',
    argsHash: hashArgs({ path: call.path, content: call.content }),
    idempotencyKey: call.key,
    reserved: { inputTokens: 0, outputTokens: 0, usd: 0, steps: 0 },
    issuedAt: now,
    expiresAt: now + 60_000,
    issuer: signer.publicKey,
    ...overrides,
  });
}

function request(call: Call, grant: ReturnType<typeof grantFor>): ExecuteRequest {
  return {
    grant,
    runId: RUN,
    stepId: call.stepId ?? 's1',
    tool: 'write_file',
    args: { path: call.path, content: call.content },
    idempotencyKey: call.key,
    timeoutMs: 10_000,
  };
}

/** Sends an execute request the way the supervisor forwards one: straight to `exec.write_file`. */
function execute(e: E2E, req: ExecuteRequest): Promise<ToolResult> {
  const rt = e.client.runtime;
  return rt.request(rt.subjects.exec('write_file'), ExecuteRequest, ToolResult, req, {
    timeoutMs: 15_000,
  });
}

async function idempotencyEntry(e: E2E, key: string) {
  const kv = await new Kvm(e.client.runtime.nc).open(Buckets.idem);
  return kv.get(idempotencyKvKey(key));
}

/** Two executor processes (one queue group) trusting the supervisor's key. */
async function deployment(): Promise<E2E> {
  const e = await startE2E();
  e.startSupervisor('sv-1');
  e.startExecutor('exec-1');
  e.startExecutor('exec-2');
  await e.waitForAgents(3);
  return e;
}

describe('executors under signed grants, driven directly', () => {
  it('runs a duplicated execute request once: repeats and concurrent copies get the stored result', async () => {
    await using e = await deployment();
    await using trace = await e.trace(RUN);
    const starts = (key: string) =>
      trace.events.filter(
        (ev) =>
          ev.event === 'tool.start' &&
          ev.data['idempotencyKey'] === key &&
          ev.data['replayed'] === false,
      );
    const ends = (key: string) =>
      trace.events.filter((ev) => ev.event === 'tool.end' && ev.data['idempotencyKey'] === key);

    // The same request twice, one after the other (a redelivered forward).
    const once: Call = { path: 'dup.md', content: '# Once\n', key: `${RUN}.1.0` };
    const req = request(once, grantFor(e.signer, once));
    const first = await execute(e, req);
    expect(first).toMatchObject({ ok: true, replayed: false });
    const file = join(e.sandbox, 'dup.md');
    // write_file replaces the file atomically (rename): a second write would change its inode.
    const before = await stat(file);
    const second = await execute(e, req);
    expect(second).toMatchObject({ ok: true, replayed: true });
    expect(second.ok && second.output).toEqual(first.ok && first.output);
    const after = await stat(file);
    expect(after.ino).toBe(before.ino);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    expect(await readFile(file, 'utf8')).toBe(once.content);

    // Five copies at once, spread over both executors.
    const many: Call = { path: 'many.md', content: '# Many\n', key: `${RUN}.2.0`, stepId: 's2' };
    const manyReq = request(many, grantFor(e.signer, many));
    const results = await Promise.all(Array.from({ length: 5 }, () => execute(e, manyReq)));
    expect(results.every((r) => r.ok)).toBe(true);
    expect(results.filter((r) => r.ok && !r.replayed)).toHaveLength(1);
    const outputs = results.map((r) => (r.ok ? r.output : undefined));
    for (const output of outputs) expect(output).toEqual(outputs[0]);
    expect(await readFile(join(e.sandbox, 'many.md'), 'utf8')).toBe(many.content);

    // Every copy is traced (2 + 5 ends), and only one of them ran the tool.
    await trace.waitFor(() => ends(once.key).length >= 2 && ends(many.key).length >= 5, 'ends');
    expect(starts(once.key)).toHaveLength(1);
    expect(starts(many.key)).toHaveLength(1);
    for (const key of [once.key, many.key]) {
      const entry = await idempotencyEntry(e, key);
      expect(entry?.operation).toBe('PUT');
    }
  });

  it('refuses forged, expired, altered and mismatched grants without running the tool', async () => {
    await using e = await deployment();
    await using trace = await e.trace(RUN);
    const call = (n: number): Call => ({
      path: `refused-${n}.md`,
      content: `# Refused ${n}\n`,
      key: `${RUN}.9.${n}`,
    });
    const now = Date.now();
    const { signer: stranger } = createGrantSigner();
    const altered = grantFor(e.signer, call(2));
    const cases = [
      {
        what: 'signed by a key the executors do not trust',
        req: request(call(0), grantFor(stranger, call(0))),
        reason: 'untrusted_issuer',
      },
      {
        what: 'expired',
        req: request(
          call(1),
          grantFor(e.signer, call(1), { issuedAt: now - 120_000, expiresAt: now - 60_000 }),
        ),
        reason: 'expired',
      },
      {
        what: 'altered after signing (longer expiry)',
        req: request(call(2), { ...altered, expiresAt: altered.expiresAt + 3_600_000 }),
        reason: 'bad_signature',
      },
      {
        what: 'for other arguments',
        req: {
          ...request(call(3), grantFor(e.signer, call(3))),
          args: { path: call(3).path, content: 'something else' },
        },
        reason: 'mismatch_argsHash',
      },
      {
        what: 'for another idempotency key',
        req: { ...request(call(4), grantFor(e.signer, call(4))), idempotencyKey: `${RUN}.9.99` },
        reason: 'mismatch_idempotencyKey',
      },
    ];
    for (const c of cases) {
      await expect(execute(e, c.req), c.what).rejects.toMatchObject({
        code: 'GRANT_INVALID',
        details: { reason: c.reason },
      });
    }

    // A valid call afterwards: its trace is the barrier after which refused ones would show.
    const valid = call(5);
    expect(await execute(e, request(valid, grantFor(e.signer, valid)))).toMatchObject({
      ok: true,
      replayed: false,
    });
    await trace.waitFor(
      (ev) => ev.event === 'tool.end' && ev.data['idempotencyKey'] === valid.key,
      'tool.end of the valid call',
    );
    const ran = trace.events.filter((ev) => ev.event === 'tool.start');
    expect(ran.map((ev) => ev.data['idempotencyKey'])).toEqual([valid.key]);
    for (const n of [0, 1, 2, 3, 4]) {
      await expect(stat(join(e.sandbox, call(n).path)), `file ${n}`).rejects.toMatchObject({
        code: 'ENOENT',
      });
      expect(await idempotencyEntry(e, call(n).key)).toBeNull();
    }
    expect(await idempotencyEntry(e, `${RUN}.9.99`)).toBeNull();
  });
});
