/**
 * A generic object-graph codec for snapshots: class instances (through an
 * explicit class registry), typed arrays and ArrayBuffers (written as bulk
 * bytes), Map, Set, arrays (holes kept), plain objects and every primitive
 * (-0, NaN, undefined, bigint). Shared references and cycles come back as
 * shared references and cycles. New fields of a registered class are
 * captured without any change here.
 *
 * Never serialized: functions, promises, timers and instances of classes
 * that are not registered. A field holding one fails the encode with the
 * field's path, unless its class declares the field transient (skipped on
 * encode; on decode set to the declared initial value and re-installed by
 * the code that owns it). Objects the caller names as external (the live
 * kernel, objects of the service layer) are written as a name and resolved
 * by the decoder's caller; every slot that received one is reported so the
 * caller can rebind it.
 *
 * Layout (little endian), no recursion on either side (deep graphs are
 * fine): the root value, then the object table in discovery order, each
 * record `kind u8, body length f64, body`. Values inside bodies are tagged:
 * primitives inline, objects as `REF index`. Decoding reads every record's
 * header, creates every object's shell (ArrayBuffers first, then typed
 * arrays, then the rest), then fills the bodies; any index, length, kind,
 * class name or UTF-8 string out of place is a SnapshotFormatError.
 */

export class SnapshotFormatError extends Error {
  override readonly name = "SnapshotFormatError";
  /** the bytes are damaged (checksum or length mismatch), rather than not a valid snapshot */
  constructor(
    message: string,
    readonly dataLoss = false,
  ) {
    super(message);
  }
}

/** A class the codec may write: its instances are rebuilt without calling the constructor. */
export interface ClassEntry {
  name: string;
  ctor: abstract new (...args: never[]) => object;
  /** fields never written; on decode each is set to the factory's value */
  transient?: Record<string, () => unknown>;
}

export class ClassRegistry {
  private readonly byName = new Map<string, ClassEntry>();
  private readonly byProto = new Map<object, ClassEntry>();

  register(e: ClassEntry): this {
    if (this.byName.has(e.name)) throw new Error(`snapshot class ${e.name} registered twice`);
    this.byName.set(e.name, e);
    this.byProto.set(e.ctor.prototype as object, e);
    return this;
  }

  ofProto(p: object): ClassEntry | undefined {
    return this.byProto.get(p);
  }

  ofName(n: string): ClassEntry | undefined {
    return this.byName.get(n);
  }
}

const enum Tag {
  UNDEFINED = 0,
  NULL = 1,
  TRUE = 2,
  FALSE = 3,
  NUMBER = 4,
  STRING = 5,
  BIGINT = 6,
  REF = 7,
  EXTERNAL = 8,
  HOLE = 9,
  INT = 10,
}

const enum Kind {
  ARRAY = 1,
  ARRAY_F64 = 2,
  OBJECT = 3,
  INSTANCE = 4,
  MAP = 5,
  SET = 6,
  ARRAY_BUFFER = 7,
  TYPED = 8,
  NULL_PROTO = 9,
}

const TYPED_CTORS = [
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
] as const;
type AnyTyped = InstanceType<(typeof TYPED_CTORS)[number]>;

function typedIndex(o: object): number {
  const p = Object.getPrototypeOf(o) as object;
  for (let i = 0; i < TYPED_CTORS.length; i++) if (p === TYPED_CTORS[i]!.prototype) return i;
  return -1;
}

// ------------------------------------------------------------------ writer

