import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import {
  AuditBatch,
  AuditEntry,
  ConflictError,
  ProtocolError,
  Streams,
  createSubjects,
  decode,
  encode,
} from '@reins/protocol';
import { startNatsServer, type NatsServer } from '@reins/testing';
import {
  AuditWriter,
  GENESIS_HASH,
  auditHash,
  ensureAuditStream,
  readAudit,
  verifyAudit,
} from '../src/index.js';

const subjects = createSubjects();
let n = 0;
const wid = (p: string) => `${p}${(n++).toString(36)}`;

async function messageCount(nc: NatsConnection, writer: string): Promise<number> {
  const subject = subjects.audit(writer);
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(Streams.audit, { subjects_filter: subject });
  return info.state.subjects?.[subject] ?? 0;
}

/** A correctly hashed entry chained onto `prev`. */
function chained(writer: string, prev: { seq: number; hash: string }, action: string): AuditEntry {
  const body = {
    seq: prev.seq + 1,
    writer,
    ts: 1,
    action,
    actor: 'x',
    details: {},
    prevHash: prev.hash,
  };
  return { ...body, hash: auditHash(body) };
}

async function collect(nc: NatsConnection, writer?: string): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for await (const e of readAudit(nc, writer === undefined ? {} : { writer })) out.push(e);
  return out;
}

