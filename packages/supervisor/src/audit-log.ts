import {
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type PubAck,
} from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  AUDIT_BATCH_MAX_ENTRIES,
  AuditAnchor,
  AuditBatch,
  AuditEntry,
  AuditTruncatedError,
  Buckets,
  ConflictError,
  DEFAULT_MAX_PAYLOAD_BYTES,
  DEFAULT_PREFIX,
  NotFoundError,
  ProtocolError,
  Streams,
  UnavailableError,
  assertId,
  canonicalJson,
  createSubjects,
  decode,
  encode,
  sha256Hex,
  verifyAuditHead,
  type AuditGap,
  type GrantSigner,
} from '@reins/protocol';
import { isCasConflict, openBucket, retryTransport } from '@reins/runtime';

/** prevHash of the first entry of every chain. */
export const GENESIS_HASH = '0'.repeat(64);

/** Action of the entry a supervisor writes first after an operator accepted a gap. */
export const AUDIT_GAP_ACTION = 'audit.gap_accepted';
/** The entry a supervisor appends to a run partition's chain when it takes the partition over. */
export const PARTITION_ACQUIRE_ACTION = 'partition.acquire';

const NANOS_PER_MS = 1_000_000;

/** What a caller appends; the writer fills in seq, writer, ts, prevHash and hash. */
export interface AuditInput {
  action: string;
  actor: string;
  runId?: string;
  agentId?: string;
  rule?: string;
  details?: Record<string, unknown>;
  /** Entry time (default now). */
  ts?: number;
}

/** Options of `ensureAuditStream`. */
export interface AuditStreamOptions {
  /** Subject prefix (default `reins.v1`). */
  prefix?: string;
  /** Drop entries older than this (default: keep forever). */
  maxAgeMs?: number;
  /** Replicas (default 1). */
  replicas?: number;
  /** Dedupe window for append retries (default 2 minutes). */
  duplicateWindowMs?: number;
}
/**
 * Creates the `REINS_AUDIT` stream when missing: file storage, subjects `<prefix>.audit.>`,
 * deletes and purges denied (append-only; only `maxAgeMs` removes entries). An existing
 * stream is left as is, apart from `maxAgeMs` when given. Throws `UnavailableError` when
 * JetStream cannot be reached.
 */
export async function ensureAuditStream(
  jsm: JetStreamManager,
  options: AuditStreamOptions = {},
): Promise<void> {
  const subjects = createSubjects(options.prefix ?? DEFAULT_PREFIX);
  const maxAge = (options.maxAgeMs ?? 0) * NANOS_PER_MS;
  try {
    const info = await jsm.streams.info(Streams.audit).catch((err: unknown) => {
      if ((err as { code?: unknown }).code === 10059) return null; // stream not found
      throw err;
    });
    if (info === null) {
      await jsm.streams.add({
        name: Streams.audit,
        subjects: [subjects.auditAll],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        discard: DiscardPolicy.Old,
        max_age: maxAge,
        num_replicas: options.replicas ?? 1,
        duplicate_window: (options.duplicateWindowMs ?? 120_000) * NANOS_PER_MS,
        deny_delete: true,
        deny_purge: true,
      });
    } else if (options.maxAgeMs !== undefined && info.config.max_age !== maxAge) {
      await jsm.streams.update(Streams.audit, { max_age: maxAge });
    }
  } catch (err) {
    throw new UnavailableError('cannot ensure the audit stream', { cause: err });
  }
}

/** The hash of an entry: sha256 over the canonical JSON of every field but `hash`. */
export function auditHash(entry: Omit<AuditEntry, 'hash'> & { hash?: string }): string {
  const { hash: _hash, ...body } = entry;
  return sha256Hex(canonicalJson(body));
}

/** The subset of a pino logger the writer uses. */
export interface AuditLogger {
  warn(obj: object, msg: string): void;
}

/** Options of `AuditWriter.open`. */
export interface AuditWriterOptions {
  /** This writer's id (one per supervisor instance; it names its chain and subject). */
  writerId: string;
  /**
   * The supervisor's signing key: it signs the head (last entry) of every batch and every
   * anchor. The writer continues only from batches this key signed.
   */
  signer: GrantSigner;
  /** Subject prefix (default `reins.v1`). */
  prefix?: string;
  /** Publish ack timeout (default 5000 ms). */
  timeoutMs?: number;
  /** Publish attempts when an ack is lost (same msgID, so the stream dedupes; default 3). */
  attempts?: number;
  /**
   * What to do when the last batch this key signed does not verify (its entries do not hash
   * or link): `throw` (default) refuses to extend it; `continue` chains onto it anyway.
   */
  onCorruptHead?: 'throw' | 'continue';
  /** Most entries published as one message (group commit; default 256, at most 1024). */
  maxBatchEntries?: number;
  /** Soft cap on the encoded size of one batch (default 512 KiB; one entry always fits). */
  maxBatchBytes?: number;
  /**
   * Anchor the signed head in KV `reins_audit_anchors` at least every this many entries
   * (default 100), and on `close()`.
   */
  anchorEvery?: number;
  /** Receives warnings: foreign messages skipped on the chain, anchors ignored or not written. */
  logger?: AuditLogger;
  /**
   * A chain that several supervisors write in turn (a run partition's: one owner at a time,
   * each taking over from the last). The writer continues from the last batch signed by any of
   * `trusted` (or by any valid signature when `trusted` is empty), not only by its own key, and
   * accepts such a key's anchor. Appends stay compare-and-set on the subject's last sequence,
   * so a writer that another one took over from is refused (`ConflictError`): the fence.
   */
  shared?: { trusted?: readonly string[] };
  /**
   * Called once per stored batch, in chain order, as soon as JetStream acknowledged it, with
   * its entries and stream sequence (before the appends resolve).
   */
  onStored?: (entries: readonly AuditEntry[], streamSeq: number) => void;
}

interface Head {
  seq: number;
  hash: string;
  /** Stream sequence of the last message on this writer's subject (0: none). */
  streamSeq: number;
}

