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

/** Lays rows out in left-aligned columns under a header, two spaces apart. */
export function formatTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  style: Style,
): string {
  const widths = header.map((h, i) =>
    Math.max(visibleWidth(h), ...rows.map((r) => visibleWidth(r[i] ?? ''))),
  );
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
