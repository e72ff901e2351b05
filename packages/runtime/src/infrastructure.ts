import type { NatsConnection } from '@nats-io/transport-node';
import {
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Buckets, Streams, UnavailableError, type Subjects } from '@reins/protocol';

/** Retention of the trace stream. */
export interface TraceRetention {
  /** Oldest event kept, in milliseconds (default 7 days). */
  maxAgeMs?: number;
  /** Largest stream size in bytes (default 1 GiB). */
  maxBytes?: number;
}

const nanos = (ms: number) => ms * 1_000_000;

/**
 * Replicas of every Reins stream and KV bucket when they are created: `REINS_REPLICAS`
 * (default 1). Use 3 on a 3-node JetStream cluster so the ledger, audit, halts and tasks survive
 * the loss of a node.
 */
export function defaultReplicas(): number {
  const n = Number(process.env['REINS_REPLICAS'] ?? 1);
  return Number.isInteger(n) && n >= 1 && n <= 5 ? n : 1;
}

/** Creates (or updates) the `REINS_TRACE` stream. Idempotent. */
export async function ensureTraceStream(
  jsm: JetStreamManager,
  subjects: Subjects,
  retention: TraceRetention = {},
): Promise<void> {
  const config = {
    name: Streams.trace,
    subjects: [subjects.traceAll],
    storage: StorageType.File,
    max_age: nanos(retention.maxAgeMs ?? 7 * 24 * 3600_000),
    max_bytes: retention.maxBytes ?? 1024 * 1024 * 1024,
    num_replicas: defaultReplicas(),
  };
  await upsertStream(jsm, config);
}

/** Creates (or updates) the `REINS_TASKS` work-queue stream. Idempotent. */
export async function ensureTaskStream(jsm: JetStreamManager, subjects: Subjects): Promise<void> {
  await upsertStream(jsm, {
    name: Streams.tasks,
    subjects: [subjects.taskAll],
    storage: StorageType.File,
    retention: RetentionPolicy.Workqueue,
    duplicate_window: nanos(120_000),
    num_replicas: defaultReplicas(),
  });
}

async function upsertStream(
  jsm: JetStreamManager,
  config: Partial<StreamConfig> & { name: string },
): Promise<void> {
  try {
    const info = await jsm.streams.info(config.name);
    // Keep the replica count an operator (or a clustered start) chose: a process started
    // without REINS_REPLICAS must not shrink a replicated stream.
    await jsm.streams.update(config.name, { ...config, num_replicas: info.config.num_replicas });
  } catch (err) {
    if (!/not found/i.test((err as Error).message)) throw err;
    try {
      await jsm.streams.add(config);
    } catch (addErr) {
      // Another process created it between our info and add.
      if (!/already in use|exists/i.test((addErr as Error).message)) throw addErr;
    }
  }
}

/** Values kept per key where it is more than one: audit anchors keep their past heads. */
const BUCKET_HISTORY: Partial<Record<string, number>> = { [Buckets.auditAnchors]: 64 };

/**
 * Opens a KV bucket, creating it when missing (with the history that bucket needs unless
 * `history` is given). Throws `UnavailableError` when JetStream cannot be reached.
 */
export async function openBucket(
  nc: NatsConnection,
  name: string,
  options: { history?: number; replicas?: number } = {},
): Promise<KV> {
  try {
    const kvm = new Kvm(nc);
    return await kvm.create(name, {
      history: options.history ?? BUCKET_HISTORY[name] ?? 1,
      storage: StorageType.File,
      replicas: options.replicas ?? defaultReplicas(),
    });
  } catch (cause) {
    throw new UnavailableError(`cannot open KV bucket ${name}: is JetStream enabled?`, { cause });
  }
}

/** Every bucket Reins uses. */
export const ALL_BUCKETS = Object.values(Buckets);

/** Creates every Reins stream and bucket. The supervisor calls it on start; tests may too. */
export async function ensureInfrastructure(
  nc: NatsConnection,
  subjects: Subjects,
  retention: TraceRetention = {},
): Promise<void> {
  const jsm = await jetstreamManager(nc);
  await ensureTraceStream(jsm, subjects, retention);
  await ensureTaskStream(jsm, subjects);
  await Promise.all(ALL_BUCKETS.map((b) => openBucket(nc, b)));
}

/**
 * True when a KV `create`/`update` (or a JetStream publish with an expected sequence) failed
 * because the key changed since it was read: a compare-and-set conflict, not an outage.
 */
export function isCasConflict(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const code = (err as { code?: unknown }).code;
  if (code === 10071 || code === 10164) return true;
  return err instanceof Error && /wrong last sequence/i.test(err.message);
}

/**
 * The keys of a bucket, from one stream-info snapshot (no consumer). Not `kv.keys()`: its
 * consumer only ends on a message with nothing pending or on an idle heartbeat, so while many
 * agents write presence a listing could run on for as long as the writes keep coming; and on a
 * cluster an ephemeral consumer may land on a lost node. Deleted keys may be listed (their
 * delete marker is a message): read each and skip those.
 */
export async function bucketKeys(nc: NatsConnection, bucket: string): Promise<string[]> {
  const prefix = `$KV.${bucket}.`;
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  const info = await jsm.streams.info(`KV_${bucket}`, { subjects_filter: `${prefix}>` });
  return Object.keys(info.state.subjects ?? {})
    .filter((s) => s.startsWith(prefix))
    .map((s) => s.slice(prefix.length));
}
