import { describe, expect, it } from 'vitest';
import { syncAlwaysConfig } from '@reins/runtime';

describe('syncAlwaysConfig: the nats-server durability setting reins up uses', () => {
  it('asks for every write to be synced where nats-server supports it (≥ 2.10), not before', () => {
    expect(syncAlwaysConfig('2.9.10')).toBeUndefined();
    expect(syncAlwaysConfig(undefined)).toBeUndefined();
    expect(syncAlwaysConfig('2.10.0')).toContain('sync_interval: always');
    expect(syncAlwaysConfig('2.12.1')).toContain('sync_interval: always');
    expect(syncAlwaysConfig('3.0.0')).toContain('sync_interval: always');
  });
});
