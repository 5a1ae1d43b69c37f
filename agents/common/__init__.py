"""The on-policy engine every algorithm of :mod:`agents` is built on (see ``docs/trainer.md``)."""
