// Shared helpers for main.js (restore) and post.js (save).
//
// Only Node's built-in modules: the action ships as plain files and needs no
// `npm install`. It speaks the runner's documented protocol directly:
//   - inputs arrive as INPUT_<NAME> variables (upper case, spaces as `_`,
//     dashes kept: `restore-keys` is INPUT_RESTORE-KEYS);
//   - outputs are appended to the file named by GITHUB_OUTPUT;
//   - state for the post step is appended to GITHUB_STATE and comes back
//     in the post step as STATE_<name>;
//   - log annotations are `::warning::`, `::error::` … lines on stdout.
'use strict';

const childProcess = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');

/** An action input, trimmed; '' when not given. */
function input(name, { required = false } = {}) {
  const value = (process.env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] || '').trim();
  if (required && value === '') {
    throw new UsageError(`input "${name}" is required`);
  }
  return value;
}

/** A boolean input: true/True/TRUE or false/False/FALSE (YAML 1.2 core schema). */
function boolInput(name, fallback) {
  const value = input(name);
  if (value === '') return fallback;
  if (['true', 'True', 'TRUE'].includes(value)) return true;
  if (['false', 'False', 'FALSE'].includes(value)) return false;
  throw new UsageError(`input "${name}" must be true or false, not "${value}"`);
}

/** A newline-separated input: one entry per non-empty line. */
function listInput(name) {
  return input(name)
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '');
}

/** A mistake in the workflow (bad input, missing binary): fails the step. */
class UsageError extends Error {}

// Workflow commands: https://docs.github.com/actions/reference/workflows-and-actions/workflow-commands
function escapeData(s) {
  return String(s).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}
function command(name, message) {
  process.stdout.write(`::${name}::${escapeData(message)}${os.EOL}`);
}
const log = {
  info: (message) => process.stdout.write(`${message}${os.EOL}`),
  debug: (message) => command('debug', message),
  notice: (message) => command('notice', message),
  warning: (message) => command('warning', message),
  error: (message) => command('error', message),
  mask: (secret) => {
    if (secret) command('add-mask', secret);
  },
};

/** Appends `name=value` to a file command (GITHUB_OUTPUT, GITHUB_STATE) in the multi-line form. */
function appendFileCommand(variable, name, value) {
  const file = process.env[variable];
  if (!file) {
    throw new UsageError(`${variable} is not set: this script runs as a step of a GitHub Actions job`);
  }
  const text = String(value);
  const delimiter = `ghadelimiter_${crypto.randomUUID()}`;
  if (name.includes(delimiter) || text.includes(delimiter)) {
    throw new Error(`unexpected delimiter in ${name}`);
  }
  fs.appendFileSync(file, `${name}<<${delimiter}${os.EOL}${text}${os.EOL}${delimiter}${os.EOL}`, 'utf8');
}
const setOutput = (name, value) => appendFileCommand('GITHUB_OUTPUT', name, value);
const saveState = (name, value) => appendFileCommand('GITHUB_STATE', name, value);
const getState = (name) => process.env[`STATE_${name}`] || '';

/**
 * Reads `name=value` and `name<<DELIM … DELIM` entries, as a step writes
 * them to GITHUB_OUTPUT. The last value of a name wins.
 */
function parseFileCommands(text) {
  const values = {};
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const heredoc = /^([^=<]+)<<(.+)$/.exec(line);
    if (heredoc) {
      const body = [];
      for (i++; i < lines.length && lines[i] !== heredoc[2]; i++) body.push(lines[i]);
      values[heredoc[1]] = body.join('\n');
    } else if (line.includes('=')) {
      const at = line.indexOf('=');
      values[line.slice(0, at)] = line.slice(at + 1);
    }
  }
  return values;
}

/** `~/x` → $HOME/x; relative paths are taken from the workspace. */
function resolveDir(p) {
  let dir = p;
  if (dir === '~' || dir.startsWith('~/')) dir = path.join(os.homedir(), dir.slice(1));
  return path.resolve(process.env.GITHUB_WORKSPACE || process.cwd(), dir);
}

