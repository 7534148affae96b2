"""The model card's training section states the seeds the run recorded, and no more."""

from edgeskin.reporting import card


def _seed_line(training: dict) -> str:
    return next(line for line in card._training(training, {}) if line.startswith("- Seed"))


def test_the_card_names_a_validation_split_drawn_with_its_own_seed():
    assert _seed_line({"seed": 43, "split_seed": 42, "seconds": 600}) == (
        "- Seed: 43 (validation split drawn with seed 42); wall time: 10 min.")
    # A run that drew its split with its own seed (split_seed None, or absent in older files) says nothing more.
    assert _seed_line({"seed": 42, "split_seed": None}) == _seed_line({"seed": 42}) == (
        "- Seed: 42; wall time: not recorded.")
