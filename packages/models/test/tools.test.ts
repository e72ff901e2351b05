import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ProtocolError, TimeoutError, ToolFailedError, NotFoundError } from '@reins/protocol';
import {
  assertToolName,
  defineTool,
  runTool,
  toOpenAITool,
  toolJsonSchema,
  toolSpec,
} from '@reins/models';

const ctx = { runId: 'run1', stepId: 'step1', idempotencyKey: 'run1:step1' };

const add = defineTool({
  name: 'add',
  description: 'Adds two numbers.',
  input: z.object({ a: z.number(), b: z.number() }),
  output: z.object({ sum: z.number() }),
  effect: 'read',
  idempotent: true,
  run: ({ a, b }) => ({ sum: a + b }),
});

describe('defineTool / runTool', () => {
  it('runs a tool with validated input and output', async () => {
    await expect(runTool(add, { a: 2, b: 3 }, ctx)).resolves.toEqual({ sum: 5 });
  });

  it('refuses invalid input with BAD_REQUEST before the tool runs', async () => {
    let ran = 0;
    const counted = defineTool({
      name: 'counted',
      description: 'Counts runs.',
      input: z.object({ n: z.number().int() }),
      output: z.object({ ok: z.boolean() }),
      effect: 'write',
      idempotent: false,
      run: () => {
        ran += 1;
        return { ok: true };
      },
    });
    for (const bad of [{ n: 'x' }, null, 'n=1', [1], { n: 1.5 }]) {
      const err = await runTool(counted, bad, ctx).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ProtocolError);
      expect(err).toMatchObject({ code: 'BAD_REQUEST', details: { tool: 'counted' } });
    }
    expect(ran).toBe(0);
  });

  it('refuses invalid output with TOOL_FAILED', async () => {
    const liar = defineTool({
      name: 'liar',
      description: 'Returns the wrong shape.',
      input: z.object({}),
      output: z.object({ sum: z.number() }),
      effect: 'read',
      idempotent: true,
      run: () => ({ sum: 'five' }) as unknown as { sum: number },
    });
    const err = await runTool(liar, {}, ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ToolFailedError);
    expect((err as Error).message).toMatch(/invalid output/);
  });

  it('wraps thrown errors as TOOL_FAILED but keeps Reins errors', async () => {
    const thrower = (error: unknown) =>
      defineTool({
        name: 'thrower',
        description: 'Throws.',
        input: z.object({}),
        output: z.object({}),
        effect: 'read',
        idempotent: true,
        run: () => {
          throw error;
        },
      });
    const plain = await runTool(thrower(new Error('disk on fire')), {}, ctx).catch(
      (e: unknown) => e,
    );
    expect(plain).toMatchObject({
      code: 'TOOL_FAILED',
      message: 'tool thrower failed: disk on fire',
    });
    const coded = await runTool(thrower(new NotFoundError('no such thing')), {}, ctx).catch(
      (e: unknown) => e,
    );
    expect(coded).toBeInstanceOf(NotFoundError);
  });

  it('aborts the tool signal when its timeout passes', async () => {
    const seen: { aborted: boolean; reason: unknown }[] = [];
    const slow = defineTool({
      name: 'slow',
      description: 'Waits for its signal.',
      input: z.object({}),
      output: z.object({}),
      effect: 'external',
      idempotent: true,
      timeoutMs: 20,
      async run(_args, { signal }) {
        await once(signal, 'abort');
        seen.push({ aborted: signal.aborted, reason: signal.reason });
        return {};
      },
    });
    const err = await runTool(slow, {}, ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err).toMatchObject({ code: 'TIMEOUT', details: { tool: 'slow', timeoutMs: 20 } });
    expect(seen).toHaveLength(1);
    expect(seen[0]?.aborted).toBe(true);
    expect(seen[0]?.reason).toBe(err);
  });

  it('returns at the deadline even when a tool ignores its signal', async () => {
    const stubborn = defineTool({
      name: 'stubborn',
      description: 'Never finishes.',
      input: z.object({}),
      output: z.object({}),
      effect: 'read',
      idempotent: true,
      timeoutMs: 20,
      run: () => new Promise<Record<string, never>>(() => undefined),
    });
    await expect(runTool(stubborn, {}, ctx)).rejects.toMatchObject({ code: 'TIMEOUT' });
  });

  it('aborts the tool when the caller aborts', async () => {
    const controller = new AbortController();
    const waiting = defineTool({
      name: 'waiting',
      description: 'Waits for its signal.',
      input: z.object({}),
      output: z.object({}),
      effect: 'read',
      idempotent: true,
      async run(_args, { signal }) {
        controller.abort();
        await once(signal, 'abort');
        return {};
      },
    });
    await expect(runTool(waiting, {}, { ...ctx, signal: controller.signal })).rejects.toMatchObject(
      {
        code: 'ABORTED',
      },
    );
    await expect(
      runTool(add, { a: 1, b: 1 }, { ...ctx, signal: controller.signal }),
    ).rejects.toMatchObject({
      code: 'ABORTED',
    });
  });

  it('refuses homoglyph and malformed names with a clear error', () => {
    const define = (name: string) =>
      defineTool({ ...add, name, input: add.input, output: add.output, run: add.run });
    expect(() => define('re\u0430d_file')).toThrow(/U\+0430/);
    expect(() => define('ｒead')).toThrow(/non-ASCII/);
    for (const bad of ['', 'has space', 'a.b', 'x'.repeat(65), 'semi;colon']) {
      expect(() => define(bad)).toThrow(ProtocolError);
    }
    expect(assertToolName('read_file-2')).toBe('read_file-2');
    expect(() => assertToolName(42)).toThrow(/must be a string/);
  });

  it('refuses bad definitions at definition time', () => {
    const base = {
      name: 't',
      description: 'd',
      output: z.object({}),
      effect: 'read' as const,
      idempotent: true,
      run: () => ({}),
    };
    expect(() => defineTool({ ...base, input: z.string() })).toThrow(/object schema/);
    expect(() => defineTool({ ...base, input: z.object({}), description: ' ' })).toThrow(
      /description/,
    );
    expect(() => defineTool({ ...base, input: z.object({}), timeoutMs: 0 })).toThrow(/timeoutMs/);
    expect(() => defineTool({ ...base, input: z.object({ d: z.date() }) })).toThrow(/JSON schema/);
  });

  it('renders JSON schema and the OpenAI function-tool format', () => {
    const schema = toolJsonSchema(add);
    expect(schema).toMatchObject({
      type: 'object',
      properties: { a: { type: 'number' }, b: { type: 'number' } },
      required: ['a', 'b'],
    });
    expect(schema).not.toHaveProperty('$schema');
    expect(toOpenAITool(add)).toEqual({
      type: 'function',
      function: { name: 'add', description: 'Adds two numbers.', parameters: schema },
    });
    expect(toOpenAITool(toolSpec(add))).toEqual(toOpenAITool(add));
  });
});
