/**
 * Renders the README's benchmark chart as a self-contained SVG: one panel per throughput
 * scenario, one bar per library (ops/s, linear scale per panel), layercache highlighted.
 */
const PANELS: [key: string, title: string][] = [
  ["s1", "1. L1 hit: getOrSet (ops/s)"],
  ["s2", "2. Cached function, L1 hit (ops/s)"],
  ["s3", "3. L2 hit, L1 cold, 64 concurrent, Redis (ops/s)"],
];

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");

function fmt(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return n.toFixed(0);
}

export function renderChart(results: Record<string, unknown>, machine: { cpu: string; cores: number; node: string; redis: string; date: string }): string {
  const width = 760;
  const labelW = 190;
  const barMax = width - labelW - 110;
  const rowH = 22;
  let y = 54;
  const parts: string[] = [];
  for (const [key, title] of PANELS) {
    const r = results[key] as Record<string, number> | undefined;
    if (!r) continue;
    const max = Math.max(...Object.values(r));
    parts.push(`<text x="10" y="${y}" class="h">${esc(title)}</text>`);
    y += 10;
    for (const [name, ops] of Object.entries(r)) {
      const w = Math.max(1, (ops / max) * barMax);
      const mine = name === "layercache";
      parts.push(
        `<text x="${labelW - 8}" y="${y + 15}" class="l" text-anchor="end">${esc(name)}</text>`,
        `<rect x="${labelW}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" class="${mine ? "me" : "peer"}"/>`,
        `<text x="${labelW + w + 6}" y="${y + 15}" class="v">${fmt(ops)}</text>`,
      );
      y += rowH;
    }
    y += 24;
  }
  const height = y + 10;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif">
<style>.t{font-size:15px;font-weight:600}.s{font-size:11px;fill:#555}.h{font-size:13px;font-weight:600}.l{font-size:12px}.v{font-size:11px;fill:#333}.me{fill:#2f6fdd}.peer{fill:#a9b4c2}</style>
<rect width="100%" height="100%" fill="#fff"/>
<text x="10" y="22" class="t">layercache vs peers — one run, same machine (higher is better)</text>
<text x="10" y="38" class="s">${esc(`${machine.cpu}, ${machine.cores} cores · Node ${machine.node} · redis-server ${machine.redis} · ${machine.date}`)}</text>
${parts.join("\n")}
</svg>
`;
}
