import {
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type PubAck,
} from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  AUDIT_BATCH_MAX_ENTRIES,
  AuditBatch,
  AuditEntry,
  DEFAULT_MAX_PAYLOAD_BYTES,
  DEFAULT_PREFIX,
  ReinsError,
  Streams,
  assertId,
  canonicalJson,
  createSubjects,
  decode,
  encode,
  sha256Hex,
} from '@reins/protocol';
import { ConflictError, ProtocolError, UnavailableError } from '@reins/protocol';
import { retryTransport } from '@reins/runtime';

/** prevHash of the first entry of every chain. */
export const GENESIS_HASH = '0'.repeat(64);

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

/** Options of `AuditWriter.open`. */
export interface AuditWriterOptions {
  /** This writer's id (one per supervisor instance; it names its chain and subject). */
  writerId: string;
  /** Subject prefix (default `reins.v1`). */
  prefix?: string;
  /** Publish ack timeout (default 5000 ms). */
  timeoutMs?: number;
  /** Publish attempts when an ack is lost (same msgID, so the stream dedupes; default 3). */
  attempts?: number;
  /**
   * What to do when the last stored entry of this chain does not verify (tampered):
   * `throw` (default) refuses to extend it; `continue` chains onto it anyway.
   */
  onCorruptHead?: 'throw' | 'continue';
  /** Most entries published as one message (group commit; default 256, at most 1024). */
  maxBatchEntries?: number;
  /** Soft cap on the encoded size of one batch (default 512 KiB; one entry always fits). */
  maxBatchBytes?: number;
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

/** Encoded bytes of `{ entries: [] }` around the entries, with room for an array32 header. */
const BATCH_OVERHEAD_BYTES = 16;
/** Bytes `seq` may grow by between validation and publish (msgpack uint 1 → 9 bytes). */
const SEQ_SLACK_BYTES = 8;

/**
 * Decodes one stored audit message into its entries: an `AuditBatch`, or a single
 * `AuditEntry` (the form written before group commit). Throws a `ProtocolError` otherwise.
 */
export function decodeAuditMessage(bytes: Uint8Array): AuditEntry[] {
  try {
    return decode(AuditBatch, bytes, { name: 'audit batch' }).entries;
  } catch (err) {
    try {
      return [decode(AuditEntry, bytes, { name: 'audit entry' })];
    } catch {
      throw err;
    }
  }
}

/**
 * The append side of one writer's hash chain, with group commit: one publish is in flight at a
 * time; entries appended meanwhile queue up and, once it is acknowledged, go out together as
 * one `AuditBatch` message (consecutive seqs, each prevHash the previous hash). Each message is
 * published with `msgID` = the hash of its last entry (a retried publish is deduped) and
 * `expect.lastSubjectSequence` = the previous message, so a second process with the same
 * writer id cannot fork the chain: its append fails with a `ConflictError` and it re-reads the
 * head before the next one. Every `append` resolves only once its batch is acknowledged.
 */
export class AuditWriter {
  readonly writerId: string;
  readonly subject: string;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #timeoutMs: number;
  readonly #attempts: number;
  readonly #onCorruptHead: 'throw' | 'continue';
  readonly #maxBatchEntries: number;
  readonly #maxBatchBytes: number;
  #head: Head | undefined;
  #pending: Pending[] = [];
  #running = false;

  private constructor(
    js: JetStreamClient,
    jsm: JetStreamManager,
    subject: string,
    options: AuditWriterOptions,
  ) {
    this.#js = js;
    this.#jsm = jsm;
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
  }

