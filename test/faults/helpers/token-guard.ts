/**
 * Issue 5, figure 10: the runner token never appears in any log. Every log
 * capture, spawned agent's stderr and command line a fault test produces is
 * handed to `guardTokens`, and the file's `after` hook calls
 * `assertNoTokenLeaked`, which scans all of it for the token (and for its
 * base64 form, as an `Authorization` header dump would show it).
 */
import assert from 'node:assert/strict';
import { TOKEN } from '../../helpers/harness.js';

type Source = () => string | string[];

const sources: { name: string; read: Source }[] = [];
let scannedLines = 0;

/** Registers something whose text must never hold the token. */
export function guardTokens(name: string, read: Source): void {
  sources.push({ name, read });
}

/** The first line holding a token (plain or base64), if any. */
export function findToken(lines: string[], tokens: string[] = [TOKEN]): string | undefined {
  const needles = tokens.flatMap((t) => [t, Buffer.from(t).toString('base64')]);
  return lines.find((line) => needles.some((n) => line.includes(n)));
}

/** Scans everything registered so far; returns how many lines were read. */
export function assertNoTokenLeaked(tokens: string[] = [TOKEN]): { sources: number; lines: number } {
  const needles = tokens.flatMap((t) => [t, Buffer.from(t).toString('base64')]);
  let lines = 0;
  for (const { name, read } of sources) {
    const value = read();
    const list = Array.isArray(value) ? value : value.split('\n');
    lines += list.length;
    for (const line of list) {
      for (const needle of needles) {
        assert.ok(!line.includes(needle), `token found in ${name}: ${line.slice(0, 200)}`);
      }
    }
  }
  scannedLines = lines;
  return { sources: sources.length, lines };
}

export function tokenGuardStats(): { sources: number; lines: number } {
  return { sources: sources.length, lines: scannedLines };
}
