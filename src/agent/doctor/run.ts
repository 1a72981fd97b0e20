/**
 * Runs the doctor's checks in order, each under its time limit, and prints
 * one line per step (✓ / ✗ / -), with what to do under each ✗, or the same
 * as one JSON document (--json). The control plane's steps depend on each
 * other (no TCP without DNS, no token without TLS): after the first failure
 * the rest of that chain is skipped. Wolf's API is checked either way.
 * The token never appears in the output: it is never put in a message, and
 * the rendered text is scrubbed of it besides.
 */
import { type Clock, systemClock } from '../clock.js';
import { type Config, PROGRAM, VERSION } from '../config.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../errors.js';
import { DirectConnector, targetOf } from '../net/connector.js';
import { controlUrl, safeOrigin } from '../net/endpoints.js';
import { describeTarget } from '../net/local-dialer.js';
import { EgressProxy } from '../net/proxy.js';
import { TlsSettings } from '../net/tls-context.js';
import {
  type CheckContext,
  StepFailure,
  checkDns,
  checkRegistry,
  checkTcp,
  checkTls,
  checkToken,
  checkWolf,
  registryMode,
  resolvedHost,
  tokenSource,
} from './checks.js';
import type { DoctorFlags } from './command.js';

export type StepId = 'config' | 'dns' | 'tcp' | 'tls' | 'token' | 'wolf' | 'registry';
export type StepStatus = 'ok' | 'fail' | 'skip';

export interface StepReport {
  step: StepId;
  status: StepStatus;
  title: string;
  detail: string;
  fix?: string;
  code?: string;
  ms?: number;
}

export interface DoctorReport {
  ok: boolean;
  program: string;
  version: string;
  steps: StepReport[];
}

export const EXIT_ALL_PASSED = 0;
export const EXIT_SOME_FAILED = 1;

interface Step {
  id: StepId;
  /** The title when there is no valid configuration to name things by. */
  label: string;
  title: (ctx: CheckContext) => string;
  run: (ctx: CheckContext, signal: AbortSignal) => Promise<string>;
  /** Why it does not apply, or undefined to run it. */
  skip?: (ctx: CheckContext) => string | undefined;
  /** Part of the chain to the control plane (skipped after an earlier failure there). */
  chain: boolean;
  /** What a step that hit its time limit means. */
  timedOut: (ctx: CheckContext, seconds: string) => { message: string; fix: string };
}

