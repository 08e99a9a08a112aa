// The action's main step: restore the cache with `cachesync pull`.
//
// A miss or an unreachable mirror is a warning and the job goes on without
// the cache (unless fail-on-miss is set). A mistake in the workflow (a
// missing input, an invalid key, no binary, a configuration cachesync
// refuses) fails the step. What post.js needs is passed on as state.
'use strict';

const fs = require('fs');
const lib = require('./lib');

lib.runStep(() => {
  const key = lib.input('key', { required: true });
  lib.checkKey(key, 'key');
  const restoreKeys = lib.listInput('restore-keys');
  for (const prefix of restoreKeys) lib.checkKey(prefix.replace(/\/$/, ''), 'restore key');
  const dir = lib.resolveDir(lib.input('path', { required: true }));
  const mirror = lib.input('mirror');
  const profile = lib.input('profile') || 'generic';
  const failOnMiss = lib.boolInput('fail-on-miss', false);
  const save = lib.boolInput('save', true);
  lib.log.mask(lib.input('token'));
  const bin = lib.binary();

  // Saved before the pull: if the mirror cannot be reached now, the post
  // step still pushes what the job built (and fails loudly if it cannot).
  lib.saveState('bin', bin);
  lib.saveState('key', key);
  lib.saveState('path', dir);
  lib.saveState('profile', profile);
  lib.saveState('mirror', mirror);
  lib.saveState('save', String(save));

  const args = ['pull', ...lib.mirrorArgs(mirror), '--key', key];
  for (const prefix of restoreKeys) args.push('--restore-key', prefix);
  if (failOnMiss) args.push('--fail-on-miss');
  args.push('--json', dir);

  // cachesync writes cache-hit / restored-key to GITHUB_OUTPUT itself; it
  // gets a private file so that this step sets each output exactly once.
  const outputFile = lib.tempFile('cachesync-output');
  let result;
  let written;
  try {
    result = lib.run(bin, args, lib.childEnv({ outputFile }));
    written = lib.parseFileCommands(fs.readFileSync(outputFile, 'utf8'));
  } finally {
    fs.rmSync(outputFile, { force: true });
  }
  const report = lib.parseReport(result.stdout);
  if (!report && result.stdout.trim() !== '') lib.log.info(result.stdout.trimEnd());
  if (report) lib.log.debug(JSON.stringify(report));

  let cacheHit = false;
  let restoredKey = '';
  if (result.ok) {
    cacheHit = 'cache-hit' in written ? written['cache-hit'] === 'true' : Boolean(report && report.cache_hit);
    restoredKey = 'restored-key' in written ? written['restored-key'] : (report && report.restored_key) || '';
    if (restoredKey !== '') {
      const how = cacheHit ? 'exact key' : 'restore key';
      const stats = report
        ? `: ${report.files} files, ${lib.human(report.bytes)}, ${lib.human(report.bytes_received)} received in ${lib.seconds(report.duration_ms)}`
        : '';
      lib.log.info(`Cache restored from ${restoredKey} (${how}) into ${dir}${stats}`);
    } else {
      const tried = [key, ...restoreKeys].join(', ');
      lib.log.info(`No cache for ${tried}; the job starts with what is in ${dir}`);
    }
  }
  lib.setOutput('cache-hit', String(cacheHit));
  lib.setOutput('restored-key', restoredKey);

  if (!result.ok) {
    if (result.status === 2) {
      throw new lib.UsageError('cachesync pull refused its flags or configuration (exit 2); see the message above');
    }
    if (failOnMiss) {
      throw new lib.UsageError(`no cache restored for ${key} (cachesync pull exited ${result.status}) and fail-on-miss is set`);
    }
    lib.log.warning(`Cache not restored: cachesync pull exited ${result.status} (see above). The job continues without it.`);
  }
});
