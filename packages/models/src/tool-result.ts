import type { ToolMessage } from './messages.js';

/** A tool's outcome as a model should see it (the shape of protocol `ToolResult`, minus bookkeeping). */
export type ToolOutcome =
  | { ok: true; output: unknown }
  | { ok: false; error: { code: string; message: string; retryable?: boolean } };

/**
 * The `tool` message answering a tool call: the output as JSON, or `{"error":{code,message}}`.
 * Scripts (and `readToolOutcome`) rely on this format.
 */
export function toolResultMessage(
  toolCallId: string,
  name: string,
  outcome: ToolOutcome,
): ToolMessage {
  const content = outcome.ok
    ? (JSON.stringify(outcome.output) ?? 'null')
    : JSON.stringify({ error: { code: outcome.error.code, message: outcome.error.message } });
  return { role: 'tool', toolCallId, name, content };
}

/** Reads back what `toolResultMessage` wrote. Content that is not JSON counts as a text output. */
export function readToolOutcome(content: string): ToolOutcome {
  let value: unknown;
  try {
    value = JSON.parse(content);
  } catch {
    return { ok: true, output: content };
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value) && 'error' in value) {
    const error: unknown = value.error;
    if (typeof error === 'object' && error !== null) {
      const code = 'code' in error && typeof error.code === 'string' ? error.code : 'TOOL_FAILED';
      const message =
        'message' in error && typeof error.message === 'string' ? error.message : 'tool failed';
      return { ok: false, error: { code, message } };
    }
  }
  return { ok: true, output: value };
}