/** An accepted append waiting for its batch: the validated entry without its chain fields. */
interface Pending {
  body: Omit<AuditEntry, 'seq' | 'prevHash' | 'hash'>;
  /** Encoded size of the entry (an upper bound). */
  bytes: number;
  resolve: (entry: AuditEntry) => void;
  reject: (err: unknown) => void;
}

/** Encoded bytes of `{ entries: [], signer, sig }` around the entries (array32 header included). */
const BATCH_OVERHEAD_BYTES = 192;
/** Bytes `seq` may grow by between validation and publish (msgpack uint 1 → 9 bytes). */
const SEQ_SLACK_BYTES = 8;

/**
 * Decodes one stored audit message: an `AuditBatch`, or a single `AuditEntry` (the form
 * written before group commit, returned as an unsigned batch of one). Throws a
 * `ProtocolError` otherwise.
 */
export function decodeAuditMessage(bytes: Uint8Array): AuditBatch {
  try {
    return decode(AuditBatch, bytes, { name: 'audit batch' });
  } catch (err) {
    try {
      return { entries: [decode(AuditEntry, bytes, { name: 'audit entry' })] };
    } catch {
      throw err;
    }
  }
}

/** One stored message of the audit stream, decoded as far as it goes. */
export interface StoredAuditMessage {
  /** The writer its subject names. */
  writer: string;
  streamSeq: number;
  /** The batch; absent when the message is not one of this writer's batches. */
  batch?: AuditBatch;
  /** Why it is not (when `batch` is absent). */
  invalid?: string;
}

function storedMessage(writer: string, streamSeq: number, data: Uint8Array): StoredAuditMessage {
  let batch: AuditBatch;
  try {
    batch = decodeAuditMessage(data);
  } catch {
    return { writer, streamSeq, invalid: 'is not an audit batch' };
  }
  const other = batch.entries.find((e) => e.writer !== writer);
  if (other) return { writer, streamSeq, invalid: `claims writer ${other.writer}` };
  return { writer, streamSeq, batch };
}

/** Where the entries of one batch stop chaining among themselves, or undefined. */
function batchFault(entries: readonly AuditEntry[]): { seq: number; reason: string } | undefined {
  let last: AuditEntry | undefined;
  for (const e of entries) {
    if (auditHash(e) !== e.hash) return { seq: e.seq, reason: 'hash does not match content' };
    if (last && e.seq !== last.seq + 1) {
      return { seq: e.seq, reason: `expected seq ${last.seq + 1}, found ${e.seq}` };
    }
    if (last && e.prevHash !== last.hash) {
      return { seq: e.seq, reason: 'prevHash does not match the previous entry' };
    }
    last = e;
  }
  return undefined;
}

/** True when `batch` carries `key`'s valid signature of its last entry. */
function signedBy(batch: AuditBatch, key: string): boolean {
  const last = batch.entries.at(-1);
  return (
    last !== undefined &&
    batch.signer === key &&
    batch.sig !== undefined &&
    verifyAuditHead({ writer: last.writer, seq: last.seq, hash: last.hash }, key, batch.sig)
  );
}

/** True when an anchor's signature verifies under the key it names. */
function anchorSigned(a: AuditAnchor): boolean {
  return verifyAuditHead({ writer: a.writer, seq: a.seq, hash: a.hash }, a.signer, a.sig);
}

/** A writer's latest anchor: `anchor` when it parses (its signature is not checked here). */
interface AnchorRead {
  anchor?: AuditAnchor;
  invalid?: string;
  /** KV revision of the key (0: never written), for compare-and-set. */
  revision: number;
}

async function readAnchor(kv: KV, writer: string): Promise<AnchorRead> {
  let e: KvEntry | null;
  try {
    e = await kv.get(writer);
  } catch (cause) {
    throw new UnavailableError('audit: cannot read the chain anchor', { cause });
  }
  if (!e) return { revision: 0 };
  if (e.operation !== 'PUT') return { revision: e.revision, invalid: 'was deleted' };
  try {
    return { anchor: decode(AuditAnchor, e.value, { name: 'audit anchor' }), revision: e.revision };
  } catch {
    return { revision: e.revision, invalid: 'is not an audit anchor' };
  }
}

/** The anchors bucket when it exists (readers never create it). */
async function existingAnchors(nc: NatsConnection): Promise<KV | undefined> {
  try {
    const jsm = await jetstreamManager(nc, { checkAPI: false });
    const found = await jsm.streams.info(`KV_${Buckets.auditAnchors}`).then(
      () => true,
      (err: unknown) => {
        if ((err as { code?: unknown }).code === 10059) return false;
        throw err;
      },
    );
    return found ? await new Kvm(nc).open(Buckets.auditAnchors) : undefined;
  } catch (cause) {
    throw new UnavailableError('audit: cannot read the anchors', { cause });
  }
}

/**
 * The append side of one writer's hash chain, with group commit: one publish is in flight at a
 * time; entries appended meanwhile queue up and, once it is acknowledged, go out together as
 * one `AuditBatch` message (consecutive seqs, each prevHash the previous hash) whose last entry
 * is signed with the supervisor's key. Each message is published with `msgID` = the hash of its
 * last entry (a retried publish is deduped) and `expect.lastSubjectSequence` = the previous
 * message, so a second process with the same writer id cannot fork the chain: its append fails
 * with a `ConflictError` and it re-reads the head before the next one. Every `append` resolves
 * only once its batch is acknowledged.
 *
 * The signed head is anchored in KV `reins_audit_anchors` every `anchorEvery` entries and on
 * `close()`; `open` refuses a chain that ends before its anchor (`AuditTruncatedError`) until
 * an operator accepts the gap (`acceptAuditGap`), and then first writes an
 * `audit.gap_accepted` entry that takes the seq after the anchored one. Messages on the
 * writer's subject that this key did not sign (junk, unsigned or forged) are skipped when the
 * head is looked for: they cannot stop the writer, and `verifyAudit` reports them.
 */