describe('audit log', () => {
  let nats: NatsServer;
  let nc: NatsConnection;

  beforeAll(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url, noAsyncTraces: true });
    const jsm = await jetstreamManager(nc);
    await ensureAuditStream(jsm);
    await ensureAuditStream(jsm); // idempotent
    const info = await jsm.streams.info(Streams.audit);
    expect(info.config.deny_delete).toBe(true);
    expect(info.config.deny_purge).toBe(true);
  });

  afterAll(async () => {
    await nc.close();
    await nats.stop();
  });

  it('writes a chain that verifies, with concurrent appends serialized', async () => {
    const id = wid('chain');
    const w = await AuditWriter.open(nc, { writerId: id });
    expect(w.head).toEqual({ seq: 0, hash: GENESIS_HASH });
    const written = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        w.append({ action: 'grant', actor: 'supervisor', runId: 'r1', details: { i } }),
      ),
    );
    expect(written.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(written[0]!.prevHash).toBe(GENESIS_HASH);
    expect(written[1]!.prevHash).toBe(written[0]!.hash);
    const stored = await collect(nc, id);
    expect(stored).toEqual(written);
    expect(await verifyAudit(stored)).toMatchObject({ ok: true, count: 8 });
    expect(await verifyAudit(readAudit(nc, { writer: id }))).toMatchObject({ ok: true, count: 8 });
  });

  it('verifies two interleaved writers and names the entry altered after reading', async () => {
    const a = await AuditWriter.open(nc, { writerId: wid('a') });
    const b = await AuditWriter.open(nc, { writerId: wid('b') });
    for (let i = 0; i < 5; i++) {
      await a.append({ action: 'grant', actor: 'sv-a', details: { i } });
      await b.append({ action: 'deny', actor: 'sv-b', rule: 'r.deny', details: { i } });
    }
    const all = (await collect(nc)).filter(
      (e) => e.writer === a.writerId || e.writer === b.writerId,
    );
    expect(all.map((e) => e.writer)).toEqual(
      Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? a.writerId : b.writerId)),
    );
    expect(await verifyAudit(all)).toMatchObject({ ok: true, count: 10 });

    const altered = all.map((e) => ({ ...e }));
    altered[5] = { ...altered[5]!, details: { i: 99 } }; // b's 3rd entry
    expect(await verifyAudit(altered)).toMatchObject({
      ok: false,
      writer: b.writerId,
      seq: 3,
      reason: 'hash does not match content',
    });
    // Recomputing the altered entry's hash moves the break to the next entry of that chain.
    altered[5] = { ...altered[5], hash: auditHash(altered[5]) };
    expect(await verifyAudit(altered)).toMatchObject({ ok: false, writer: b.writerId, seq: 4 });
    // A dropped entry is a gap.
    const dropped = all.filter((_, i) => i !== 2);
    expect(await verifyAudit(dropped)).toMatchObject({ ok: false, writer: a.writerId, seq: 3 });
  });

  it('names an entry forged onto a writer subject in the store, and refuses to extend it', async () => {
    const id = wid('forge');
    const w = await AuditWriter.open(nc, { writerId: id });
    await w.append({ action: 'admit', actor: 'sv', runId: 'r1' });
    const second = await w.append({
      action: 'grant',
      actor: 'sv',
      runId: 'r1',
      details: { usd: 1 },
    });
    const forged: AuditEntry = {
      ...second,
      seq: 3,
      prevHash: second.hash,
      action: 'grant',
      details: { usd: 1000 },
      hash: second.hash, // the forger cannot produce a matching hash without recomputing it
    };
    await jetstream(nc).publish(subjects.audit(id), encode(AuditEntry, forged));
    expect(await verifyAudit(readAudit(nc, { writer: id }))).toMatchObject({
      ok: false,
      writer: id,
      seq: 3,
    });
    await expect(w.append({ action: 'grant', actor: 'sv' })).rejects.toBeInstanceOf(ConflictError);
    await expect(w.append({ action: 'grant', actor: 'sv' })).rejects.toBeInstanceOf(ProtocolError);
    await expect(AuditWriter.open(nc, { writerId: id })).rejects.toBeInstanceOf(ProtocolError);
  });

  it('names a writer whose subject holds a message that is not an entry', async () => {
    const id = wid('junk');
    const w = await AuditWriter.open(nc, { writerId: id });
    await w.append({ action: 'admit', actor: 'sv' });
    await jetstream(nc).publish(subjects.audit(id), new TextEncoder().encode('not msgpack{'));
    expect(await verifyAudit(readAudit(nc, { writer: id }))).toMatchObject({
      ok: false,
      writer: id,
      seq: 2,
    });
  });

  it('group-commits concurrent appends: one chain, far fewer messages', async () => {
    const id = wid('group');
    const w = await AuditWriter.open(nc, { writerId: id });
    const written = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        w.append({ action: 'grant', actor: 'sv', runId: `r${i % 7}`, details: { i } }),
      ),
    );
    expect(written.map((e) => e.seq)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(written.map((e) => e.details['i'])).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(w.head).toEqual({ seq: 200, hash: written[199]!.hash });
    const stored = await collect(nc, id);
    expect(stored).toEqual(written);
    expect(await verifyAudit(stored)).toMatchObject({ ok: true, count: 200 });
    const messages = await messageCount(nc, id);
    expect(messages).toBeLessThanOrEqual(10);
    // Every stored message is a batch; the last one ends with the last entry.
    const last = await (
      await jetstreamManager(nc)
    ).streams.getMessage(Streams.audit, {
      last_by_subj: subjects.audit(id),
    });
    expect(decode(AuditBatch, last!.data).entries.at(-1)).toEqual(written[199]);

    // Sequential appends (nothing queued) still publish one message each.
    await w.append({ action: 'a', actor: 'sv' });
    await w.append({ action: 'b', actor: 'sv' });
    expect(await messageCount(nc, id)).toBe(messages + 2);
    expect(await verifyAudit(readAudit(nc, { writer: id }))).toMatchObject({
      ok: true,
      count: 202,
    });
  });

  it('bounds a batch by entries and by bytes', async () => {
    const id = wid('bound');
    const w = await AuditWriter.open(nc, { writerId: id, maxBatchEntries: 16 });
    await Promise.all(Array.from({ length: 64 }, () => w.append({ action: 'a', actor: 'sv' })));
    expect(await messageCount(nc, id)).toBeGreaterThanOrEqual(4);
    const id2 = wid('bytes');
    const w2 = await AuditWriter.open(nc, { writerId: id2, maxBatchBytes: 40 * 1024 });
    const big = 'x'.repeat(10 * 1024);
    await Promise.all(
      Array.from({ length: 16 }, () => w2.append({ action: 'a', actor: 'sv', details: { big } })),
    );
    expect(await messageCount(nc, id2)).toBeGreaterThanOrEqual(5); // ≤ 3 entries of 10 KiB each
    for (const writer of [id, id2]) {
      expect(await verifyAudit(readAudit(nc, { writer }))).toMatchObject({ ok: true });
    }
  });

  it('rejects every append of a batch that fails, then continues from the re-read head', async () => {
    const id = wid('fail');
    const nc2 = await connect({ servers: nats.url, noAsyncTraces: true });
    try {
      const p1 = await AuditWriter.open(nc, { writerId: id });
      const p2 = await AuditWriter.open(nc2, { writerId: id });
      await p2.append({ action: 'other', actor: 'p2' });
      // Appended in one tick, these go out as one batch that conflicts: all are rejected.
      const failed = await Promise.allSettled(
        Array.from({ length: 5 }, () => p1.append({ action: 'a', actor: 'p1' })),
      );
      for (const r of failed) {
        expect(r.status).toBe('rejected');
        expect((r as PromiseRejectedResult).reason).toBeInstanceOf(ConflictError);
      }
      const next = await Promise.all(
        Array.from({ length: 5 }, () => p1.append({ action: 'b', actor: 'p1' })),
      );
      expect(next.map((e) => e.seq)).toEqual([2, 3, 4, 5, 6]);
      expect(await messageCount(nc, id)).toBe(2);
      expect(await verifyAudit(readAudit(nc, { writer: id }))).toMatchObject({
        ok: true,
        count: 6,
      });
    } finally {
      await nc2.close();
    }
  });

  it('names a tampered entry inside a forged batch by writer and seq', async () => {
    const id = wid('fbatch');
    const w = await AuditWriter.open(nc, { writerId: id });
    await w.append({ action: 'admit', actor: 'sv' });
    const second = await w.append({ action: 'grant', actor: 'sv', details: { usd: 1 } });
    // A batch whose first entry chains correctly and whose second was altered after hashing.
    const third = chained(id, second, 'grant');
    const fourth = { ...chained(id, third, 'grant'), details: { usd: 1000 } };
    await jetstream(nc).publish(
      subjects.audit(id),
      encode(AuditBatch, { entries: [third, fourth] }),
    );
    expect(await verifyAudit(readAudit(nc, { writer: id }))).toMatchObject({
      ok: false,
      writer: id,
      seq: 4,
      reason: 'hash does not match content',
    });
    await expect(w.append({ action: 'grant', actor: 'sv' })).rejects.toBeInstanceOf(ConflictError);
    await expect(AuditWriter.open(nc, { writerId: id })).rejects.toBeInstanceOf(ProtocolError);

    // A batch on one writer's subject holding another writer's entry is named too.
    const other = wid('fother');
    const v = await AuditWriter.open(nc, { writerId: other });
    const head = await v.append({ action: 'admit', actor: 'sv' });
    await jetstream(nc).publish(
      subjects.audit(other),
      encode(AuditBatch, {
        entries: [chained(other, head, 'grant'), chained(id, { seq: 2, hash: head.hash }, 'x')],
      }),
    );
    expect(await verifyAudit(readAudit(nc, { writer: other }))).toMatchObject({
      ok: false,
      writer: other,
      seq: 3,
    });
  });

  it('reads and continues a chain stored as single entries (the pre-batch form)', async () => {
    const id = wid('legacy');
    const e1 = chained(id, { seq: 0, hash: GENESIS_HASH }, 'admit');
    const e2 = chained(id, e1, 'grant');
    const js = jetstream(nc);
    await js.publish(subjects.audit(id), encode(AuditEntry, e1), { msgID: e1.hash });
    await js.publish(subjects.audit(id), encode(AuditEntry, e2), { msgID: e2.hash });
    const w = await AuditWriter.open(nc, { writerId: id });
    expect(w.head).toEqual({ seq: 2, hash: e2.hash });
    const more = await Promise.all(
      Array.from({ length: 5 }, () => w.append({ action: 'settle', actor: 'sv' })),
    );
    expect(more.map((e) => e.seq)).toEqual([3, 4, 5, 6, 7]);
    expect((await collect(nc, id)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(await verifyAudit(readAudit(nc, { writer: id }))).toMatchObject({
      ok: true,
      count: 7,
    });
  });

  it('keeps one chain when two processes open the same writer id', async () => {
    const id = wid('twin');
    const nc2 = await connect({ servers: nats.url, noAsyncTraces: true });
    try {
      const p1 = await AuditWriter.open(nc, { writerId: id });
      const p2 = await AuditWriter.open(nc2, { writerId: id });
      await p1.append({ action: 'a', actor: 'p1' });
      await expect(p2.append({ action: 'b', actor: 'p2' })).rejects.toBeInstanceOf(ConflictError);
      const e = await p2.append({ action: 'b', actor: 'p2' }); // re-read the head, then append
      expect(e.seq).toBe(2);
      await expect(p1.append({ action: 'c', actor: 'p1' })).rejects.toBeInstanceOf(ConflictError);
      expect((await p1.append({ action: 'c', actor: 'p1' })).seq).toBe(3);
      expect(await verifyAudit(readAudit(nc, { writer: id }))).toMatchObject({
        ok: true,
        count: 3,
      });
    } finally {
      await nc2.close();
    }
  });

  it('refuses invalid entries and ids', async () => {
    await expect(AuditWriter.open(nc, { writerId: 'bad.id' })).rejects.toBeInstanceOf(
      ProtocolError,
    );
    const w = await AuditWriter.open(nc, { writerId: wid('bad') });
    await expect(w.append({ action: 'x'.repeat(65), actor: 'sv' })).rejects.toBeInstanceOf(
      ProtocolError,
    );
    await expect(w.append({ action: 'a', actor: 'sv', runId: 'r.1' })).rejects.toBeInstanceOf(
      ProtocolError,
    );
    // A rejected entry does not advance the chain.
    expect((await w.append({ action: 'a', actor: 'sv' })).seq).toBe(1);
  });
});

