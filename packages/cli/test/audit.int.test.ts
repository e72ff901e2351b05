// `reins audit verify | accept-gap | export` against chains a real supervisor wrote, after what an
// operator with JetStream admin rights (or anyone, in default mode) can do to the stream.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  AuditBatch,
  AuditTruncatedError,
  RunRecord,
  RunStartRequest,
  Streams,
  createGrantSigner,
  encode,
  sha256Hex,
  canonicalJson,
  type AuditEntry,
} from '@reins/protocol';
import { Runtime, createLogger } from '@reins/runtime';
import { ensureAuditStream, readAudit, startSupervisor } from '@reins/supervisor';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { jsonLines, reins } from './cli-process.js';

const WRITER = 'sv-audit';

async function connectRuntime(url: string): Promise<Runtime> {
  return Runtime.connect({ servers: url, logger: createLogger({ level: 'silent' }) });
}

/** Starts a supervisor, admits `runs` runs (one audit entry each, at least), stops it. */
async function supervise(
  runtime: Runtime,
  signer: ReturnType<typeof createGrantSigner>['signer'],
  runs: number,
): Promise<void> {
  const sv = await startSupervisor(runtime, { agentId: WRITER, signer });
  try {
    for (let i = 0; i < runs; i++) {
      await runtime.request(runtime.subjects.runsStart, RunStartRequest, RunRecord, {
        goal: `goal ${i}`,
        budget: { steps: 5 },
        waitForPlanner: true, // no planner: only the admissions are audited
      });
    }
  } finally {
    await sv.stop(); // anchors the head
  }
}

async function entries(nc: NatsConnection): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for await (const e of readAudit(nc, { writer: WRITER })) out.push(e);
  return out;
}

/** Delete-and-recreate the audit stream without the last `drop` messages of WRITER. */
async function truncate(nc: NatsConnection, drop: number): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(Streams.audit);
  const copy: { subject: string; data: Uint8Array }[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(Streams.audit, { seq });
    if (m) copy.push({ subject: m.subject, data: m.data });
  }
  const mine = copy.filter((m) => m.subject.endsWith(`.${WRITER}`));
  const dropped = new Set(mine.slice(-drop));
  await jsm.streams.delete(Streams.audit);
  await ensureAuditStream(jsm);
  const js = jetstream(nc);
  for (const m of copy) if (!dropped.has(m)) await js.publish(m.subject, m.data);
}