/** Growable byte sink; large ArrayBuffer bodies are kept as views (no copy). */
class Sink {
  readonly parts: Uint8Array[] = [];
  private buf = new Uint8Array(1 << 16);
  private dv = new DataView(this.buf.buffer);
  private pos = 0;
  total = 0;
  private static readonly enc = new TextEncoder();

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.flush();
    if (n > this.buf.length) {
      this.buf = new Uint8Array(Math.max(n, 1 << 16));
      this.dv = new DataView(this.buf.buffer);
    }
  }

  flush(): void {
    if (this.pos === 0) return;
    this.parts.push(this.buf.slice(0, this.pos));
    this.pos = 0;
  }

  u8(v: number): void {
    this.room(1);
    this.buf[this.pos++] = v;
    this.total++;
  }
  f64(v: number): void {
    this.room(8);
    this.dv.setFloat64(this.pos, v, true);
    this.pos += 8;
    this.total += 8;
  }
  i32(v: number): void {
    this.room(4);
    this.dv.setInt32(this.pos, v, true);
    this.pos += 4;
    this.total += 4;
  }
  str(s: string): void {
    const b = Sink.enc.encode(s);
    this.f64(b.length);
    this.bytes(b, false);
  }
  /** Raw bytes; `share` keeps a view of large inputs instead of copying them. */
  bytes(b: Uint8Array, share: boolean): void {
    if (share && b.length >= 1 << 16) {
      this.flush();
      this.parts.push(b);
      this.total += b.length;
      return;
    }
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    this.total += b.length;
  }
}

export interface EncodeOptions {
  /** a name for objects written by reference to the outside (e.g. the live kernel) */
  external?: (o: object) => string | undefined;
}

export interface EncodeResult {
  /** the encoded payload as parts (large ones are views of live buffers) */
  parts: Uint8Array[];
  length: number;
  objects: number;
}

