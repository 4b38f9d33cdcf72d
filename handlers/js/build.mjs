#!/usr/bin/env node
// Build the JavaScript handlers into Wasm components with ComponentizeJS.
//
//     node handlers/js/build.mjs [NAME ...]
//     node handlers/js/build.mjs --check
//
// Builds `handlers/js/NAME/handler.js` (every handler folder when no NAME is given) into
// `target/js/NAME.wasm` at the workspace root, against the contract in `wit/0.1.0`.
// `--check` builds nothing: it says what is missing for a build (this Node.js's version, the
// npm the tools are installed with), and exits 1 if anything is.
//
// It installs its own tools: `npm ci` from `package-lock.json` into `handlers/js/node_modules`,
// on the first run and again only when the lockfile (or the platform) changes. A component is
// rebuilt only when one of its inputs (the handler's folder, `sdk/`, the WIT, the tools) is
// newer than it, so a second run does nothing and takes well under a second. Runs are
// serialised by a lock file, so two builds at once wait for each other.
//
// Needs Node.js 18 or later with npm, and the npm registry on the first run.

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const WORKSPACE = join(HERE, '..', '..');
const WIT = join(WORKSPACE, 'wit', '0.1.0');
const WORLD = 'handler';
const SDK = join(HERE, 'sdk');
const LOCKFILE = join(HERE, 'package-lock.json');
const MODULES = join(HERE, 'node_modules');
const STAMP = join(MODULES, '.evhost-lock.sha256');
const OUT = join(WORKSPACE, 'target', 'js');
/// A lock older than this was left by a build that died; take it over.
const STALE_LOCK_MS = 15 * 60 * 1000;

// ComponentizeJS features the host cannot provide: the host links no `wasi:http`, so `fetch`
// and the fetch event are left out (their imports would fail the type check at load time).
// stdio (console.*, captured by the host), random and clocks stay.
const DISABLED_FEATURES = ['http', 'fetch-event'];

async function main(argv) {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 18) {
    return fail(`Node.js 18 or later is needed, this is ${process.version} (${process.execPath})`);
  }
  if (argv.length === 1 && argv[0] === '--check') {
    const problem = toolsInstalled() ? null : npmProblem();
    return problem ? fail(problem) : 0;
  }
  const names = argv.length > 0
    ? argv
    : readdirSync(HERE).filter((name) => existsSync(join(HERE, name, 'handler.js'))).sort();
  for (const name of names) {
    if (!existsSync(join(HERE, name, 'handler.js'))) {
      return fail(`no JavaScript handler \`${name}\`: ${join(HERE, name, 'handler.js')} does not exist`);
    }
  }
  mkdirSync(OUT, { recursive: true });
  const unlock = await lock(join(OUT, '.build.lock'));
  try {
    ensureTools();
    // Imported only now: `npm ci` may just have installed it.
    const { componentize } = await import('@bytecodealliance/componentize-js');
    for (const name of names) await build(componentize, name);
  } finally {
    unlock();
  }
  return 0;
}

/** What the installed tools must have been installed for: the lockfile and this platform. */
function lockDigest() {
  return createHash('sha256')
    .update(readFileSync(LOCKFILE))
    .update(`${process.platform}-${process.arch}`)
    .digest('hex');
}

/** Whether `node_modules` holds what the lockfile pins, for this platform. */
function toolsInstalled() {
  return existsSync(STAMP) && readFileSync(STAMP, 'utf8').trim() === lockDigest();
}

/** Why npm cannot install the tools here, or null. */
function npmProblem() {
  const result = spawnSync(npm(), ['--version'], { stdio: 'ignore', shell: process.platform === 'win32' });
  if (!result.error && result.status === 0) return null;
  // Some distributions package npm apart from Node.js; the official builds include it.
  return `npm is needed to install ComponentizeJS (npm ci), and \`${npm()}\` does not run `
    + `(${result.error?.message ?? `exit status ${result.status}`}): install it `
    + '(Debian/Ubuntu: apt install npm), or Node.js from https://nodejs.org, which includes it';
}

function ensureTools() {
  if (toolsInstalled()) return;
  const problem = npmProblem();
  if (problem) process.exit(fail(problem));
  const started = Date.now();
  say(`installing the JavaScript build tools into ${relative(WORKSPACE, MODULES)} (npm ci)`);
  run(npm(), ['ci', '--no-audit', '--no-fund', '--loglevel=error'], 'install ComponentizeJS');
  writeFileSync(STAMP, `${lockDigest()}\n`);
  say(`installed in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}

async function build(componentize, name) {
  const source = join(HERE, name);
  const output = join(OUT, `${name}.wasm`);
  const inputs = [...files(source), ...files(SDK), ...files(WIT), STAMP, fileURLToPath(import.meta.url)];
  const newest = Math.max(...inputs.map((path) => statSync(path).mtimeMs));
  if (existsSync(output) && statSync(output).mtimeMs >= newest) {
    say(`${name}: up to date (${relative(WORKSPACE, output)})`);
    return;
  }
  const started = Date.now();
  // ComponentizeJS maps the current directory into the engine while it pre-initialises, so
  // `../sdk/evhost.js` resolves from `handlers/js`; nothing is read from disk at run time.
  process.chdir(HERE);
  let component;
  try {
    ({ component } = await componentize({
      sourcePath: join(name, 'handler.js'),
      witPath: WIT,
      worldName: WORLD,
      disableFeatures: DISABLED_FEATURES,
    }));
  } catch (err) {
    process.exit(fail(`failed to build the JavaScript handler \`${name}\`:\n${err.message ?? err}`));
  }
  const partial = `${output}.partial`;
  writeFileSync(partial, component);
  renameSync(partial, output);
  const size = (component.length / (1 << 20)).toFixed(1);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  say(`${name}: built ${relative(WORKSPACE, output)} (${size} MiB) in ${seconds}s`);
}

/** Every file under `root`. */
function files(root) {
  return readdirSync(root, { withFileTypes: true }).flatMap((entry) => {
    const path = join(root, entry.name);
    if (entry.isDirectory()) return files(path);
    return entry.isFile() ? [path] : [];
  });
}

/** Take the lock file at `path`, waiting for another build to finish; returns the release. */
async function lock(path) {
  let waited = false;
  for (;;) {
    try {
      closeSync(openSync(path, 'wx'));
      const release = () => {
        try {
          unlinkSync(path);
        } catch {
          // already gone
        }
      };
      process.once('exit', release);
      return release;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
    }
    try {
      if (Date.now() - statSync(path).mtimeMs > STALE_LOCK_MS) {
        unlinkSync(path);
        continue;
      }
    } catch {
      continue; // released meanwhile
    }
    if (!waited) say(`waiting for another build (${relative(WORKSPACE, path)})`);
    waited = true;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function npm() {
  return process.platform === 'win32' ? 'npm.cmd' : 'npm';
}

function run(command, args, what) {
  const result = spawnSync(command, args, { cwd: HERE, stdio: 'inherit', shell: process.platform === 'win32' });
  if (result.error || result.status !== 0) {
    process.exit(fail(`failed to ${what}: ${result.error?.message ?? `exit status ${result.status}`}`));
  }
}

function say(message) {
  process.stderr.write(`js handlers: ${message}\n`);
}

function fail(message) {
  process.stderr.write(`js handlers: error: ${message}\n`);
  return 1;
}

process.exitCode = await main(process.argv.slice(2));
