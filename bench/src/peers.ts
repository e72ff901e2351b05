import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { BaseMessage } from '@langchain/core/messages';
import type { ChatResult } from '@langchain/core/outputs';
import type { BaseCheckpointSaver } from '@langchain/langgraph';
import type { Model } from '@openai/agents';
import { z } from 'zod';

/**
 * The peers workload (issue 17) in other agent frameworks, in this process: one `add` tool; a
 * scripted zero-latency model that asks for one tool call per turn for N turns, then answers;
 * a new run each time. Each workload returns a `runOnce(n)` that performs one whole run and
 * reports how many tool calls it made (the suite checks it is N).
 */

/** The frameworks measured in-process (Reins is measured as deployed, by the suite). */
export const PEER_FRAMEWORKS = [
  'openai-agents',
  'langgraph',
  'langgraph-memory',
  'langgraph-postgres',
] as const;
export type PeerFramework = (typeof PEER_FRAMEWORKS)[number];

/** Human-readable name of each framework, for the table. */
export const PEER_LABELS: Record<PeerFramework | 'reins', string> = {
  'openai-agents': 'OpenAI Agents JS (in-process)',
  langgraph: 'LangGraph createReactAgent (in-process)',
  'langgraph-memory': 'LangGraph + MemorySaver',
  'langgraph-postgres': 'LangGraph + PostgresSaver (fsync on)',
  reins: 'Reins (process per role)',
};

/** What `peer-process.js` is told to measure (its one argument, as JSON). */
export const PeerConfig = z.object({
  framework: z.enum(PEER_FRAMEWORKS),
  /** Tool-call turns per run. */
  n: z.number().int().positive(),
  /** Measured runs, after `warmup` unmeasured ones. */
  runs: z.number().int().positive(),
  warmup: z.number().int().nonnegative(),
  pgUrl: z.string().optional(),
});
export type PeerConfig = z.infer<typeof PeerConfig>;

export const PeerOutcome = z.object({
  /** Wall time of the measured runs ÷ their tool-call turns. */
  usPerStep: z.number(),
  /** Runs whose tool calls were not exactly N. */
  wrongRuns: z.number().int(),
  /** Resident set size after the runs, and its peak (bytes). */
  rssBytes: z.number(),
  peakRssBytes: z.number(),
});
export type PeerOutcome = z.infer<typeof PeerOutcome>;

/** A field of /proc/self/status in bytes (VmRSS, VmHWM), or 0 where there is none. */
export function procStatusBytes(pid: number | 'self', field: 'VmRSS' | 'VmHWM'): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1];
    return kb === undefined ? 0 : Number(kb) * 1024;
  } catch {
    return 0;
  }
}

/** One framework ready to run the workload. */
export interface PeerWorkload {
  /** One run of `n` tool-call turns and a final answer; resolves with the tool calls made. */
  runOnce(n: number): Promise<number>;
  close(): Promise<void>;
}

const AddArgs = z.object({ a: z.number(), b: z.number() });

/** The answer every scripted model gives after its N tool calls. */
function answer(toolCalls: number): string {
  return `done after ${toolCalls} tool calls`;
}

/** OpenAI Agents JS: an `Agent` with a custom `Model` returning scripted responses (no network). */
async function openaiAgents(): Promise<PeerWorkload> {
  const agents = await import('@openai/agents');
  agents.setTracingDisabled(true);
  let calls = 0;
  const add = agents.tool({
    name: 'add',
    description: 'Adds two numbers.',
    parameters: AddArgs,
    execute: ({ a, b }) => {
      calls++;
      return String(a + b);
    },
  });
  const usage = () => new agents.Usage({ requests: 1, inputTokens: 1, outputTokens: 1 });
  /** The number of tool results in the conversation so far is the turn number. */
  const model = (n: number): Model => ({
    getResponse(request) {
      const input = typeof request.input === 'string' ? [] : request.input;
      const turn = input.filter((i) => i.type === 'function_call_result').length;
      if (turn < n) {
        return Promise.resolve({
          usage: usage(),
          output: [
            {
              type: 'function_call',
              callId: `call_${turn}`,
              name: 'add',
              arguments: JSON.stringify({ a: turn, b: 1 }),
              status: 'completed',
            },
          ],
        });
      }
      return Promise.resolve({
        usage: usage(),
        output: [
          {
            type: 'message',
            role: 'assistant',
            status: 'completed',
            content: [{ type: 'output_text', text: answer(turn) }],
          },
        ],
      });
    },
    getStreamedResponse() {
      throw new Error('the peers bench does not stream');
    },
  });
  const runner = new agents.Runner({ tracingDisabled: true });
  return {
    async runOnce(n) {
      calls = 0;
      const agent = new agents.Agent({
        name: 'bench',
        instructions: 'Add.',
        model: model(n),
        tools: [add],
      });
      const result = await runner.run(agent, 'add numbers', { maxTurns: n + 5 });
      if (result.finalOutput !== answer(n))
        throw new Error(`unexpected answer ${String(result.finalOutput)}`);
      return calls;
    },
    close: () => Promise.resolve(),
  };
}