  /**
   * Opens a writer and continues its chain from the last entry stored on its subject. The
   * stream must exist (`ensureAuditStream`). Throws `UnavailableError` when JetStream cannot
   * be reached and `ProtocolError` when the stored head is corrupt (see `onCorruptHead`).
   */
  static async open(nc: NatsConnection, options: AuditWriterOptions): Promise<AuditWriter> {
    assertId(options.writerId, 'audit writer');
    const subject = createSubjects(options.prefix ?? DEFAULT_PREFIX).audit(options.writerId);
    const timeout = options.timeoutMs ?? 5_000;
    let jsm: JetStreamManager;
    try {
      jsm = await jetstreamManager(nc, { timeout, checkAPI: false });
    } catch (err) {
      throw new UnavailableError('audit: JetStream unavailable', { cause: err });
    }
    const w = new AuditWriter(jetstream(nc, { timeout }), jsm, subject, options);
    await w.#loadHead();
    return w;
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
        queueMicrotask(() => void this.#run());
      }
    });
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

  /** Publishes the queue batch by batch, one in flight, until it is empty. */
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
      }
    } finally {
      this.#running = false;
    }
  }

  /** Chains `batch` onto the head and publishes it as one message; resolves once acked. */
  async #publish(batch: readonly Pending[]): Promise<AuditEntry[]> {
    if (!this.#head) await this.#loadHead();
    const head = this.#head ?? { seq: 0, hash: GENESIS_HASH, streamSeq: 0 };
    const entries: AuditEntry[] = [];
    let last = { seq: head.seq, hash: head.hash };
    for (const p of batch) {
      const body = { ...p.body, seq: last.seq + 1, prevHash: last.hash };
      const entry = { ...body, hash: auditHash(body) };
      entries.push(entry);
      last = entry;
    }
    const bytes = encode(AuditBatch, { entries }, { name: 'audit batch' });
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
          throw new ConflictError(
            `audit: another process appended to chain ${this.writerId}; the head is re-read`,
            { cause: err, details: { writer: this.writerId } },
          );
        }
      }
    }
    if (!ack) {
      this.#head = undefined; // unknown whether it landed: re-read before the next batch
      throw new UnavailableError('audit: append not acknowledged', { cause: lastErr });
    }
    this.#head = { seq: last.seq, hash: last.hash, streamSeq: ack.seq };
    return entries;
  }

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
    let entries: AuditEntry[];
    try {
      entries = decodeAuditMessage(sm.data);
    } catch (cause) {
      throw new ProtocolError(`audit: the head of chain ${this.writerId} is not an audit entry`, {
        cause,
        details: { writer: this.writerId, streamSeq: sm.seq },
      });
    }
    // The last message must verify on its own: writer, hashes, and the links between them.
    let last: AuditEntry | undefined;
    for (const e of entries) {
      if (
        this.#onCorruptHead === 'throw' &&
        (e.writer !== this.writerId ||
          auditHash(e) !== e.hash ||
          (last !== undefined && (e.seq !== last.seq + 1 || e.prevHash !== last.hash)))
      ) {
        throw new ProtocolError(`audit: the head of chain ${this.writerId} does not verify`, {
          details: { writer: this.writerId, seq: e.seq, streamSeq: sm.seq },
        });
      }
      last = e;
    }
    if (!last) throw new ProtocolError(`audit: the head of chain ${this.writerId} is empty`);
    this.#head = { seq: last.seq, hash: last.hash, streamSeq: sm.seq };
  }
}

/** Options of `readAudit`. */
export interface ReadAuditOptions {
  /** One writer's chain (default: every writer, in stream order). */
  writer?: string;
  /** Subject prefix (default `reins.v1`). */
  prefix?: string;
}

/**
 * Reads the audit stream from the start up to its current end: every writer's entries, or
 * one writer's, batches flattened in chain order. A stored message that is neither an audit
 * batch nor a single entry, or holds an entry of another writer than its subject's, is thrown as a `ProtocolError` with `details.writer` (from the subject) so
 * `verifyAudit` names where the chain breaks.
 */
