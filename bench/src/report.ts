import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { MemorySample, Result, RunReport } from './types.js';

function formatValue(value: number, unit: string): string {
  if (!Number.isFinite(value)) return 'n/a';
  if (unit === 'ops/s' || unit === 'steps/s')
    return `${Math.round(value).toLocaleString('en-US')} ${unit}`;
  if (unit === '×') return `${value.toFixed(3)}×`;
  if (unit === 'µs' && value >= 10_000) return `${(value / 1000).toFixed(1)} ms`;
  return `${value.toFixed(1)} ${unit}`;
}

function formatBytes(bytes: number): string {
  const mib = bytes / (1024 * 1024);
  return `${mib >= 0 ? '+' : ''}${mib.toFixed(1)} MiB`;
}

/** Whether a result meets its target ratio; `undefined` when it has none. */
export function meetsTarget(r: Result): boolean | undefined {
  if (r.target === undefined) return undefined;
  return r.better === 'lower' ? r.ratio <= r.target : r.ratio >= r.target;
}

function verdict(r: Result): string {
  const ok = meetsTarget(r);
  if (ok === undefined) return '';
  return `${r.better === 'lower' ? '≤' : '≥'} ${r.target?.toFixed(2) ?? ''}× ${ok ? 'ok' : 'MISSED'}`;
}

/** The run as a markdown table, one row per figure, then memory per suite. */
export function markdown(report: RunReport): string {
  const lines = [
    `Reins benchmarks (${report.mode}), node ${report.environment.node}, nats-server ` +
      `${report.environment.natsServer}, ${report.environment.cpus} × ${report.environment.cpuModel}`,
    '',
    '| suite | metric | raw NATS | Reins | reins / raw (median of rounds) | target |',
    '| --- | --- | ---: | ---: | ---: | --- |',
  ];
  for (const s of report.suites) {
    for (const r of s.results) {
      lines.push(
        `| ${s.name} | ${r.metric} | ${formatValue(r.raw, r.unit)} | ${formatValue(r.reins, r.unit)} ` +
          `| ${r.ratio.toFixed(2)}× | ${verdict(r)} |`,
      );
    }
  }
  const figures = report.suites.flatMap((s) => s.figures.map((f) => ({ suite: s.name, f })));
  if (figures.length > 0) {
    lines.push('', '| suite | figure (no raw baseline) | value |', '| --- | --- | ---: |');
    for (const { suite, f } of figures)
      lines.push(`| ${suite} | ${f.metric} | ${formatValue(f.value, f.unit)} |`);
  }
  const checks = report.suites.flatMap((s) => s.checks.map((c) => ({ suite: s.name, c })));
  if (checks.length > 0) {
    lines.push('', '| suite | invariant | holds |', '| --- | --- | --- |');
    for (const { suite, c } of checks)
      lines.push(`| ${suite} | ${c.message} | ${c.ok ? 'yes' : '**NO**'} |`);
  }
  lines.push('', '| suite | duration | RSS Δ | heap used Δ | RSS after | heap used after |');
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: |');
  for (const s of report.suites) {
    const m = s.memory;
    lines.push(
      `| ${s.name} | ${(s.durationMs / 1000).toFixed(1)} s | ${formatBytes(m.delta.rss)} ` +
        `| ${formatBytes(m.delta.heapUsed)} | ${mib(m.after.rss)} | ${mib(m.after.heapUsed)} |`,
    );
  }
  return lines.join('\n');
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * A horizontal bar chart of every ratio (reins / raw), with the parity line at 1× and each
 * target marked. Hand-written SVG: no plotting dependency.
 */
export function svg(report: RunReport): string {
  const rows = report.suites.flatMap((s) => s.results.map((r) => ({ suite: s.name, r })));
  const labelW = 330;
  const barW = 420;
  const rowH = 28;
  const top = 56;
  const width = labelW + barW + 90;
  const height = top + rows.length * rowH + 40;
  const maxRatio = Math.max(2, ...rows.map(({ r }) => (Number.isFinite(r.ratio) ? r.ratio : 0)));
  const scale = barW / (Math.ceil(maxRatio * 2) / 2);
  const x = (ratio: number) => labelW + ratio * scale;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="12" y="22" font-size="15" font-weight="bold">Reins / raw NATS (${report.mode}, ` +
      `${escapeXml(report.timestamp)})</text>`,
    `<text x="12" y="40" fill="#555">median of per-round ratios over interleaved rounds; ` +
      `latency: lower is better, throughput: higher is better</text>`,
  ];
  rows.forEach(({ suite, r }, i) => {
    const y = top + i * rowH;
    const ok = meetsTarget(r);
    const fill = ok === false ? '#d9534f' : ok === true ? '#5cb85c' : '#5b8def';
    const ratio = Number.isFinite(r.ratio) ? r.ratio : 0;
    const label = `${suite}: ${r.metric} (${r.better} is better)`;
    out.push(
      `<text x="${labelW - 8}" y="${y + 17}" text-anchor="end">${escapeXml(label)}</text>`,
      `<rect x="${labelW}" y="${y + 5}" width="${(ratio * scale).toFixed(1)}" height="${rowH - 10}" fill="${fill}"/>`,
      `<text x="${(x(ratio) + 6).toFixed(1)}" y="${y + 17}">${r.ratio.toFixed(2)}×</text>`,
    );
    if (r.target !== undefined) {
      const tx = x(r.target).toFixed(1);
      out.push(
        `<line x1="${tx}" x2="${tx}" y1="${y + 2}" y2="${y + rowH - 2}" stroke="#000" ` +
          `stroke-width="2" stroke-dasharray="3,2"><title>target ${r.target}×</title></line>`,
      );
    }
  });
  const bottom = top + rows.length * rowH;
  const one = x(1).toFixed(1);
  out.push(
    `<line x1="${one}" x2="${one}" y1="${top - 4}" y2="${bottom + 4}" stroke="#333"/>`,
    `<text x="${one}" y="${bottom + 18}" text-anchor="middle">1× (parity)</text>`,
    `<text x="12" y="${bottom + 34}" fill="#555">dashed: target</text>`,
    '</svg>',
  );
  return out.join('\n') + '\n';
}

/** Process memory now (bytes). */
export function memorySample(): MemorySample {
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external };
}

/** after − before, field by field. */
export function memoryDelta(before: MemorySample, after: MemorySample): MemorySample {
  return {
    rss: after.rss - before.rss,
    heapUsed: after.heapUsed - before.heapUsed,
    heapTotal: after.heapTotal - before.heapTotal,
    external: after.external - before.external,
  };
}

/**
 * Writes `<timestamp>.json`, `latest.json`, `latest.svg` and `latest.md` (the table) into `dir`
 * (created when missing).
 * Returns the paths written.
 */
export async function writeReport(dir: string, report: RunReport): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const json = JSON.stringify(report, null, 2) + '\n';
  const stamped = join(dir, `${report.timestamp.replace(/[:.]/g, '-')}.json`);
  const latest = join(dir, 'latest.json');
  const chart = join(dir, 'latest.svg');
  await writeFile(stamped, json);
  await writeFile(latest, json);
  await writeFile(chart, svg(report));
  const table = join(dir, 'latest.md');
  await writeFile(table, `${markdown(report)}\n`);
  return [stamped, latest, chart, table];
}