export class AuditWriter {
  readonly writerId: string;
  readonly subject: string;
  readonly #nc: NatsConnection;
  readonly #prefix: string;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #kv: KV;
  readonly #signer: GrantSigner;
  readonly #logger: AuditLogger | undefined;
  readonly #timeoutMs: number;
  readonly #attempts: number;
  readonly #onCorruptHead: 'throw' | 'continue';
  readonly #maxBatchEntries: number;
  readonly #maxBatchBytes: number;
  readonly #anchorEvery: number;
  readonly #shared: { trusted?: readonly string[] } | undefined;
  readonly #onStored: ((entries: readonly AuditEntry[], streamSeq: number) => void) | undefined;
  #head: Head | undefined;
  /**
   * A shared chain's writer that another one took over from (its expected sequence failed):
   * it appends nothing more. (Re-reading the head would continue after the new owner's
   * entries — exactly what the fence must prevent.)
   */
  #fenced = false;
  /** A shared chain's head after an unacknowledged publish may only be one of these hashes. */
  #reloadMustBe: ReadonlySet<string> | undefined;
  #pending: Pending[] = [];
  #running = false;
  #idle: Promise<void> = Promise.resolve();
  #anchoredSeq = 0;
  #anchorRevision = 0;

  private constructor(
    nc: NatsConnection,
    jsm: JetStreamManager,
    kv: KV,
    subject: string,
    options: AuditWriterOptions,
  ) {
    this.#nc = nc;
    this.#prefix = options.prefix ?? DEFAULT_PREFIX;
    this.#js = jetstream(nc, { timeout: options.timeoutMs ?? 5_000 });
    this.#jsm = jsm;
    this.#kv = kv;
    this.#signer = options.signer;
    this.#logger = options.logger;
    this.writerId = options.writerId;
    this.subject = subject;
    this.#timeoutMs = options.timeoutMs ?? 5_000;
    this.#attempts = options.attempts ?? 3;
    this.#onCorruptHead = options.onCorruptHead ?? 'throw';
    this.#maxBatchEntries = Math.max(
      1,
      Math.min(AUDIT_BATCH_MAX_ENTRIES, Math.floor(options.maxBatchEntries ?? 256)),
    );
    this.#maxBatchBytes = Math.max(1, options.maxBatchBytes ?? 512 * 1024);
    this.#anchorEvery = Math.max(1, Math.floor(options.anchorEvery ?? 100));
    this.#shared = options.shared;
    this.#onStored = options.onStored;
  }

  /** Whether this writer continues from (and accepts anchors of) batches signed by `key`. */
  #accepts(key: string): boolean {
    if (key === this.#signer.publicKey) return true;
    if (!this.#shared) return false;
    const trusted = this.#shared.trusted ?? [];
    return trusted.length === 0 || trusted.includes(key);
  }

  /** True when `batch` is validly signed by a key this writer continues from. */
  #continuesFrom(batch: AuditBatch): boolean {
    return (
      batch.signer !== undefined && this.#accepts(batch.signer) && signedBy(batch, batch.signer)
    );
  }

  /**
   * Opens a writer and continues its chain from the last batch its key signed on its subject.
   * The stream must exist (`ensureAuditStream`); the anchors bucket is created when missing.
   * Throws `UnavailableError` when JetStream cannot be reached, `ProtocolError` when that
   * batch is corrupt (see `onCorruptHead`) or the chain disagrees with its anchor, and
   * `AuditTruncatedError` when the chain ends before its anchored head and no operator
   * accepted the gap.
   */
  static async open(nc: NatsConnection, options: AuditWriterOptions): Promise<AuditWriter> {
    assertId(options.writerId, 'audit writer');
    const subject = createSubjects(options.prefix ?? DEFAULT_PREFIX).audit(options.writerId);
    let jsm: JetStreamManager;
    try {
      jsm = await jetstreamManager(nc, { timeout: options.timeoutMs ?? 5_000, checkAPI: false });
    } catch (err) {
      throw new UnavailableError('audit: JetStream unavailable', { cause: err });
    }
    const kv = await openBucket(nc, Buckets.auditAnchors);
    const w = new AuditWriter(nc, jsm, kv, subject, options);
    await w.#loadHead();
    await w.#checkAnchor();
    return w;
  }

  /** Stream sequence of the last message on this chain's subject (0: none, or not read yet). */
  get headStreamSeq(): number {
    return this.#head?.streamSeq ?? 0;
  }

  /** Position of the last entry written (or found on open): `{ seq: 0 }` for an empty chain. */
  get head(): { seq: number; hash: string } {
    const h = this.#head ?? { seq: 0, hash: GENESIS_HASH };
    return { seq: h.seq, hash: h.hash };
  }

  /**
   * Appends an entry and resolves once JetStream stored it (in the batch that carries it).
   * Throws `ProtocolError` for an invalid entry, `ConflictError` (retryable) when another
   * process appended to this chain, and `UnavailableError` when the stream cannot be reached;
   * a failed publish rejects every entry of its batch, and the next batch re-reads the chain
   * head first.
   */
  append(input: AuditInput): Promise<AuditEntry> {
    return new Promise<AuditEntry>((resolve, reject) => {
      // An invalid input throws here: the promise rejects and the chain is not touched.
      this.#pending.push({ ...this.#validate(input), resolve, reject });
      if (!this.#running) {
        this.#running = true;
        // Start on a microtask: appends made in the same tick share the first batch.
        this.#idle = new Promise<void>((done) => {
          queueMicrotask(() => void this.#run().then(done));
        });
      }
    });
  }

  /**
   * Waits for the appends in flight, then anchors the head. Throws `UnavailableError` or
   * `ConflictError` when the anchor cannot be written (the entries are stored either way).
   */
  async close(): Promise<void> {
    while (this.#running) await this.#idle;
    await this.#anchor();
  }

  /**
   * Validates an input as it will be stored (inside a batch, so nesting and size limits are
   * those of the stored message) and returns the parsed entry body, defaults applied: the hash
   * is computed over what will be decoded on the other side.
   */
  #validate(input: AuditInput): Omit<Pending, 'resolve' | 'reject'> {
    const provisional: AuditEntry = {
      seq: 1,
      writer: this.writerId,
      ts: input.ts ?? Date.now(),
      action: input.action,
      actor: input.actor,
      details: input.details ?? {},
      prevHash: GENESIS_HASH,
      hash: GENESIS_HASH,
    };
    if (input.runId !== undefined) provisional.runId = input.runId;
    if (input.agentId !== undefined) provisional.agentId = input.agentId;
    if (input.rule !== undefined) provisional.rule = input.rule;
    const bytes = encode(
      AuditBatch,
      { entries: [provisional] },
      {
        name: 'audit entry',
        maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES - BATCH_OVERHEAD_BYTES - SEQ_SLACK_BYTES,
      },
    );
    const [parsed] = decode(AuditBatch, bytes, { name: 'audit entry' }).entries;
    if (!parsed) throw new ProtocolError('audit: invalid audit entry');
    const { seq: _seq, prevHash: _prev, hash: _hash, ...body } = parsed;
    return { body, bytes: bytes.length + SEQ_SLACK_BYTES };
  }

  /** Publishes the queue batch by batch, one in flight, until it is empty. Never rejects. */
  async #run(): Promise<void> {
    try {
      while (this.#pending.length > 0) {
        let n = 0;
        let size = BATCH_OVERHEAD_BYTES;
        for (const p of this.#pending) {
          if (n === this.#maxBatchEntries || (n > 0 && size + p.bytes > this.#maxBatchBytes)) break;
          size += p.bytes;
          n++;
        }
        const batch = this.#pending.splice(0, n);
        try {
          const entries = await this.#publish(batch);
          batch.forEach((p, i) => {
            const entry = entries[i];
            if (entry) p.resolve(entry);
          });
        } catch (err) {
          for (const p of batch) p.reject(err);
        }
        if (this.#head && this.#head.seq - this.#anchoredSeq >= this.#anchorEvery) {
          await this.#anchor().catch((err: unknown) => {
            this.#logger?.warn(
              { err, writer: this.writerId },
              'audit: cannot anchor the chain head; trying again after the next batch',
            );
          });
        }
      }
    } finally {
      this.#running = false;
    }
  }

  /** Chains `batch` onto the head, signs its last entry and publishes it; resolves once acked. */
  async #publish(batch: readonly Pending[]): Promise<AuditEntry[]> {
    if (this.#fenced) {
      throw new ConflictError(`audit: chain ${this.writerId} was taken over by another writer`, {
        details: { writer: this.writerId },
      });
    }
    if (!this.#head) await this.#reloadHead();
    const head = this.#head ?? { seq: 0, hash: GENESIS_HASH, streamSeq: 0 };
    const entries: AuditEntry[] = [];
    let last = { seq: head.seq, hash: head.hash };
    for (const p of batch) {
      const body = { ...p.body, seq: last.seq + 1, prevHash: last.hash };
      const entry = { ...body, hash: auditHash(body) };
      entries.push(entry);
      last = entry;
    }
    const signed = this.#signer.signAuditHead({ writer: this.writerId, ...last });
    const bytes = encode(AuditBatch, { entries, ...signed }, { name: 'audit batch' });
    let ack: PubAck | undefined;
    let lastErr: unknown;
    for (let i = 0; i < this.#attempts && !ack; i++) {
      try {
        ack = await this.#js.publish(this.subject, bytes, {
          msgID: last.hash,
          expect: { lastSubjectSequence: head.streamSeq },
          timeout: this.#timeoutMs,
        });
      } catch (err) {
        lastErr = err;
        const code = (err as { code?: unknown }).code;
        if (code === 10071 || code === 10164) {
          this.#head = undefined;
          if (this.#shared) this.#fenced = true;
          throw new ConflictError(
            `audit: another process appended to chain ${this.writerId}; the head is re-read`,
            { cause: err, details: { writer: this.writerId } },
          );
        }
      }
    }
    if (!ack) {
      this.#head = undefined; // unknown whether it landed: re-read before the next batch
      // On a shared chain the head read next must be ours: this batch, or the one before it.
      if (this.#shared) this.#reloadMustBe = new Set([head.hash, last.hash]);
      throw new UnavailableError('audit: append not acknowledged', { cause: lastErr });
    }
    this.#head = { seq: last.seq, hash: last.hash, streamSeq: ack.seq };
    this.#onStored?.(entries, ack.seq);
    return entries;
  }

  /** `#loadHead`, refusing a shared chain that moved on past our last (maybe stored) batch. */
  async #reloadHead(): Promise<void> {
    await this.#loadHead();
    const must = this.#reloadMustBe;
    if (!must) return;
    this.#reloadMustBe = undefined;
    if (this.#head && must.has(this.#head.hash)) return;
    this.#fenced = true;
    this.#head = undefined;
    throw new ConflictError(
      `audit: chain ${this.writerId} moved on while an append was unacknowledged (taken over)`,
      { details: { writer: this.writerId } },
    );
  }

  /**
   * Finds the head: the last batch on the subject signed by this key. Usually that is the last
   * message; when it is not (junk, unsigned or another key's), the subject is read from the
   * start and such messages are skipped, so one published message cannot stop the writer.
   */
  async #loadHead(): Promise<void> {
    let sm;
    try {
      sm = await this.#jsm.streams.getMessage(Streams.audit, { last_by_subj: this.subject });
    } catch (err) {
      throw new UnavailableError('audit: cannot read the chain head', { cause: err });
    }
    if (!sm) {
      this.#head = { seq: 0, hash: GENESIS_HASH, streamSeq: 0 };
      return;
    }
    const lastMessage = storedMessage(this.writerId, sm.seq, sm.data);
    let own = lastMessage.batch && this.#continuesFrom(lastMessage.batch) ? lastMessage : undefined;
    if (!own) {
      let skipped = 0;
      for await (const m of readAuditMessages(this.#nc, {
        writer: this.writerId,
        prefix: this.#prefix,
      })) {
        if (m.streamSeq > sm.seq) break;
        if (m.batch && this.#continuesFrom(m.batch)) {
          own = m;
          skipped = 0;
        } else skipped++;
      }
      this.#logger?.warn(
        { writer: this.writerId, skipped, streamSeq: sm.seq },
        'audit: messages on this chain are not signed by this supervisor; continuing after its last signed batch (`reins audit verify` reports them)',
      );
    }
    if (!own?.batch) {
      this.#head = { seq: 0, hash: GENESIS_HASH, streamSeq: sm.seq };
      return;
    }
    const fault = batchFault(own.batch.entries);
    if (fault && this.#onCorruptHead === 'throw') {
      throw new ProtocolError(
        `audit: the head of chain ${this.writerId} does not verify (${fault.reason})`,
        { details: { writer: this.writerId, seq: fault.seq, streamSeq: own.streamSeq } },
      );
    }
    const last = own.batch.entries.at(-1);
    if (!last) throw new ProtocolError(`audit: the head of chain ${this.writerId} is empty`);
    this.#head = { seq: last.seq, hash: last.hash, streamSeq: sm.seq };
  }

  /** Compares the head with its anchor: refuses a chain cut short, records an accepted gap. */
  async #checkAnchor(): Promise<void> {
    const read = await readAnchor(this.#kv, this.writerId);
    this.#anchorRevision = read.revision;
    const anchor = read.anchor;
    if (
      !anchor ||
      anchor.writer !== this.writerId ||
      !this.#accepts(anchor.signer) ||
      !anchorSigned(anchor)
    ) {
      if (read.revision !== 0) {
        this.#logger?.warn(
          { writer: this.writerId, revision: read.revision, reason: read.invalid },
          'audit: the anchor of this chain is not signed by this supervisor; ignoring it (`reins audit verify` reports it)',
        );
      }
      return;
    }
    const head = this.#head ?? { seq: 0, hash: GENESIS_HASH, streamSeq: 0 };
    if (anchor.seq < head.seq) {
      this.#anchoredSeq = anchor.seq;
      return;
    }
    if (anchor.seq === head.seq) {
      if (anchor.hash !== head.hash) {
        throw new ProtocolError(
          `audit: entry ${this.writerId}#${head.seq} is not the one its anchor records: the chain was rewritten`,
          { details: { writer: this.writerId, seq: head.seq } },
        );
      }
      this.#anchoredSeq = anchor.seq;
      return;
    }
    const gap = anchor.acceptedGap;
    if (
      gap &&
      gap.headSeq === head.seq &&
      gap.headHash === head.hash &&
      gap.from === head.seq + 1 &&
      gap.to === anchor.seq
    ) {
      // The removed seqs are never reused: the next entry takes the one after the anchor and
      // links to the last entry still there, and says so.
      this.#head = { ...head, seq: anchor.seq };
      this.#anchoredSeq = anchor.seq;
      await this.append({
        action: AUDIT_GAP_ACTION,
        actor: gap.acceptedBy,
        details: {
          missing: { from: gap.from, to: gap.to },
          anchoredHash: anchor.hash,
          acceptedBy: gap.acceptedBy,
          acceptedAt: gap.ts,
          ...(gap.reason !== undefined ? { reason: gap.reason } : {}),
        },
      });
      await this.#anchor();
      return;
    }
    const from = head.seq + 1;
    throw new AuditTruncatedError(
      `audit chain truncated at ${this.writerId}#${from}: the stream ends at seq ${head.seq} but the chain's anchor records seq ${anchor.seq} (entries ${from}–${anchor.seq} are missing). ` +
        `Refusing to append. Find out what removed them; to continue anyway, accept the gap with \`reins audit accept-gap --writer ${this.writerId} --reason "…"\` and start again.`,
      {
        details: {
          writer: this.writerId,
          headSeq: head.seq,
          anchoredSeq: anchor.seq,
          missing: { from, to: anchor.seq },
        },
      },
    );
  }

  /** Writes the signed head to the anchors bucket (compare-and-set on the revision read). */
  async #anchor(): Promise<void> {
    const head = this.#head;
    if (!head || head.seq === 0 || head.seq <= this.#anchoredSeq) return;
    const value: AuditAnchor = {
      writer: this.writerId,
      seq: head.seq,
      hash: head.hash,
      ...this.#signer.signAuditHead({ writer: this.writerId, seq: head.seq, hash: head.hash }),
      ts: Date.now(),
    };
    const bytes = encode(AuditAnchor, value, { name: 'audit anchor' });
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        this.#anchorRevision =
          this.#anchorRevision === 0
            ? await this.#kv.create(this.writerId, bytes)
            : await this.#kv.update(this.writerId, bytes, this.#anchorRevision);
        this.#anchoredSeq = head.seq;
        return;
      } catch (err) {
        if (!isCasConflict(err)) {
          throw new UnavailableError('audit: cannot write the chain anchor', { cause: err });
        }
        const current = await readAnchor(this.#kv, this.writerId);
        this.#anchorRevision = current.revision;
        const a = current.anchor;
        if (a && this.#accepts(a.signer) && anchorSigned(a) && a.seq >= head.seq) {
          this.#anchoredSeq = head.seq; // a twin process anchored as far
          return;
        }
      }
    }
    throw new ConflictError(`audit: the anchor of chain ${this.writerId} keeps changing`, {
      details: { writer: this.writerId },
    });
  }
}