/** Encode `root`; throws an Error naming the path of anything that cannot be written. */
export function encodeGraph(root: unknown, reg: ClassRegistry, opts: EncodeOptions = {}): EncodeResult {
  const index = new Map<object, number>();
  const objs: object[] = [];
  /** for error paths: parent object index and the key it was reached by */
  const parent: number[] = [];
  const via: string[] = [];
  const sink = new Sink();

  const pathOf = (i: number, key: string): string => {
    const segs = [key];
    let j = i;
    while (j >= 0) {
      segs.push(via[j]!);
      j = parent[j]!;
    }
    return segs.reverse().join("");
  };
  const describe = (v: unknown): string => {
    if (typeof v === "function") return `function ${(v as { name?: string }).name || "(anonymous)"}`;
    if (typeof v === "symbol") return "a symbol";
    const p = Object.getPrototypeOf(v) as { constructor?: { name?: string } } | null;
    return `an instance of unregistered class ${p?.constructor?.name ?? "?"}`;
  };

  const value = (v: unknown, from: number, key: string): void => {
    switch (typeof v) {
      case "undefined":
        sink.u8(Tag.UNDEFINED);
        return;
      case "boolean":
        sink.u8(v ? Tag.TRUE : Tag.FALSE);
        return;
      case "number":
        if ((v | 0) === v && !Object.is(v, -0)) {
          sink.u8(Tag.INT);
          sink.i32(v);
        } else {
          sink.u8(Tag.NUMBER);
          sink.f64(v);
        }
        return;
      case "string":
        sink.u8(Tag.STRING);
        sink.str(v);
        return;
      case "bigint":
        sink.u8(Tag.BIGINT);
        sink.str(v.toString());
        return;
      case "object":
        break;
      default:
        throw new Error(`snapshot: cannot write ${describe(v)} at ${pathOf(from, key)}`);
    }
    if (v === null) {
      sink.u8(Tag.NULL);
      return;
    }
    const ext = opts.external?.(v);
    if (ext !== undefined) {
      sink.u8(Tag.EXTERNAL);
      sink.str(ext);
      return;
    }
    let i = index.get(v);
    if (i === undefined) {
      checkWritable(v, from, key);
      i = objs.length;
      index.set(v, i);
      objs.push(v);
      parent.push(from);
      via.push(key);
    }
    sink.u8(Tag.REF);
    sink.f64(i);
  };

  const checkWritable = (o: object, from: number, key: string): void => {
    if (Array.isArray(o) || o instanceof Map || o instanceof Set || o instanceof ArrayBuffer || typedIndex(o) >= 0) {
      const p = Object.getPrototypeOf(o) as object;
      if (p === Array.prototype || p === Map.prototype || p === Set.prototype || p === ArrayBuffer.prototype || typedIndex(o) >= 0) return;
    }
    const p = Object.getPrototypeOf(o) as object | null;
    if (p === Object.prototype || p === null || (p !== null && reg.ofProto(p) !== undefined)) return;
    throw new Error(`snapshot: cannot write ${describe(o)} at ${pathOf(from, key)}`);
  };

  // The root value first, then each object's record in discovery order
  // (records may discover further objects; the loop runs until none is left).
  value(root, -1, "$");
  for (let i = 0; i < objs.length; i++) {
    const o = objs[i]!;
    writeRecord(o, i);
  }
  sink.flush();
  return { parts: sink.parts, length: sink.total, objects: objs.length };

  function fields(o: object, i: number, skip: Record<string, unknown> | undefined): void {
    const keys = Object.keys(o);
    let n = 0;
    for (const k of keys) if (skip === undefined || !(k in skip)) n++;
    sink.f64(n);
    for (const k of keys) {
      if (skip !== undefined && k in skip) continue;
      sink.str(k);
      value((o as Record<string, unknown>)[k], i, `.${k}`);
    }
  }

  function writeRecord(o: object, i: number): void {
    // The length field of a record is only meaningful for bulk bodies
    // (ArrayBuffer, numeric arrays); other records are walked value by value.
    if (o instanceof ArrayBuffer) {
      sink.u8(Kind.ARRAY_BUFFER);
      sink.f64(o.byteLength);
      sink.bytes(new Uint8Array(o), true);
      return;
    }
    const t = typedIndex(o);
    if (t >= 0) {
      const a = o as AnyTyped;
      sink.u8(Kind.TYPED);
      sink.f64(-1); // body length: fixed layout, not needed
      sink.u8(t);
      value(a.buffer, i, ".buffer");
      sink.f64(a.byteOffset);
      sink.f64(a.length);
      return;
    }
    if (Array.isArray(o)) {
      const arr = o as unknown[];
      let numeric = arr.length >= 8;
      if (numeric) for (let j = 0; j < arr.length; j++) if (typeof arr[j] !== "number" || !(j in arr)) { numeric = false; break; }
      if (numeric) {
        sink.u8(Kind.ARRAY_F64);
        sink.f64(arr.length);
        const f = Float64Array.from(arr as number[]);
        sink.bytes(new Uint8Array(f.buffer), true);
        return;
      }
      sink.u8(Kind.ARRAY);
      sink.f64(-1);
      sink.f64(arr.length);
      for (let j = 0; j < arr.length; j++) {
        if (!(j in arr)) sink.u8(Tag.HOLE);
        else value(arr[j], i, `[${j}]`);
      }
      const extra = Object.keys(arr).length - arr.filter((_, j) => j in arr).length;
      if (extra !== 0) throw new Error(`snapshot: array with non-index properties at ${pathOf(i, "")}`);
      return;
    }
    if (o instanceof Map) {
      sink.u8(Kind.MAP);
      sink.f64(-1);
      sink.f64(o.size);
      let j = 0;
      for (const [k, v] of o) {
        value(k, i, `.<key ${j}>`);
        value(v, i, `.get(${typeof k === "object" ? j : String(k)})`);
        j++;
      }
      return;
    }
    if (o instanceof Set) {
      sink.u8(Kind.SET);
      sink.f64(-1);
      sink.f64(o.size);
      let j = 0;
      for (const v of o) value(v, i, `.<member ${j++}>`);
      return;
    }
    const p = Object.getPrototypeOf(o) as object | null;
    if (p === Object.prototype || p === null) {
      sink.u8(p === null ? Kind.NULL_PROTO : Kind.OBJECT);
      sink.f64(-1);
      fields(o, i, undefined);
      return;
    }
    const e = reg.ofProto(p)!;
    sink.u8(Kind.INSTANCE);
    sink.f64(-1);
    sink.str(e.name);
    fields(o, i, e.transient);
  }
}

// ------------------------------------------------------------------ reader

/** Where an external object was placed, so the caller can rebind it. */
export interface ExternalSlot {
  holder: object;
  key: string | number;
  name: string;
}

