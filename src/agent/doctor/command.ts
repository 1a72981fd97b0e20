/**
 * `wolf-revdial-client doctor`: the subcommand's own flags. It reads the
 * agent's flags and environment too (commander recognises the program's
 * options before and after the subcommand), so the same unit file, env file
 * or container spec can run it. The checks themselves (checks.ts, run.ts) are
 * loaded only when the subcommand runs: the agent never pays for them.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';

export interface DoctorFlags {
  /** One JSON document instead of lines. */
  json: boolean;
  /** Time limit of every step. */
  timeoutMs: number;
  /** What to ask Wolf's API for. */
  wolfPath: string;
  /** Open the control connection even when an agent on this host is connected already. */
  force: boolean;
}

export const DOCTOR_DEFAULTS: DoctorFlags = { json: false, timeoutMs: 5_000, wolfPath: '/api/v1/apps', force: false };

function timeoutArg(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0 || n > 300) throw new InvalidArgumentError('expected a number of seconds above 0, at most 300');
  return n;
}

function pathArg(value: string): string {
  if (!value.startsWith('/') || value.startsWith('//') || /[\s\\]/.test(value))
    throw new InvalidArgumentError('expected an absolute path such as /api/v1/apps');
  return value;
}

interface RawDoctorOptions {
  json?: boolean;
  timeout: number;
  wolfPath: string;
  force?: boolean;
}

/** Adds `doctor` to the program; `onRun` gets its flags when it is the command given. */
export function addDoctorCommand(program: Command, onRun: (flags: DoctorFlags) => void): Command {
  const doctor = program
    .command('doctor')
    .description(
      "check this host's setup step by step with the agent's flags and environment: configuration, DNS, TCP (and the egress proxy), TLS, the token, Wolf's API, the registry; exit 0 when all pass, 1 otherwise",
    )
    .allowExcessArguments(false)
    .addOption(new Option('--json', 'print one JSON document instead of lines'))
    .addOption(new Option('--timeout <seconds>', 'time limit of each step').default(DOCTOR_DEFAULTS.timeoutMs / 1000).argParser(timeoutArg))
    .addOption(new Option('--wolf-path <path>', "what to GET from Wolf's API").default(DOCTOR_DEFAULTS.wolfPath).argParser(pathArg))
    .addOption(
      new Option(
        '--force',
        'open a control connection even when an agent on this host is connected (the control plane then routes to the check, not the agent, until the agent reconnects)',
      ),
    )
    .action((o: RawDoctorOptions) => {
      onRun({ json: o.json === true, timeoutMs: Math.round(o.timeout * 1000), wolfPath: o.wolfPath, force: o.force === true });
    });
  return doctor;
}

/**
 * Whether argv names the doctor subcommand, for errors commander throws
 * before it gets there (a bad flag value): they are then reported as the
 * doctor's failed first step, not as the agent's start-up error.
 */
export function namesDoctor(argv: readonly string[]): boolean {
  return argv.includes('doctor');
}