/** Options of `readAudit`. */
export interface ReadAuditOptions {
  /** One writer's chain (default: every writer, in stream order). */
  writer?: string;
  /** Subject prefix (default `reins.v1`). */
  prefix?: string;
  /** Read only the messages after this stream sequence (a checkpoint's). */
  afterStreamSeq?: number;
}

/**
 * Reads the audit stream from the start up to its current end, one stored message at a time
 * (every writer's, or one writer's), decoded as far as it goes: a message that is not an
 * audit batch of the writer its subject names comes with `invalid` instead of `batch`. A
 * missing stream reads as empty. Throws `UnavailableError` when JetStream cannot be reached.
 */
export async function* readAuditMessages(
  nc: NatsConnection,
  options: ReadAuditOptions = {},
): AsyncGenerator<StoredAuditMessage> {
  const subjects = createSubjects(options.prefix ?? DEFAULT_PREFIX);
  const filter = options.writer === undefined ? subjects.auditAll : subjects.audit(options.writer);
  const tokens = subjects.audit('x').split('.').length;
  let total: number;
  const after = options.afterStreamSeq ?? 0;
  try {
    const jsm = await jetstreamManager(nc, { checkAPI: false });
    if (after > 0) {
      // Nothing after the checkpoint: a consumer started past the end would wait for good.
      const last = await jsm.streams
        .getMessage(Streams.audit, { last_by_subj: filter })
        .catch((err: unknown) => {
          if ((err as { code?: unknown }).code === 10059) return null; // stream not found
          throw err;
        });
      if (!last || last.seq <= after) return;
    }
    const info = await jsm.streams
      .info(Streams.audit, { subjects_filter: filter })
      .catch((err: unknown) => {
        if ((err as { code?: unknown }).code === 10059) return null; // stream not found
        throw err;
      });
    total = Object.values(info?.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  } catch (err) {
    throw new UnavailableError('audit: cannot read the stream', { cause: err });
  }
  if (total === 0) return;
  const js = jetstream(nc);
  // An ephemeral consumer: on a cluster that lost a node, nats-server < 2.11 may place it on the
  // lost node and its creation times out (K9): create it again.
  const messages = await retryTransport(
    'audit read',
    async () => {
      const consumer = await js.consumers.get(Streams.audit, {
        filter_subjects: filter,
        ...(after > 0
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 }
          : {}),
      });
      return consumer.consume({ max_messages: 256 });
    },
    { timeoutMs: 30_000 },
  );
  try {
    for await (const m of messages) {
      const parts = m.subject.split('.');
      const writer = parts.length === tokens ? (parts[tokens - 1] ?? '?') : '?';
      yield storedMessage(writer, m.seq, m.data);
      if (m.info.pending === 0) break;
    }
  } finally {
    await messages.close();
  }
}