const STEPS: Step[] = [
  {
    id: 'dns',
    label: "the control plane's host resolves",
    title: (ctx) => `${resolvedHost(ctx).what === 'the control plane' ? "the control plane's" : "the egress proxy's"} host resolves`,
    run: checkDns,
    chain: true,
    timedOut: (ctx, s) => ({
      message: `resolving ${resolvedHost(ctx).host} took longer than ${s}`,
      fix: "check this host's DNS servers (/etc/resolv.conf): they do not answer",
    }),
  },
  {
    id: 'tcp',
    label: 'TCP reaches the control plane',
    title: (ctx) => {
      const url = controlUrl(ctx.config.apiUrl, ctx.config.runnerId);
      const { host, port } = targetOf(url);
      const route = ctx.proxy.describeRoute(url);
      return `TCP reaches ${host}:${port}${route === 'direct' ? '' : ` ${route}`}`;
    },
    run: checkTcp,
    chain: true,
    timedOut: (ctx, s) => {
      const url = controlUrl(ctx.config.apiUrl, ctx.config.runnerId);
      const { host, port } = targetOf(url);
      const proxy = ctx.proxy.proxyFor(url);
      return proxy
        ? {
            message: `the egress proxy ${ctx.proxy.describeRoute(url).replace(/^via proxy /, '')} did not open a tunnel to ${host}:${port} within ${s}`,
            fix: 'check that the proxy is up and reachable from this host (--proxy / HTTPS_PROXY)',
          }
        : {
            message: `no answer from ${host}:${port} within ${s}: the packets are dropped on the way`,
            fix: `allow outbound TCP to ${host}:${port} in the firewall, or set --proxy / HTTPS_PROXY if this network only goes out through a proxy`,
          };
    },
  },
  {
    id: 'tls',
    label: 'TLS verifies',
    title: () => 'TLS verifies',
    run: checkTls,
    skip: (ctx) => (isSecure(ctx.config.apiUrl) ? undefined : `HELIX_API_URL is ${ctx.config.apiUrl.protocol}// (no TLS)`),
    chain: true,
    timedOut: (ctx, s) => ({
      message: `${targetOf(controlUrl(ctx.config.apiUrl, ctx.config.runnerId)).host} accepted TCP but no TLS handshake finished within ${s}`,
      fix: 'check that HELIX_API_URL names the port that serves TLS, and that nothing on the path holds the connection (a firewall, a proxy)',
    }),
  },
  {
    id: 'token',
    label: 'the token is accepted',
    title: () => 'the token is accepted',
    run: checkToken,
    chain: true,
    timedOut: (ctx, s) => ({
      message: `the control plane did not answer the WebSocket upgrade within ${s}`,
      fix: 'check that HELIX_API_URL names the control plane itself and that the load balancer in front of it passes WebSocket upgrades',
    }),
  },
  {
    id: 'wolf',
    label: "Wolf's API answers",
    title: (ctx) => `Wolf's API answers on ${describeTarget(ctx.config.local)}`,
    run: checkWolf,
    chain: false,
    timedOut: (ctx, s) => ({
      message: `${describeTarget(ctx.config.local)} did not answer GET ${ctx.flags.wolfPath} within ${s}`,
      fix: 'is Wolf running and responsive, and is --local / WOLF_LOCAL_ADDR its API?',
    }),
  },
  {
    id: 'registry',
    label: 'the registry answers',
    title: (ctx) => (registryMode(ctx.config) === 'off' ? 'the registry answers' : `the ${registryMode(ctx.config)} registry answers`),
    run: checkRegistry,
    skip: (ctx) => (registryMode(ctx.config) === 'off' ? 'no registry mode set' : undefined),
    chain: true,
    timedOut: (_ctx, s) => ({ message: `the registry did not answer within ${s}`, fix: 'check the control plane' }),
  },
];

function isSecure(url: URL): boolean {
  return url.protocol === 'https:' || url.protocol === 'wss:';
}

export interface RunOptions {
  clock?: Clock;
}

/** One check under its time limit; a failure or time-out becomes a report, never a throw. */
async function runStep(step: Step, ctx: CheckContext, clock: Clock): Promise<StepReport> {
  const title = step.title(ctx);
  const skipped = step.skip?.(ctx);
  if (skipped !== undefined) return { step: step.id, status: 'skip', title, detail: skipped };
  const controller = new AbortController();
  const started = clock.now();
  const seconds = `${ctx.flags.timeoutMs / 1000} s`;
  let timer: ReturnType<Clock['setTimeout']> | undefined;
  const timedOut = new Promise<never>((_resolve, reject) => {
    timer = clock.setTimeout(() => {
      const { message, fix } = step.timedOut(ctx, seconds);
      const failure = new StepFailure(ErrorCodes.DOCTOR_TIMEOUT, message, fix);
      controller.abort(failure);
      reject(failure);
    }, ctx.flags.timeoutMs);
  });
  try {
    const detail = await Promise.race([step.run(ctx, controller.signal), timedOut]);
    return { step: step.id, status: 'ok', title, detail, ms: clock.now() - started };
  } catch (err) {
    const ms = clock.now() - started;
    if (err instanceof StepFailure) return { step: step.id, status: 'fail', title, detail: err.message, fix: err.fix, code: err.code, ms };
    return { step: step.id, status: 'fail', title, detail: describe(err, 500), fix: 'see the message', code: codeOf(err), ms };
  } finally {
    clock.clearTimeout(timer);
    if (!controller.signal.aborted) controller.abort(new Error('step finished'));
  }
}

