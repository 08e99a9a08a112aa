// The action's post step: save the cache with `cachesync push`.
//
// The runner calls it at the end of the job, and only when the job has
// succeeded so far (`post-if: success()` in action.yml). It pushes what
// changed; after an exact hit with nothing changed, cachesync does nothing.
// A push that fails (refused by the mirror, mirror unreachable) fails the
// step, loudly: jobs that must not write (pull requests) set `save: false`.
'use strict';

const fs = require('fs');
const lib = require('./lib');

lib.runStep(() => {
  // What to save was decided by the main step, from the inputs it was given.
  const key = lib.getState('key');
  const dir = lib.getState('path');
  if (key === '' || dir === '') {
    lib.log.info('The restore step stopped before it recorded what to save: nothing to push.');
    return;
  }
  if (lib.getState('save') === 'false') {
    lib.log.info('save is false: the cache is not pushed.');
    return;
  }
  if (!fs.existsSync(dir)) {
    lib.log.notice(`${dir} does not exist: nothing to save under ${key}.`);
    return;
  }
  const bin = lib.getState('bin') || 'cachesync';
  const mirror = lib.getState('mirror');
  const profile = lib.getState('profile') || 'generic';
  lib.log.mask(lib.input('token'));

  const args = ['push', ...lib.mirrorArgs(mirror), '--key', key, '--profile', profile, '--json', dir];
  const result = lib.run(bin, args, lib.childEnv());
  const report = lib.parseReport(result.stdout);
  if (!report && result.stdout.trim() !== '') lib.log.info(result.stdout.trimEnd());
  if (report) lib.log.debug(JSON.stringify(report));

  if (!result.ok) {
    throw new lib.UsageError(
      `cachesync push to ${key} failed (exit ${result.status}); see the message above. ` +
        'If the mirror refused it, this job has a read-only token or one not scoped to this key: ' +
        'give it a write token, or set save: false for jobs that must not write (pull requests).',
    );
  }
  if (report && report.unchanged) {
    lib.log.info(`Cache ${key} unchanged: nothing pushed.`);
  } else if (report) {
    const generation = report.generation !== undefined ? ` (generation ${report.generation})` : '';
    lib.log.info(
      `Cache saved as ${key}${generation}: ${report.files} files, ${lib.human(report.bytes)}, ` +
        `${lib.human(report.bytes_sent)} sent in ${lib.seconds(report.duration_ms)}`,
    );
  }
});