/**
 * Reads the audit entries from the start up to the current end: every writer's, or one
 * writer's, batches flattened in chain order. It checks nothing (use `verifyAudit`); a stored
 * message that is not an audit batch of its subject's writer is thrown as a `ProtocolError`
 * with `details.writer`.
 */
export async function* readAudit(
  nc: NatsConnection,
  options: ReadAuditOptions = {},
): AsyncGenerator<AuditEntry> {
  for await (const m of readAuditMessages(nc, options)) {
    if (!m.batch) {
      throw new ProtocolError(
        `audit: message ${m.streamSeq} on ${m.writer}'s subject ${m.invalid ?? 'is invalid'}`,
        { details: { writer: m.writer, streamSeq: m.streamSeq } },
      );
    }
    yield* m.batch.entries;
  }
}

/** One stored value of the anchors bucket (its history included). */
export interface StoredAuditAnchor {
  /** The key: the writer id. */
  writer: string;
  revision: number;
  /** `PUT`, or `DEL`/`PURGE` when someone deleted the anchor. */
  operation: string;
  /** When the value was stored (server time). */
  created: string;
  anchor?: AuditAnchor;
  invalid?: string;
}

/**
 * Reads the anchors bucket (`reins_audit_anchors`): every writer's current anchor, or with
 * `history` every value kept, in the order stored. A missing bucket reads as empty. Throws
 * `UnavailableError` when JetStream cannot be reached.
 */
