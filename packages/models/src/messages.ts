import { z } from 'zod';

// Provider-neutral chat messages. They go on the wire and into KV (run state), so zod is the source
// of truth and every size is bounded.

/** Longest message content accepted (1 MiB of UTF-16 code units). */
export const MAX_CONTENT_CHARS = 1_048_576;

const Content = z.string().max(MAX_CONTENT_CHARS);

/** A tool call as the model emitted it: `arguments` is the raw JSON text, kept verbatim. */
export const ToolCall = z.object({
  id: z.string().min(1).max(256),
  name: z.string().min(1).max(256),
  arguments: z.string().max(MAX_CONTENT_CHARS),
});
export type ToolCall = z.infer<typeof ToolCall>;

/** Instructions for the model. */
export const SystemMessage = z.object({ role: z.literal('system'), content: Content });
export type SystemMessage = z.infer<typeof SystemMessage>;

/** What the user (or the run's goal) says. */
export const UserMessage = z.object({ role: z.literal('user'), content: Content });
export type UserMessage = z.infer<typeof UserMessage>;

/** What the model answered: text, tool calls, or both. */
export const AssistantMessage = z.object({
  role: z.literal('assistant'),
  content: Content,
  toolCalls: z.array(ToolCall).max(128).optional(),
});
export type AssistantMessage = z.infer<typeof AssistantMessage>;

/** The result of one tool call, answering the assistant's call with the same `toolCallId`. */
export const ToolMessage = z.object({
  role: z.literal('tool'),
  toolCallId: z.string().min(1).max(256),
  name: z.string().min(1).max(256).optional(),
  content: Content,
});
export type ToolMessage = z.infer<typeof ToolMessage>;

/** Any chat message. Invalid input fails `ChatMessage.parse` with a zod error naming the field. */
export const ChatMessage = z.discriminatedUnion('role', [
  SystemMessage,
  UserMessage,
  AssistantMessage,
  ToolMessage,
]);
export type ChatMessage = z.infer<typeof ChatMessage>;

/** A conversation: what a model sees on each call. */
export const Conversation = z.array(ChatMessage).max(10_000);
export type Conversation = z.infer<typeof Conversation>;

/**
 * A tool as a model sees it: a name, a description and a JSON schema of its arguments.
 * Build one from a `Tool` with `toolSpec(tool)`.
 */
export const ToolSpec = z.object({
  name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}'),
  description: z.string().max(4096),
  parameters: z.record(z.string(), z.unknown()),
});
export type ToolSpec = z.infer<typeof ToolSpec>;