export interface DecodeOptions {
  /** resolve an external name (throw SnapshotFormatError for an unknown one) */
  external: (name: string) => object;
}

export interface DecodeResult {
  root: unknown;
  externals: ExternalSlot[];
  objects: number;
}

/**
 * Bytes held as a list of chunks (a file read in pieces, an upload's
 * messages): no single buffer is needed, so payloads beyond the largest
 * typed array (4 GiB on Node 20) and without a second copy are fine.
 */
export class ByteSource {
  readonly length: number;
  private readonly starts: number[] = [];

  constructor(readonly chunks: readonly Uint8Array[]) {
    let s = 0;
    for (const c of chunks) {
      this.starts.push(s);
      s += c.length;
    }
    this.length = s;
  }

  static of(b: Uint8Array | readonly Uint8Array[] | ByteSource): ByteSource {
    if (b instanceof ByteSource) return b;
    return new ByteSource(b instanceof Uint8Array ? [b] : b);
  }

  /** Index of the chunk holding byte `pos` (0 <= pos < length). */
  chunkAt(pos: number): number {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    // skip empty chunks
    while (lo < this.chunks.length - 1 && pos >= this.starts[lo]! + this.chunks[lo]!.length) lo++;
    return lo;
  }

  chunkStart(i: number): number {
    return this.starts[i]!;
  }

  /** Copy `n` bytes at `pos` into `dst` at `off`. */
  copyTo(dst: Uint8Array, off: number, pos: number, n: number): void {
    let done = 0;
    while (done < n) {
      const i = this.chunkAt(pos + done);
      const c = this.chunks[i]!;
      const o = pos + done - this.starts[i]!;
      const take = Math.min(n - done, c.length - o);
      dst.set(c.subarray(o, o + take), off + done);
      done += take;
    }
  }

  /** `n` bytes at `pos`: a view when they lie in one chunk, else a copy. */
  view(pos: number, n: number): Uint8Array {
    if (n === 0) return new Uint8Array(0);
    const i = this.chunkAt(pos);
    const o = pos - this.starts[i]!;
    const c = this.chunks[i]!;
    if (o + n <= c.length) return c.subarray(o, o + n);
    const out = new Uint8Array(n);
    this.copyTo(out, 0, pos, n);
    return out;
  }

  /** The bytes from `pos` to the end, as a source (chunks are views, not copies). */
  from(pos: number): ByteSource {
    if (pos >= this.length) return new ByteSource([]);
    const i = this.chunkAt(pos);
    const out = [this.chunks[i]!.subarray(pos - this.starts[i]!)];
    for (let j = i + 1; j < this.chunks.length; j++) out.push(this.chunks[j]!);
    return new ByteSource(out);
  }
}

class Reader {
  pos = 0;
  /** the chunk of the last read: [cs, ce) in payload positions */
  private cur: Uint8Array = new Uint8Array(0);
  private dv: DataView = new DataView(new ArrayBuffer(0));
  private cs = 0;
  private ce = 0;
  private static readonly dec = new TextDecoder("utf-8", { fatal: true });
  constructor(readonly src: ByteSource) {}

  get length(): number {
    return this.src.length;
  }

  need(n: number, what: string): void {
    if (!(n >= 0) || this.pos + n > this.src.length) throw new SnapshotFormatError(`payload truncated reading ${what} at byte ${this.pos}`);
  }

  /** Make [pos, pos + n) readable through cur/dv at pos - cs; false when it spans chunks. */
  private within(n: number): boolean {
    if (this.pos >= this.cs && this.pos + n <= this.ce) return true;
    const i = this.src.chunkAt(this.pos);
    const c = this.src.chunks[i]!;
    this.cur = c;
    this.dv = new DataView(c.buffer, c.byteOffset, c.byteLength);
    this.cs = this.src.chunkStart(i);
    this.ce = this.cs + c.length;
    return this.pos + n <= this.ce;
  }