export async function readAuditAnchors(
  nc: NatsConnection,
  options: { history?: boolean } = {},
): Promise<StoredAuditAnchor[]> {
  const kv = await existingAnchors(nc);
  if (!kv) return [];
  const all: StoredAuditAnchor[] = [];
  try {
    const iter = await kv.history();
    for await (const e of iter) {
      const stored: StoredAuditAnchor = {
        writer: e.key,
        revision: e.revision,
        operation: e.operation,
        created: e.created.toISOString(),
      };
      if (e.operation === 'PUT') {
        try {
          stored.anchor = decode(AuditAnchor, e.value, { name: 'audit anchor' });
        } catch {
          stored.invalid = 'is not an audit anchor';
        }
      } else stored.invalid = `was deleted (${e.operation})`;
      all.push(stored);
    }
  } catch (cause) {
    throw new UnavailableError('audit: cannot read the anchors', { cause });
  }
  if (options.history) return all;
  const latest = new Map<string, StoredAuditAnchor>();
  for (const a of all) latest.set(a.writer, a);
  return [...latest.values()];
}

/** Options of `acceptAuditGap`. */
export interface AcceptAuditGapOptions {
  /** The writer (supervisor id) whose chain is behind its anchor. */
  writer: string;
  /** Who accepts (recorded in the anchor and in the chain). */
  acceptedBy: string;
  reason?: string;
  /** Subject prefix (default `reins.v1`). */
  prefix?: string;
}

/**
 * Accepts the gap between a writer's chain and its anchor, so its supervisor starts again: it
 * records `{ from, to, acceptedBy, reason }` in the anchor, and the supervisor writes it into
 * the chain as its next entry (`audit.gap_accepted`). The chain head is the last batch signed
 * by the key that signed the anchor. Throws `NotFoundError` when the writer has no anchor,
 * `ProtocolError` when its anchor is not validly signed, and `ConflictError` when there is no
 * gap or the anchor changed meanwhile.
 */
