import { describe, expect, it } from 'vitest';
import {
  BudgetExceededError,
  ErrorCode,
  HaltedError,
  ReinsError,
  UnavailableError,
  fromWireError,
  toWireError,
  WireError,
  encode,
  decode,
} from '@reins/protocol';

describe('errors', () => {
  it('round-trips through the wire form and rebuilds the class', () => {
    const err = new BudgetExceededError('run budget spent', { details: { scope: 'run' } });
    const back = fromWireError(decode(WireError, encode(WireError, toWireError(err))));
    expect(back).toBeInstanceOf(BudgetExceededError);
    expect(back).toBeInstanceOf(ReinsError);
    expect(back.code).toBe(ErrorCode.BUDGET_EXCEEDED);
    expect(back.message).toBe('run budget spent');
    expect(back.details).toEqual({ scope: 'run' });
    expect(back.retryable).toBe(false);
    expect(back.name).toBe('BudgetExceededError');
  });

  it('keeps retryable defaults per class', () => {
    expect(new UnavailableError('x').retryable).toBe(true);
    expect(new HaltedError('x').retryable).toBe(false);
    expect(fromWireError({ code: 'UNAVAILABLE', message: 'x', retryable: true })).toBeInstanceOf(
      UnavailableError,
    );
  });

  it('keeps cause', () => {
    const cause = new Error('root');
    expect(new HaltedError('x', { cause }).cause).toBe(cause);
  });

  it('hides internals of foreign errors', () => {
    const wire = toWireError(new TypeError('secret stack detail'));
    expect(wire).toEqual({ code: 'INTERNAL', message: 'internal error', retryable: false });
  });

  it('keeps unknown codes as a plain ReinsError', () => {
    const e = fromWireError({ code: 'SOMETHING_NEW', message: 'm', retryable: true });
    expect(e.constructor).toBe(ReinsError);
    expect(e.code).toBe('SOMETHING_NEW');
    expect(fromWireError({ code: 'toString', message: 'm', retryable: false }).constructor).toBe(
      ReinsError,
    );
  });
});