  /** A DataView and offset for `n` bytes at pos (a copy when they span chunks). */
  private at(n: number): [DataView, number] {
    if (this.within(n)) return [this.dv, this.pos - this.cs];
    const b = this.src.view(this.pos, n);
    return [new DataView(b.buffer, b.byteOffset, b.byteLength), 0];
  }

  peek(): number {
    if (this.pos >= this.src.length) return -1;
    this.within(1);
    return this.cur[this.pos - this.cs]!;
  }
  u8(what: string): number {
    this.need(1, what);
    this.within(1);
    return this.cur[this.pos++ - this.cs]!;
  }
  i32(what: string): number {
    this.need(4, what);
    const [dv, o] = this.at(4);
    this.pos += 4;
    return dv.getInt32(o, true);
  }
  f64(what: string): number {
    this.need(8, what);
    const [dv, o] = this.at(8);
    this.pos += 8;
    return dv.getFloat64(o, true);
  }
  count(what: string, max = 2 ** 40): number {
    const v = this.f64(what);
    if (!Number.isSafeInteger(v) || v < 0 || v > max) throw new SnapshotFormatError(`bad ${what} ${v} at byte ${this.pos - 8}`);
    return v;
  }
  str(what: string): string {
    const n = this.count(`${what} length`);
    this.need(n, what);
    const b = this.src.view(this.pos, n);
    this.pos += n;
    try {
      return Reader.dec.decode(b);
    } catch {
      throw new SnapshotFormatError(`${what} is not valid UTF-8 at byte ${this.pos - n}`);
    }
  }
  /** Copy `n` bytes at pos into `dst` and move past them. */
  bytesInto(dst: Uint8Array, n: number, what: string): void {
    this.need(n, what);
    this.src.copyTo(dst, 0, this.pos, n);
    this.pos += n;
  }
  skip(n: number, what: string): void {
    this.need(n, what);
    this.pos += n;
  }
}

const FORBIDDEN_KEYS = new Set(["__proto__"]);

