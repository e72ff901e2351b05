import { describe, expect, it } from 'vitest';
import { calculator, createScratchpad, evaluateArithmetic, runTool } from '@reins/models';

const ctx = { runId: 'run1', stepId: 'step1', idempotencyKey: 'run1:k1' };

describe('calculator', () => {
  it('evaluates arithmetic', async () => {
    expect(evaluateArithmetic('1 + 2 * 3')).toBe(7);
    expect(evaluateArithmetic('(1 + 2) * 3')).toBe(9);
    expect(evaluateArithmetic('-2 ^ 2')).toBe(-4);
    expect(evaluateArithmetic('2 ** 3 ** 2')).toBe(512);
    expect(evaluateArithmetic('10 % 4 + 1.5e1 / 3')).toBe(7);
    expect(evaluateArithmetic('max(1, sqrt(16), abs(-3)) + pi - pi')).toBe(4);
    await expect(runTool(calculator, { expression: '6*7' }, ctx)).resolves.toEqual({ result: 42 });
  });

  it('refuses anything that is not arithmetic', async () => {
    for (const expression of [
      'process.exit(1)',
      'require("fs")',
      'constructor',
      '1; 2',
      '2 +',
      '(1',
      'alert`1`',
      '1 / 0',
      'x = 1',
      '__proto__',
      '1e999',
      '('.repeat(200) + '1' + ')'.repeat(200),
    ]) {
      await expect(runTool(calculator, { expression }, ctx)).rejects.toMatchObject({
        code: 'BAD_REQUEST',
      });
    }
  });
});

describe('createScratchpad', () => {
  it('keeps notes per run', async () => {
    const pad = createScratchpad();
    await runTool(pad.write, { key: 'plan', value: 'read docs' }, ctx);
    await expect(runTool(pad.read, { key: 'plan' }, ctx)).resolves.toEqual({
      key: 'plan',
      value: 'read docs',
      keys: ['plan'],
    });
    await expect(runTool(pad.read, { key: 'plan' }, { ...ctx, runId: 'run2' })).resolves.toEqual({
      key: 'plan',
      value: null,
      keys: [],
    });
    pad.clear('run1');
    await expect(runTool(pad.read, {}, ctx)).resolves.toEqual({ key: null, value: null, keys: [] });
    await expect(runTool(pad.write, { key: 'bad key!', value: 'x' }, ctx)).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
  });
});
