// A small Markdown renderer that builds DOM nodes and sets only textContent: model text is
// never parsed as HTML, so `<script>` in an answer is shown as the characters it is.
// Supports fenced code blocks, headings, bullet and numbered lists, paragraphs, inline code,
// **bold** and *emphasis*. Links are shown as text (an answer cannot make the page navigate).

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

const INLINE = /(`[^`\n]+`|\*\*[^*\n]+\*\*|\*[^*\s][^*\n]*\*)/;

export function renderInline(text, parent) {
  for (const part of text.split(INLINE)) {
    if (!part) continue;
    if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) {
      parent.append(el("code", part.slice(1, -1)));
    } else if (part.length > 4 && part.startsWith("**") && part.endsWith("**")) {
      parent.append(el("strong", part.slice(2, -2)));
    } else if (part.length > 2 && part.startsWith("*") && part.endsWith("*")) {
      parent.append(el("em", part.slice(1, -1)));
    } else {
      parent.append(document.createTextNode(part));
    }
  }
}

function codeBlock(lines, lang) {
  const pre = el("pre", undefined, "code");
  const code = el("code", lines.join("\n"));
  const known = /^[A-Za-z0-9_+-]{1,32}$/.test(lang);
  if (known) code.dataset.lang = lang;
  pre.tabIndex = 0;  // a wide block scrolls: the keyboard must reach it
  pre.setAttribute("role", "region");
  pre.setAttribute("aria-label", known ? "Code, " + lang : "Code");
  pre.append(code);
  return pre;
}

function listOf(lines, ordered) {
  const list = el(ordered ? "ol" : "ul");
  for (const line of lines) {
    const item = el("li");
    renderInline(line.replace(/^\s*(?:[-*+]|\d+[.)])\s+/, ""), item);
    list.append(item);
  }
  return list;
}

const BULLET = /^\s*[-*+]\s+/;
const NUMBERED = /^\s*\d+[.)]\s+/;
const HEADING = /^(#{1,6})\s+(.*)$/;

// Returns a DocumentFragment; an unterminated code fence (mid-stream) still renders as code.
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([^`\s]*)\s*$/);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
      i += 1;
      out.append(codeBlock(body, fence[1]));
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      const node = el("h" + Math.min(6, heading[1].length + 2));
      renderInline(heading[2], node);
      out.append(node);
      i += 1;
      continue;
    }
    const kind = BULLET.test(line) ? [BULLET, false] : NUMBERED.test(line) ? [NUMBERED, true] : null;
    if (kind) {
      const items = [];
      while (i < lines.length && kind[0].test(lines[i])) items.push(lines[i++]);
      out.append(listOf(items, kind[1]));
      continue;
    }
    if (!line.trim()) { i += 1; continue; }
    const para = [lines[i++]];  // the first line always: the loop must advance
    while (i < lines.length && lines[i].trim() && !HEADING.test(lines[i]) &&
           !/^\s*```/.test(lines[i]) && !BULLET.test(lines[i]) && !NUMBERED.test(lines[i])) {
      para.push(lines[i++]);
    }
    const p = el("p");
    para.forEach((part, n) => {
      if (n) p.append(el("br"));
      renderInline(part, p);
    });
    out.append(p);
  }
  return out;
}