/** Decode a payload made by encodeGraph; throws SnapshotFormatError on any inconsistency. */
export function decodeGraph(bytes: Uint8Array | readonly Uint8Array[] | ByteSource, reg: ClassRegistry, opts: DecodeOptions): DecodeResult {
  const r = new Reader(ByteSource.of(bytes));
  const externals: ExternalSlot[] = [];
  const rootStart = r.pos;
  // Pass 1: skip the root value, then index every record (kind, start).
  skipValue(r);
  const kinds: number[] = [];
  const starts: number[] = [];
  while (r.pos < r.length) {
    const k = r.u8("record kind");
    kinds.push(k);
    starts.push(r.pos);
    skipRecord(r, k);
  }
  const n = kinds.length;
  const objs: object[] = new Array<object>(n);

  const refIndex = (what: string): number => {
    const i = r.f64(what);
    if (!Number.isSafeInteger(i) || i < 0 || i >= n) throw new SnapshotFormatError(`reference ${i} out of range (${n} objects) in ${what}`);
    return i;
  };

  // Pass 2: shells. ArrayBuffers, then typed arrays over them, then the rest.
  for (let i = 0; i < n; i++) {
    if (kinds[i] !== Kind.ARRAY_BUFFER) continue;
    r.pos = starts[i]!;
    const len = r.count("ArrayBuffer length");
    const ab = new ArrayBuffer(len);
    r.bytesInto(new Uint8Array(ab), len, "ArrayBuffer bytes");
    objs[i] = ab;
  }
  for (let i = 0; i < n; i++) {
    const k = kinds[i]!;
    if (k === Kind.ARRAY_BUFFER) continue;
    r.pos = starts[i]!;
    switch (k) {
      case Kind.TYPED: {
        r.f64("typed array header");
        const t = r.u8("typed array kind");
        const C = TYPED_CTORS[t];
        if (C === undefined) throw new SnapshotFormatError(`unknown typed array kind ${t}`);
        if (r.u8("typed array buffer tag") !== Tag.REF) throw new SnapshotFormatError("typed array without an ArrayBuffer reference");
        const bi = refIndex("typed array buffer");
        if (kinds[bi] !== Kind.ARRAY_BUFFER) throw new SnapshotFormatError(`typed array buffer ${bi} is not an ArrayBuffer`);
        const off = r.count("typed array offset");
        const len = r.count("typed array length");
        const ab = objs[bi] as ArrayBuffer;
        if (off % C.BYTES_PER_ELEMENT !== 0 || off + len * C.BYTES_PER_ELEMENT > ab.byteLength)
          throw new SnapshotFormatError(`typed array [${off}, +${len}) outside its ${ab.byteLength}-byte buffer`);
        objs[i] = new C(ab, off, len);
        break;
      }
      case Kind.ARRAY:
        objs[i] = [];
        break;
      case Kind.ARRAY_F64: {
        const len = r.count("array length");
        r.need(len * 8, "array elements");
        const f = new Float64Array(len);
        r.bytesInto(new Uint8Array(f.buffer), len * 8, "array elements");
        objs[i] = Array.from(f);
        break;
      }
      case Kind.OBJECT:
        objs[i] = {};
        break;
      case Kind.NULL_PROTO:
        objs[i] = Object.create(null) as object;
        break;
      case Kind.MAP:
        objs[i] = new Map();
        break;
      case Kind.SET:
        objs[i] = new Set();
        break;
      case Kind.INSTANCE: {
        r.f64("instance header");
        const name = r.str("class name");
        const e = reg.ofName(name);
        if (e === undefined) throw new SnapshotFormatError(`unknown class "${name}"`);
        const o = Object.create(e.ctor.prototype as object) as Record<string, unknown>;
        for (const [f, init] of Object.entries(e.transient ?? {})) o[f] = init();
        objs[i] = o;
        break;
      }
      default:
        throw new SnapshotFormatError(`unknown record kind ${k}`);
    }
  }

  // Pass 3: bodies.
  const readValue = (holder: object | null, key: string | number, what: string): unknown => {
    const t = r.u8(what);
    switch (t) {
      case Tag.UNDEFINED:
        return undefined;
      case Tag.NULL:
        return null;
      case Tag.TRUE:
        return true;
      case Tag.FALSE:
        return false;
      case Tag.INT:
        return r.i32(what);
      case Tag.NUMBER:
        return r.f64(what);
      case Tag.STRING:
        return r.str(what);
      case Tag.BIGINT: {
        const s = r.str(what);
        if (!/^-?[0-9]+$/.test(s)) throw new SnapshotFormatError(`bad bigint ${JSON.stringify(s)}`);
        return BigInt(s);
      }
      case Tag.REF:
        return objs[refIndex(what)];
      case Tag.EXTERNAL: {
        const name = r.str("external name");
        const o = opts.external(name);
        if (holder === null) throw new SnapshotFormatError(`external "${name}" in a position that cannot be rebound (${what})`);
        externals.push({ holder, key, name });
        return o;
      }
      default:
        throw new SnapshotFormatError(`unknown value tag ${t} in ${what} at byte ${r.pos - 1}`);
    }
  };
  const readFields = (o: Record<string, unknown>, what: string): void => {
    const nf = r.count(`${what} field count`);
    for (let j = 0; j < nf; j++) {
      const key = r.str(`${what} field name`);
      if (FORBIDDEN_KEYS.has(key)) throw new SnapshotFormatError(`forbidden field name ${key}`);
      o[key] = readValue(o, key, `${what}.${key}`);
    }
  };

  for (let i = 0; i < n; i++) {
    const k = kinds[i]!;
    r.pos = starts[i]!;
    const o = objs[i]!;
    switch (k) {
      case Kind.ARRAY: {
        r.f64("array header");
        const len = r.count("array length");
        const a = o as unknown[];
        a.length = len;
        for (let j = 0; j < len; j++) {
          if (r.peek() === Tag.HOLE) {
            r.pos++;
            continue;
          }
          a[j] = readValue(a, j, `array[${j}]`);
        }
        break;
      }
      case Kind.OBJECT:
      case Kind.NULL_PROTO:
        r.f64("object header");
        readFields(o as Record<string, unknown>, "object");
        break;
      case Kind.INSTANCE: {
        r.f64("instance header");
        const name = r.str("class name");
        readFields(o as Record<string, unknown>, name);
        break;
      }
      case Kind.MAP: {
        r.f64("map header");
        const m = o as Map<unknown, unknown>;
        const cnt = r.count("map size");
        for (let j = 0; j < cnt; j++) {
          const key = readValue(null, 0, "map key");
          const at = m.size;
          const v = readValue(m, at, "map value");
          // an external map value is rebound by key
          if (externals.length > 0 && externals[externals.length - 1]!.holder === m && externals[externals.length - 1]!.key === at)
            externals[externals.length - 1]!.key = key as never;
          if (m.has(key)) throw new SnapshotFormatError("duplicate map key");
          m.set(key, v);
        }
        break;
      }
      case Kind.SET: {
        r.f64("set header");
        const s = o as Set<unknown>;
        const cnt = r.count("set size");
        for (let j = 0; j < cnt; j++) {
          const v = readValue(null, 0, "set member");
          if (s.has(v)) throw new SnapshotFormatError("duplicate set member");
          s.add(v);
        }
        break;
      }
      default:
        break;
    }
  }
  r.pos = rootStart;
  const holder: { root?: unknown } = {};
  holder.root = readValue(holder, "root", "root");
  return { root: holder.root, externals, objects: n };
}

