import type { KV } from '@nats-io/kv';
import { retryTransport } from '@reins/runtime';
import {
  ApprovalRecord,
  ConflictError,
  UnavailableError,
  decode,
  encode,
  sha256Hex,
} from '@reins/protocol';

/** The approval id of an action: one per run and idempotency key, so a retry finds it again. */
export function approvalIdFor(runId: string, idempotencyKey: string): string {
  return `ap_${sha256Hex(`${runId}:${idempotencyKey}`).slice(0, 40)}`;
}

/** Approvals in KV `reins_approvals` (key = approval id), updated with compare-and-set. */
export class ApprovalStore {
  readonly #kv: KV;
  constructor(kv: KV) {
    this.#kv = kv;
  }

  async get(approvalId: string): Promise<ApprovalRecord | undefined> {
    try {
      const e = await this.#kv.get(approvalId);
      if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
      return decode(ApprovalRecord, e.value, { name: 'approval' });
    } catch (cause) {
      if (cause instanceof Error && cause.name === 'ProtocolError') throw cause;
      throw new UnavailableError('approvals (KV reins_approvals) unavailable', { cause });
    }
  }

  /** Creates a pending approval; returns the stored one if another supervisor was first. */
  async create(record: ApprovalRecord): Promise<ApprovalRecord> {
    try {
      await this.#kv.create(record.approvalId, encode(ApprovalRecord, record));
      return record;
    } catch {
      const existing = await this.get(record.approvalId);
      if (!existing) throw new UnavailableError('could not store the approval request');
      return existing;
    }
  }

  /** Applies `fn` with CAS; `fn` returns the new record or undefined to keep it. */
  async update(
    approvalId: string,
    fn: (r: ApprovalRecord) => ApprovalRecord | undefined,
  ): Promise<ApprovalRecord | undefined> {
    for (let i = 0; i < 20; i++) {
      const e = await this.#kv.get(approvalId);
      if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
      const current = decode(ApprovalRecord, e.value, { name: 'approval' });
      const next = fn(current);
      if (!next) return current;
      try {
        await this.#kv.update(approvalId, encode(ApprovalRecord, next), e.revision);
        return next;
      } catch {
        // raced: retry
      }
    }
    throw new ConflictError(`approval ${approvalId} is contended`);
  }

  /**
   * Calls `onDue` for each pending approval when it expires (at once for one already past its
   * time), for as long as the watch runs: approvals are kept in view by a KV watch, so every
   * supervisor sees every approval without listing the bucket. `onDue` must tolerate being
   * called for a record another supervisor already expired. Throws `UnavailableError` when
   * the watch cannot start.
   */
  async watchExpiries(onDue: (approvalId: string) => void): Promise<{ stop(): void }> {
    const timers = new Map<string, NodeJS.Timeout>();
    const clear = (id: string) => {
      clearTimeout(timers.get(id));
      timers.delete(id);
    };
    let w;
    try {
      w = await this.#kv.watch();
    } catch (cause) {
      throw new UnavailableError('approvals: cannot watch KV reins_approvals', { cause });
    }
    void (async () => {
      for await (const e of w) {
        clear(e.key);
        if (e.operation !== 'PUT' || e.value.length === 0) continue;
        let r: ApprovalRecord;
        try {
          r = decode(ApprovalRecord, e.value, { name: 'approval' });
        } catch {
          continue;
        }
        if (r.status !== 'pending') continue;
        // setTimeout's limit is ~24.8 days: a later expiry is armed again when that fires.
        const arm = () => {
          const wait = Math.min(Math.max(0, r.expiresAt - Date.now() + 1), 2 ** 31 - 1);
          const t = setTimeout(() => {
            timers.delete(e.key);
            if (Date.now() > r.expiresAt) onDue(r.approvalId);
            else arm();
          }, wait);
          t.unref();
          timers.set(e.key, t);
        };
        arm();
      }
    })().catch(() => undefined);
    return {
      stop: () => {
        w.stop();
        for (const id of [...timers.keys()]) clear(id);
      },
    };
  }

  async list(filter: {
    runId?: string | undefined;
    status?: string | undefined;
    limit: number;
  }): Promise<ApprovalRecord[]> {
    const out: ApprovalRecord[] = [];
    const seen = new Set<string>();
    // Listing keys creates an ephemeral consumer: retried like any (K9 in reliability.md).
    const keys = await retryTransport('approvals list', () => this.#kv.keys(), {
      timeoutMs: 10_000,
    });
    for await (const k of keys) {
      if (seen.has(k)) continue; // a key written while listed can be listed twice
      seen.add(k);
      const r = await this.get(k).catch(() => undefined);
      if (!r) continue;
      if (filter.runId && r.runId !== filter.runId) continue;
      if (filter.status && r.status !== filter.status) continue;
      out.push(r);
    }
    return out.sort((a, b) => b.createdAt - a.createdAt).slice(0, filter.limit);
  }
}
