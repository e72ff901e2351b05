import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { countTokens } from 'gpt-tokenizer';
import { toWireError } from '@reins/protocol';
import {
  budgetEstimate,
  countInputTokens,
  createFileTools,
  createScriptedModel,
  researchScript,
  runTool,
  toolResultMessage,
  toolSpec,
} from '@reins/models';
import type { AnyTool, ChatMessage, GenerateResult, Model, ScriptedTurn } from '@reins/models';

const goal: ChatMessage[] = [
  { role: 'system', content: 'You research documents.' },
  { role: 'user', content: 'Summarise the docs.' },
];

const turns: ScriptedTurn[] = [
  { content: 'Let me compute.', toolCalls: [{ name: 'calculator', args: { expression: '6*7' } }] },
  'The answer is 42.',
];

async function twoTurns(model: Model): Promise<GenerateResult[]> {
  const first = await model.generate({ messages: goal });
  const call = first.toolCalls[0];
  if (call === undefined) throw new Error('expected a tool call');
  const second = await model.generate({
    messages: [
      ...goal,
      first.message,
      toolResultMessage(call.id, call.name, { ok: true, output: { result: 42 } }),
    ],
  });
  return [first, second];
}

/** A minimal planner loop: model → tools → model, until the model answers without tool calls. */
async function drive(model: Model, tools: readonly AnyTool[], messages: ChatMessage[]) {
  const byName = new Map(tools.map((t) => [t.name, t]));
  const results: GenerateResult[] = [];
  for (let step = 0; step < 20; step += 1) {
    const request = { messages: [...messages], tools: tools.map(toolSpec), maxOutputTokens: 8000 };
    const estimate = model.estimate(request);
    const r = await model.generate(request);
    expect(estimate.inputTokens).toBeGreaterThanOrEqual(r.usage.inputTokens);
    expect(estimate.maxOutputTokens).toBeGreaterThanOrEqual(r.usage.outputTokens);
    results.push(r);
    messages.push(r.message);
    if (r.toolCalls.length === 0) return { answer: r.message.content, results };
    for (const call of r.toolCalls) {
      const tool = byName.get(call.name);
      try {
        if (!call.valid || tool === undefined) throw new Error('bad call');
        const output = await runTool(tool, call.args, {
          runId: 'run1',
          stepId: `s${step}`,
          idempotencyKey: `run1:${call.id}`,
        });
        messages.push(toolResultMessage(call.id, call.name, { ok: true, output }));
      } catch (err) {
        messages.push(
          toolResultMessage(call.id, call.name, { ok: false, error: toWireError(err) }),
        );
      }
    }
  }
  throw new Error('script did not finish');
}

