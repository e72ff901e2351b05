/** ANSI styling that switches itself off when the stream is not a terminal. */
export interface Style {
  readonly enabled: boolean;
  bold(s: string): string;
  dim(s: string): string;
  red(s: string): string;
  green(s: string): string;
  yellow(s: string): string;
  blue(s: string): string;
  magenta(s: string): string;
  cyan(s: string): string;
  /** Colour `s` with one of a fixed palette chosen by `key` (stable per name). */
  byKey(key: string, s: string): string;
  /** Colour `s` with the palette's `i`-th colour: distinct for up to 10 consecutive indexes. */
  byIndex(i: number, s: string): string;
}

const PALETTE = [36, 33, 35, 32, 34, 96, 93, 95, 92, 94];

/**
 * Styling for a stream: on for a TTY unless `NO_COLOR` is set; `FORCE_COLOR` (not `0`) turns
 * it on anywhere.
 */
export function createStyle(stream: { isTTY?: boolean } = process.stdout): Style {
  const force = process.env['FORCE_COLOR'];
  const enabled =
    force !== undefined && force !== ''
      ? force !== '0'
      : !!stream.isTTY && !process.env['NO_COLOR'];
  const paint = (code: number) => (s: string) => (enabled ? `\x1b[${code}m${s}\x1b[0m` : s);
  return {
    enabled,
    bold: paint(1),
    dim: paint(2),
    red: paint(31),
    green: paint(32),
    yellow: paint(33),
    blue: paint(34),
    magenta: paint(35),
    cyan: paint(36),
    byKey(key, s) {
      let h = 0;
      for (const ch of key) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
      return paint(PALETTE[h % PALETTE.length] ?? 36)(s);
    },
    byIndex(i, s) {
      return paint(PALETTE[i % PALETTE.length] ?? 36)(s);
    },
  };
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

/** Visible width of a string (ANSI escapes do not count). */
export function visibleWidth(s: string): number {
  return s.replace(ANSI, '').length;
}

/** Writes one JSON value as a line on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/** Writes a line on stdout. */
export function println(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/**
 * Columns output should fit in: unlimited with `wide`; else the terminal's width, or `COLUMNS`
 * when stdout is not a terminal (unlimited without it, as `kubectl get` and `docker ps` pipe
 * whole lines).
 */
export function outputWidth(wide?: boolean, stream: NodeJS.WriteStream = process.stdout): number {
  if (wide) return Infinity;
  if (stream.isTTY && stream.columns > 0) return stream.columns;
  const env = Number(process.env['COLUMNS']);
  return Number.isInteger(env) && env > 0 ? env : Infinity;
}

/** Cuts a cell to `max` visible characters with an ellipsis (its colours go when it is cut). */
export function fitCell(cell: string, max: number): string {
  if (visibleWidth(cell) <= max) return cell;
  const plain = cell.replace(ANSI, '');
  return `${plain.slice(0, Math.max(0, max - 1))}…`;
}

/** Options of `formatTable`. */
export interface TableOptions {
  /** Fit the lines into this many columns (default: unlimited). */
  width?: number;
  /**
   * Columns that give up room when the table is too wide, in order (default: the last one);
   * each keeps at least 6 characters.
   */
  shrink?: readonly number[];
}

/**
 * Lays rows out in left-aligned columns under a header, two spaces apart. Wider than
 * `options.width`, the `shrink` columns are cut (with `…`) until it fits, as kubectl does.
 */
export function formatTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  style: Style,
  options: TableOptions = {},
): string {
  const widths = header.map((h, i) =>
    Math.max(visibleWidth(h), ...rows.map((r) => visibleWidth(r[i] ?? ''))),
  );
  const max = options.width ?? Infinity;
  const total = () => widths.reduce((a, b) => a + b, 0) + 2 * (widths.length - 1);
  for (const i of options.shrink ?? [header.length - 1]) {
    const over = total() - max;
    if (over <= 0) break;
    const w = widths[i] ?? 0;
    widths[i] = Math.max(Math.min(w, 6), w - over, visibleWidth(header[i] ?? ''));
  }
  if (Number.isFinite(max)) rows = rows.map((r) => r.map((c, i) => fitCell(c, widths[i] ?? 0)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) =>
        i === cells.length - 1 ? c : c + ' '.repeat((widths[i] ?? 0) - visibleWidth(c)),
      )
      .join('  ')
      .trimEnd();
  return [style.bold(line(header)), ...rows.map(line)].join('\n');
}

/** `1.2s`, `3m4s`, `2h5m`: a short human duration. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '-';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${Math.floor(s % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${m % 60}m`;
  return `${Math.floor(h / 24)}d`;
}

/** Dollars with enough digits for sub-cent model calls: `$0.0012`. */
export function formatUsd(usd: number): string {
  if (usd === 0) return '$0';
  if (usd >= 1) return `$${usd.toFixed(2)}`;
  return `$${usd.toFixed(4)}`;
}

/** `[#####.....]`: a progress bar of `width` cells; over-full bars are drawn full. */
export function progressBar(fraction: number, width = 10): string {
  const f = Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  const filled = Math.round(f * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
}

/** Cuts `s` to `max` characters with an ellipsis, on one line. */
export function truncate(s: string, max: number): string {
  const one = s.replace(/\s+/g, ' ').trim();
  return one.length <= max ? one : `${one.slice(0, Math.max(0, max - 1))}…`;
}
