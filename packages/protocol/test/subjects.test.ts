import { describe, expect, it } from 'vitest';
import {
  DEFAULT_PARTITIONS,
  ProtocolError,
  createSubjects,
  assertId,
  newId,
  isId,
  partitionOf,
} from '@reins/protocol';

describe('subjects', () => {
  const s = createSubjects();

  it('builds every subject under the default prefix', () => {
    expect(s.runsStart).toBe('reins.v1.runs.start');
    expect(s.runsGet).toBe('reins.v1.runs.get');
    expect(s.runsList).toBe('reins.v1.runs.list');
    expect(s.authorize('r1')).toBe('reins.v1.sv.12.authorize');
    expect(s.settle('r1')).toBe('reins.v1.sv.12.settle');
    expect(s.act('r1')).toBe('reins.v1.sv.12.act');
    expect(s.partition(3).act).toBe('reins.v1.sv.3.act');
    expect(s.partition('*').authorize).toBe('reins.v1.sv.*.authorize');
    expect(s.task('planner')).toBe('reins.v1.task.planner');
    expect(s.exec('read_file')).toBe('reins.v1.exec.read_file');
    expect(s.ctlHalt).toBe('reins.v1.ctl.halt');
    expect(s.ctlResume).toBe('reins.v1.ctl.resume');
    expect(s.ctlApprove).toBe('reins.v1.ctl.approve');
    expect(s.ctlBcast({ kind: 'run', runId: 'r1' })).toBe('reins.v1.ctl.bcast.run.r1');
    expect(s.ctlBcast({ kind: 'all' })).toBe('reins.v1.ctl.bcast.all');
    expect(s.heartbeat('executor', 'e1')).toBe('reins.v1.hb.executor.e1');
    expect(s.audit('sv1')).toBe('reins.v1.audit.sv1');
    expect(s.audit()).toBe('reins.v1.audit.*');
    expect(s.trace({ runId: 'r1', role: 'planner', agentId: 'p1', event: 'step.start' })).toBe(
      'reins.v1.trace.r1.planner.p1.step.start',
    );
  });

  it('builds wildcard patterns for subscribers', () => {
    expect(s.trace({ runId: '*' })).toBe('reins.v1.trace.*.*.*.>');
    expect(s.trace({ runId: 'r1' })).toBe('reins.v1.trace.r1.*.*.>');
    expect(s.trace({ role: 'executor', event: 'tool.result' })).toBe(
      'reins.v1.trace.*.executor.*.tool.result',
    );
    expect(s.heartbeat()).toBe('reins.v1.hb.*.*');
  });

  it('maps a run to its partition with FNV-1a of its UTF-8 bytes, the same in every process', () => {
    // Pinned values (any other implementation — another language's — must compute these).
    expect(partitionOf('r1', 32)).toBe(206831020 % 32);
    expect(partitionOf('run_abc', 32)).toBe(511415905 % 32);
    expect(partitionOf('rün', 7)).toBe(1439690492 % 7);
    expect(DEFAULT_PARTITIONS).toBe(32);
    const seven = createSubjects('reins.v1', 7);
    expect(seven.partitions).toBe(7);
    expect(seven.authorize('run_abc')).toBe(`reins.v1.sv.${511415905 % 7}.authorize`);
    // Runs spread over every partition.
    const seen = new Set(Array.from({ length: 2000 }, () => s.partitionOf(newId('run'))));
    expect(seen.size).toBe(32);
  });

  it('refuses a bad partition count, partition number or run id', () => {
    for (const bad of [0, -1, 1.5, 1025, Number.NaN])
      expect(() => createSubjects('reins.v1', bad)).toThrow(ProtocolError);
    expect(() => s.partition(32)).toThrow(ProtocolError);
    expect(() => s.authorize('a.b')).toThrow(ProtocolError);
  });

  it('honours a custom prefix', () => {
    expect(createSubjects('acme.reins').exec('t')).toBe('acme.reins.exec.t');
    expect(() => createSubjects('bad prefix')).toThrow(ProtocolError);
    expect(() => createSubjects('a.>')).toThrow(ProtocolError);
  });

  it.each(['a.b', '*', '>', 'sp ace', 'é', 'x'.repeat(65), '', 'reаd_file'])(
    'refuses the id %j',
    (bad) => {
      expect(() => s.exec(bad)).toThrow(ProtocolError);
      expect(() => s.trace({ runId: bad === '*' ? 'a.b' : bad })).toThrow(ProtocolError);
      expect(() => s.ctlBcast({ kind: 'agent', agentId: bad })).toThrow(ProtocolError);
      expect(() => assertId(bad)).toThrow(/must match/);
    },
  );

  it('refuses bad trace event names', () => {
    expect(() => s.trace({ runId: 'r', event: 'Step' })).toThrow(ProtocolError);
    expect(() => s.trace({ runId: 'r', event: 'a..b' })).toThrow(ProtocolError);
    expect(() => s.trace({ runId: 'r', event: 'a.*' })).toThrow(ProtocolError);
  });

  it('generates unique, valid, sortable ids', () => {
    const ids = Array.from({ length: 1000 }, () => newId('run'));
    expect(new Set(ids).size).toBe(1000);
    expect(ids.every(isId)).toBe(true);
    expect([...ids].sort()).toEqual(ids);
  });
});