/** Key rules from the README: A-Z a-z 0-9 . _ - in `/`-separated segments, at most 256 characters. */
function checkKey(key, what) {
  if (key.length > 256 || !/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(key)) {
    throw new UsageError(
      `${what} "${key}" is not a valid cache key: use A-Z a-z 0-9 . _ - in /-separated segments, ` +
        'at most 256 characters (sanitize branch names before putting them in a key)',
    );
  }
}

/** The cachesync binary: the `cachesync-path` input, or `cachesync` on PATH. */
function binary() {
  const given = input('cachesync-path');
  if (given === '') return 'cachesync';
  const bin = resolveDir(given);
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    throw new UsageError(`cachesync-path "${given}" is not an executable file`);
  }
  return bin;
}

/**
 * The environment for cachesync. Every CACHESYNC_* variable is a setting to
 * cachesync and an unknown one is an error, so only its own names go in:
 * the token and CA file from the inputs, when given, over the job's
 * environment. Empty CACHESYNC_* variables (an unset secret) are left out,
 * and the INPUT_* variables (the token among them) are not passed on.
 */
function childEnv({ outputFile } = {}) {
  const env = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (name.startsWith('INPUT_')) continue;
    if (name.startsWith('CACHESYNC_') && value === '') continue;
    env[name] = value;
  }
  const token = input('token');
  if (token) env.CACHESYNC_CLIENT__TOKEN = token;
  const caFile = input('ca-file');
  if (caFile) env.CACHESYNC_CLIENT__CA_FILE = resolveDir(caFile);
  delete env.GITHUB_OUTPUT;
  if (outputFile) env.GITHUB_OUTPUT = outputFile;
  return env;
}

/** `--mirror URL` when the input is set; otherwise cachesync's own setting (CACHESYNC_CLIENT__MIRROR, config file). */
function mirrorArgs(mirror) {
  return mirror ? ['--mirror', mirror] : [];
}

/** Runs cachesync; its stderr goes to the log as it comes, its stdout is returned. */
function run(bin, args, env) {
  log.info(`[command]${[bin, ...args].join(' ')}`);
  const result = childProcess.spawnSync(bin, args, {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (result.error) {
    if (result.error.code === 'ENOENT') {
      throw new UsageError(
        `cannot run "${bin}": not found. Install cachesync in an earlier step (on PATH) or set the cachesync-path input`,
      );
    }
    throw new UsageError(`cannot run "${bin}": ${result.error.message}`);
  }
  const status = result.status === null ? `signal ${result.signal}` : result.status;
  return { ok: result.status === 0, status, stdout: result.stdout || '' };
}

/** The `--json` report: the last stdout line that is a JSON object, or null. */
function parseReport(stdout) {
  const lines = stdout.split(/\r?\n/).filter((l) => l.trim().startsWith('{'));
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      const value = JSON.parse(lines[i]);
      if (value && typeof value === 'object') return value;
    } catch {
      // not JSON: keep looking
    }
  }
  return null;
}

function human(bytes) {
  const n = Number(bytes);
  if (!Number.isFinite(n)) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

function seconds(ms) {
  const n = Number(ms);
  return Number.isFinite(n) ? `${(n / 1000).toFixed(1)}s` : '?s';
}

/** Runs `fn`; a thrown error becomes an `::error::` line and exit code 1. */
function runStep(fn) {
  try {
    fn();
  } catch (err) {
    log.error(err instanceof UsageError ? err.message : err && err.stack ? err.stack : String(err));
    process.exitCode = 1;
  }
}

/** A fresh temporary file (for cachesync's own GITHUB_OUTPUT lines). */
function tempFile(prefix) {
  const dir = process.env.RUNNER_TEMP || os.tmpdir();
  const file = path.join(dir, `${prefix}-${process.pid}-${crypto.randomUUID()}`);
  fs.writeFileSync(file, '', { mode: 0o600 });
  return file;
}

module.exports = {
  UsageError,
  appendFileCommand,
  binary,
  boolInput,
  checkKey,
  childEnv,
  getState,
  human,
  input,
  listInput,
  log,
  mirrorArgs,
  parseFileCommands,
  parseReport,
  resolveDir,
  run,
  runStep,
  saveState,
  seconds,
  setOutput,
  tempFile,
};
