import { openClient, type CommonOptions } from '../connection.js';
import { ExitCode } from '../errors.js';
import {
  createStyle,
  formatDuration,
  formatTable,
  outputWidth,
  println,
  type Style,
} from '../output.js';
import { shortIds } from '../id-prefix.js';
import { printList, type ListOptions } from '../list-output.js';

/** Options of `reins ps`. */
export interface PsOptions extends CommonOptions, ListOptions {
  /** Include agents that stopped cleanly. */
  all?: boolean;
}

/** Colours an actor or run status: green when healthy, yellow when held, red when broken. */
export function paintStatus(status: string, s: Style): string {
  if (status === 'running' || status === 'completed') return s.green(status);
  if (status === 'failed' || status === 'lost') return s.red(status);
  if (status === 'halted' || status === 'paused' || status === 'stopped' || status === 'draining')
    return s.yellow(status);
  return status;
}

/**
 * `reins ps`: the agents in the presence bucket with role, status, heartbeat age, in-flight
 * work and the runs they hold (JSON: the presence records). Agents whose heartbeat expired
 * show as `lost`.
 */
export async function psCommand(options: PsOptions): Promise<ExitCode> {
  await using client = await openClient(options);
  const agents = await client.agents.list({ includeStopped: options.all === true });
  if (printList(agents, options, (a) => a.agentId)) return ExitCode.ok;
  const s = createStyle();
  if (agents.length === 0) {
    println(`no agents on ${s.bold('NATS')} — start a swarm with \`reins up\``);
    return ExitCode.ok;
  }
  const runIds = [...new Set(agents.flatMap((a) => a.runs))];
  const short = shortIds(runIds, 'run');
  const run = (id: string) => (options.wide ? id : (short.get(id) ?? id));
  const rows = agents.map((a) => [
    s.byKey(a.agentId, a.agentId),
    a.role,
    paintStatus(a.status, s) + (a.degraded ? s.yellow(' (degraded)') : ''),
    `${formatDuration(a.ageMs)} ago`,
    String(a.inFlight),
    a.runs.length
      ? options.wide
        ? a.runs.join(',')
        : a.runs.slice(0, 3).map(run).join(',') +
          (a.runs.length > 3 ? ` +${a.runs.length - 3}` : '')
      : '-',
    a.pid !== undefined ? String(a.pid) : '-',
  ]);
  println(
    formatTable(['AGENT', 'ROLE', 'STATUS', 'HEARTBEAT', 'IN-FLIGHT', 'RUNS', 'PID'], rows, s, {
      width: outputWidth(options.wide),
      shrink: [5, 0],
    }),
  );
  return ExitCode.ok;
}
