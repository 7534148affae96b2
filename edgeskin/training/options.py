"""The options of a training run, validated once, and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from edgeskin.data import augment, dedup, perturb
from edgeskin.training import model as model_lib


def _tuples(cls, d: dict) -> dict:
    """JSON turns tuples into lists; give the tuple fields theirs back."""
    return {f.name: tuple(d[f.name]) if isinstance(d.get(f.name), list) else d[f.name] for f in fields(cls) if f.name in d}


@dataclass(frozen=True)
class TrainOptions:
    model: model_lib.ModelOptions = field(default_factory=model_lib.ModelOptions)
    seed: int = 42
    # The seed of the validation split alone (None: seed). Another seed with
    # the same split draws a fresh run whose scores stand beside the first's
    # on the same calibration pool: training is deterministic here, so the
    # same seed would only reproduce a run.
    split_seed: int | None = None
    val_fraction: float = 0.2
    batch_size: int = 32
    head_epochs: int = 40
    head_learning_rate: float = 1e-3
    fine_tune_epochs: int = 25
    fine_tune_learning_rate: float = 1e-4
    # The top six inverted-residual blocks and the last 1x1 conv: the layers
    # whose features are most ImageNet-specific. On isic-binary, unfreezing
    # from block 13 (20 epochs) reached validation AUC 0.940 against 0.951
    # from block 11 (25 epochs), for about 15% less time (measured for the
    # isic-binary-only model of an earlier version).
    fine_tune_from: str | None = "block_11_expand"
    # Fine-tune on smaller images than the model serves (None: the same):
    # 160 px doubles the throughput here, and a network trained on random
    # resized crops sees lesions larger than they are, which evaluating at
    # the full size makes up for ("FixRes"). Validation and calibration
    # always run at model.image_size, the size the device uses.
    train_image_size: int | None = None
    patience: int = 5
    loss: str = "bce"  # "bce" or "focal"
    class_weights: bool = True
    augmentation: augment.AugmentOptions = field(default_factory=augment.AugmentOptions)
    head_copies: int = 4  # augmented copies of the training set whose frozen features the head trains on
    # The diagnosis head's share of the loss.
    diagnosis_loss_weight: float = 0.5
    # "balanced_softmax": cross-entropy on the logits plus the log of the
    # training prior (logit adjustment, Menon et al. 2021): the head learns
    # balanced posteriors without the heavy per-class weights that blew the
    # backbone up. "weighted": cross-entropy with per-diagnosis weights.
    diagnosis_loss: str = "weighted"
    # How each diagnosis is weighted by the "weighted" loss: "inverse" frequency, its "sqrt", or "none".
    diagnosis_weighting: str = "inverse"
    label_smoothing: float = 0.0  # on the diagnosis targets; it also keeps the logits in int8's range
    # Let the diagnosis loss into fine-tuning (False: the diagnosis head is
    # refitted on the fine-tuned features afterwards instead).
    diagnosis_in_fine_tuning: bool = False
    # What picks the best epoch and stops early: "auc" (benign/malignant
    # alone) or "auc+dx" (its AUC plus the diagnosis balanced accuracy).
    select_on: str = "auc"
    clipnorm: float | None = None  # gradient-norm clipping while fine-tuning
    # Judge and keep an exponential moving average of the fine-tuned weights,
    # updated after every step with this momentum (None: the weights as
    # trained). averaging.py says why.
    ema_momentum: float | None = None
    # Stop fine-tuning before the epoch that would end past this many minutes
    # from the start of the run (None: no limit). The epochs run are recorded.
    time_budget_minutes: float | None = None
    calibration_qualities: tuple[int, ...] = perturb.DEPLOYMENT_QUALITIES
    max_duplicate_distance: int = dedup.DEFAULT_MAX_DISTANCE
    # Where fine-tuning reads its images: decoded once into "memory", or
    # "stream"ed from disk batch by batch; "auto" streams sets too large for
    # memory (streaming.input_mode). Both give the same pixels.
    input: str = "auto"
    # tf.distribute: "none", "mirrored" (every local GPU) or "multi-worker"
    # (machines named by TF_CONFIG). batch_size is then the global batch
    # (docs/scale.md); distribute.py has the rest.
    distribute: str = "none"
    # Put the layers that never train on the int8 grid before any training
    # (quantaware.py): the int8 file then reproduces them exactly, and the
    # layers above learn from the very values the phone will compute.
    int8_grid: bool = False

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.seed < 0 or (self.split_seed is not None and self.split_seed < 0):
            raise ValueError(f"seeds must be >= 0, got seed {self.seed} and split_seed {self.split_seed}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.head_epochs < 1 or self.fine_tune_epochs < 0:
            raise ValueError("head_epochs must be >= 1 and fine_tune_epochs >= 0")
        if not (self.head_learning_rate > 0 and self.fine_tune_learning_rate > 0):
            raise ValueError("learning rates must be positive")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.loss not in ("bce", "focal"):
            raise ValueError(f"loss must be 'bce' or 'focal', got {self.loss!r}")
        if self.fine_tune_from is not None and self.fine_tune_from not in model_lib.FINE_TUNE_STARTS:
            raise ValueError(f"fine_tune_from must be one of {', '.join(model_lib.FINE_TUNE_STARTS)}")
        if self.head_copies < 1:
            raise ValueError(f"head_copies must be at least 1, got {self.head_copies}")
        self._check_recipe()
        self._check_run()

    def _check_recipe(self) -> None:
        """The fine-tuning size and the diagnosis head's loss and selection."""
        if self.train_image_size is not None and not 32 <= self.train_image_size <= self.model.image_size:
            raise ValueError(f"train_image_size must lie in [32, {self.model.image_size}], got {self.train_image_size}")
        if self.diagnosis_loss not in ("weighted", "balanced_softmax"):
            raise ValueError(f"diagnosis_loss must be weighted or balanced_softmax; got {self.diagnosis_loss!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and self.diagnosis_loss != "balanced_softmax":
            raise ValueError("label_smoothing applies to the balanced_softmax diagnosis loss only")
        if self.select_on not in ("auc", "auc+dx"):
            raise ValueError(f"select_on must be auc or auc+dx; got {self.select_on!r}")
        if self.diagnosis_weighting not in ("inverse", "sqrt", "none"):
            raise ValueError(f"diagnosis_weighting must be inverse, sqrt or none; got {self.diagnosis_weighting!r}")

    def _check_run(self) -> None:
        """Clipping, the EMA, the time budget, calibration, near-duplicates, the input path and distribution."""
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise ValueError(f"clipnorm must be positive, got {self.clipnorm}")
        if self.ema_momentum is not None and not 0.0 < self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must lie in (0, 1), got {self.ema_momentum}")
        if not self.diagnosis_loss_weight >= 0:
            raise ValueError(f"diagnosis_loss_weight must be >= 0, got {self.diagnosis_loss_weight}")
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise ValueError(f"time_budget_minutes must be positive, got {self.time_budget_minutes}")
        if not self.calibration_qualities or not all(1 <= q <= 100 for q in self.calibration_qualities):
            raise ValueError(f"calibration_qualities must be JPEG qualities in [1, 100], got {self.calibration_qualities}")
        if not 0 <= self.max_duplicate_distance < dedup.HASH_SIZE**2:
            raise ValueError(f"max_duplicate_distance must lie in [0, {dedup.HASH_SIZE ** 2})")
        if self.input not in ("auto", "memory", "stream"):
            raise ValueError(f"input must be auto, memory or stream; got {self.input!r}")
        if self.distribute not in ("none", "mirrored", "multi-worker"):
            raise ValueError(f"distribute must be none, mirrored or multi-worker; got {self.distribute!r}")
        if self.distribute == "multi-worker" and self.time_budget_minutes is not None:
            # Each worker would read its own clock, and one stopping alone leaves the others waiting for it.
            raise ValueError("time_budget_minutes cannot be used with distribute multi-worker")

    @property
    def validation_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        """The options as config.json records them (dataclasses.asdict), back as TrainOptions."""
        return cls(**{**_tuples(cls, d), "model": model_lib.ModelOptions(**_tuples(model_lib.ModelOptions, d["model"])),
                      "augmentation": augment.AugmentOptions(**_tuples(augment.AugmentOptions, d["augmentation"]))})

    @property
    def fit_size(self) -> int:
        """The image size the network trains at."""
        return self.train_image_size or self.model.image_size

    @classmethod
    def for_multisource(cls, **overrides) -> "TrainOptions":
        """The shipped model's recipe (run v5), one run of about an hour on 2 cores: both heads learnt through the
        backbone from block 6 at 160 px, the diagnosis by a balanced softmax without label smoothing, epochs chosen
        on AUC plus diagnosis balanced accuracy, and the layers that never train on the int8 file's grid.

        Chosen on validation data only (README, "What was tried"; docs/recipe.md).
        """
        base = cls(val_fraction=0.15, head_copies=1, head_epochs=12, fine_tune_epochs=15, patience=15,
                   fine_tune_from="block_6_expand", fine_tune_learning_rate=3e-4, train_image_size=160,
                   diagnosis_loss="balanced_softmax", label_smoothing=0.0, diagnosis_loss_weight=1.0,
                   diagnosis_in_fine_tuning=True, select_on="auc+dx", time_budget_minutes=74.0, int8_grid=True)
        return replace(base, **overrides)

    @classmethod
    def for_smoke_test(cls, **overrides) -> "TrainOptions":
        """A tiny, fast configuration for tests: alpha 0.35, 64 px, random init, one epoch each."""
        base = cls(
            model=model_lib.ModelOptions(image_size=64, alpha=0.35, weights="none"),
            batch_size=8,
            head_epochs=1,
            fine_tune_epochs=1,
            fine_tune_from="block_16_expand",
            patience=1,
        )
        return replace(base, **overrides)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    counts: dict
    notes: tuple[str, ...]
    temperature: float
    val_auc: float
    operating_points: dict
    seconds: float