export async function* readAudit(
  nc: NatsConnection,
  options: ReadAuditOptions = {},
): AsyncGenerator<AuditEntry> {
  const subjects = createSubjects(options.prefix ?? DEFAULT_PREFIX);
  const filter = options.writer === undefined ? subjects.auditAll : subjects.audit(options.writer);
  const tokens = subjects.audit('x').split('.').length;
  let jsm: JetStreamManager;
  let total: number;
  try {
    jsm = await jetstreamManager(nc, { checkAPI: false });
    const info = await jsm.streams.info(Streams.audit, { subjects_filter: filter });
    total = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
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
      const consumer = await js.consumers.get(Streams.audit, { filter_subjects: filter });
      return consumer.consume({ max_messages: 256 });
    },
    { timeoutMs: 30_000 },
  );
  try {
    for await (const m of messages) {
      const parts = m.subject.split('.');
      const writer = parts.length === tokens ? (parts[tokens - 1] ?? '?') : '?';
      let entries: AuditEntry[];
      try {
        entries = decodeAuditMessage(m.data);
      } catch (cause) {
        throw new ProtocolError(`audit: message ${m.seq} on ${m.subject} is not an audit entry`, {
          cause,
          details: { writer, streamSeq: m.seq },
        });
      }
      for (const entry of entries) {
        if (entry.writer !== writer) {
          throw new ProtocolError(
            `audit: message ${m.seq} claims writer ${entry.writer} on ${writer}'s subject`,
            { details: { writer, streamSeq: m.seq } },
          );
        }
        yield entry;
      }
      if (m.info.pending === 0) break;
    }
  } finally {
    await messages.close();
  }
}

/** What `verifyAudit` answers. */
export type AuditVerification =
  | { ok: true; count: number; heads: Record<string, { seq: number; hash: string }> }
  | { ok: false; writer: string; seq: number; reason: string; count: number };

/** Options of `verifyAudit`. */
export interface VerifyAuditOptions {
  /**
   * Known chain positions to start from (writer → the last verified entry), for streams
   * whose oldest entries aged out or for incremental checks. Without one, a chain must
   * start at seq 1 with the genesis prevHash.
   */
  anchors?: Record<string, { seq: number; hash: string }>;
}

/**
 * Verifies hash chains (any mix of writers, each in its own order): every entry's hash must
 * match its content, its seq must follow and its prevHash must be the previous hash. Accepts
 * any iterable or async iterable (such as `readAudit()`); an error the iterable throws with
 * `details.writer` (a stored message that is not an entry) is reported as a break there.
 * Returns the first broken entry by writer and seq.
 */
export async function verifyAudit(
  entries: Iterable<AuditEntry> | AsyncIterable<AuditEntry>,
  options: VerifyAuditOptions = {},
): Promise<AuditVerification> {
  const heads: Record<string, { seq: number; hash: string }> = { ...options.anchors };
  let count = 0;
  const fail = (writer: string, seq: number, reason: string): AuditVerification => ({
    ok: false,
    writer,
    seq,
    reason,
    count,
  });
  try {
    for await (const raw of entries as AsyncIterable<AuditEntry>) {
      const r = AuditEntry.safeParse(raw);
      if (!r.success) {
        const w = (raw as { writer?: unknown } | null)?.writer;
        const s = (raw as { seq?: unknown } | null)?.seq;
        return fail(
          typeof w === 'string' ? w : '?',
          typeof s === 'number' ? s : -1,
          'not a valid audit entry',
        );
      }
      const e = r.data;
      const prev = heads[e.writer] ?? { seq: 0, hash: GENESIS_HASH };
      if (auditHash(e) !== e.hash) return fail(e.writer, e.seq, 'hash does not match content');
      if (e.seq !== prev.seq + 1) {
        return fail(e.writer, e.seq, `expected seq ${prev.seq + 1}, found ${e.seq}`);
      }
      if (e.prevHash !== prev.hash) {
        return fail(e.writer, e.seq, 'prevHash does not match the previous entry');
      }
      heads[e.writer] = { seq: e.seq, hash: e.hash };
      count++;
    }
  } catch (err) {
    if (err instanceof ReinsError && typeof err.details?.['writer'] === 'string') {
      const writer = err.details['writer'];
      return fail(writer, (heads[writer]?.seq ?? 0) + 1, err.message);
    }
    throw err;
  }
  return { ok: true, count, heads };
}
