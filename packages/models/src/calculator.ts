import { z } from 'zod';
import type { ReinsError } from '@reins/protocol';
import { ProtocolError } from '@reins/protocol';
import { defineTool } from './tool.js';

/** Longest expression accepted. */
export const MAX_EXPRESSION_CHARS = 1000;
const MAX_DEPTH = 64;

const FUNCTIONS: Readonly<
  Record<string, { arity: [number, number]; fn: (...xs: number[]) => number }>
> = {
  abs: { arity: [1, 1], fn: Math.abs },
  sqrt: { arity: [1, 1], fn: Math.sqrt },
  round: { arity: [1, 1], fn: Math.round },
  floor: { arity: [1, 1], fn: Math.floor },
  ceil: { arity: [1, 1], fn: Math.ceil },
  ln: { arity: [1, 1], fn: Math.log },
  log10: { arity: [1, 1], fn: Math.log10 },
  exp: { arity: [1, 1], fn: Math.exp },
  min: { arity: [1, 64], fn: Math.min },
  max: { arity: [1, 64], fn: Math.max },
  pow: { arity: [2, 2], fn: Math.pow },
};
const CONSTANTS: Readonly<Record<string, number>> = { pi: Math.PI, e: Math.E };

function refuse(expression: string, pos: number, why: string): ReinsError {
  return new ProtocolError(
    `not an arithmetic expression (${why} at position ${pos}): ${JSON.stringify(expression.slice(0, 120))}`,
    {
      details: { position: pos },
    },
  );
}

/**
 * Evaluates an arithmetic expression with a small recursive-descent parser — never `eval` or
 * `Function`. Supports numbers, `+ - * / %`, `^`/`**` (right-associative), parentheses, `pi`, `e`
 * and `abs sqrt round floor ceil ln log10 exp min max pow`. Anything else, or a non-finite result
 * (division by zero), throws `ProtocolError` (BAD_REQUEST) with the position.
 */
export function evaluateArithmetic(expression: string): number {
  if (expression.length > MAX_EXPRESSION_CHARS) {
    throw new ProtocolError(`expression longer than ${MAX_EXPRESSION_CHARS} characters`);
  }
  const src = expression;
  let pos = 0;
  let depth = 0;

  const skip = () => {
    while (pos < src.length && /\s/.test(src.charAt(pos))) pos += 1;
  };
  const peek = (s: string): boolean => {
    skip();
    return src.startsWith(s, pos);
  };
  const eat = (s: string): boolean => {
    if (!peek(s)) return false;
    pos += s.length;
    return true;
  };
  const nested = <T>(f: () => T): T => {
    depth += 1;
    if (depth > MAX_DEPTH) throw refuse(src, pos, 'nesting too deep');
    try {
      return f();
    } finally {
      depth -= 1;
    }
  };

  const expr = (): number =>
    nested(() => {
      let value = term();
      for (;;) {
        if (eat('+')) value += term();
        else if (eat('-')) value -= term();
        else return value;
      }
    });
  const term = (): number => {
    let value = unary();
    for (;;) {
      if (peek('**')) return value;
      if (eat('*')) value *= unary();
      else if (eat('/')) value /= unary();
      else if (eat('%')) value %= unary();
      else return value;
    }
  };
  const unary = (): number =>
    nested(() => {
      if (eat('-')) return -unary();
      if (eat('+')) return unary();
      return power();
    });
  const power = (): number => {
    const base = primary();
    if (eat('**') || eat('^')) return base ** unary();
    return base;
  };
  const primary = (): number => {
    skip();
    const start = pos;
    const num = /^(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?/.exec(src.slice(pos));
    if (num) {
      pos += num[0].length;
      return Number(num[0]);
    }
    if (eat('(')) {
      const value = expr();
      if (!eat(')')) throw refuse(src, pos, "expected ')'");
      return value;
    }
    const ident = /^[A-Za-z][A-Za-z0-9]*/.exec(src.slice(pos));
    if (ident) {
      const name = ident[0].toLowerCase();
      pos += ident[0].length;
      const fn = Object.hasOwn(FUNCTIONS, name) ? FUNCTIONS[name] : undefined;
      if (fn !== undefined) {
        if (!eat('(')) throw refuse(src, pos, `expected '(' after ${name}`);
        const args = [expr()];
        while (eat(',')) args.push(expr());
        if (!eat(')')) throw refuse(src, pos, "expected ')'");
        if (args.length < fn.arity[0] || args.length > fn.arity[1]) {
          throw refuse(src, start, `${name} takes ${fn.arity[0]}..${fn.arity[1]} arguments`);
        }
        return fn.fn(...args);
      }
      const constant = Object.hasOwn(CONSTANTS, name) ? CONSTANTS[name] : undefined;
      if (constant !== undefined) return constant;
      throw refuse(src, start, `unknown name ${JSON.stringify(ident[0])}`);
    }
    throw refuse(
      src,
      pos,
      pos >= src.length ? 'unexpected end' : `unexpected ${JSON.stringify(src.charAt(pos))}`,
    );
  };

  const value = expr();
  skip();
  if (pos < src.length) throw refuse(src, pos, `unexpected ${JSON.stringify(src.charAt(pos))}`);
  if (!Number.isFinite(value)) {
    throw new ProtocolError(
      `expression has no finite value (division by zero or overflow): ${JSON.stringify(src.slice(0, 120))}`,
    );
  }
  return value;
}

/** `calculator`: evaluates an arithmetic expression safely (see `evaluateArithmetic`). */
export const calculator = defineTool({
  name: 'calculator',
  description:
    'Evaluate an arithmetic expression: numbers, + - * / % ^, parentheses, pi, e, abs sqrt round floor ceil ln log10 exp min max pow.',
  input: z.object({ expression: z.string().min(1).max(MAX_EXPRESSION_CHARS) }),
  output: z.object({ result: z.number() }),
  effect: 'read',
  idempotent: true,
  timeoutMs: 1_000,
  run: ({ expression }) => ({ result: evaluateArithmetic(expression) }),
});
