import { z } from 'zod';
import { ProtocolError } from '@reins/protocol';

/** What a tool does to the world: reads, writes (local state), or acts on an outside system. */
export type ToolEffect = 'read' | 'write' | 'external';

/** A minimal structured logger, call-compatible with pino (`logger.info({ path }, 'read')`). */
export interface ToolLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** A logger that drops everything; the default when none is given. */
export const silentLogger: ToolLogger = Object.freeze({
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
});

/** What a tool's `run` gets besides its arguments. */
export interface ToolContext {
  /** Aborted on halt, caller abort or the tool's timeout. A tool that ignores it is a bug. */
  signal: AbortSignal;
  runId: string;
  stepId: string;
  /** Same key ⇒ same action: a tool with an outside effect should pass it on (e.g. as a header). */
  idempotencyKey: string;
  logger: ToolLogger;
}

/** What `defineTool` takes. `input` must describe a JSON object (tool arguments are objects). */
export interface ToolDefinition<I extends z.ZodType, O extends z.ZodType> {
  name: string;
  description: string;
  input: I;
  output: O;
  effect: ToolEffect;
  /** True when running it twice with the same arguments has the effect of running it once. */
  idempotent: boolean;
  /** Deadline for one run; when it passes the tool's signal is aborted (default 30 s). */
  timeoutMs?: number;
  run(args: z.output<I>, ctx: ToolContext): Promise<z.input<O>> | z.input<O>;
}

/** A checked tool definition, with its JSON schema computed once. */
export interface Tool<
  I extends z.ZodType = z.ZodType,
  O extends z.ZodType = z.ZodType,
> extends Readonly<ToolDefinition<I, O>> {
  readonly timeoutMs: number;
  /** JSON schema of the arguments (from `z.toJSONSchema`, input side). */
  readonly parameters: Readonly<Record<string, unknown>>;
}

/** Any tool, whatever its schemas. */
export type AnyTool = Tool<z.ZodType, z.ZodType>;

/** Timeout of a tool that sets none. */
export const DEFAULT_TOOL_TIMEOUT_MS = 30_000;
/** Longest timeout a tool may set (matches the protocol's limit on `timeoutMs`). */
export const MAX_TOOL_TIMEOUT_MS = 3_600_000;

const TOOL_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Returns `name` when it is a valid tool name (ASCII `[A-Za-z0-9_-]{1,64}`). Otherwise throws
 * `ProtocolError` (BAD_REQUEST); look-alike letters (Cyrillic `а`, fullwidth `ａ`) are named with
 * their code point so the refusal is not a mystery.
 */
export function assertToolName(name: unknown): string {
  if (typeof name !== 'string') {
    throw new ProtocolError(`tool name must be a string, got ${typeof name}`, {
      details: { field: 'name' },
    });
  }
  if (TOOL_NAME.test(name)) return name;
  const shown = JSON.stringify(name.slice(0, 80));
  let index = 0;
  for (const ch of name) {
    const cp = ch.codePointAt(0) ?? 0;
    if (cp > 0x7f) {
      const hex = cp.toString(16).toUpperCase().padStart(4, '0');
      throw new ProtocolError(
        `invalid tool name ${shown}: non-ASCII character U+${hex} ('${ch}') at position ${index}; ` +
          'tool names must be ASCII [A-Za-z0-9_-]{1,64} (look-alike letters are refused)',
        { details: { field: 'name', codePoint: cp, position: index } },
      );
    }
    index += 1;
  }
  throw new ProtocolError(`invalid tool name ${shown}: must match [A-Za-z0-9_-]{1,64}`, {
    details: { field: 'name' },
  });
}

/** JSON schema of a zod schema for a model (input side, no `$schema` key). */
export function jsonSchemaOf(schema: z.ZodType, what: string): Record<string, unknown> {
  let json: Record<string, unknown>;
  try {
    json = z.toJSONSchema(schema, { io: 'input', target: 'draft-07' });
  } catch (err) {
    throw new ProtocolError(
      `${what} cannot be expressed as JSON schema: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  const { $schema: _ignored, ...rest } = json;
  return rest;
}

/**
 * Defines a tool: zod-typed arguments and result, an effect class and a timeout. Throws
 * `ProtocolError` (BAD_REQUEST) on a bad name, a missing description, an `input` that is not a JSON
 * object schema or a timeout out of range — at definition time, not at the first call.
 */
export function defineTool<I extends z.ZodType, O extends z.ZodType>(
  definition: ToolDefinition<I, O>,
): Tool<I, O> {
  const name = assertToolName(definition.name);
  if (typeof definition.description !== 'string' || definition.description.trim() === '') {
    throw new ProtocolError(`tool ${name}: description must be a non-empty string`);
  }
  if (definition.description.length > 4096) {
    throw new ProtocolError(`tool ${name}: description is longer than 4096 characters`);
  }
  if (!['read', 'write', 'external'].includes(definition.effect)) {
    throw new ProtocolError(`tool ${name}: effect must be 'read', 'write' or 'external'`);
  }
  const timeoutMs = definition.timeoutMs ?? DEFAULT_TOOL_TIMEOUT_MS;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > MAX_TOOL_TIMEOUT_MS) {
    throw new ProtocolError(
      `tool ${name}: timeoutMs must be an integer in 1..${MAX_TOOL_TIMEOUT_MS}`,
    );
  }
  const parameters = jsonSchemaOf(definition.input, `tool ${name} input`);
  if (parameters['type'] !== 'object') {
    throw new ProtocolError(
      `tool ${name}: input must be a zod object schema (tool arguments are JSON objects)`,
    );
  }
  jsonSchemaOf(definition.output, `tool ${name} output`);
  return Object.freeze({ ...definition, name, timeoutMs, parameters: Object.freeze(parameters) });
}
