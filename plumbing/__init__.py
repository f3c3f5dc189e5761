"""What every layer shares, and nothing about images or models.

The bottom of the project's layers (`plumbing` <- `preprocessing` <- `genesis2d` <-
`transfer` <- `luna16`, `mura` <- `study`); it imports none of them:

- `errors`: the user-facing errors, one sentence naming the file and the problem;
- `cli`: `run_command` (one-line errors, exit codes), the argument parser, YAML configs;
- `atomic`: writes that never leave a half-written file under the real name;
- `figures`: a headless matplotlib and atomic figure saving;
- `runtime`: precision, op determinism, seeds and their named streams, the divergence guard, run records;
- `fingerprint`: hashes of settings and files, and the rule for reusing a kept result.
"""
