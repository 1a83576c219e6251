"""The package's RecBole models, one per file; ``recbole_hydra.registry`` resolves them by name."""