function configStep(config: Config | Error): StepReport {
  const title = 'configuration valid';
  if (config instanceof Error) {
    return {
      step: 'config',
      status: 'fail',
      title,
      detail: describe(config, 500).replace(/^error: /, ''),
      fix: `fix the setting it names (${PROGRAM} --help lists each flag and its environment variable)`,
      code: config instanceof RevdialError ? config.code : ErrorCodes.CONFIG_INVALID,
    };
  }
  const mode = registryMode(config);
  return {
    step: 'config',
    status: 'ok',
    title,
    detail: `control plane ${safeOrigin(config.apiUrl)}${config.apiUrl.pathname.replace(/\/+$/, '')}, runner id ${config.runnerId}, Wolf at ${describeTarget(config.local)}, token from ${tokenSource(config)}${mode === 'off' ? '' : `, registry ${mode}`}`,
  };
}

/** Runs every step for `config` (or reports the configuration error that stopped it). */
export async function runDoctor(config: Config | Error, flags: DoctorFlags, options: RunOptions = {}): Promise<DoctorReport> {
  const clock = options.clock ?? systemClock;
  const steps: StepReport[] = [configStep(config)];
  if (config instanceof Error) {
    for (const step of STEPS) steps.push({ step: step.id, status: 'skip', title: step.label, detail: 'not checked: the configuration is invalid' });
    return { ok: false, program: PROGRAM, version: VERSION, steps };
  }
  const proxy = await EgressProxy.create(config.proxy);
  const tls = new TlsSettings({ caFile: config.caFile, ca: config.ca, rejectUnauthorized: !config.insecureSkipTlsVerify, maxVersion: config.tlsMaxVersion });
  const ctx: CheckContext = { config, flags, proxy, tls, connector: new DirectConnector({ tls, proxy }), userAgent: `${PROGRAM}/${VERSION} (doctor)` };
  let chainFailed: StepReport | undefined;
  try {
    for (const step of STEPS) {
      if (step.chain && chainFailed && step.skip?.(ctx) === undefined) {
        steps.push({ step: step.id, status: 'skip', title: step.title(ctx), detail: `not checked: "${chainFailed.title}" failed` });
        continue;
      }
      const report = await runStep(step, ctx, clock);
      steps.push(report);
      if (report.status === 'fail' && step.chain) chainFailed = report;
    }
  } finally {
    proxy.destroy();
  }
  return { ok: steps.every((s) => s.status !== 'fail'), program: PROGRAM, version: VERSION, steps };
}

const MARK: Record<StepStatus, string> = { ok: '✓', fail: '✗', skip: '-' };

/** The report as lines (or JSON), with the token scrubbed out whatever a peer echoed. */
export function formatReport(report: DoctorReport, json: boolean, token?: string): string {
  let text: string;
  if (json) {
    text = `${JSON.stringify(report, null, 2)}\n`;
  } else {
    const lines: string[] = [];
    for (const s of report.steps) {
      const ms = s.ms !== undefined && s.status !== 'skip' ? ` (${Math.round(s.ms)} ms)` : '';
      lines.push(`${MARK[s.status]} ${s.title}: ${s.detail}${ms}`);
      if (s.status === 'fail' && s.fix) lines.push(`    → ${s.fix}`);
    }
    const failed = report.steps.filter((s) => s.status === 'fail');
    lines.push(
      failed.length === 0
        ? `All checks passed (${report.steps.filter((s) => s.status === 'ok').length} run, ${report.steps.filter((s) => s.status === 'skip').length} not applicable).`
        : `${failed.length} check${failed.length === 1 ? '' : 's'} failed: ${failed.map((s) => s.step).join(', ')}.`,
    );
    text = `${lines.join('\n')}\n`;
  }
  return token && token.length >= 4 ? text.split(token).join('[token]') : text;
}

/** `wolf-revdial-client doctor`: runs, prints, and says the exit code (0 all passed, 1 otherwise). */
export async function doctorMain(config: Config | Error, flags: DoctorFlags, out: NodeJS.WritableStream): Promise<number> {
  const report = await runDoctor(config, flags);
  let token: string | undefined;
  if (!(config instanceof Error)) {
    try {
      token = config.token();
    } catch {
      token = undefined;
    }
  }
  const text = formatReport(report, flags.json, token);
  await new Promise<void>((resolve) => out.write(text, () => resolve()));
  return report.ok ? EXIT_ALL_PASSED : EXIT_SOME_FAILED;
}
