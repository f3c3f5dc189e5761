"""The study on top of everything: runs pretraining and the downstream tasks, and reports them.

`python -m study` runs the whole study on the demo data (`study.demo`);
`python -m study.report RUN_DIRS --out DIR` builds the report from any finished
runs, reading only the results contract of `transfer.results`. The layers below
(`plumbing` <- `preprocessing` <- `genesis2d` <- `transfer` <- `luna16`, `mura`) never
import this package.
"""
