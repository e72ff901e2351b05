import { describe, expect, it } from 'vitest';
import { DEFAULT_REPLY_PREFIXES, checkReplyPrefixes, isAllowedReply } from '../src/reply-guard.js';

describe('reply guard', () => {
  it('answers inbox replies', () => {
    for (const reply of ['_INBOX.abc.1', '_INBOX.UABC.xyz.2', '_INBOX.x']) {
      expect(isAllowedReply(reply, DEFAULT_REPLY_PREFIXES)).toBe(true);
    }
  });

  it('refuses every protected subject family and malformed replies', () => {
    for (const reply of [
      '$KV.reins_halts.all',
      '$KV.reins_halts.role.planner',
      '$KV.reins_budget.run.r1',
      '$JS.API.STREAM.DELETE.REINS_AUDIT',
      '$JS.ACK.REINS_TASKS.planner-x.1.2.3.4.5',
      'reins.v1.audit.sv1',
      'reins.v1.ctl.bcast.all',
      'reins.v1.exec.write_file',
      'reins.v1.hb.supervisor.sv1',
      'reins.v1.trace.r1.supervisor.sv1.run.end',
      '_INBOX',
      '_INBOX.',
      '_INBOX.*',
      '_INBOX.>',
      '_INBOX.a..b',
      '_INBOX.a b',
      '_INBOXES.a',
      '',
    ]) {
      expect(isAllowedReply(reply, DEFAULT_REPLY_PREFIXES), reply).toBe(false);
    }
  });

  it('takes only literal, non-system prefixes', () => {
    expect(checkReplyPrefixes(['_INBOX.', '_R_.'])).toEqual(['_INBOX.', '_R_.']);
    expect(() => checkReplyPrefixes([])).toThrow(RangeError);
    expect(() => checkReplyPrefixes(['$KV.'])).toThrow(/system/);
    expect(() => checkReplyPrefixes(['_INBOX'])).toThrow(/ending/);
    expect(() => checkReplyPrefixes(['_INBOX.>'])).toThrow(/literal/);
  });
});