describe('audit log across a server restart', () => {
  it('continues the chain after a writer and the server restart', async () => {
    await using own = await startNatsServer();
    const id = 'restart';
    const nc1 = await connect({ servers: own.url, noAsyncTraces: true });
    await ensureAuditStream(await jetstreamManager(nc1));
    const w1 = await AuditWriter.open(nc1, { writerId: id });
    await w1.append({ action: 'admit', actor: 'sv' });
    await w1.append({ action: 'grant', actor: 'sv' });
    // A batched tail: the head after the restart is the last entry of the last batch.
    await Promise.all(
      Array.from({ length: 20 }, () => w1.append({ action: 'grant', actor: 'sv' })),
    );
    expect(w1.head.seq).toBe(22);
    await nc1.close();
    await own.restart();
    const nc2 = await connect({ servers: own.url, noAsyncTraces: true });
    try {
      const w2 = await AuditWriter.open(nc2, { writerId: id });
      expect(w2.head.seq).toBe(22);
      expect((await w2.append({ action: 'settle', actor: 'sv' })).seq).toBe(23);
      const more = await Promise.all(
        Array.from({ length: 10 }, () => w2.append({ action: 'settle', actor: 'sv' })),
      );
      expect(more.map((e) => e.seq)).toEqual(Array.from({ length: 10 }, (_, i) => 24 + i));
      expect(await verifyAudit(readAudit(nc2, { writer: id }))).toMatchObject({
        ok: true,
        count: 33,
      });
    } finally {
      await nc2.close();
    }
  });
});

describe('verifyAudit', () => {
  it('accepts an anchor for a chain whose start aged out, and rejects junk', async () => {
    const e = (seq: number, prevHash: string) => {
      const body = { seq, writer: 'w', ts: 1, action: 'a', actor: 'x', details: {}, prevHash };
      return { ...body, hash: auditHash(body) } as AuditEntry;
    };
    const e1 = e(1, GENESIS_HASH);
    const e2 = e(2, e1.hash);
    const e3 = e(3, e2.hash);
    expect(await verifyAudit([e2, e3])).toMatchObject({ ok: false, writer: 'w', seq: 2 });
    expect(
      await verifyAudit([e2, e3], { anchors: { w: { seq: 1, hash: e1.hash } } }),
    ).toMatchObject({
      ok: true,
      count: 2,
    });
    expect(await verifyAudit([e1, { junk: true } as unknown as AuditEntry])).toMatchObject({
      ok: false,
      reason: 'not a valid audit entry',
    });
    expect(await verifyAudit([])).toMatchObject({ ok: true, count: 0 });
  });
});
