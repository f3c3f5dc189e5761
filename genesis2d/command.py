"""`python genesis2d/train.py`: the pretraining's command line. Its options are parsed before TensorFlow starts
(`genesis2d.options` imports no Keras), so `--help` and a bad flag answer at once; `genesis2d.pretrain` runs it."""

from genesis2d.options import parse_args


def _interrupted(config):
    return f"continue with `python genesis2d/train.py --resume --out {config.out}` (and the same options)."


def _run(config):
    from genesis2d import pretrain

    return pretrain.run(config)


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, _run, argv, interrupted=_interrupted, tensorflow=True)
