/**
 * The trace file format (trace.proto): "MMSIMTRC", a little-endian uint32
 * version, then frames of (varint length, message bytes, little-endian
 * CRC-32 of the message bytes): one TraceHeader, then TraceRecords.
 *
 * The writer issues one write(2) per frame on a file opened for appending,
 * so whatever a dying daemon leaves is a sequence of whole frames possibly
 * followed by one torn frame; the reader returns the whole ones and
 * describes the torn tail instead of failing.
 */
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { TraceHeader, TraceRecord } from "../gen/mmsim/v1/trace.js";

export const TRACE_MAGIC = Buffer.from("MMSIMTRC", "latin1");
export const TRACE_VERSION = 1;
const PREAMBLE_BYTES = TRACE_MAGIC.length + 4;

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (IEEE 802.3, as zlib). */
export function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

/** One frame: varint length, bytes, CRC-32. */
export function frame(msg: Uint8Array): Buffer {
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(msg));
  return Buffer.concat([varint(msg.length), msg, crc]);
}

export function preamble(): Buffer {
  const v = Buffer.alloc(4);
  v.writeUInt32LE(TRACE_VERSION);
  return Buffer.concat([TRACE_MAGIC, v]);
}

/** Not a trace file, or one damaged before its last frame. */
export class TraceFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TraceFormatError";
  }
}

export interface TraceContents {
  header: TraceHeader;
  records: TraceRecord[];
  /** Why the file ends with an incomplete frame, when it does. */
  torn: string | undefined;
}

/** Parse a whole trace file. Throws TraceFormatError for a bad preamble or header, or damage before the last frame. */
export function parseTrace(buf: Buffer): TraceContents {
  if (buf.length < PREAMBLE_BYTES || !buf.subarray(0, TRACE_MAGIC.length).equals(TRACE_MAGIC))
    throw new TraceFormatError("not a trace file (no MMSIMTRC magic)");
  const version = buf.readUInt32LE(TRACE_MAGIC.length);
  if (version !== TRACE_VERSION) throw new TraceFormatError(`trace format version ${version} is not supported (this build reads ${TRACE_VERSION})`);
  const frames: { body: Buffer; at: number }[] = [];
  let pos = PREAMBLE_BYTES;
  let torn: string | undefined;
  while (pos < buf.length) {
    const at = pos;
    let len = 0;
    let mul = 1;
    let ok = false;
    for (let i = 0; i < 8 && pos < buf.length; i++) {
      const b = buf[pos++]!;
      len += (b & 0x7f) * mul;
      mul *= 128;
      if ((b & 0x80) === 0) {
        ok = true;
        break;
      }
    }
    if (!ok) {
      torn = `frame at byte ${at}: length prefix cut off`;
      break;
    }
    if (pos + len + 4 > buf.length) {
      torn = `frame at byte ${at}: ${len} bytes announced, ${Math.max(0, buf.length - pos - 4)} present`;
      break;
    }
    const body = buf.subarray(pos, pos + len);
    const crc = buf.readUInt32LE(pos + len);
    pos += len + 4;
    if (crc32(body) !== crc) {
      if (pos >= buf.length) {
        torn = `frame at byte ${at}: checksum mismatch in the last frame`;
        break;
      }
      throw new TraceFormatError(`frame at byte ${at}: checksum mismatch (the file is damaged before its end)`);
    }
    frames.push({ body, at });
  }
  if (frames.length === 0) throw new TraceFormatError(torn !== undefined ? `the trace header is torn (${torn})` : "the trace has no header");
  let header: TraceHeader;
  try {
    header = TraceHeader.decode(frames[0]!.body);
  } catch (e) {
    throw new TraceFormatError(`cannot decode the trace header: ${(e as Error).message}`);
  }
  const records = frames.slice(1).map(({ body, at }) => {
    try {
      return TraceRecord.decode(body);
    } catch (e) {
      throw new TraceFormatError(`frame at byte ${at}: cannot decode the record: ${(e as Error).message}`);
    }
  });
  return { header, records, torn };
}

export function readTraceFile(path: string): TraceContents {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new TraceFormatError(`cannot read ${path}: ${(e as Error).message}`);
  }
  return parseTrace(buf);
}

/** Write a complete trace (tests, tools): preamble, header, records. */
export function encodeTrace(header: TraceHeader, records: readonly TraceRecord[]): Buffer {
  return Buffer.concat([preamble(), frame(TraceHeader.encode(header).finish()), ...records.map((r) => frame(TraceRecord.encode(r).finish()))]);
}

/** An open trace file: the preamble and header are written at once, then one write per record. */
export class TraceWriter {
  private fd: number | null;
  records = 0;

  constructor(
    readonly path: string,
    header: TraceHeader,
  ) {
    this.fd = openSync(path, "w");
    writeSync(this.fd, Buffer.concat([preamble(), frame(TraceHeader.encode(header).finish())]));
  }

  append(r: TraceRecord): void {
    if (this.fd === null) return;
    writeSync(this.fd, frame(TraceRecord.encode(r).finish()));
    this.records++;
  }

  close(): void {
    if (this.fd === null) return;
    closeSync(this.fd);
    this.fd = null;
  }
}
