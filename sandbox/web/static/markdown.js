// Discord's message markdown, the small part bots use: bold, italics, code, links, mentions,
// timestamps and "-#" subtext. Text is escaped first, so only the tags made here are HTML.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function timestamp(seconds, style) {
  const when = new Date(Number(seconds) * 1000);
  if (style === "R") {
    const diff = Math.round((when.getTime() - Date.now()) / 1000);
    const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
    const format = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
    for (const [unit, size] of units) {
      if (Math.abs(diff) >= size || unit === "second") {
        return format.format(Math.round(diff / size), unit);
      }
    }
  }
  if (style === "t" || style === "T") return when.toLocaleTimeString();
  if (style === "d" || style === "D") return when.toLocaleDateString();
  return when.toLocaleString();
}

// users: Map of id -> name, for <@id> mentions.
export function markdown(text, users) {
  const blocks = [];
  let html = escapeHtml(text ?? "");
  html = html.replace(/```(?:[a-z]*\n)?([\s\S]*?)```/g, (_, code) => {
    blocks.push(`<pre><code>${code}</code></pre>`);
    return `\u0000${blocks.length - 1}\u0000`;
  });
  html = html.replace(/`([^`\n]+)`/g, (_, code) => {
    blocks.push(`<code>${code}</code>`);
    return `\u0000${blocks.length - 1}\u0000`;
  });
  html = html
    .replace(/&lt;@!?(\d+)&gt;/g, (_, id) => `<span class="mention">@${escapeHtml(users.get(id) ?? "unknown-user")}</span>`)
    .replace(/&lt;t:(-?\d+)(?::([tTdDfFR]))?&gt;/g, (_, s, style) => `<time>${escapeHtml(timestamp(s, style))}</time>`)
    .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>')
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/__([^_]+)__/g, "<u>$1</u>")
    .replace(/(^|[^\w*])\*([^*\n]+)\*/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_([^_\n]+)_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~([^~]+)~~/g, "<s>$1</s>")
    .replace(/^-# (.*)$/gm, '<small class="subtext">$1</small>')
    .replace(/^&gt; (.*)$/gm, '<span class="quote">$1</span>')
    .replace(/\n/g, "<br>");
  return html.replace(/\u0000(\d+)\u0000/g, (_, i) => blocks[Number(i)]);
}
