#!/usr/bin/env node
// Build the JavaScript handlers and upcasters into Wasm components with ComponentizeJS.
//
//     node handlers/js/build.mjs [NAME ...]
//     node handlers/js/build.mjs --check
//
// Builds the folder `handlers/js/NAME` (every such folder when no NAME is given) into
// `target/js/NAME.wasm` at the workspace root. The file in the folder says what it is:
// `handler.js` is a handler, built against the handler contract in `wit/0.1.0` (world
// `handler`); `upcaster.js` is an upcaster, built against `wit/upcaster-0.1.0` (world
// `upcaster`). A folder has one of them, never both.
// `--check` builds nothing: it says what is missing for a build (this Node.js's version, the
// npm the tools are installed with), and exits 1 if anything is.
//
// It installs its own tools: `npm ci` from `package-lock.json` into `handlers/js/node_modules`,
// on the first run and again only when the lockfile (or the platform) changes. A component is
// rebuilt only when one of its inputs (its folder, `sdk/`, its world's WIT, the tools) is
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
const SDK = join(HERE, 'sdk');
const LOCKFILE = join(HERE, 'package-lock.json');
const MODULES = join(HERE, 'node_modules');
const STAMP = join(MODULES, '.evhost-lock.sha256');
const OUT = join(WORKSPACE, 'target', 'js');
/// A lock older than this was left by a build that died; take it over.
const STALE_LOCK_MS = 15 * 60 * 1000;

/**
 * What a folder can hold, by the name of its source file: the world it is built for and that
 * world's WIT. An upcaster imports nothing of the host, so it cannot use `sdk/evhost.js`
 * (whose imports are the handler's); `sdk/` is an input of both all the same, as a folder may
 * import from it.
 */
const KINDS = [
  { kind: 'handler', source: 'handler.js', world: 'handler', wit: join(WORKSPACE, 'wit', '0.1.0') },
  { kind: 'upcaster', source: 'upcaster.js', world: 'upcaster', wit: join(WORKSPACE, 'wit', 'upcaster-0.1.0') },
];

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
    : readdirSync(HERE).filter((name) => kindsIn(name).length > 0).sort();
  const builds = [];
  for (const name of names) {
    const kinds = kindsIn(name);
    if (kinds.length === 0) {
      return fail(`no JavaScript handler or upcaster \`${name}\`: neither ${join(HERE, name, 'handler.js')} `
        + `nor ${join(HERE, name, 'upcaster.js')} exists`);
    }
    if (kinds.length > 1) {
      return fail(`\`${name}\` has both a handler.js and an upcaster.js: a component is one or the `
        + 'other, so put them in folders of their own');
    }
    builds.push({ name, ...kinds[0] });
  }
  mkdirSync(OUT, { recursive: true });
  const unlock = await lock(join(OUT, '.build.lock'));
  try {
    ensureTools();
    // Imported only now: `npm ci` may just have installed it.
    const { componentize } = await import('@bytecodealliance/componentize-js');
    for (const what of builds) await build(componentize, what);
  } finally {
    unlock();
  }
  return 0;
}

/** The kinds of component whose source file the folder `name` holds. */
function kindsIn(name) {
  return KINDS.filter(({ source }) => existsSync(join(HERE, name, source)));
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

async function build(componentize, { name, kind, source: file, world, wit }) {
  const source = join(HERE, name);
  const output = join(OUT, `${name}.wasm`);
  const inputs = [...files(source), ...files(SDK), ...files(wit), STAMP, fileURLToPath(import.meta.url)];
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
      sourcePath: join(name, file),
      witPath: wit,
      worldName: world,
      disableFeatures: DISABLED_FEATURES,
    }));
  } catch (err) {
    process.exit(fail(`failed to build the JavaScript ${kind} \`${name}\`:\n${err.message ?? err}`));
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