/** Rebind every slot that received external `name` to `to`. */
export function rebindExternals(slots: readonly ExternalSlot[], name: string, to: object): void {
  for (const s of slots) {
    if (s.name !== name) continue;
    if (s.holder instanceof Map) s.holder.set(s.key, to);
    else (s.holder as Record<string | number, unknown>)[s.key] = to;
  }
}

function skipValue(r: Reader): void {
  const t = r.u8("value tag");
  switch (t) {
    case Tag.UNDEFINED:
    case Tag.NULL:
    case Tag.TRUE:
    case Tag.FALSE:
    case Tag.HOLE:
      return;
    case Tag.INT:
      r.skip(4, "int");
      return;
    case Tag.NUMBER:
    case Tag.REF:
      r.skip(8, "number");
      return;
    case Tag.STRING:
    case Tag.BIGINT:
    case Tag.EXTERNAL:
      r.skip(r.count("string length"), "string");
      return;
    default:
      throw new SnapshotFormatError(`unknown value tag ${t} at byte ${r.pos - 1}`);
  }
}

function skipFields(r: Reader): void {
  const nf = r.count("field count");
  for (let j = 0; j < nf; j++) {
    r.skip(r.count("field name length"), "field name");
    skipValue(r);
  }
}

function skipRecord(r: Reader, k: number): void {
  switch (k) {
    case Kind.ARRAY_BUFFER:
      r.skip(r.count("ArrayBuffer length"), "ArrayBuffer bytes");
      return;
    case Kind.TYPED:
      r.f64("typed array header");
      r.u8("typed array kind");
      skipValue(r);
      r.f64("typed array offset");
      r.f64("typed array length");
      return;
    case Kind.ARRAY_F64:
      r.skip(r.count("array length") * 8, "array elements");
      return;
    case Kind.ARRAY: {
      r.f64("array header");
      const len = r.count("array length");
      for (let j = 0; j < len; j++) skipValue(r);
      return;
    }
    case Kind.OBJECT:
    case Kind.NULL_PROTO:
      r.f64("object header");
      skipFields(r);
      return;
    case Kind.INSTANCE:
      r.f64("instance header");
      r.skip(r.count("class name length"), "class name");
      skipFields(r);
      return;
    case Kind.MAP: {
      r.f64("map header");
      const cnt = r.count("map size");
      for (let j = 0; j < 2 * cnt; j++) skipValue(r);
      return;
    }
    case Kind.SET: {
      r.f64("set header");
      const cnt = r.count("set size");
      for (let j = 0; j < cnt; j++) skipValue(r);
      return;
    }
    default:
      throw new SnapshotFormatError(`unknown record kind ${k} at byte ${r.pos - 1}`);
  }
}
