import { ControlAck, ControlMessage, decode, encode, newId } from '@reins/protocol';
import type { z } from 'zod';
import type { Runtime } from './runtime.js';
import { payloadHeaders } from './wire.js';

/** Options of `broadcastControl`. */
export interface BroadcastOptions {
  /** Stop collecting once this many acks arrived (default: wait the whole window). */
  expectAcks?: number;
  /**
   * Stop collecting once every one of these agents acked (acks from others are kept but do not
   * count towards it). Empty: do not wait. Takes precedence over `expectAcks`.
   */
  expectFrom?: Iterable<string>;
  /** How long to collect acks beyond the message's own deadline (default 500 ms). */
  graceMs?: number;
}

/**
 * Broadcasts a control message (halt / pause / resume / drain) to every actor its scope covers
 * and collects their acks until the message's deadline (+ grace). Returns the valid acks;
 * malformed acks are ignored. Used by the supervisor and by tools that manage actors.
 */
export async function broadcastControl(
  runtime: Runtime,
  message: Omit<z.input<typeof ControlMessage>, 'id'> & { id?: string },
  options: BroadcastOptions = {},
): Promise<ControlAck[]> {
  const msg = ControlMessage.parse({ ...message, id: message.id ?? newId('ctl') });
  const subject = runtime.subjects.ctlBcast(msg.scope);
  const acks: ControlAck[] = [];
  const seen = new Set<string>();
  // Agents still to hear from, when the caller named them: an ack from anyone else (an agent
  // presence did not list yet) must not stand in for one of theirs.
  const waiting = options.expectFrom ? new Set(options.expectFrom) : undefined;
  const byCount = waiting === undefined && options.expectAcks !== undefined;
  const replies = await runtime.nc.requestMany(subject, encode(ControlMessage, msg), {
    // 'count' ends as soon as the expected acks are in (maxWait still bounds it); 'timer' waits
    // out the window, or until every named agent acked (below).
    strategy: byCount ? 'count' : 'timer',
    maxWait: waiting?.size === 0 ? 1 : msg.deadlineMs + (options.graceMs ?? 500),
    headers: payloadHeaders(ControlMessage),
    ...(byCount ? { maxMessages: options.expectAcks } : {}),
  });
  try {
    for await (const r of replies) {
      try {
        const ack = decode(ControlAck, r.data);
        if (ack.id !== msg.id || seen.has(ack.agentId)) continue;
        seen.add(ack.agentId);
        acks.push(ack);
        waiting?.delete(ack.agentId);
      } catch {
        // a malformed ack counts as no ack
      }
      // Leaving the loop stops the iterator (its generator's `finally`).
      if (waiting?.size === 0) break;
    }
  } catch (err) {
    // No responders simply means nobody was listening: an empty ack list.
    if (!/no responders/i.test(String((err as Error).message))) throw err;
  }
  return acks;
}
