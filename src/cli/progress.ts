/**
 * A progress bar for long CLI operations (populating or writing many GiB),
 * drawn on stderr only when stderr is a terminal, at most ten times a second,
 * and erased when done so that stdout stays clean for scripts.
 */
import { size } from "./format.js";

export interface ProgressSink {
  write(s: string): void;
  isTTY: boolean;
  columns?: number;
}

export class Progress {
  private done = 0;
  private lastDraw = 0;
  private drawn = false;
  private readonly t0 = Date.now();

  constructor(
    private readonly sink: ProgressSink | undefined,
    private readonly label: string,
    private readonly total: number,
  ) {}

  /** `n` more bytes done. */
  advance(n: number): void {
    this.update(this.done + n);
  }

  update(done: number): void {
    this.done = Math.min(done, this.total);
    if (this.sink === undefined || !this.sink.isTTY) return;
    const now = Date.now();
    if (now - this.lastDraw < 100 && this.done < this.total) return;
    this.lastDraw = now;
    this.draw(now);
  }

  private draw(now: number): void {
    const frac = this.total > 0 ? this.done / this.total : 1;
    const secs = Math.max((now - this.t0) / 1000, 0.001);
    const text = ` ${String(Math.floor(frac * 100)).padStart(3)}%  ${size(this.done)} / ${size(this.total)}  ${size(this.done / secs)}/s`;
    const cols = this.sink!.columns ?? 80;
    const barWidth = Math.max(10, Math.min(40, cols - this.label.length - text.length - 4));
    const fill = Math.round(frac * barWidth);
    this.sink!.write(`\r${this.label} [${"#".repeat(fill)}${".".repeat(barWidth - fill)}]${text}\x1b[K`);
    this.drawn = true;
  }

  /** Erase the bar. */
  finish(): void {
    if (this.drawn) this.sink!.write("\r\x1b[K");
    this.drawn = false;
  }
}