describe('reins audit: truncation', () => {
  let nats: NatsServer;
  let runtime: Runtime;
  let env: Record<string, string>;
  const { signer } = createGrantSigner();

  beforeAll(async () => {
    nats = await startNatsServer();
    runtime = await connectRuntime(nats.url);
    env = { NATS_URL: nats.url };
    await supervise(runtime, signer, 4);
  });

  afterAll(async () => {
    await runtime.close();
    await nats.stop();
  });

  it('verify says intact, and whether the keys were checked against a trust list', async () => {
    const plain = await reins(['audit', 'verify'], env);
    expect(plain.code).toBe(0);
    expect(plain.stdout).toMatch(/✓ audit chain intact: \d+ entries from \d+ writer/);
    expect(plain.stdout).toContain('NOT checked against a trust list');

    const trusted = await reins(['audit', 'verify', '--trusted-issuers', signer.publicKey], env);
    expect(trusted.code).toBe(0);
    expect(trusted.stdout).toContain('checked against 1 trusted key');
    const fromEnv = await reins(['audit', 'verify'], {
      ...env,
      REINS_TRUSTED_ISSUERS: signer.publicKey,
    });
    expect(fromEnv.stdout).toContain('checked against 1 trusted key');

    const other = createGrantSigner().signer.publicKey;
    const untrusted = await reins(['audit', 'verify', '--trusted-issuers', other], env);
    expect(untrusted.code).toBe(1);
    // The first chain in the stream: the supervisor's own, or a partition's it took over.
    expect(untrusted.stdout).toMatch(/broken at (sv-audit|part-\d+)#1 \(forged\)/);

    const bad = await reins(['audit', 'verify', '--trusted-issuers', 'not-a-key'], env);
    expect(bad.code).toBe(2);
  });

  it('a stream recreated without its last entries: verify exits 1 naming the truncation; the supervisor refuses until accept-gap', async () => {
    const before = await entries(runtime.nc);
    const last = before.at(-1)!.seq;
    await truncate(runtime.nc, 1);
    const kept = (await entries(runtime.nc)).at(-1)!.seq;
    expect(kept).toBeLessThan(last);

    const verify = await reins(['audit', 'verify'], env);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toContain(`truncated at ${WRITER}#${kept + 1}`);
    expect(verify.stdout).toContain(`reins audit accept-gap --writer ${WRITER}`);
    const json = await reins(['audit', 'verify', '--json'], env);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({
      ok: false,
      kind: 'truncated',
      writer: WRITER,
      seq: kept + 1,
    });

    // The restarted supervisor refuses: a coded error naming the command.
    const err = await startSupervisor(runtime, { agentId: WRITER, signer }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AuditTruncatedError);
    expect((err as AuditTruncatedError).code).toBe('AUDIT_TRUNCATED');
    expect((err as Error).message).toContain(`reins audit accept-gap --writer ${WRITER}`);
    expect((await entries(runtime.nc)).at(-1)!.seq).toBe(kept); // nothing appended

    const noWriter = await reins(['audit', 'accept-gap', '--writer', 'sv-none'], env);
    expect(noWriter.code).toBe(1);
    expect(noWriter.stderr).toContain('has no anchor');

    const accept = await reins(
      [
        'audit',
        'accept-gap',
        '--writer',
        WRITER,
        '--reason',
        'restored from backup',
        '--as',
        'ops',
      ],
      env,
    );
    expect(accept.code).toBe(0);
    expect(accept.stdout).toContain(`accepted gap ${WRITER}#${kept + 1}–${last}`);

    // It starts now, and its first entry records the gap and who accepted it.
    await supervise(runtime, signer, 1);
    const after = await entries(runtime.nc);
    const gapEntry = after.find((e) => e.seq === last + 1);
    expect(gapEntry).toMatchObject({
      action: 'audit.gap_accepted',
      actor: 'ops',
      details: { missing: { from: kept + 1, to: last }, reason: 'restored from backup' },
    });
    const ok = await reins(['audit', 'verify', '--trusted-issuers', signer.publicKey], env);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain(`accepted gap ${WRITER}#${kept + 1}–${last} (accepted by ops`);
  });

  it('export writes the anchors (with their history) and, with --entries, every signed batch', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'reins-audit-export-'));
    try {
      const out = join(dir, 'audit.jsonl');
      const r = await reins(['audit', 'export', '--entries', '--out', out], env);
      expect(r.code).toBe(0);
      const lines = jsonLines(await readFile(out, 'utf8')) as {
        type: string;
        writer: string;
        anchor?: { seq: number; signer: string; acceptedGap?: unknown };
        batch?: { signer?: string; entries: AuditEntry[] };
      }[];
      const anchors = lines.filter((l) => l.type === 'anchor');
      const own = anchors.filter((a) => a.writer === WRITER);
      expect(own.length).toBeGreaterThanOrEqual(3); // before, accepted gap, after
      expect(own.some((a) => a.anchor?.acceptedGap)).toBe(true);
      // The run partitions' chains are anchored too when their owner stops.
      const partitions = anchors.filter((a) => /^part-\d+$/.test(a.writer));
      expect(partitions.length).toBeGreaterThan(0);
      expect(own.length + partitions.length).toBe(anchors.length);
      expect(anchors.every((a) => a.anchor?.signer === signer.publicKey)).toBe(true);
      const batches = lines.filter((l) => l.type === 'batch');
      expect(batches.length).toBeGreaterThan(0);
      expect(batches.every((b) => b.batch?.signer === signer.publicKey)).toBe(true);
      const stdout = await reins(['audit', 'export'], env);
      expect(jsonLines(stdout.stdout).length).toBe(anchors.length);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('reins audit: forgery', () => {
  it('an entry appended with a recomputed hash but no valid signature: verify exits 1 naming it', async () => {
    await using nats = await startNatsServer();
    const runtime = await connectRuntime(nats.url);
    try {
      const { signer } = createGrantSigner();
      await supervise(runtime, signer, 2);
      const head = (await entries(runtime.nc)).at(-1)!;
      const body = {
        seq: head.seq + 1,
        writer: WRITER,
        ts: Date.now(),
        action: 'grant',
        actor: WRITER,
        details: { usd: 1000 },
        prevHash: head.hash,
      };
      const forged = { ...body, hash: sha256Hex(canonicalJson(body)) };
      // Anyone may publish here in default mode.
      await jetstream(runtime.nc).publish(
        runtime.subjects.audit(WRITER),
        encode(AuditBatch, { entries: [forged] }),
      );
      const r = await reins(['audit', 'verify'], { NATS_URL: nats.url });
      expect(r.code).toBe(1);
      expect(r.stdout).toContain(`broken at ${WRITER}#${head.seq + 1} (unsigned)`);
      // The junk does not stop that supervisor from starting again.
      await supervise(runtime, signer, 1);
      const again = await reins(['audit', 'verify', '--json'], { NATS_URL: nats.url });
      expect(JSON.parse(again.stdout)).toMatchObject({
        ok: false,
        kind: 'unsigned',
        seq: head.seq + 1,
      });
    } finally {
      await runtime.close();
    }
  });
});
