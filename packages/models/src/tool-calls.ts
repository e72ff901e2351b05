import type { ToolCall, ToolSpec } from './messages.js';
import type { ParsedToolCall } from './model.js';

/**
 * Parses the raw tool calls of a model answer. A call is flagged `valid: false` (never thrown)
 * when its arguments are not a JSON object, or when `tools` is non-empty and names no such tool.
 */
export function parseToolCalls(
  calls: readonly ToolCall[],
  tools: readonly ToolSpec[] = [],
): ParsedToolCall[] {
  const offered = new Set(tools.map((t) => t.name));
  return calls.map((call): ParsedToolCall => {
    const invalid = (error: string): ParsedToolCall => ({
      id: call.id,
      name: call.name,
      arguments: call.arguments,
      valid: false,
      error,
    });
    if (offered.size > 0 && !offered.has(call.name)) {
      return invalid(
        `the model called ${JSON.stringify(call.name.slice(0, 80))}, which is not an offered tool`,
      );
    }
    let args: unknown;
    try {
      args = call.arguments.trim() === '' ? {} : JSON.parse(call.arguments);
    } catch (err) {
      return invalid(`tool call arguments are not valid JSON: ${(err as Error).message}`);
    }
    if (typeof args !== 'object' || args === null || Array.isArray(args)) {
      return invalid('tool call arguments must be a JSON object');
    }
    return {
      id: call.id,
      name: call.name,
      arguments: call.arguments,
      valid: true,
      args: args as Record<string, unknown>,
    };
  });
}