describe('createScriptedModel', () => {
  it('gives byte-identical output for the same script on every run', async () => {
    const a = await twoTurns(createScriptedModel({ turns }));
    const b = await twoTurns(createScriptedModel({ turns }));
    expect(JSON.stringify(b)).toBe(JSON.stringify(a));
    expect(a[0]?.toolCalls[0]?.id).toMatch(/^call_[0-9a-f]{24}$/);
    expect(a[1]?.message.content).toBe('The answer is 42.');
    expect(a[0]?.finishReason).toBe('tool_calls');
    expect(a[1]?.finishReason).toBe('stop');
  });

  it('counts real tokens with gpt-tokenizer', async () => {
    const model = createScriptedModel({ turns: ['The quick brown fox jumps over the lazy dog.'] });
    const r = await model.generate({ messages: goal });
    expect(r.usage.outputTokens).toBe(countTokens('The quick brown fox jumps over the lazy dog.'));
    expect(r.usage.outputTokens).toBeGreaterThan(0);
    expect(r.usage.inputTokens).toBe(countInputTokens({ messages: goal }));
    // The content tokens are part of the input count, on top of per-message overhead.
    const contentTokens = goal.reduce((n, m) => n + countTokens(m.content), 0);
    expect(r.usage.inputTokens).toBeGreaterThan(contentTokens);
  });

  it('estimates an upper bound of the actual usage', async () => {
    const model = createScriptedModel({ turns });
    const request = { messages: goal, maxOutputTokens: 64 };
    const estimate = model.estimate(request);
    const r = await model.generate(request);
    expect(estimate.inputTokens).toBeGreaterThanOrEqual(r.usage.inputTokens);
    expect(estimate.maxOutputTokens).toBeGreaterThanOrEqual(r.usage.outputTokens);
    expect(estimate.usd).toBe(0);
  });

  it('stops at maxOutputTokens like a provider would', async () => {
    const long = 'word '.repeat(500);
    const model = createScriptedModel({ turns: [long] });
    const request = { messages: goal, maxOutputTokens: 10 };
    const r = await model.generate(request);
    expect(r.finishReason).toBe('length');
    expect(r.usage.outputTokens).toBeLessThanOrEqual(10);
    expect(model.estimate(request).maxOutputTokens).toBeGreaterThanOrEqual(r.usage.outputTokens);
  });

  it('can be given a price', async () => {
    const model = createScriptedModel({
      turns: ['hi'],
      price: { input: 1_000_000, output: 2_000_000 },
    });
    const r = await model.generate({ messages: goal });
    const e = model.estimate({ messages: goal, maxOutputTokens: 10 });
    expect(e.usd).toBe(e.inputTokens + 2 * 10);
    expect(r.usage.outputTokens).toBe(1);
  });

  it('fails with a coded error when the script runs out, and honours aborts', async () => {
    const model = createScriptedModel({ turns: [] });
    await expect(model.generate({ messages: goal })).rejects.toMatchObject({ code: 'MODEL_ERROR' });
    const slow = createScriptedModel({ turns: ['late'], latencyMs: 60_000 });
    const controller = new AbortController();
    const call = slow.generate({ messages: goal, signal: controller.signal });
    controller.abort();
    await expect(call).rejects.toMatchObject({ code: 'ABORTED' });
  });

  it('refuses malformed requests with BAD_REQUEST', async () => {
    const model = createScriptedModel({ turns: ['hi'] });
    const hostile = [{ role: 'root', content: 'x' }] as unknown as ChatMessage[];
    await expect(model.generate({ messages: hostile })).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
    await expect(model.generate({ messages: [] })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(model.generate({ messages: goal, maxOutputTokens: -1 })).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
  });

  it('gives the reservation in the protocol shape, failing closed without a price', () => {
    const free = createScriptedModel({ turns: ['hi'] });
    expect(
      budgetEstimate(free, { messages: goal, maxOutputTokens: 50 }, { usdBudget: true }),
    ).toEqual({
      inputTokens: countInputTokens({ messages: goal }),
      outputTokens: 50,
      usd: 0,
    });
    const unpriced = {
      ...free,
      name: 'mystery',
      price: undefined,
      estimate: () => ({ inputTokens: 1, maxOutputTokens: 1, usd: null }),
    };
    expect(() => budgetEstimate(unpriced, { messages: goal }, { usdBudget: true })).toThrow(
      /REINS_PRICES/,
    );
    expect(budgetEstimate(unpriced, { messages: goal }, { usdBudget: false }).usd).toBe(0);
  });

  it('flags scripted tool calls with broken JSON as invalid', async () => {
    const model = createScriptedModel({
      turns: [{ toolCalls: [{ name: 'calculator', args: '{"expression": ' }] }],
    });
    const r = await model.generate({ messages: goal });
    expect(r.toolCalls[0]).toMatchObject({ valid: false });
  });
});

describe('researchScript', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'reins-research-'));
    await mkdir(join(root, 'docs'));
    await writeFile(
      join(root, 'docs', 'alpha.md'),
      '# Alpha\n\nAlpha is the first letter. It starts everything.\n\n## Usage\n\nUse it often.\n',
    );
    await writeFile(join(root, 'docs', 'beta.txt'), 'Beta follows alpha! Then comes gamma.\n');
    await writeFile(join(root, 'docs', 'image.png'), 'not a document');
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('lists, reads, writes a report and answers, reacting to tool results', async () => {
    const files = createFileTools({ root });
    const model = createScriptedModel({
      respond: researchScript({ dir: 'docs', reportPath: 'out/report.md' }),
    });
    const { answer, results } = await drive(model, files.tools, [...goal]);

    expect(results.map((r) => r.toolCalls.map((c) => c.name))).toEqual([
      ['list_files'],
      ['read_file', 'read_file'],
      ['write_file'],
      [],
    ]);
    const report = await readFile(join(root, 'out', 'report.md'), 'utf8');
    expect(report).toContain('## docs/alpha.md');
    expect(report).toContain('- Words: 13');
    expect(report).toContain('- Headings: Alpha; Usage');
    expect(report).toContain('- First sentence: Alpha is the first letter.');
    expect(report).toContain('- First sentence: Beta follows alpha!');
    expect(report).not.toContain('image.png');
    expect(answer).toBe(
      'Wrote out/report.md: 2 documents in docs, 19 words in total. Largest: docs/alpha.md (13 words).',
    );

    // Same inputs → same run, byte for byte.
    await rm(join(root, 'out'), { recursive: true });
    const again = await drive(
      createScriptedModel({
        respond: researchScript({ dir: 'docs', reportPath: 'out/report.md' }),
      }),
      files.tools,
      [...goal],
    );
    expect(JSON.stringify(again.results)).toBe(JSON.stringify(results));
  });

  it('reports documents it could not read', async () => {
    const respond = researchScript({ dir: 'docs' });
    const call = (id: string, name: string, args: unknown) => ({
      id,
      name,
      arguments: JSON.stringify(args),
    });
    const conversation: ChatMessage[] = [
      ...goal,
      { role: 'assistant', content: '', toolCalls: [call('c1', 'list_files', { path: 'docs' })] },
      toolResultMessage('c1', 'list_files', {
        ok: true,
        output: {
          path: 'docs',
          entries: [
            { name: 'a.md', type: 'file', size: 3 },
            { name: 'b.md', type: 'file', size: 3 },
          ],
        },
      }),
      {
        role: 'assistant',
        content: '',
        toolCalls: [
          call('c2', 'read_file', { path: 'docs/a.md' }),
          call('c3', 'read_file', { path: 'docs/b.md' }),
        ],
      },
      toolResultMessage('c2', 'read_file', {
        ok: true,
        output: { path: 'docs/a.md', content: 'One two.' },
      }),
      toolResultMessage('c3', 'read_file', {
        ok: false,
        error: { code: 'POLICY_DENIED', message: 'symlink out' },
      }),
    ];
    const turn = await respond(conversation, { turn: 2, tools: [] });
    if (typeof turn === 'string') throw new Error('expected a write');
    const write = turn.toolCalls?.[0];
    expect(write?.name).toBe('write_file');
    const content = (write?.args as { content: string }).content;
    expect(content).toContain('## docs/b.md\n\n- Unreadable: symlink out');
    expect(content).toContain('2 documents, 2 words in total.');
  });

  it('explains a failed listing instead of inventing results', async () => {
    const files = createFileTools({ root });
    const model = createScriptedModel({ respond: researchScript({ dir: 'missing' }) });
    const { answer } = await drive(model, files.tools, [...goal]);
    expect(answer).toMatch(/^I could not list missing: no such file or directory/);
  });
});
