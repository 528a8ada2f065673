#!/usr/bin/env node
// Draws the app icons (a white "Q" on a violet gradient) as PNGs, without dependencies:
// signed distances, 4x4 supersampling, zlib from Node. Run from anywhere:
//   node www/tools/make-icons.mjs        (writes www/app/icons/*.png and icon.svg)

import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const out = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../app/icons');
fs.mkdirSync(out, { recursive: true });

const TOP = [0x7b, 0x5c, 0xff];
const BOTTOM = [0x4a, 0x2f, 0xd6];

// Shapes in unit coordinates (0..1).
function roundedRect(x, y, r) {
  const dx = Math.max(Math.abs(x - 0.5) - (0.5 - r), 0);
  const dy = Math.max(Math.abs(y - 0.5) - (0.5 - r), 0);
  return Math.hypot(dx, dy) - r; // <0 inside
}

function segment(px, py, ax, ay, bx, by) {
  const vx = bx - ax, vy = by - ay;
  const t = Math.max(0, Math.min(1, ((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy)));
  return Math.hypot(px - ax - t * vx, py - ay - t * vy);
}

// The glyph, scaled by s around the centre (s < 1 leaves room for maskable crops).
function glyph(x, y, s) {
  const u = (x - 0.5) / s + 0.5;
  const v = (y - 0.5) / s + 0.5;
  const ring = Math.abs(Math.hypot(u - 0.48, v - 0.47) - 0.235) - 0.055;
  const tail = segment(u, v, 0.56, 0.58, 0.73, 0.8) - 0.055;
  return Math.min(ring, tail) * s;
}

function render(size, { maskable = false } = {}) {
  const px = Buffer.alloc(size * size * 4);
  const N = 4;
  for (let j = 0; j < size; j++) {
    for (let i = 0; i < size; i++) {
      let bg = 0, fg = 0;
      for (let sj = 0; sj < N; sj++) {
        for (let si = 0; si < N; si++) {
          const x = (i + (si + 0.5) / N) / size;
          const y = (j + (sj + 0.5) / N) / size;
          const inBg = maskable ? true : roundedRect(x, y, 0.22) < 0;
          if (!inBg) continue;
          bg++;
          if (glyph(x, y, maskable ? 0.72 : 0.9) < 0) fg++;
        }
      }
      const t = j / (size - 1);
      const base = TOP.map((c, k) => Math.round(c + (BOTTOM[k] - c) * t));
      const a = bg / (N * N);
      const f = bg ? fg / bg : 0;
      const o = (j * size + i) * 4;
      for (let k = 0; k < 3; k++) px[o + k] = Math.round(base[k] * (1 - f) + 255 * f);
      px[o + 3] = Math.round(a * 255);
    }
  }
  return png(size, size, px);
}

function png(w, h, rgba) {
  const raw = Buffer.alloc((w * 4 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 4 + 1)] = 0;
    rgba.copy(raw, y * (w * 4 + 1) + 1, y * w * 4, (y + 1) * w * 4);
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32 ? zlib.crc32(td) : crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; ihdr[9] = 6; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

fs.writeFileSync(path.join(out, 'icon-192.png'), render(192));
fs.writeFileSync(path.join(out, 'icon-512.png'), render(512));
// iOS adds its own rounded corners and shows transparency as black: fill the square.
fs.writeFileSync(path.join(out, 'apple-touch-icon.png'), render(180, { maskable: true }));
fs.writeFileSync(path.join(out, 'maskable-512.png'), render(512, { maskable: true }));

const hex = (c) => '#' + c.map((x) => x.toString(16).padStart(2, '0')).join('');
// The same glyph in SVG: the unit shapes above scaled by 0.9 around the centre.
const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">
  <defs><linearGradient id="g" x1="0" y1="0" x2="0" y2="1"><stop offset="0" stop-color="${hex(TOP)}"/><stop offset="1" stop-color="${hex(BOTTOM)}"/></linearGradient></defs>
  <rect width="100" height="100" rx="22" fill="url(#g)"/>
  <g fill="none" stroke="#fff" stroke-width="9.9" stroke-linecap="round">
    <circle cx="48.2" cy="47.3" r="21.15"/>
    <path d="M55.4 57.2 L70.7 77"/>
  </g>
</svg>
`;
fs.writeFileSync(path.join(out, 'icon.svg'), svg);
console.log(`icons written to ${out}`);
