import type { KV } from '@nats-io/kv';
import { ConflictError, UnavailableError, assertId, decode, encode } from '@reins/protocol';
import { ChatMessage } from '@reins/models';
import { isCasConflict } from '@reins/runtime';
import { z } from 'zod';

/** A step whose model answer is persisted but whose tool calls may not all have run yet. */
export const PendingStep = z.object({
  step: z.number().int().nonnegative(),
  assistant: ChatMessage,
  /** Tool results already collected, by tool call id. */
  results: z.record(z.string(), ChatMessage),
});
export type PendingStep = z.infer<typeof PendingStep>;

/** A planner's run state in KV `reins_runs` (key `state.<runId>`): enough to resume anywhere. */
export const RunState = z.object({
  runId: z.string(),
  /** Steps completed. */
  step: z.number().int().nonnegative(),
  /** Conversation after the system and goal messages (bounded; see `maxHistory`). */
  history: z.array(ChatMessage).max(10_000),
  /** Summary of trimmed history, when a summariser is configured. */
  summary: z.string().optional(),
  pending: PendingStep.optional(),
  /** The planner holding the run, and until when (a crashed holder's lease expires). */
  owner: z.string().optional(),
  leaseUntil: z.number().int().optional(),
  done: z.boolean().default(false),
});
export type RunState = z.infer<typeof RunState>;

/** Versioned run state: `revision` is the KV revision for compare-and-set. */
export interface StoredState {
  state: RunState;
  revision: number;
}

/** Reads and writes run state with CAS. KV failures are `UnavailableError` (retry later). */
export class RunStateStore {
  readonly #kv: KV;
  constructor(kv: KV) {
    this.#kv = kv;
  }

  #key(runId: string): string {
    return `state.${assertId(runId, 'runId')}`;
  }

  /** The stored state, or a fresh one (revision 0) for a run never stepped. */
  async load(runId: string): Promise<StoredState> {
    let e;
    try {
      e = await this.#kv.get(this.#key(runId));
    } catch (cause) {
      throw new UnavailableError('run state unavailable', { cause });
    }
    if (!e || e.operation !== 'PUT' || e.value.length === 0) {
      return { state: { runId, step: 0, history: [], done: false }, revision: 0 };
    }
    return { state: decode(RunState, e.value, { name: 'run state' }), revision: e.revision };
  }

  /** Writes `state` if the stored revision is still `revision`; `ConflictError` otherwise. */
  async save(state: RunState, revision: number): Promise<number> {
    const data = encode(RunState, state);
    try {
      return revision === 0
        ? await this.#kv.create(this.#key(state.runId), data)
        : await this.#kv.update(this.#key(state.runId), data, revision);
    } catch (cause) {
      if (isCasConflict(cause))
        throw new ConflictError(`run ${state.runId} state changed under us`, { cause });
      throw new UnavailableError('run state could not be written', { cause });
    }
  }
}
