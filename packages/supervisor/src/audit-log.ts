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
  AuditEntry,
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
}

interface Head {
  seq: number;
  hash: string;
  /** Stream sequence of the last entry on this writer's subject (0: none). */
  streamSeq: number;
}

/**
 * The append side of one writer's hash chain. Appends are serialized; each is published with
 * `msgID` = its hash (a retried publish is deduped) and `expect.lastSubjectSequence` = the
 * previous entry, so a second process with the same writer id cannot fork the chain: its
 * append fails with a `ConflictError` and it re-reads the head before the next one.
 */
export class AuditWriter {
  readonly writerId: string;
  readonly subject: string;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #timeoutMs: number;
  readonly #attempts: number;
  readonly #onCorruptHead: 'throw' | 'continue';
  #head: Head | undefined;
  #queue: Promise<unknown> = Promise.resolve();

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
   * Appends an entry and resolves once JetStream stored it. Throws `ProtocolError` for an
   * invalid entry, `ConflictError` (retryable) when another process appended to this chain,
   * and `UnavailableError` when the stream cannot be reached; after a failure the next append
   * re-reads the chain head first.
   */
  append(input: AuditInput): Promise<AuditEntry> {
    const next = this.#queue.then(() => this.#append(input));
    this.#queue = next.catch(() => undefined);
    return next;
  }

  async #append(input: AuditInput): Promise<AuditEntry> {
    if (!this.#head) await this.#loadHead();
    const head = this.#head ?? { seq: 0, hash: GENESIS_HASH, streamSeq: 0 };
    const body: Omit<AuditEntry, 'hash'> = {
      seq: head.seq + 1,
      writer: this.writerId,
      ts: input.ts ?? Date.now(),
      action: input.action,
      actor: input.actor,
      details: input.details ?? {},
      prevHash: head.hash,
    };
    if (input.runId !== undefined) body.runId = input.runId;
    if (input.agentId !== undefined) body.agentId = input.agentId;
    if (input.rule !== undefined) body.rule = input.rule;
    // Hash what will be decoded on the other side: the parsed entry (defaults applied).
    const provisional = { ...body, hash: GENESIS_HASH };
    const bytes0 = encode(AuditEntry, provisional, { name: 'audit entry' });
    const parsed = decode(AuditEntry, bytes0, { name: 'audit entry' });
    const entry: AuditEntry = { ...parsed, hash: auditHash(parsed) };
    const bytes = encode(AuditEntry, entry, { name: 'audit entry' });
    let ack: PubAck | undefined;
    let lastErr: unknown;
    for (let i = 0; i < this.#attempts && !ack; i++) {
      try {
        ack = await this.#js.publish(this.subject, bytes, {
          msgID: entry.hash,
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
      this.#head = undefined; // unknown whether it landed: re-read before the next append
      throw new UnavailableError('audit: append not acknowledged', { cause: lastErr });
    }
    this.#head = { seq: entry.seq, hash: entry.hash, streamSeq: ack.seq };
    return entry;
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
    let last: AuditEntry;
    try {
      last = decode(AuditEntry, sm.data, { name: 'audit entry' });
    } catch (cause) {
      throw new ProtocolError(`audit: the head of chain ${this.writerId} is not an audit entry`, {
        cause,
        details: { writer: this.writerId, streamSeq: sm.seq },
      });
    }
    if (
      this.#onCorruptHead === 'throw' &&
      (last.writer !== this.writerId || auditHash(last) !== last.hash)
    ) {
      throw new ProtocolError(`audit: the head of chain ${this.writerId} does not verify`, {
        details: { writer: this.writerId, seq: last.seq, streamSeq: sm.seq },
      });
    }
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
 * one writer's. A stored message that is not an audit entry, or sits on another writer's
 * subject, is thrown as a `ProtocolError` with `details.writer` (from the subject) so
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
  const consumer = await js.consumers.get(Streams.audit, { filter_subjects: filter });
  const messages = await consumer.consume({ max_messages: 256 });
  try {
    for await (const m of messages) {
      const parts = m.subject.split('.');
      const writer = parts.length === tokens ? (parts[tokens - 1] ?? '?') : '?';
      let entry: AuditEntry;
      try {
        entry = decode(AuditEntry, m.data, { name: 'audit entry' });
      } catch (cause) {
        throw new ProtocolError(`audit: message ${m.seq} on ${m.subject} is not an audit entry`, {
          cause,
          details: { writer, streamSeq: m.seq },
        });
      }
      if (entry.writer !== writer) {
        throw new ProtocolError(
          `audit: message ${m.seq} claims writer ${entry.writer} on ${writer}'s subject`,
          { details: { writer, streamSeq: m.seq } },
        );
      }
      yield entry;
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
