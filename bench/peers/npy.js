'use strict';
// Minimal NumPy .npy reading and writing for float32 C-order arrays (format
// versions 1.0-3.0 read, 1.0 written), enough for the tensors Kiln exchanges.
const fs = require('node:fs');

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY

/** readNpy returns {shape, data: Float32Array} of a little-endian float32 .npy file. */
function readNpy(path) {
  const b = fs.readFileSync(path);
  if (b.length < 10 || !b.subarray(0, 6).equals(MAGIC)) {
    throw new Error(`${path}: not an .npy file`);
  }
  const major = b[6];
  let hlen; let off;
  if (major === 1) { hlen = b.readUInt16LE(8); off = 10; } else if (major === 2 || major === 3) { hlen = b.readUInt32LE(8); off = 12; } else {
    throw new Error(`${path}: unsupported .npy version ${major}`);
  }
  const header = b.subarray(off, off + hlen).toString('latin1');
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shapeM = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeM) throw new Error(`${path}: malformed .npy header ${JSON.stringify(header)}`);
  if (descr[1] !== '<f4') throw new Error(`${path}: dtype ${descr[1]}, want <f4 (float32)`);
  if (fortran[1] !== 'False') throw new Error(`${path}: Fortran order is not supported`);
  const shape = shapeM[1].split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  const n = shape.reduce((a, d) => a * d, 1);
  const start = off + hlen;
  if (b.length - start !== 4 * n) throw new Error(`${path}: ${b.length - start} data bytes, shape (${shape}) needs ${4 * n}`);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = b.readFloatLE(start + 4 * i);
  return { shape, data };
}

/** writeNpy writes a float32 array with the given shape as an .npy (1.0) file, atomically. */
function writeNpy(path, shape, data) {
  const shp = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${shp}, }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const hb = Buffer.from(header, 'latin1');
  const pre = Buffer.alloc(10);
  MAGIC.copy(pre, 0);
  pre[6] = 1; pre[7] = 0;
  pre.writeUInt16LE(hb.length, 8);
  const body = Buffer.alloc(4 * data.length);
  for (let i = 0; i < data.length; i++) body.writeFloatLE(data[i], 4 * i);
  const tmp = `${path}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, Buffer.concat([pre, hb, body]));
  fs.renameSync(tmp, path);
}

module.exports = { readNpy, writeNpy };
