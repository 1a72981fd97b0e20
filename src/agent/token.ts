/**
 * The runner token: checked once at start, and for a token file, read again
 * (at most once a second) on every dial so a rotated file is picked up.
 *
 * A token goes into an HTTP header. A character a header may not hold (a
 * control character, a stray byte in a file, anything beyond Latin-1) would
 * make Node throw a TypeError on every handshake, forever; it is refused at
 * start instead, with one line naming the setting and never the token. A
 * rotated file that holds such a byte (or is empty, or unreadable) keeps the
 * last good token in use and is reported once, until the file changes.
 */
import { readFileSync } from 'node:fs';
import { ErrorCodes, RevdialError } from './errors.js';

/** What an HTTP header value may hold (RFC 9110 field-value: VCHAR, SP, HTAB, obs-text), as Node checks it. */
const NOT_IN_HEADER = /[^\t\x20-\x7e\x80-\xff]/;

/** Why `value` cannot be sent as a token, or undefined. Names a position, never the token. */
export function tokenProblem(value: string): string | undefined {
  const m = NOT_IN_HEADER.exec(value);
  if (!m) return undefined;
  const code = m[0].codePointAt(0) ?? 0;
  const what = code < 0x20 || code === 0x7f ? 'a control character' : 'a character outside Latin-1';
  return `holds ${what} (U+${code.toString(16).toUpperCase().padStart(4, '0')} at position ${m.index + 1}), which an HTTP header cannot carry: check for a stray byte`;
}

/** Reads and checks a token file; throws REVDIAL_CONFIG_INVALID naming the file. */
export function readTokenFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw tokenError(`cannot read token file ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  // Surrounding white space (a trailing newline above all) is not part of the token.
  const value = text.trim();
  if (value === '') throw tokenError(`token file ${path} is empty`);
  if (/[\r\n]/.test(value)) throw tokenError(`token file ${path} holds more than one line`);
  const problem = tokenProblem(value);
  if (problem) throw tokenError(`token file ${path} (RUNNER_TOKEN_FILE / --token-file) ${problem}`);
  return value;
}

/** A token file read again at most once per `rereadMs`; keeps the last good token when a read fails. */
export class TokenFile {
  readonly path: string;
  /** Told once per distinct failure of a re-read (the last good token stays in use). */
  onRejected: ((err: RevdialError) => void) | undefined;
  readonly #rereadMs: number;
  readonly #now: () => number;
  #last: string;
  #readAt: number;
  #reported: string | undefined;

  /** Reads the file now: a bad file at start throws REVDIAL_CONFIG_INVALID. */
  constructor(path: string, options: { rereadMs?: number; now?: () => number } = {}) {
    this.path = path;
    this.#rereadMs = options.rereadMs ?? 1000;
    this.#now = options.now ?? (() => Date.now());
    this.#last = readTokenFile(path);
    this.#readAt = this.#now();
  }

  /** The current token. */
  read = (): string => {
    const now = this.#now();
    // Every tunnel's data connection asks too: re-read at most once per interval.
    if (now - this.#readAt < this.#rereadMs) return this.#last;
    this.#readAt = now;
    try {
      this.#last = readTokenFile(this.path);
      this.#reported = undefined;
    } catch (err) {
      const e = err as RevdialError;
      if (e.message !== this.#reported) {
        this.#reported = e.message;
        this.onRejected?.(e);
      }
    }
    return this.#last;
  };
}

function tokenError(message: string): RevdialError {
  return new RevdialError(ErrorCodes.CONFIG_INVALID, message);
}