export async function acceptAuditGap(
  nc: NatsConnection,
  options: AcceptAuditGapOptions,
): Promise<AuditGap> {
  const writer = assertId(options.writer, 'audit writer');
  const kv = await existingAnchors(nc);
  const read = kv ? await readAnchor(kv, writer) : { revision: 0 };
  const anchor = read.anchor;
  if (!kv || !anchor) {
    throw new NotFoundError(`audit: writer ${writer} has no anchor: there is no gap to accept`, {
      details: { writer },
    });
  }
  if (anchor.writer !== writer || !anchorSigned(anchor)) {
    throw new ProtocolError(
      `audit: the anchor of ${writer} is not validly signed; it cannot vouch for a gap`,
      { details: { writer } },
    );
  }
  let head = { seq: 0, hash: GENESIS_HASH };
  for await (const m of readAuditMessages(nc, {
    writer,
    ...(options.prefix ? { prefix: options.prefix } : {}),
  })) {
    if (m.batch && signedBy(m.batch, anchor.signer) && !batchFault(m.batch.entries)) {
      const last = m.batch.entries.at(-1);
      if (last) head = { seq: last.seq, hash: last.hash };
    }
  }
  if (head.seq >= anchor.seq) {
    throw new ConflictError(
      `audit: chain ${writer} reaches seq ${head.seq} and its anchor seq ${anchor.seq}: there is no gap to accept`,
      { details: { writer, headSeq: head.seq, anchoredSeq: anchor.seq } },
    );
  }
  const gap: AuditGap = {
    from: head.seq + 1,
    to: anchor.seq,
    acceptedBy: options.acceptedBy,
    ...(options.reason !== undefined ? { reason: options.reason } : {}),
    ts: Date.now(),
    headSeq: head.seq,
    headHash: head.hash,
  };
  const bytes = encode(AuditAnchor, { ...anchor, acceptedGap: gap }, { name: 'audit anchor' });
  try {
    await kv.update(writer, bytes, read.revision);
  } catch (cause) {
    if (isCasConflict(cause)) {
      throw new ConflictError(`audit: the anchor of ${writer} changed meanwhile; try again`, {
        cause,
        details: { writer },
      });
    }
    throw new UnavailableError('audit: cannot write the anchor', { cause });
  }
  return gap;
}

/** What went wrong first: a chain `broken` (hash, seq or link), a message `forged` (not a
 * valid batch, bad signature, untrusted or changed key), `unsigned`, `truncated` (ends
 * before its anchor), or an `anchor` that is forged, deleted or disagrees with the chain. */
export type AuditProblemKind = 'broken' | 'forged' | 'unsigned' | 'truncated' | 'anchor';

/** A gap an operator accepted; `recorded` once the supervisor wrote it into the chain. */
export interface AcceptedAuditGap {
  writer: string;
  from: number;
  to: number;
  acceptedBy: string;
  reason?: string;
  recorded: boolean;
}

/** What `verifyAudit` answers. `trustList`: signatures were checked against trusted keys. */
export type AuditVerification =
  | {
      ok: true;
      count: number;
      heads: Record<string, { seq: number; hash: string }>;
      gaps: AcceptedAuditGap[];
      trustList: boolean;
    }
  | {
      ok: false;
      kind: AuditProblemKind;
      writer: string;
      seq: number;
      reason: string;
      count: number;
      trustList: boolean;
    };

/** Options of `verifyAuditMessages`. */
export interface VerifyAuditMessagesOptions {
  /**
   * Public keys of the supervisors whose signatures are accepted (`REINS_TRUSTED_ISSUERS`).
   * Without any, each writer's batches must all be signed by one key: the first it used.
   */
  trustedIssuers?: readonly string[];
  /** The anchors (`readAuditAnchors`): a chain that ends before its anchor is truncated. */
  anchors?: readonly StoredAuditAnchor[];
  /**
   * Known chain positions to start from (writer → the last verified entry), for streams
   * whose oldest entries aged out. Without one, a chain starts at seq 1 with the genesis hash.
   */
  startFrom?: Record<string, { seq: number; hash: string }>;
}

/** The gap an `audit.gap_accepted` entry vouches for between `prev` and it, or undefined. */
function recordedGap(
  e: AuditEntry,
  prev: { seq: number; hash: string },
): AcceptedAuditGap | undefined {
  if (e.action !== AUDIT_GAP_ACTION || e.seq <= prev.seq + 1 || e.prevHash !== prev.hash) {
    return undefined;
  }
  const missing = e.details['missing'] as { from?: unknown; to?: unknown } | undefined;
  if (missing?.from !== prev.seq + 1 || missing.to !== e.seq - 1) return undefined;
  const reason = e.details['reason'];
  return {
    writer: e.writer,
    from: prev.seq + 1,
    to: e.seq - 1,
    acceptedBy: e.actor,
    ...(typeof reason === 'string' ? { reason } : {}),
    recorded: true,
  };
}

/**
 * Verifies stored audit messages (any mix of writers, in stream order, such as
 * `readAuditMessages()`): each must be a batch whose last entry carries a valid signature by a
 * trusted key (or, without a trust list, by the key that signed the writer's other batches);
 * each entry's hash must match its content, its seq must follow and its prevHash must be the
 * previous hash (a skipped range is accepted only where an `audit.gap_accepted` entry names
 * it). Messages that fail the signature checks are skipped, so the chain around them is still
 * checked. Then each writer's chain must reach its anchor. Returns the first problem, by
 * writer and seq, or every writer's head and the accepted gaps.
 */
