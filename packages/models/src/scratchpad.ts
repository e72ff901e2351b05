import { z } from 'zod';
import { PayloadTooLargeError } from '@reins/protocol';
import { defineTool } from './tool.js';
import type { Tool } from './tool.js';

/** Options of `createScratchpad`. */
export interface ScratchpadOptions {
  /** Most keys per run (default 1000). */
  maxKeys?: number;
  /** Longest value, in characters (default 64 KiB). */
  maxValueChars?: number;
}

const Key = z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/, 'must match [A-Za-z0-9_.:-]{1,128}');
const WriteOutput = z.object({ key: z.string(), keys: z.number().int() });
const ReadInput = z.object({ key: Key.optional() });
const ReadOutput = z.object({
  key: z.string().nullable(),
  value: z.string().nullable(),
  keys: z.array(z.string()),
});

/** An in-memory notebook per run, and the two tools that use it. */
export interface Scratchpad {
  write: Tool<z.ZodObject<{ key: typeof Key; value: z.ZodString }>, typeof WriteOutput>;
  read: Tool<typeof ReadInput, typeof ReadOutput>;
  tools: readonly [Scratchpad['write'], Scratchpad['read']];
  /** Forgets a run's notes (call it when the run ends). */
  clear(runId: string): void;
}

/**
 * `scratch_write` / `scratch_read`: key-value notes kept in memory, separate per `runId` (one run
 * never sees another's). Over `maxKeys` → `PayloadTooLargeError`. Notes die with the process.
 */
export function createScratchpad(options: ScratchpadOptions = {}): Scratchpad {
  const maxKeys = options.maxKeys ?? 1000;
  const maxValueChars = options.maxValueChars ?? 65_536;
  const runs = new Map<string, Map<string, string>>();

  const write = defineTool({
    name: 'scratch_write',
    description: 'Save a note under a key for later steps of this run (replaces an existing note).',
    input: z.object({ key: Key, value: z.string().max(maxValueChars) }),
    output: WriteOutput,
    effect: 'write',
    idempotent: true,
    timeoutMs: 1_000,
    run({ key, value }, { runId }) {
      let notes = runs.get(runId);
      if (notes === undefined) {
        notes = new Map();
        runs.set(runId, notes);
      }
      if (!notes.has(key) && notes.size >= maxKeys) {
        throw new PayloadTooLargeError(`scratchpad of run ${runId} is full (${maxKeys} keys)`);
      }
      notes.set(key, value);
      return { key, keys: notes.size };
    },
  });

  const read = defineTool({
    name: 'scratch_read',
    description:
      'Read the note saved under a key in this run, or list the keys when no key is given.',
    input: ReadInput,
    output: ReadOutput,
    effect: 'read',
    idempotent: true,
    timeoutMs: 1_000,
    run({ key }, { runId }) {
      const notes = runs.get(runId) ?? new Map<string, string>();
      const keys = [...notes.keys()].sort();
      return key === undefined
        ? { key: null, value: null, keys }
        : { key, value: notes.get(key) ?? null, keys };
    },
  });

  return { write, read, tools: [write, read], clear: (runId) => void runs.delete(runId) };
}
