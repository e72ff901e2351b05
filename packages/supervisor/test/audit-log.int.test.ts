import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import {
  AuditAnchor,
  AuditBatch,
  AuditEntry,
  AuditTruncatedError,
  Buckets,
  ConflictError,
  ProtocolError,
  Streams,
  createGrantSigner,
  createSubjects,
  decode,
  encode,
  type GrantSigner,
} from '@reins/protocol';
import { startNatsServer, type NatsServer } from '@reins/testing';
import {
  AUDIT_GAP_ACTION,
  AuditWriter,
  GENESIS_HASH,
  acceptAuditGap,
  auditHash,
  ensureAuditStream,
  readAudit,
  readAuditAnchors,
  readAuditMessages,
  verifyAudit,
  verifyAuditMessages,
  type AuditWriterOptions,
  type StoredAuditMessage,
} from '../src/audit-log.js';

const subjects = createSubjects();
let n = 0;
const wid = (p: string) => `${p}${(n++).toString(36)}`;
/** The supervisor key every writer of these tests signs with (one per test file, like a deployment). */
const { signer } = createGrantSigner();
const attacker = createGrantSigner().signer;

function open(
  nc: NatsConnection,
  writerId: string,
  options: Partial<AuditWriterOptions> = {},
): Promise<AuditWriter> {
  return AuditWriter.open(nc, { writerId, signer, ...options });
}

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

/** A batch signed the way a writer signs it: `by`'s signature of its last entry. */
function signedBatch(by: GrantSigner, entries: AuditEntry[]): AuditBatch {
  const last = entries.at(-1)!;
  return { entries, ...by.signAuditHead({ writer: last.writer, seq: last.seq, hash: last.hash }) };
}

async function collect(nc: NatsConnection, writer?: string): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for await (const e of readAudit(nc, writer === undefined ? {} : { writer })) out.push(e);
  return out;
}

