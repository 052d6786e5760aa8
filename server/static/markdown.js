// A small Markdown renderer for model answers: fenced code blocks, headings, lists (nested by
// indentation), block quotes, rules, paragraphs; inline code, bold, italic, strikethrough, links.
// Safety: every piece of the source is HTML-escaped before any tag is added, and links keep only
// http(s), mailto and relative targets, so model output can never inject markup or script.
"use strict";

const Markdown = (() => {
  const escapeHtml = (text) => text
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");

  // `href` arrives HTML-escaped; decode the entities back only to look at the scheme.
  function safeHref(href) {
    const plain = href.replace(/&amp;/g, "&").replace(/&quot;/g, '"').replace(/&#39;/g, "'")
      .replace(/&lt;/g, "<").replace(/&gt;/g, ">").trim();
    const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(plain.replace(/[\u0000-\u0020]/g, ""));
    if (scheme && !["http", "https", "mailto"].includes(scheme[1].toLowerCase())) return null;
    return href.trim();
  }

  // Inline spans of one escaped line of text.
  function inline(escaped) {
    const codes = [];
    let out = escaped.replace(/`([^`]+)`/g, (_, code) => {
      codes.push(`<code>${code}</code>`);
      return `\u0000${codes.length - 1}\u0000`;
    });
    out = out.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (whole, label, href) => {
      const safe = safeHref(href);
      return safe === null ? label
        : `<a href="${safe}" target="_blank" rel="noopener noreferrer nofollow">${label}</a>`;
    });
    out = out
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/(^|[^*\w])\*(?=\S)([^*]*?\S)\*(?![*\w])/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_(?=\S)([^_]*?\S)_(?![_\w])/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
    return out.replace(/\u0000(\d+)\u0000/g, (_, i) => codes[Number(i)]);
  }

  const LIST_ITEM = /^(\s*)([-*+]|\d+[.)])\s+(.*)$/;

  // Consecutive list lines → nested <ul>/<ol> by indentation.
  function list(lines) {
    let html = "";
    const stack = []; // {indent, tag}
    for (const line of lines) {
      const m = LIST_ITEM.exec(line);
      if (!m) { // a continuation line of the previous item
        html += " " + inline(line.trim());
        continue;
      }
      const indent = m[1].length;
      const tag = /\d/.test(m[2]) ? "ol" : "ul";
      while (stack.length && indent < stack[stack.length - 1].indent) {
        html += `</li></${stack.pop().tag}>`;
      }
      const top = stack[stack.length - 1];
      if (!top || indent > top.indent) {
        const start = tag === "ol" && parseInt(m[2], 10) !== 1 ? ` start="${parseInt(m[2], 10)}"` : "";
        html += `<${tag}${start}>`;
        stack.push({ indent, tag });
      } else {
        html += "</li>";
      }
      html += "<li>" + inline(m[3]);
    }
    while (stack.length) html += `</li></${stack.pop().tag}>`;
    return html;
  }

  function blocks(escaped) {
    const lines = escaped.split("\n");
    let html = "";
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (!line.trim()) { i++; continue; }
      if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
        html += `<h${m[1].length}>${inline(m[2])}</h${m[1].length}>`;
        i++;
      } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
        html += "<hr>";
        i++;
      } else if (/^&gt;\s?/.test(line)) {
        const quoted = [];
        while (i < lines.length && /^&gt;\s?/.test(lines[i])) quoted.push(lines[i++].replace(/^&gt;\s?/, ""));
        html += `<blockquote>${blocks(quoted.join("\n"))}</blockquote>`;
      } else if (LIST_ITEM.test(line)) {
        const items = [];
        while (i < lines.length && lines[i].trim() && (LIST_ITEM.test(lines[i]) || /^\s+/.test(lines[i]))) {
          items.push(lines[i++]);
        }
        html += list(items);
      } else {
        const para = [];
        while (i < lines.length && lines[i].trim() && !/^(#{1,6}\s|&gt;)/.test(lines[i])
               && !(para.length && LIST_ITEM.test(lines[i]))) {
          para.push(lines[i++]);
        }
        html += `<p>${para.map(inline).join("<br>")}</p>`;
      }
    }
    return html;
  }

  /** Markdown source (untrusted) → safe HTML. An unclosed fence (mid-stream) runs to the end. */
  function render(source) {
    const parts = escapeHtml(source.replace(/\r\n?/g, "\n")).split(/^ {0,3}```/m);
    let html = blocks(parts[0]);
    for (let k = 1; k < parts.length; k += 2) {
      const newline = parts[k].indexOf("\n");
      const lang = newline < 0 ? parts[k].trim() : parts[k].slice(0, newline).trim();
      const code = newline < 0 ? "" : parts[k].slice(newline + 1).replace(/\n$/, "");
      const cls = /^[\w+#.-]+$/.test(lang) ? ` class="language-${lang}"` : "";
      html += `<pre><code${cls}>${code}</code></pre>`;
      if (k + 1 < parts.length) html += blocks(parts[k + 1].replace(/^[^\n]*\n?/, ""));
    }
    return html;
  }

  return { render, escapeHtml };
})();
