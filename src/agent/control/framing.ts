/**
 * Control-message framing (PROTOCOL.md, "Framing"): the binary messages of a
 * connection form one byte stream of newline-terminated JSON objects.
 * Message boundaries mean nothing, so lines are reassembled across messages.
 */
import { ErrorCodes, RevdialError } from '../errors.js';

export interface ControlMessage {
  command?: string;
  connPath?: string;
  err?: string;
}

/** The Go reader gives up at 4096 bytes; what we send stays well under it. */
export const MAX_SENT_LINE_BYTES = 2048;
/** The longest `err` we send; longer reasons are cut with an ellipsis. */
export const MAX_ERR_CHARS = 200;
/** The default cap on a line we read; a longer one is a protocol error. */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024;

const NEWLINE = 0x0a;

/**
 * Splits a byte stream into lines. Memory stays bounded: a partial line longer
 * than `maxLineBytes` throws instead of growing.
 */
export class LineReader {
  readonly #maxLineBytes: number;
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  constructor(maxLineBytes = DEFAULT_MAX_LINE_BYTES) {
    this.#maxLineBytes = maxLineBytes;
  }

  /** Bytes held for a line that has not ended yet. */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /** Feeds a chunk; returns the complete lines it finished, without their `\n`. */
  push(chunk: Buffer): Buffer[] {
    const lines: Buffer[] = [];
    let start = 0;
    let nl = chunk.indexOf(NEWLINE, start);
    while (nl !== -1) {
      const part = chunk.subarray(start, nl);
      this.#checkLength(this.#pendingBytes + part.length);
      if (this.#pending.length === 0) {
        lines.push(part);
      } else {
        this.#pending.push(part);
        lines.push(Buffer.concat(this.#pending, this.#pendingBytes + part.length));
        this.#pending = [];
        this.#pendingBytes = 0;
      }
      start = nl + 1;
      nl = chunk.indexOf(NEWLINE, start);
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.#checkLength(this.#pendingBytes + rest.length);
      // Copy: the caller may reuse its buffer, and a small slice must not pin a large one.
      this.#pending.push(Buffer.from(rest));
      this.#pendingBytes += rest.length;
    }
    return lines;
  }

  #checkLength(length: number): void {
    if (length > this.#maxLineBytes) {
      this.#pending = [];
      this.#pendingBytes = 0;
      throw new RevdialError(
        ErrorCodes.PROTOCOL_LINE_TOO_LONG,
        `control line longer than ${this.#maxLineBytes} bytes without a newline: the peer is not speaking the RevDial protocol`,
      );
    }
  }
}

/** A short printable preview of bad input for a log line. */
export function preview(line: Buffer, max = 80): string {
  const text = line
    .subarray(0, max)
    .toString('utf8')
    .replace(/[^\x20-\x7e]/g, '.');
  return line.length > max ? `${text}…` : text;
}

/**
 * Parses one line. Blank lines are skipped (`null`); anything that is not a
 * JSON object with string fields is a protocol error, as it is for the Go side.
 */
export function parseControlLine(line: Buffer): ControlMessage | null {
  const text = line.toString('utf8').trim();
  if (text === '') return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw invalid(line, err);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalid(line, new Error('not a JSON object'));
  }
  const msg: ControlMessage = {};
  for (const field of ['command', 'connPath', 'err'] as const) {
    const v = (value as Record<string, unknown>)[field];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') throw invalid(line, new Error(`field "${field}" is not a string`));
    msg[field] = v;
  }
  return msg;
}

function invalid(line: Buffer, cause: unknown): RevdialError {
  const reason = cause instanceof Error ? cause.message : String(cause);
  return new RevdialError(ErrorCodes.PROTOCOL_INVALID_JSON, `invalid control message (${reason}): "${preview(line)}"`, { cause });
}

/**
 * Encodes one message as a line. Empty fields are omitted, `err` is cut to
 * keep the line short. Returns `null` when even that cannot fit (a `connPath`
 * so long the Go reader would reject the line): the caller logs and drops it.
 */
export function encodeControlMessage(msg: ControlMessage): Buffer | null {
  const out: ControlMessage = {};
  if (msg.command) out.command = msg.command;
  if (msg.connPath) out.connPath = msg.connPath;
  if (msg.err) out.err = truncate(msg.err, MAX_ERR_CHARS);
  let line = Buffer.from(`${JSON.stringify(out)}\n`, 'utf8');
  while (line.length > MAX_SENT_LINE_BYTES && out.err) {
    out.err = out.err.length > 16 ? truncate(out.err, Math.floor(out.err.length / 2)) : undefined;
    if (out.err === undefined) delete out.err;
    line = Buffer.from(`${JSON.stringify(out)}\n`, 'utf8');
  }
  return line.length > MAX_SENT_LINE_BYTES ? null : line;
}

function truncate(text: string, max: number): string {
  const oneLine = text.replace(/\s+/g, ' ');
  return oneLine.length > max ? `${oneLine.slice(0, max - 1)}…` : oneLine;
}
