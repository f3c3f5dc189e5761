"""The schedule tables: per task, the thesis's training schedule for each backbone and initialisation."""

from dataclasses import dataclass
from pathlib import Path

from plumbing.errors import UsageError


@dataclass(frozen=True)
class ThesisSchedule:
    """One row of a task's schedule table: the thesis's training settings for a backbone and init."""

    epochs: int  # Fine-tuning epochs, after the warm-up.
    warmup_epochs: int
    batch_size: int
    lr_factor: float
    lr_patience: int
    momentum: float  # 0 where the thesis wrote `SGD(lr=0.001)`: Keras's SGD has no momentum unless given one.
    source: str  # The thesis figure or section of the row, and where it is silent, the choice made.


@dataclass(frozen=True)
class Head:
    """The classification head of thesis Fig. 4.8 (see `build_classifier`)."""

    units: int
    l2: float
    dropout: float


# Which epoch a run keeps (`--selection`): the best validation AUC on data held out of the training split, the last
# epoch of a run on all training data, or the best AUC on the test data (the thesis's reading of its epochs).
SELECTIONS = ("held-out", "last", "test")


@dataclass(frozen=True)
class Schedule:
    """Two-phase training (thesis 4.2.2): warm-up with the encoder frozen, then fine-tuning.

    Attributes:
        epochs: fine-tuning epochs after the warm-up.
        warmup_epochs: epochs with the encoder frozen (0 skips the phase).
        batch_size: images per batch.
        lr, momentum: SGD.
        lr_factor, lr_patience: ReduceLROnPlateau on the validation loss (the training loss
            when there is no validation data).
        steps_per_epoch: batches per epoch, the data repeated as needed; None for one pass.
        bn_momentum: momentum of the BatchNormalization moving statistics while fine-tuning;
            None keeps the layers' own (Keras: 0.99).
        selection: one of SELECTIONS; 'last' keeps the last epoch and needs no validation data.

    The thesis's values per task, backbone and init are the tasks' schedule tables
    (`transfer.schedules`); the command-line defaults are `transfer.options.TransferOptions`'s.
    """

    epochs: int
    warmup_epochs: int
    batch_size: int
    lr: float
    momentum: float
    lr_factor: float
    lr_patience: int
    selection: str
    steps_per_epoch: int | None = None
    bn_momentum: float | None = None


SCHEDULE_FIELDS = ("epochs", "warmup_epochs", "batch_size", "lr_factor", "lr_patience", "momentum")


BACKBONE_FAMILIES = {"vgg": "vgg16", "resnet": "resnet50"}  # The thesis used VGG16 and ResNet50 only.


# The thesis did not train RadImageNet encoders: they take the schedule of the other supervised start, ImageNet.
# An init the thesis did not train takes another's row: RadImageNet ImageNet's (both supervised), the contrastive
# encoders genesis's (self-supervised on the same corpus; the thesis has no contrastive arm).
INIT_FALLBACKS = {"radimagenet": "imagenet", "contrastive": "genesis", "genesis+contrastive": "genesis"}


def load_table(path):
    """A task's schedule table from its YAML file: {(backbone, init): ThesisSchedule}.

    The file holds `defaults` (fields shared by every row) and `rows`, each a backbone, an
    init and the rest of ThesisSchedule's fields; a row missing a field or naming an unknown
    one stops with one line naming the file.
    """
    import dataclasses

    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text())
    names = {item.name for item in dataclasses.fields(ThesisSchedule)}
    table = {}
    for row in data["rows"]:
        values = {**data.get("defaults", {}), **row}
        key = (values.pop("backbone"), values.pop("init"))
        if set(values) != names:
            raise UsageError(path, f"row {key} has fields {sorted(values)}, expected {sorted(names)}")
        table[key] = ThesisSchedule(**values)
    return table


def schedule_row(table, backbone, init):
    """(row, note): the table's row for (backbone, init), or its family's (and for an init the thesis did not train,
    INIT_FALLBACKS's) with a note saying so.

    Args:
        table: {(backbone, init): ThesisSchedule}, a task's table.
    """
    if (backbone, init) in table:
        return table[(backbone, init)], None
    family = next((row for prefix, row in BACKBONE_FAMILIES.items() if backbone.startswith(prefix)), None)
    for name, start in ((family, init), (backbone, INIT_FALLBACKS.get(init)), (family, INIT_FALLBACKS.get(init))):
        if (name, start) in table:
            untrained = [backbone] if name != backbone else []
            untrained += [f"--init {init}"] if start != init else []
            return table[(name, start)], (
                f"note: the thesis did not train {' with '.join(untrained)}; using its "
                f"{name} schedule for --init {start}."
            )
    raise UsageError("--backbone", f"the schedule table has no row for {backbone} or its family with --init {init}")


def schedule_table_text(table):
    """The table as text for --help: one line per (backbone, init)."""
    lines = [
        "thesis schedules (fine-tuning epochs, warm-up epochs, batch size, ReduceLROnPlateau factor, patience, "
        "SGD momentum; source):"
    ]
    for (backbone, init), row in table.items():
        lines.append(
            f"  {backbone:<9} {init:<9} epochs {row.epochs:>2}  warm-up {row.warmup_epochs}  batch "
            f"{row.batch_size:>2}  factor {row.lr_factor:<5g} patience {row.lr_patience}  momentum "
            f"{row.momentum:g}; {row.source}"
        )
    lines.append(
        "Other backbones take the row of their family (vgg*: vgg16, resnet*: resnet50); --init radimagenet "
        "takes the imagenet row, --init contrastive and genesis+contrastive the genesis row."
    )
    return "\n".join(lines)
