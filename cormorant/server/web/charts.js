// Line charts on a canvas, drawn by hand (no library): a rolling window of points per series,
// the latest values also written as text next to the chart for screen readers and tests.

const COLORS = ["#0b6e99", "#c2410c", "#6d28d9", "#15803d"];
const WINDOW = 90;

// A chart's figure (ids chart-KEY and canvas-KEY): its title, its latest values and its canvas,
// appended to `parent`.
export function addFigure(parent, key, title) {
  const label = document.createElement("span");
  label.textContent = title;
  const output = document.createElement("output");
  output.setAttribute("for", "canvas-" + key);
  output.setAttribute("aria-live", "off");
  output.textContent = "–";
  const caption = document.createElement("figcaption");
  caption.append(label, " ", output);
  const canvas = document.createElement("canvas");
  canvas.id = "canvas-" + key;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", title + ", last two minutes");
  const figure = document.createElement("figure");
  figure.className = "chart";
  figure.id = "chart-" + key;
  figure.append(caption, canvas);
  parent.append(figure);
  return figure;
}

export class Chart {
  constructor(figure, series, format) {
    this.figure = figure;
    this.canvas = figure.querySelector("canvas");
    this.output = figure.querySelector("output");
    this.series = series;  // labels
    this.format = format || ((v) => (v === null ? "–" : v.toFixed(1)));
    this.points = series.map(() => []);
    this.count = 0;
  }

  push(values) {
    values.forEach((v, i) => {
      this.points[i].push(v);
      if (this.points[i].length > WINDOW) this.points[i].shift();
    });
    this.count += 1;
    this.output.replaceChildren(...this.series.map((name, i) => {
      const part = document.createElement("span");
      part.className = "s" + i;  // its line's colour as a legend mark (app.css)
      part.textContent = (this.series.length > 1 ? name + " " : "") + this.format(values[i]);
      return part;
    }));
    this.figure.dataset.points = String(this.count);
    this.figure.dataset.last = JSON.stringify(values);
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const all = this.points.flat().filter((v) => v !== null && Number.isFinite(v));
    const top = Math.max(1e-9, ...all) * 1.1;
    ctx.strokeStyle = "#d0d7de";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    this.points.forEach((points, s) => {
      ctx.strokeStyle = COLORS[s % COLORS.length];
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      points.forEach((v, i) => {
        if (v === null || !Number.isFinite(v)) { started = false; return; }
        const x = width - ((points.length - 1 - i) / (WINDOW - 1)) * width;  // newest on the right
        const y = height - 2 - (v / top) * (height - 4);
        if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        started = true;
      });
      ctx.stroke();
    });
  }
}