async function messages(nc: NatsConnection, writer?: string): Promise<StoredAuditMessage[]> {
  const out: StoredAuditMessage[] = [];
  for await (const m of readAuditMessages(nc, writer === undefined ? {} : { writer })) out.push(m);
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

  it('a shared chain (a run partition) passes from writer to writer; the one taken over from appends nothing more', async () => {
    const id = wid('part-');
    const other = createGrantSigner().signer;
    const first = await AuditWriter.open(nc, { writerId: id, signer, shared: {} });
    await first.append({ action: 'partition.acquire', actor: 'sv-a' });
    await first.append({ action: 'grant', actor: 'sv-a', runId: 'r1' });
    // A successor with another key continues the same chain after the first writer's entries.
    const next = await AuditWriter.open(nc, { writerId: id, signer: other, shared: {} });
    const acquired = await next.append({ action: 'partition.acquire', actor: 'sv-b' });
    expect(acquired.seq).toBe(3);
    // The first writer, unaware, appends: refused — and so is everything after, even though
    // re-reading the head would let it chain on (that is what the fence must prevent).
    const late = await Promise.allSettled([
      first.append({ action: 'grant', actor: 'sv-a', runId: 'r1' }),
      first.append({ action: 'grant', actor: 'sv-a', runId: 'r1' }),
    ]);
    expect(late.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    await expect(first.append({ action: 'grant', actor: 'sv-a', runId: 'r1' })).rejects.toThrow(
      ConflictError,
    );
    await next.append({ action: 'grant', actor: 'sv-b', runId: 'r1' });
    expect((await collect(nc, id)).map((e) => e.actor)).toEqual(['sv-a', 'sv-a', 'sv-b', 'sv-b']);
    // Without a trust list the key may change only where a new owner took over.
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: true, count: 4 });
  });

  it('writes a signed chain that verifies, with concurrent appends serialized', async () => {
    const id = wid('chain');
    const w = await open(nc, id);
    expect(w.head).toEqual({ seq: 0, hash: GENESIS_HASH });
    const written = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        w.append({ action: 'grant', actor: 'supervisor', runId: 'r1', details: { i } }),
      ),
    );
    expect(written.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(written[0]!.prevHash).toBe(GENESIS_HASH);
    expect(written[1]!.prevHash).toBe(written[0]!.hash);
    expect(await collect(nc, id)).toEqual(written);
    for (const m of await messages(nc, id)) expect(m.batch?.signer).toBe(signer.publicKey);
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({
      ok: true,
      count: 8,
      trustList: false,
    });
    expect(await verifyAudit(nc, { writer: id, trustedIssuers: [signer.publicKey] })).toMatchObject(
      { ok: true, count: 8, trustList: true },
    );
    // The same chain, checked against a trust list without its key: forged.
    expect(
      await verifyAudit(nc, { writer: id, trustedIssuers: [attacker.publicKey] }),
    ).toMatchObject({ ok: false, kind: 'forged', writer: id, seq: 1 });
  });

  it('verifies two interleaved writers and names the entry altered after reading', async () => {
    const a = await open(nc, wid('a'));
    const b = await open(nc, wid('b'));
    for (let i = 0; i < 5; i++) {
      await a.append({ action: 'grant', actor: 'sv-a', details: { i } });
      await b.append({ action: 'deny', actor: 'sv-b', rule: 'r.deny', details: { i } });
    }
    const all = (await messages(nc)).filter(
      (m) => m.writer === a.writerId || m.writer === b.writerId,
    );
    expect(all.map((m) => m.writer)).toEqual(
      Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? a.writerId : b.writerId)),
    );
    expect(await verifyAuditMessages(all)).toMatchObject({ ok: true, count: 10 });

    const alter = (i: number, change: (e: AuditEntry) => AuditEntry) =>
      all.map((m, j) =>
        j === i ? { ...m, batch: { ...m.batch!, entries: m.batch!.entries.map(change) } } : m,
      );
    // b's 3rd entry altered after hashing: its hash no longer matches.
    const altered = alter(5, (e) => ({ ...e, details: { i: 99 } }));
    expect(await verifyAuditMessages(altered)).toMatchObject({
      ok: false,
      kind: 'broken',
      writer: b.writerId,
      seq: 3,
      reason: 'hash does not match content',
    });
    // With its hash recomputed, the signature of the batch no longer verifies.
    const rehashed = alter(5, (e) => {
      const changed = { ...e, details: { i: 99 } };
      return { ...changed, hash: auditHash(changed) };
    });
    expect(await verifyAuditMessages(rehashed)).toMatchObject({
      ok: false,
      kind: 'forged',
      writer: b.writerId,
      seq: 3,
    });
    // A dropped message is a gap.
    const dropped = all.filter((_, i) => i !== 2);
    expect(await verifyAuditMessages(dropped)).toMatchObject({
      ok: false,
      kind: 'broken',
      writer: a.writerId,
      seq: 3,
    });
  });

  it('names an entry appended with a recomputed hash but no valid signature; the writer goes on', async () => {
    const id = wid('forge');
    const w = await open(nc, id);
    await w.append({ action: 'admit', actor: 'sv', runId: 'r1' });
    const second = await w.append({ action: 'grant', actor: 'sv', details: { usd: 1 } });
    // Correctly chained and hashed: only a signature can tell it from the writer's own.
    const forged = { ...chained(id, second, 'grant'), details: { usd: 1000 } };
    const rehashed = { ...forged, hash: auditHash(forged) };
    await jetstream(nc).publish(subjects.audit(id), encode(AuditBatch, { entries: [rehashed] }));
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({
      ok: false,
      kind: 'unsigned',
      writer: id,
      seq: 3,
    });
    // The writer's key and a signature copied from its last batch: the signature is of
    // another head.
    const id3 = wid('forgesig');
    const w3 = await open(nc, id3);
    const head3 = await w3.append({ action: 'admit', actor: 'sv' });
    const [stored3] = await messages(nc, id3);
    const replayed = { ...chained(id3, head3, 'grant'), details: { usd: 1000 } };
    await jetstream(nc).publish(
      subjects.audit(id3),
      encode(AuditBatch, {
        entries: [{ ...replayed, hash: auditHash(replayed) }],
        signer: stored3!.batch!.signer!,
        sig: stored3!.batch!.sig!,
      }),
    );
    const bySig = await verifyAudit(nc, { writer: id3, trustedIssuers: [signer.publicKey] });
    expect(bySig).toMatchObject({ ok: false, kind: 'forged', writer: id3, seq: 2 });
    expect(bySig.ok ? '' : bySig.reason).toContain('does not verify');
    expect((await open(nc, id3)).head.seq).toBe(1);
    // A forger's own key: a change of key on this chain, or not on the trust list.
    const id2 = wid('forgekey');
    const w2 = await open(nc, id2);
    const head2 = await w2.append({ action: 'admit', actor: 'sv' });
    await jetstream(nc).publish(
      subjects.audit(id2),
      encode(AuditBatch, signedBatch(attacker, [chained(id2, head2, 'grant')])),
    );
    const byKey = await verifyAudit(nc, { writer: id2 });
    expect(byKey).toMatchObject({ ok: false, kind: 'forged', writer: id2, seq: 2 });
    expect(byKey.ok ? '' : byKey.reason).toContain(`not by ${signer.publicKey}`);
    expect(
      await verifyAudit(nc, { writer: id2, trustedIssuers: [signer.publicKey] }),
    ).toMatchObject({ ok: false, kind: 'forged', writer: id2, seq: 2 });

    // The writer is not stopped by the junk: it continues after its own last signed batch.
    await expect(w.append({ action: 'grant', actor: 'sv' })).rejects.toBeInstanceOf(ConflictError);
    expect((await w.append({ action: 'grant', actor: 'sv' })).seq).toBe(3);
    const reopened = await open(nc, id);
    expect(reopened.head.seq).toBe(3);
    expect((await reopened.append({ action: 'settle', actor: 'sv' })).seq).toBe(4);
    // Verify still reports the forged message, and nothing else is wrong with the chain.
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({
      ok: false,
      kind: 'unsigned',
      seq: 3,
    });
  });

  it('names a writer whose subject holds a message that is not an entry, and the writer goes on', async () => {
    const id = wid('junk');
    const w = await open(nc, id);
    await w.append({ action: 'admit', actor: 'sv' });
    await jetstream(nc).publish(subjects.audit(id), new TextEncoder().encode('not msgpack{'));
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({
      ok: false,
      kind: 'forged',
      writer: id,
      seq: 2,
    });
    // Opened fresh (as a restarted supervisor would be), the writer skips the junk.
    expect((await open(nc, id)).head.seq).toBe(1);
  });

  it('fails an entry whose hash and prevHash are right but whose seq skips or repeats', async () => {
    const id = 'seq';
    const e1 = chained(id, { seq: 0, hash: GENESIS_HASH }, 'a');
    const e2 = chained(id, e1, 'b');
    const skipped = (() => {
      const body = { ...chained(id, e2, 'c'), seq: 4 };
      return { ...body, hash: auditHash(body) };
    })();
    const repeated = (() => {
      const body = { ...chained(id, e2, 'c'), seq: 2 };
      return { ...body, hash: auditHash(body) };
    })();
    const msg = (streamSeq: number, entries: AuditEntry[]): StoredAuditMessage => ({
      writer: id,
      streamSeq,
      batch: signedBatch(signer, entries),
    });
    expect(
      await verifyAuditMessages([msg(1, [e1, e2]), msg(2, [chained(id, e2, 'c')])]),
    ).toMatchObject({ ok: true, count: 3 });
    for (const bad of [skipped, repeated]) {
      // As a batch of its own, and inside a batch.
      for (const stream of [
        [msg(1, [e1, e2]), msg(2, [bad])],
        [msg(1, [e1]), msg(2, [e2, bad])],
      ]) {
        const r = await verifyAuditMessages(stream, { trustedIssuers: [signer.publicKey] });
        expect(r).toMatchObject({ ok: false, kind: 'broken', writer: id, seq: bad.seq });
        expect(r.ok ? '' : r.reason).toBe(`expected seq 3, found ${bad.seq}`);
      }
    }
  });

  it('refuses to open on a batch it signed whose entries hash but do not link; skips one it did not sign', async () => {
    const id = wid('unlinked');
    const w = await open(nc, id);
    const head = await w.append({ action: 'admit', actor: 'sv' });
    const third = chained(id, chained(id, head, 'lost'), 'grant'); // links to an entry never stored
    const unlinked = [chained(id, head, 'grant'), third];
    expect(unlinked.map((e) => auditHash(e) === e.hash)).toEqual([true, true]);
    // Not signed by the writer's key: junk, skipped.
    await jetstream(nc).publish(subjects.audit(id), encode(AuditBatch, { entries: unlinked }));
    expect((await open(nc, id)).head.seq).toBe(1);
    // Signed by it (a bug or a stolen key): the writer will not chain onto it.
    await jetstream(nc).publish(
      subjects.audit(id),
      encode(AuditBatch, signedBatch(signer, unlinked)),
    );
    const err = await open(nc, id).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as ProtocolError).message).toContain('prevHash does not match');
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: false, writer: id, seq: 2 });
    // `continue` chains onto it anyway.
    expect((await open(nc, id, { onCorruptHead: 'continue' })).head.seq).toBe(3);
  });

  it('names a batch holding another writer’s entry', async () => {
    const id = wid('fbatch');
    const other = wid('fother');
    const v = await open(nc, other);
    const head = await v.append({ action: 'admit', actor: 'sv' });
    await jetstream(nc).publish(
      subjects.audit(other),
      encode(
        AuditBatch,
        signedBatch(signer, [
          chained(other, head, 'grant'),
          chained(id, { seq: 2, hash: head.hash }, 'x'),
        ]),
      ),
    );
    const r = await verifyAudit(nc, { writer: other });
    expect(r).toMatchObject({ ok: false, kind: 'forged', writer: other, seq: 2 });
    expect(r.ok ? '' : r.reason).toContain(`claims writer ${id}`);
  });

  it('group-commits concurrent appends: one chain, far fewer messages, one signature each', async () => {
    const id = wid('group');
    const w = await open(nc, id);
    const written = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        w.append({ action: 'grant', actor: 'sv', runId: `r${i % 7}`, details: { i } }),
      ),
    );
    expect(written.map((e) => e.seq)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(written.map((e) => e.details['i'])).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(w.head).toEqual({ seq: 200, hash: written[199]!.hash });
    expect(await collect(nc, id)).toEqual(written);
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: true, count: 200 });
    const count = await messageCount(nc, id);
    expect(count).toBeLessThanOrEqual(10);
    // Every stored message is a signed batch; the last one ends with the last entry.
    const last = await (
      await jetstreamManager(nc)
    ).streams.getMessage(Streams.audit, {
      last_by_subj: subjects.audit(id),
    });
    const batch = decode(AuditBatch, last!.data);
    expect(batch.entries.at(-1)).toEqual(written[199]);
    expect(batch.signer).toBe(signer.publicKey);

    // Sequential appends (nothing queued) still publish one message each.
    await w.append({ action: 'a', actor: 'sv' });
    await w.append({ action: 'b', actor: 'sv' });
    expect(await messageCount(nc, id)).toBe(count + 2);
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: true, count: 202 });
  });

  it('bounds a batch by entries and by bytes', async () => {
    const id = wid('bound');
    const w = await open(nc, id, { maxBatchEntries: 16 });
    await Promise.all(Array.from({ length: 64 }, () => w.append({ action: 'a', actor: 'sv' })));
    expect(await messageCount(nc, id)).toBeGreaterThanOrEqual(4);
    const id2 = wid('bytes');
    const w2 = await open(nc, id2, { maxBatchBytes: 40 * 1024 });
    const big = 'x'.repeat(10 * 1024);
    await Promise.all(
      Array.from({ length: 16 }, () => w2.append({ action: 'a', actor: 'sv', details: { big } })),
    );
    expect(await messageCount(nc, id2)).toBeGreaterThanOrEqual(5); // ≤ 3 entries of 10 KiB each
    for (const writer of [id, id2]) {
      expect(await verifyAudit(nc, { writer })).toMatchObject({ ok: true });
    }
  });

  it('rejects every append of a batch that fails, then continues from the re-read head', async () => {
    const id = wid('fail');
    const nc2 = await connect({ servers: nats.url, noAsyncTraces: true });
    try {
      const p1 = await open(nc, id);
      const p2 = await open(nc2, id);
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
      expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: true, count: 6 });
    } finally {
      await nc2.close();
    }
  });

  it('does not continue an unsigned chain (the pre-signature form); verify names it', async () => {
    const id = wid('legacy');
    const e1 = chained(id, { seq: 0, hash: GENESIS_HASH }, 'admit');
    const e2 = chained(id, e1, 'grant');
    const js = jetstream(nc);
    await js.publish(subjects.audit(id), encode(AuditEntry, e1), { msgID: e1.hash });
    await js.publish(subjects.audit(id), encode(AuditEntry, e2), { msgID: e2.hash });
    expect((await collect(nc, id)).map((e) => e.seq)).toEqual([1, 2]);
    const w = await open(nc, id);
    expect(w.head.seq).toBe(0);
    expect((await w.append({ action: 'settle', actor: 'sv' })).seq).toBe(1);
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({
      ok: false,
      kind: 'unsigned',
      writer: id,
      seq: 1,
    });
  });

  it('keeps one chain when two processes open the same writer id', async () => {
    const id = wid('twin');
    const nc2 = await connect({ servers: nats.url, noAsyncTraces: true });
    try {
      const p1 = await open(nc, id);
      const p2 = await open(nc2, id);
      await p1.append({ action: 'a', actor: 'p1' });
      await expect(p2.append({ action: 'b', actor: 'p2' })).rejects.toBeInstanceOf(ConflictError);
      const e = await p2.append({ action: 'b', actor: 'p2' }); // re-read the head, then append
      expect(e.seq).toBe(2);
      await expect(p1.append({ action: 'c', actor: 'p1' })).rejects.toBeInstanceOf(ConflictError);
      expect((await p1.append({ action: 'c', actor: 'p1' })).seq).toBe(3);
      expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: true, count: 3 });
    } finally {
      await nc2.close();
    }
  });

  it('refuses invalid entries and ids', async () => {
    await expect(open(nc, 'bad.id')).rejects.toBeInstanceOf(ProtocolError);
    const w = await open(nc, wid('bad'));
    await expect(w.append({ action: 'x'.repeat(65), actor: 'sv' })).rejects.toBeInstanceOf(
      ProtocolError,
    );
    await expect(w.append({ action: 'a', actor: 'sv', runId: 'r.1' })).rejects.toBeInstanceOf(
      ProtocolError,
    );
    // A rejected entry does not advance the chain.
    expect((await w.append({ action: 'a', actor: 'sv' })).seq).toBe(1);
  });

  it('anchors the signed head every N entries and on close; a junk anchor does not stop the writer', async () => {
    const id = wid('anchor');
    const w = await open(nc, id, { anchorEvery: 5 });
    for (let i = 0; i < 7; i++) await w.append({ action: 'a', actor: 'sv' });
    const anchorOf = async () => (await readAuditAnchors(nc)).find((a) => a.writer === id)?.anchor;
    expect(await anchorOf()).toMatchObject({ writer: id, seq: 5, signer: signer.publicKey });
    await w.close();
    expect(await anchorOf()).toMatchObject({ seq: 7, hash: w.head.hash });
    const history = (await readAuditAnchors(nc, { history: true })).filter((a) => a.writer === id);
    expect(history.map((a) => a.anchor?.seq)).toEqual([5, 7]);

    // Anyone may write KV in default mode: a forged anchor is reported, and ignored by the writer.
    const real = (await anchorOf())!;
    const kv = await new Kvm(nc).open(Buckets.auditAnchors);
    const forged: AuditAnchor = {
      writer: id,
      seq: 1000,
      hash: GENESIS_HASH.replace(/0$/, '1'),
      ts: 1,
      ...attacker.signAuditHead({ writer: id, seq: 1000, hash: GENESIS_HASH.replace(/0$/, '1') }),
    };
    await kv.put(id, encode(AuditAnchor, forged));
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: false, kind: 'anchor' });
    expect((await open(nc, id)).head.seq).toBe(7); // not refused as truncated
    // The writer's key and its last anchor's signature, on a head it never signed.
    await kv.put(id, encode(AuditAnchor, { ...real, seq: 1000 }));
    const replayed = await verifyAudit(nc, { writer: id });
    expect(replayed).toMatchObject({ ok: false, kind: 'anchor', seq: 1000 });
    expect(replayed.ok ? '' : replayed.reason).toContain('not validly signed');
    expect((await open(nc, id)).head.seq).toBe(7); // not refused as truncated
    await kv.put(id, new TextEncoder().encode('junk'));
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: false, kind: 'anchor' });
    const reopened = await open(nc, id);
    expect(reopened.head.seq).toBe(7);
    await reopened.append({ action: 'a', actor: 'sv' });
    await reopened.close(); // overwrites the junk with its own signed head
    expect(await anchorOf()).toMatchObject({ seq: 8, signer: signer.publicKey });
    // A deleted anchor is reported; the bucket's history still holds what it was.
    await kv.delete(id);
    const deleted = await verifyAudit(nc, { writer: id });
    expect(deleted).toMatchObject({ ok: false, kind: 'anchor' });
    expect(deleted.ok ? '' : deleted.reason).toContain('was deleted');
    const kept = (await readAuditAnchors(nc, { history: true })).filter((a) => a.writer === id);
    expect(kept.some((a) => a.anchor?.seq === 8)).toBe(true);
    const w9 = await open(nc, id);
    await w9.append({ action: 'a', actor: 'sv' });
    await w9.close(); // its signed head replaces the deleted anchor
    expect(await verifyAudit(nc, { writer: id })).toMatchObject({ ok: true, count: 9 });
  });
});

