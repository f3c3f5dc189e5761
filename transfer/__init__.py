"""Transfer of any encoder to a downstream classification task, written once for every task (thesis 4.2).

Built on `genesis2d` (backbones, the genesis encoders it writes); `luna16`, `mura`
and `study` build on it and it imports none of them:

- `encoders`: the initialisations (scratch, genesis, ImageNet, RadImageNet) and their files;
- `finetune`: the thesis head and two-phase fine-tuning;
- `schedules`: the schedule tables' rows and their fallbacks;
- `options`: the shared command-line options, resolved into typed settings;
- `probe`: linear probes of a frozen encoder;
- `saliency`: Grad-CAM and the galleries of confident cases;
- `statistics`: metrics, DeLong and clustered tests, the bootstrap;
- `plots`: ROC and loss curves;
- `results`: the results contract that the report reads;
- `runner`: the one downstream run, to which a task gives its data and its outputs;
- `tasks`: what the study needs of a task (`StudyTask`) and where it finds the tasks.
"""
