"""The study on top of everything: runs pretraining and the downstream tasks, and reports them.

`python -m study` runs the experiment (`study.experiment`) on your folders, or on the demo data with
`study/demo.yaml` (`study.command`);
`python -m study.report RUN_DIRS --out DIR` builds the report from any finished
runs, reading only the results contract of `transfer.results`. The layers below
(`plumbing` <- `preprocessing` <- `genesis2d` <- `transfer` <- `luna16`, `mura`) never
import this package.
"""
