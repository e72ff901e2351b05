import { describe, expect, it } from 'vitest';
import { BoundedMap } from '@reins/runtime';

describe('BoundedMap', () => {
  it('keeps the most recently set entries, at most max', () => {
    const m = new BoundedMap<string, number>(3);
    for (const [i, k] of ['a', 'b', 'c', 'd'].entries()) m.set(k, i);
    expect([...m.keys()]).toEqual(['b', 'c', 'd']);
    m.set('b', 10); // setting again makes it the newest
    m.set('e', 4);
    expect([...m.entries()]).toEqual([
      ['d', 3],
      ['b', 10],
      ['e', 4],
    ]);
    expect(() => new BoundedMap(0)).toThrow(RangeError);
  });
});