/**
 * What an operator with JetStream admin rights can do despite deny_delete: copy the stream,
 * delete it and recreate it with only the messages `keep` selects.
 */
async function recreateStreamWithout(
  nc: NatsConnection,
  keep: (subject: string, streamSeq: number) => boolean,
): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(Streams.audit);
  const copy: { subject: string; data: Uint8Array }[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(Streams.audit, { seq });
    if (m && keep(m.subject, seq)) copy.push({ subject: m.subject, data: m.data });
  }
  await jsm.streams.delete(Streams.audit);
  await ensureAuditStream(jsm);
  const js = jetstream(nc);
  for (const m of copy) await js.publish(m.subject, m.data);
}

describe('audit truncation', () => {
  it('is found by verify, refused by the writer, and continued only after an accepted gap', async () => {
    await using nats = await startNatsServer();
    const nc = await connect({ servers: nats.url, noAsyncTraces: true });
    try {
      await ensureAuditStream(await jetstreamManager(nc));
      const id = 'sv-trunc';
      const w = await open(nc, id);
      const written = [];
      for (let i = 0; i < 12; i++) written.push(await w.append({ action: 'grant', actor: 'sv' }));
      await w.close(); // anchors seq 12
      // Another writer on the same stream keeps its chain whole.
      const other = await open(nc, 'sv-other');
      await other.append({ action: 'admit', actor: 'sv' });
      await other.close();
      expect(await verifyAudit(nc)).toMatchObject({ ok: true, count: 13 });

      // Entries 10–12 of sv-trunc removed (one message each: they were appended one by one).
      const subject = subjects.audit(id);
      let seen = 0;
      await recreateStreamWithout(nc, (s) => s !== subject || ++seen <= 9);
      const truncated = await verifyAudit(nc);
      expect(truncated).toMatchObject({ ok: false, kind: 'truncated', writer: id, seq: 10 });
      expect(truncated.ok ? '' : truncated.reason).toContain(`truncated at ${id}#10`);

      // The restarted writer refuses, naming the command that accepts the gap.
      const err = await open(nc, id).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AuditTruncatedError);
      expect((err as AuditTruncatedError).code).toBe('AUDIT_TRUNCATED');
      expect((err as Error).message).toContain(`reins audit accept-gap --writer ${id}`);
      expect((err as AuditTruncatedError).details).toMatchObject({
        missing: { from: 10, to: 12 },
      });
      // Nothing was appended meanwhile: seqs 10–12 are not reused.
      expect((await collect(nc, id)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);

      await expect(
        acceptAuditGap(nc, { writer: 'sv-other', acceptedBy: 'ops' }),
      ).rejects.toBeInstanceOf(ConflictError);
      const gap = await acceptAuditGap(nc, {
        writer: id,
        acceptedBy: 'ops@example',
        reason: 'disk restore',
      });
      expect(gap).toMatchObject({ from: 10, to: 12, headSeq: 9, headHash: written[8]!.hash });
      expect(await verifyAudit(nc)).toMatchObject({
        ok: true,
        gaps: [{ writer: id, from: 10, to: 12, acceptedBy: 'ops@example', recorded: false }],
      });

      // The restarted writer records the gap as its first entry, then goes on.
      const restarted = await open(nc, id);
      const entries = await collect(nc, id);
      const first = entries.at(-1)!;
      expect(first).toMatchObject({
        seq: 13,
        action: AUDIT_GAP_ACTION,
        actor: 'ops@example',
        prevHash: written[8]!.hash,
        details: {
          missing: { from: 10, to: 12 },
          reason: 'disk restore',
          acceptedBy: 'ops@example',
        },
      });
      expect((await restarted.append({ action: 'grant', actor: 'sv' })).seq).toBe(14);
      await restarted.close();
      expect(await verifyAudit(nc, { trustedIssuers: [signer.publicKey] })).toMatchObject({
        ok: true,
        count: 9 + 2 + 1,
        gaps: [{ writer: id, from: 10, to: 12, acceptedBy: 'ops@example', recorded: true }],
      });
      // A gap entry that does not name exactly the missing range is no excuse.
      const fake = chained(id, { seq: 14, hash: restarted.head.hash }, AUDIT_GAP_ACTION);
      const jumped = { ...fake, seq: 20, details: { missing: { from: 15, to: 18 } } };
      await jetstream(nc).publish(
        subjects.audit(id),
        encode(AuditBatch, signedBatch(signer, [{ ...jumped, hash: auditHash(jumped) }])),
      );
      expect(await verifyAudit(nc, { writer: id })).toMatchObject({
        ok: false,
        kind: 'broken',
        seq: 20,
      });

      // The whole stream deleted: every anchored chain is truncated from seq 1.
      await recreateStreamWithout(nc, () => false);
      expect(await verifyAudit(nc)).toMatchObject({ ok: false, kind: 'truncated', seq: 1 });
      await expect(open(nc, 'sv-other')).rejects.toBeInstanceOf(AuditTruncatedError);
    } finally {
      await nc.close();
    }
  });
});

