import type { ToolSpec } from './messages.js';
import type { AnyTool } from './tool.js';

/** JSON schema of a tool's arguments, as `z.toJSONSchema` renders its `input` (a copy). */
export function toolJsonSchema(tool: AnyTool): Record<string, unknown> {
  return structuredClone({ ...tool.parameters });
}

/** The provider-neutral description of a tool that a model is given. */
export function toolSpec(tool: AnyTool): ToolSpec {
  return { name: tool.name, description: tool.description, parameters: toolJsonSchema(tool) };
}

/** An OpenAI Chat Completions function tool. */
export interface OpenAIFunctionTool {
  type: 'function';
  function: { name: string; description: string; parameters: Record<string, unknown> };
}

/** A tool (or tool spec) in OpenAI's function-tool format. */
export function toOpenAITool(tool: AnyTool | ToolSpec): OpenAIFunctionTool {
  const spec = 'input' in tool ? toolSpec(tool) : tool;
  return {
    type: 'function',
    function: { name: spec.name, description: spec.description, parameters: spec.parameters },
  };
}
