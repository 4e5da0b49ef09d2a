"""Training data: the synthetic scene world (generator, language, dataset on disk) and loaders for local data."""