describe('audit log across a server restart', () => {
  it('continues the chain after a writer and the server restart', async () => {
    await using own = await startNatsServer();
    const id = 'restart';
    const nc1 = await connect({ servers: own.url, noAsyncTraces: true });
    await ensureAuditStream(await jetstreamManager(nc1));
    const w1 = await open(nc1, id);
    await w1.append({ action: 'admit', actor: 'sv' });
    await w1.append({ action: 'grant', actor: 'sv' });
    // A batched tail: the head after the restart is the last entry of the last batch.
    await Promise.all(
      Array.from({ length: 20 }, () => w1.append({ action: 'grant', actor: 'sv' })),
    );
    expect(w1.head.seq).toBe(22);
    await w1.close();
    await nc1.close();
    await own.restart();
    const nc2 = await connect({ servers: own.url, noAsyncTraces: true });
    try {
      const w2 = await open(nc2, id);
      expect(w2.head.seq).toBe(22);
      expect((await w2.append({ action: 'settle', actor: 'sv' })).seq).toBe(23);
      const more = await Promise.all(
        Array.from({ length: 10 }, () => w2.append({ action: 'settle', actor: 'sv' })),
      );
      expect(more.map((e) => e.seq)).toEqual(Array.from({ length: 10 }, (_, i) => 24 + i));
      expect(await verifyAudit(nc2, { writer: id })).toMatchObject({ ok: true, count: 33 });
    } finally {
      await nc2.close();
    }
  });
});

describe('verifyAuditMessages', () => {
  it('starts from a known position for a chain whose start aged out', async () => {
    const e1 = chained('w', { seq: 0, hash: GENESIS_HASH }, 'a');
    const e2 = chained('w', e1, 'a');
    const e3 = chained('w', e2, 'a');
    const stream: StoredAuditMessage[] = [
      { writer: 'w', streamSeq: 2, batch: signedBatch(signer, [e2, e3]) },
    ];
    expect(await verifyAuditMessages(stream)).toMatchObject({ ok: false, writer: 'w', seq: 2 });
    expect(
      await verifyAuditMessages(stream, { startFrom: { w: { seq: 1, hash: e1.hash } } }),
    ).toMatchObject({ ok: true, count: 2 });
    expect(await verifyAuditMessages([])).toMatchObject({ ok: true, count: 0 });
  });
});
