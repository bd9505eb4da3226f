"""Scoring predictions.

``metrics``          PSNR, SSIM, moving-pixel masks, best-of-N, the replay bound (jitted, pure)
``scoring``          generation over a split scored per frame; the per-epoch Validator; latent measures
``evaluate``         eval.py: restore a checkpoint, score a split under a protocol, write metrics and pictures
``protocols``        named evaluation protocols (lab, svg, bair-1to15) and their cards
``perceptual``       LPIPS (``.[metrics]``)
``fvd``              FVD with I3D features (``.[metrics]``)
``action_fidelity``  actions read back from the predictions by an inverse model
``extras``           the optional packages of ``.[metrics]`` and the versions a card records
"""
