"""EVA's video world model (Wan2.1 image-to-video through diffusers) and best-of-N planning.

Top-level modules are ROS-free; the planner node lives in :mod:`eva_planner.ros`.

* :mod:`eva_planner.world_model`: :class:`~eva_planner.world_model.WorldModel` and EVA's sampler
  (clean first latent, per-frame timesteps, three-pass guidance, EVA's sigma table);
* :mod:`eva_planner.transformer_forward`: the Wan transformer pass with one modulation per latent frame;
* :mod:`eva_planner.prompt_cache`: each instruction through the text encoder once;
* :mod:`eva_planner.loading`: local diffusers directories, EVA's checkpoint conversion, PEFT adapters;
* :mod:`eva_planner.tiny`: a random tiny world model built in code, for tests and the demo.
"""