export async function verifyAuditMessages(
  messages: Iterable<StoredAuditMessage> | AsyncIterable<StoredAuditMessage>,
  options: VerifyAuditMessagesOptions = {},
): Promise<AuditVerification> {
  const trust =
    options.trustedIssuers && options.trustedIssuers.length > 0
      ? new Set(options.trustedIssuers)
      : undefined;
  const trustList = trust !== undefined;
  const heads = new Map(Object.entries(options.startFrom ?? {}));
  const keys = new Map<string, Set<string>>();
  const gaps: AcceptedAuditGap[] = [];
  let count = 0;
  let problem: { kind: AuditProblemKind; writer: string; seq: number; reason: string } | undefined;
  const note = (kind: AuditProblemKind, writer: string, seq: number, reason: string) => {
    problem ??= { kind, writer, seq, reason };
  };
  // Without a trust list a chain keeps the key that signed it first — except a run partition's
  // chain, which a new owner may take over with its own key: its first entry says so.
  const keyFault = (writer: string, signer: string, takeover = false): string | undefined => {
    if (trust) return trust.has(signer) ? undefined : `signed by ${signer}, not a trusted key`;
    const known = keys.get(writer);
    if (known === undefined || known.has(signer) || takeover) return undefined;
    return `signed by ${signer}, not by ${[...known].join(' or ')} which signed this chain before`;
  };
  // Anchors whose signature verifies are compared with the chain as it is read.
  const anchors = new Map<string, StoredAuditAnchor>();
  for (const a of options.anchors ?? []) anchors.set(a.writer, a);
  const signedAnchors = new Map<string, AuditAnchor>();
  for (const [w, a] of anchors) {
    if (a.anchor && a.anchor.writer === w && anchorSigned(a.anchor)) signedAnchors.set(w, a.anchor);
  }

  for await (const m of messages) {
    const w = m.writer;
    const prev = heads.get(w) ?? { seq: 0, hash: GENESIS_HASH };
    const b = m.batch;
    const first = b?.entries[0];
    const last = b?.entries.at(-1);
    if (!b || !first || !last) {
      note(
        'forged',
        w,
        prev.seq + 1,
        `message ${m.streamSeq} on ${w}'s subject ${m.invalid ?? 'is empty'}`,
      );
      continue;
    }
    const at = `${w}#${first.seq}${last.seq !== first.seq ? `–${last.seq}` : ''} (message ${m.streamSeq})`;
    if (b.signer === undefined || b.sig === undefined) {
      note('unsigned', w, first.seq, `${at} is not signed`);
      continue;
    }
    if (!verifyAuditHead({ writer: w, seq: last.seq, hash: last.hash }, b.signer, b.sig)) {
      note('forged', w, first.seq, `the signature of ${at} does not verify (forged or altered)`);
      continue;
    }
    const kf = keyFault(w, b.signer, first.action === PARTITION_ACQUIRE_ACTION);
    if (kf) {
      note('forged', w, first.seq, `${at} is ${kf}`);
      continue;
    }
    keys.set(w, (keys.get(w) ?? new Set<string>()).add(b.signer));
    let p = prev;
    for (const e of b.entries) {
      if (auditHash(e) !== e.hash) note('broken', w, e.seq, 'hash does not match content');
      else if (e.seq !== p.seq + 1) {
        const gap = recordedGap(e, p);
        if (gap) gaps.push(gap);
        else note('broken', w, e.seq, `expected seq ${p.seq + 1}, found ${e.seq}`);
      } else if (e.prevHash !== p.hash) {
        note('broken', w, e.seq, 'prevHash does not match the previous entry');
      }
      const a = signedAnchors.get(w);
      if (a && a.seq === e.seq && a.hash !== e.hash) {
        note('anchor', w, e.seq, `${w}#${e.seq} is not the entry its anchor records (rewritten)`);
      }
      p = { seq: e.seq, hash: e.hash };
      count++;
    }
    heads.set(w, p);
  }

  for (const [w, stored] of anchors) {
    const a = stored.anchor;
    const head = heads.get(w) ?? { seq: 0, hash: GENESIS_HASH };
    if (!a || a.writer !== w) {
      note(
        'anchor',
        w,
        head.seq,
        `the anchor of ${w} ${stored.invalid ?? `names writer ${a?.writer ?? '?'}`} (revision ${stored.revision})`,
      );
      continue;
    }
    if (!signedAnchors.has(w)) {
      note(
        'anchor',
        w,
        a.seq,
        `the anchor of ${w} (revision ${stored.revision}) is not validly signed (forged)`,
      );
      continue;
    }
    const kf = keyFault(w, a.signer);
    if (kf) {
      note('anchor', w, a.seq, `the anchor of ${w} (revision ${stored.revision}) is ${kf}`);
      continue;
    }
    if (head.seq >= a.seq) continue;
    const gap = a.acceptedGap;
    if (
      gap &&
      gap.headSeq === head.seq &&
      gap.headHash === head.hash &&
      gap.from === head.seq + 1 &&
      gap.to === a.seq
    ) {
      gaps.push({
        writer: w,
        from: gap.from,
        to: gap.to,
        acceptedBy: gap.acceptedBy,
        ...(gap.reason !== undefined ? { reason: gap.reason } : {}),
        recorded: false,
      });
      continue;
    }
    note(
      'truncated',
      w,
      head.seq + 1,
      `truncated at ${w}#${head.seq + 1}: the chain ends at seq ${head.seq}, but its anchor (signed ${new Date(a.ts).toISOString()}) records seq ${a.seq}; entries ${head.seq + 1}–${a.seq} are missing`,
    );
  }
  if (problem) return { ok: false, ...problem, count, trustList };
  return { ok: true, count, heads: Object.fromEntries(heads), gaps, trustList };
}

/** Options of `verifyAudit`. */
export interface VerifyAuditOptions {
  /** Subject prefix (default `reins.v1`). */
  prefix?: string;
  /** One writer's chain (default: every writer). */
  writer?: string;
  /** Public keys of trusted supervisors; see `VerifyAuditMessagesOptions.trustedIssuers`. */
  trustedIssuers?: readonly string[];
}

/**
 * Reads the audit stream and the anchors and verifies them (`verifyAuditMessages`): signed
 * batches, intact chains, and chains that reach their anchors. Throws `UnavailableError` when
 * JetStream cannot be reached; every problem found in the data is an `ok: false` answer.
 */
export async function verifyAudit(
  nc: NatsConnection,
  options: VerifyAuditOptions = {},
): Promise<AuditVerification> {
  const anchors = (await readAuditAnchors(nc)).filter(
    (a) => options.writer === undefined || a.writer === options.writer,
  );
  return verifyAuditMessages(
    readAuditMessages(nc, {
      ...(options.prefix !== undefined ? { prefix: options.prefix } : {}),
      ...(options.writer !== undefined ? { writer: options.writer } : {}),
    }),
    { anchors, ...(options.trustedIssuers ? { trustedIssuers: options.trustedIssuers } : {}) },
  );
}
