export {
  MAX_CONTENT_CHARS,
  ToolCall,
  SystemMessage,
  UserMessage,
  AssistantMessage,
  ToolMessage,
  ChatMessage,
  Conversation,
  ToolSpec,
} from './messages.js';
export { DEFAULT_MAX_OUTPUT_TOKENS, resolveMaxOutputTokens } from './model.js';
export { budgetEstimate } from './budget-estimate.js';
export type { BudgetEstimate } from './budget-estimate.js';
export type {
  GenerateRequest,
  GenerateResult,
  TokenUsage,
  FinishReason,
  ParsedToolCall,
  ModelEstimate,
  Model,
} from './model.js';
export {
  MESSAGE_OVERHEAD_TOKENS,
  REPLY_PRIMING_TOKENS,
  countTextTokens,
  countToolTokens,
  countInputTokens,
  countOutputTokens,
} from './token-count.js';
export {
  ModelPrice,
  PRICE_HINT,
  DEFAULT_PRICES,
  parsePriceOverrides,
  priceUsage,
  createPriceTable,
  priceUnknown,
  defaultPriceTable,
  costOf,
} from './prices.js';
export type { PriceTable, PriceTableOptions } from './prices.js';
export { mapOpenAIError, retryAfterMs } from './openai-errors.js';
export { DEFAULT_OPENAI_MODEL, createOpenAIModel } from './openai-model.js';
export type { OpenAIModelOptions } from './openai-model.js';
export { parseToolCalls } from './tool-calls.js';
export { createScriptedModel } from './scripted-model.js';
export type {
  ScriptedToolCall,
  ScriptedTurn,
  ScriptContext,
  ScriptedRespond,
  ScriptedModelOptions,
} from './scripted-model.js';
export { researchScript, summarizeDocument, renderReport } from './research-script.js';
export type { ResearchScriptOptions, DocumentSummary } from './research-script.js';
export { toolResultMessage, readToolOutcome } from './tool-result.js';
export type { ToolOutcome } from './tool-result.js';
export {
  silentLogger,
  DEFAULT_TOOL_TIMEOUT_MS,
  MAX_TOOL_TIMEOUT_MS,
  assertToolName,
  defineTool,
} from './tool.js';
export type { ToolEffect, ToolLogger, ToolContext, ToolDefinition, Tool, AnyTool } from './tool.js';
export { runTool } from './run-tool.js';
export type { RunToolContext } from './run-tool.js';
export { toolJsonSchema, toolSpec, toOpenAITool } from './tool-schema.js';
export type { OpenAIFunctionTool } from './tool-schema.js';
export { createFileTools } from './file-tools.js';
export type { FileTools, FileToolsOptions } from './file-tools.js';
export { createHttpFetchTool } from './http-fetch-tool.js';
export type { HttpFetchLookup, HttpFetchToolOptions } from './http-fetch-tool.js';
export { MAX_EXPRESSION_CHARS, evaluateArithmetic, calculator } from './calculator.js';
export { createScratchpad } from './scratchpad.js';
export type { Scratchpad, ScratchpadOptions } from './scratchpad.js';
export { TOOL_GROUPS, createToolbox } from './toolbox.js';
export type { ToolGroup, ToolboxOptions } from './toolbox.js';
export { delegateScript } from './delegate-script.js';
export type { DelegateScriptOptions } from './delegate-script.js';