/** Where LangGraph keeps its checkpoints. */
type Checkpointing = { kind: 'none' } | { kind: 'memory' } | { kind: 'postgres'; url: string };

/**
 * LangGraph's prebuilt `createReactAgent` with a scripted chat model (a `BaseChatModel` whose
 * `_generate` returns the scripted turn), without a checkpointer, with `MemorySaver`, or with
 * `PostgresSaver` (a new thread per run).
 */
async function langgraph(checkpointing: Checkpointing): Promise<PeerWorkload> {
  const { BaseChatModel } = await import('@langchain/core/language_models/chat_models');
  const { AIMessage, ToolMessage } = await import('@langchain/core/messages');
  const { tool } = await import('@langchain/core/tools');
  const { createReactAgent } = await import('@langchain/langgraph/prebuilt');
  const { MemorySaver } = await import('@langchain/langgraph');

  let n = 0;
  let calls = 0;
  class ScriptedChatModel extends BaseChatModel {
    _llmType(): string {
      return 'scripted';
    }
    override bindTools(): this {
      return this;
    }
    _generate(messages: BaseMessage[]): Promise<ChatResult> {
      const turn = messages.filter((m) => ToolMessage.isInstance(m)).length;
      const message =
        turn < n
          ? new AIMessage({
              content: '',
              tool_calls: [{ id: `call_${turn}`, name: 'add', args: { a: turn, b: 1 } }],
            })
          : new AIMessage({ content: answer(turn) });
      return Promise.resolve({ generations: [{ text: '', message }] });
    }
  }
  const add = tool(
    ({ a, b }: z.infer<typeof AddArgs>) => {
      calls++;
      return String(a + b);
    },
    { name: 'add', description: 'Adds two numbers.', schema: AddArgs },
  );
  let checkpointer: BaseCheckpointSaver | undefined;
  let close = () => Promise.resolve();
  if (checkpointing.kind === 'memory') checkpointer = new MemorySaver();
  if (checkpointing.kind === 'postgres') {
    const { PostgresSaver } = await import('@langchain/langgraph-checkpoint-postgres');
    const saver = PostgresSaver.fromConnString(checkpointing.url);
    await saver.setup();
    checkpointer = saver;
    close = () => saver.end();
  }
  const agent = createReactAgent({
    llm: new ScriptedChatModel({}),
    tools: [add],
    ...(checkpointer ? { checkpointer } : {}),
  });
  return {
    async runOnce(steps) {
      n = steps;
      calls = 0;
      const out = await agent.invoke(
        { messages: [{ role: 'user', content: 'add numbers' }] },
        {
          recursionLimit: 2 * steps + 10,
          ...(checkpointer ? { configurable: { thread_id: randomUUID() } } : {}),
        },
      );
      const last = out.messages.at(-1);
      if (last?.content !== answer(steps)) throw new Error('unexpected answer');
      return calls;
    },
    close,
  };
}

/** Sets up `framework` (PostgresSaver needs `pgUrl`). */
export function peerWorkload(framework: PeerFramework, pgUrl?: string): Promise<PeerWorkload> {
  switch (framework) {
    case 'openai-agents':
      return openaiAgents();
    case 'langgraph':
      return langgraph({ kind: 'none' });
    case 'langgraph-memory':
      return langgraph({ kind: 'memory' });
    case 'langgraph-postgres':
      if (!pgUrl) throw new Error('langgraph-postgres needs a PostgreSQL URL');
      return langgraph({ kind: 'postgres', url: pgUrl });
  }
}
