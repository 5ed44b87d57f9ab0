"""The model: the β-VAE networks and the model bundle (manifest, weights, latents) they load from."""
