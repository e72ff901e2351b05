import type { Style } from './output.js';

const LEVELS: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};
const HIDDEN = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'name', 'v']);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fieldValue(v: unknown): string {
  if (typeof v === 'string') return /\s/.test(v) ? JSON.stringify(v) : v;
  if (isRecord(v) && typeof v['message'] === 'string') {
    // pino serialises errors as { type, message, stack }: the message is what a reader needs.
    return JSON.stringify(v['message']);
  }
  const s = JSON.stringify(v);
  return s.length > 200 ? `${s.slice(0, 199)}…` : s;
}

/** A service's log line as the JSON object it is (pino), or undefined for plain text. */
export function parseLogRecord(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const rec: unknown = JSON.parse(line);
    return isRecord(rec) ? rec : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Renders one service log line for a human: a pino JSON line becomes
 * `INFO  planner ready agentId=planner-1 role=planner`; anything else is returned unchanged.
 */
export function formatLogLine(line: string, style: Style): string {
  const rec = parseLogRecord(line);
  if (!rec) return line;
  const level = typeof rec['level'] === 'number' ? rec['level'] : 30;
  const label = (LEVELS[level] ?? String(level)).padEnd(5);
  const painted =
    level >= 50 ? style.red(label) : level >= 40 ? style.yellow(label) : style.dim(label);
  const msg = typeof rec['msg'] === 'string' ? rec['msg'] : '';
  const fields = Object.entries(rec)
    .filter(([k]) => !HIDDEN.has(k))
    .map(([k, v]) => `${style.dim(`${k}=`)}${fieldValue(v)}`)
    .join(' ');
  return `${painted} ${msg}${fields ? ` ${fields}` : ''}`;
}
